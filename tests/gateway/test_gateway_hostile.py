"""The SSH gateway against hostile SSH clients: garbage before the banner, broken and
stalled handshakes, connection floods, hundreds of channels on one connection, floods of
logins, absurd window sizes.

Each attack comes from raw sockets or a paramiko client bound to an "attacker" loopback
address (Linux answers all of 127.0.0.0/8); the real OpenSSH client, from another
address, then shows that a legitimate user is still served by the same gateway.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import struct
import threading
import time
from pathlib import Path

import paramiko
import pytest
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from gateway.ssh import limits
from gateway.ssh.connection import MAX_CHANNELS
from identity.gateway_auth import gateway_locked_out
from recordings.models import GatewaySession, Recording
from tests.conftest import PASSWORD
from tests.fixtures.gateway_process import GatewayProcess, client_of, use_production_hasher
from tests.fixtures.waiting import wait_for
from tests.recordings.conftest import grant_for
from tests.totp import totp_code

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

USER_ADDRESS = "127.0.0.2"  # where the legitimate user connects from
ATTACKER = "127.0.0.3"
OTHER_ATTACKER = "127.0.0.4"
BANNER = b"SSH-2.0-hostile_0.1\r\n"
ALERT = "security.alert.connection_limit"


# --- Helpers --------------------------------------------------------------------------


def raw(port: int, source: str = ATTACKER) -> socket.socket:
    """A plain TCP connection to the gateway from ``source``."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the gateway sent before it closed the connection, or None if it is still open."""
    deadline = time.monotonic() + seconds
    received = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def threads_settle(baseline: int, timeout: float = 30) -> None:
    """The process's thread count comes back to ``baseline``: nothing the attack started is left."""

    def settled() -> bool:
        return threading.active_count() <= baseline

    if not settled():
        deadline = time.monotonic() + timeout
        while not settled():
            names = sorted(t.name for t in threading.enumerate())
            assert time.monotonic() < deadline, f"{len(names)} threads, {baseline} before the attack: {names}"
            time.sleep(0.2)


def served(gateway, user, *, source: str = USER_ADDRESS, login: str = "alice:pacs01-admin") -> None:
    """The real OpenSSH client, from ``source``, runs a command on the target through the gateway."""
    result = gateway.ssh(user, login, "echo served-$((6*7))", options=("-b", source))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"served-42" in result.stdout


def paramiko_login(port: int, user, login: str, *, source: str = USER_ADDRESS) -> paramiko.Transport:
    """A paramiko client logged in with the password and a TOTP code."""
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    TOTPDevice.objects.filter(pk=device.pk).update(last_t=-1)
    transport = paramiko.Transport(raw(port, source))
    transport.start_client(timeout=10)
    assert transport.auth_password(login, PASSWORD) == ["keyboard-interactive"]
    transport.auth_interactive(
        login, lambda title, instructions, prompts: [totp_code(bytes.fromhex(device.key))]
    )
    assert transport.is_authenticated()
    return transport


def read_until(channel: paramiko.Channel, pattern: bytes, timeout: float = 20) -> bytes:
    channel.settimeout(timeout)
    seen = b""
    while not re.search(pattern, seen):
        chunk = channel.recv(65536)
        assert chunk, f"the channel closed before {pattern!r}: {seen[-500:]!r}"
        seen += chunk
    return seen


def alerts(limit: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=ALERT, details__limit=limit))


def hold_stalled(port: int, count: int, source: str = ATTACKER) -> list[socket.socket]:
    """``count`` connections that sent an identification and then nothing (logging in, stalled)."""
    socks = []
    for _ in range(count):
        sock = raw(port, source)
        sock.sendall(BANNER)
        socks.append(sock)
    return socks


def refusal_of(port: int, source: str) -> bytes:
    """Connect and return what the gateway sent before closing (it must close at once)."""
    sock = raw(port, source)
    try:
        sock.sendall(BANNER)
        received = closed_within(sock, 10)
    finally:
        sock.close()
    assert received is not None, "the gateway kept a connection over its limit open"
    return received


def garbage_attacks(port: int) -> int:
    """Clients that are not SSH clients, or break the protocol early; how many connections."""
    rng = random.Random(7)
    openings = [
        b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n",  # a web client (health check, scanner)
        rng.randbytes(4096),  # random bytes
        b"SSH-2.0-" + b"A" * 5000,  # an identification that never ends
        BANNER + struct.pack(">IB", 0xFFFFFFF0, 4) + bytes(11),  # a packet of impossible length
    ]
    count = 0
    for opening in openings:
        sock = raw(port)
        try:
            with contextlib.suppress(OSError):  # it may hang up before it has read it all
                sock.sendall(opening)
            assert closed_within(sock, 10) is not None, f"still open after {opening[:20]!r}"
        finally:
            sock.close()
        count += 1
    # A "packet" announcing 4 GiB, then streaming: cut off at its length.
    sock = raw(port)
    try:
        sock.sendall(BANNER + struct.pack(">I", 0xFFFFFFF4) + bytes(4))
        with contextlib.suppress(OSError):  # the gateway hangs up in the middle
            for _ in range(128):
                sock.sendall(bytes(64 * 1024))
        assert closed_within(sock, 10) is not None, "still open after 8 MiB of a 4 GiB packet"
    finally:
        sock.close()
    count += 1
    # Valid packets (SSH_MSG_IGNORE, 32 KiB each) and never a key exchange: cut off once
    # past the pre-login budget.
    ignore = b"\x02" + struct.pack(">I", 32 * 1024) + bytes(32 * 1024)
    padding = 8 - (5 + len(ignore)) % 8 + 8
    packet = struct.pack(">IB", 1 + len(ignore) + padding, padding) + ignore + bytes(padding)
    sock = raw(port)
    try:
        sock.sendall(BANNER)
        with contextlib.suppress(OSError):  # the gateway hangs up in the middle
            for _ in range(64):
                sock.sendall(packet)
        assert closed_within(sock, 10) is not None, "still open after 2 MiB of SSH_MSG_IGNORE"
    finally:
        sock.close()
    count += 1
    # A client that leaves in the middle of the key exchange.
    sock = raw(port)
    sock.sendall(BANNER + struct.pack(">IB", 1020, 10) + b"\x14" + bytes(40))
    time.sleep(0.2)
    sock.close()
    count += 1
    return count


# --- Garbage and broken handshakes ------------------------------------------------------


def test_garbage_and_broken_handshakes_are_dropped_and_leave_no_thread(
    gateway, alice, bob, ssh_account, caplog
):
    grant_for(alice, bob, ssh_account)
    served(gateway, alice)  # anything started once per process is running before the count
    baseline = threading.active_count()
    caplog.set_level("INFO", logger="gateway.ssh")

    attacks = garbage_attacks(gateway.port)

    def failures():
        return [
            r
            for r in caplog.records
            if r.name.startswith("gateway.ssh")
            and r.getMessage().startswith(f"SSH handshake with {ATTACKER}")
        ]

    wait_for(lambda: len(failures()) >= attacks, what="a log line per hostile connection")
    lines = [r.getMessage() for r in failures()]
    assert len(lines) == attacks, lines
    assert all("\n" not in line and len(line) < 300 for line in lines), lines
    assert any("not an SSH client" in line for line in lines), lines
    assert any("longer than 255 bytes" in line for line in lines), lines
    assert any("packet size" in line for line in lines), lines
    assert any("without logging in" in line for line in lines), lines
    assert any("closed the connection" in line for line in lines), lines
    gateway_errors = [
        r for r in caplog.records if r.name.startswith("gateway.ssh") and r.levelname == "ERROR"
    ]
    assert not gateway_errors, [r.getMessage() for r in gateway_errors]
    served(gateway, alice)
    threads_settle(baseline)


def test_a_gateway_process_logs_one_line_per_hostile_client_and_no_traceback(
    settings, approle_settings, tmp_path, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    use_production_hasher(alice)
    workdir = tmp_path / "gw"
    workdir.mkdir()
    process = GatewayProcess(settings, workdir).start()
    try:
        attacks = garbage_attacks(process.port)
        wait_for(
            lambda: process.log().count(f"SSH handshake with {ATTACKER} failed") >= attacks,
            what="the gateway process's log lines",
        )
        served(client_of(process), alice)
        log = process.log()
    finally:
        process.stop()
    assert log.count(f"SSH handshake with {ATTACKER} failed") == attacks, log
    assert "Traceback" not in log, log
    assert "paramiko" not in log, log


# --- Stalled clients --------------------------------------------------------------------


def test_stalled_clients_are_dropped_at_the_login_timeout_and_others_are_served(
    gateway, settings, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    served(gateway, alice)
    baseline = threading.active_count()
    settings.GATEWAY_LOGIN_TIMEOUT = 5
    started = time.monotonic()
    silent = raw(gateway.port)  # TCP connect, then nothing at all
    banner_only = raw(gateway.port)
    banner_only.sendall(BANNER)  # an identification, then nothing
    mid_kex = raw(gateway.port)
    mid_kex.sendall(BANNER + struct.pack(">IB", 1020, 10) + b"\x14" + bytes(40))  # a third of a KEXINIT
    mid_auth = paramiko.Transport(raw(gateway.port))
    mid_auth.start_client(timeout=10)  # key exchange done; no authentication ever
    after_password = paramiko.Transport(raw(gateway.port))
    after_password.start_client(timeout=10)
    assert after_password.auth_password("alice", PASSWORD) == ["keyboard-interactive"]  # no code ever
    try:
        served(gateway, alice)  # while they stall
        for sock in (silent, banner_only, mid_kex):
            assert closed_within(sock, settings.GATEWAY_LOGIN_TIMEOUT + 15) is not None
        for transport in (mid_auth, after_password):
            wait_for(
                lambda t=transport: not t.is_active(), timeout=15, what="the stalled login to be dropped"
            )
        # Generous: the point is that they are dropped, not how fast.
        assert time.monotonic() - started < settings.GATEWAY_LOGIN_TIMEOUT + 20
    finally:
        for sock in (silent, banner_only, mid_kex):
            sock.close()
        mid_auth.close()
        after_password.close()
    wait_for(lambda: not gateway.server.connections, what="the dropped connections to be gone")
    threads_settle(baseline)
    served(gateway, alice)


# --- Connection limits ------------------------------------------------------------------


def test_connections_over_the_per_address_limit_are_refused_at_accept_with_one_alert(
    gateway, settings, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    settings.GATEWAY_MAX_CONNECTIONS_PER_ADDRESS = 3
    stalled = hold_stalled(gateway.port, 3)
    try:
        for _ in range(5):
            refused = refusal_of(gateway.port, ATTACKER)
            # Our identification and a plain-text disconnect: no key exchange was spent on it.
            assert refused.startswith(b"SSH-2.0-pamsite\r\n")
            assert b"too many connections from 127.0.0.3 (3)" in refused
        result = gateway.ssh(alice, "alice:pacs01-admin", "true", options=("-b", ATTACKER))
        assert result.returncode == 255
        assert "too many connections from 127.0.0.3" in result.stderr.decode()
        served(gateway, alice)  # from her own address
        event = wait_for(lambda: alerts("connections_per_address"), what="the alert")[0]
        assert event.source_ip == ATTACKER
        assert event.details["refused"] == ATTACKER and event.details["maximum"] == 3
        time.sleep(1.5)  # housekeeping writes alerts every second: no second one comes
        assert len(alerts("connections_per_address")) == 1
    finally:
        for sock in stalled:
            sock.close()
    wait_for(
        lambda: not any(c.client_ip == ATTACKER for c in list(gateway.server.connections)),
        what="the attacker's connections to end",
    )
    served(gateway, alice, source=ATTACKER)


def test_logins_in_progress_and_all_connections_are_limited_while_live_sessions_go_on(
    gateway, settings, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    transport = paramiko_login(gateway.port, alice, "alice:pacs01-admin")
    stalled = []
    try:
        shell = transport.open_session()
        shell.get_pty("xterm", 80, 24)
        shell.invoke_shell()
        shell.sendall(b"echo one-$((6*7))\n")
        read_until(shell, rb"one-42\r\n")

        settings.GATEWAY_MAX_UNAUTHENTICATED = 2
        stalled = hold_stalled(gateway.port, 2)
        wait_for(lambda: len(gateway.server.connections) == 3, what="the stalled connections")
        assert b"too many logins in progress" in refusal_of(gateway.port, OTHER_ATTACKER)
        shell.sendall(b"echo two-$((6*7))\n")
        read_until(shell, rb"two-42\r\n")  # her live session is not affected

        settings.GATEWAY_MAX_UNAUTHENTICATED = 100
        settings.GATEWAY_MAX_CONNECTIONS = 3
        assert b"the gateway is full (3 connections)" in refusal_of(gateway.port, OTHER_ATTACKER)
        shell.sendall(b"echo three-$((6*7))\n")
        read_until(shell, rb"three-42\r\n")

        for sock in stalled:
            sock.close()
        wait_for(lambda: len(gateway.server.connections) == 1, what="the stalled connections to end")
        served(gateway, alice, source=OTHER_ATTACKER)
        wait_for(lambda: alerts("unauthenticated") and alerts("connections"), what="both alerts")
    finally:
        for sock in stalled:
            sock.close()
        transport.close()


def test_a_user_at_her_session_limit_is_told_so_and_others_are_served(
    gateway, settings, alice, bob, ssh_account
):
    grant = grant_for(alice, bob, ssh_account)
    settings.GATEWAY_MAX_SESSIONS_PER_USER = 1
    first = gateway.popen(alice, "alice:pacs01-admin", tty=True)
    try:
        wait_for(
            lambda: GatewaySession.objects.filter(user=alice, ended_at__isnull=True).exists(),
            what="her first session",
        )
        result = gateway.ssh(alice, "alice:pacs01-admin", "echo second")
        assert result.returncode == 255
        assert "too many sessions for alice: 1 live; close one" in result.stderr.decode(), result.stderr
        assert b"second" not in result.stdout
        event = wait_for(lambda: alerts("sessions_per_user"), what="the alert")[0]
        assert event.actor == alice and event.details["maximum"] == 1
        # Two logins racing for the last place: the one that opens its GatewaySession second loses.
        with pytest.raises(limits.SessionLimitReached):
            limits.session_open_within_limit(
                user=alice, grant=grant, client_address="127.0.0.1", node="elsewhere"
            )
        # Someone else logs in meanwhile (bob has no grant: he gets the list of none).
        other = gateway.ssh(bob, "bob", "true", options=("-b", USER_ADDRESS))
        assert "You have no live grants" in other.stderr.decode(), other.stderr
    finally:
        first.communicate(b"exit\n", timeout=30)
    wait_for(
        lambda: not GatewaySession.objects.filter(user=alice, ended_at__isnull=True).exists(),
        what="her first session to end",
    )
    served(gateway, alice)


# --- Hundreds of channels ---------------------------------------------------------------


def test_channels_past_the_limit_are_refused_each_and_the_others_keep_working(
    gateway, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    served(gateway, alice)
    baseline = threading.active_count()
    transport = paramiko_login(gateway.port, alice, "alice:pacs01-admin")
    try:
        held, refused = [], 0
        for _ in range(MAX_CHANNELS + 200):
            try:
                held.append(transport.open_session(timeout=10))
            except paramiko.ChannelException as exc:
                assert exc.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
                refused += 1
        assert len(held) == MAX_CHANNELS and refused == 200
        # The channels it holds still work.
        for number, channel in enumerate(held[:2]):
            channel.exec_command(f"echo channel-{number}-$((6*7))")
            assert channel.makefile("rb").read() == f"channel-{number}-42\n".encode()
            assert channel.recv_exit_status() == 0
        # Those two ended: two places are free again, and no more.
        wait_for(lambda: len(transport._channels) <= MAX_CHANNELS - 2, what="the two channels to close")
        time.sleep(0.5)
        held += [transport.open_session(timeout=10), transport.open_session(timeout=10)]
        with pytest.raises(paramiko.ChannelException):
            transport.open_session(timeout=10)
        assert transport.is_active()
    finally:
        transport.close()
    refusals = AuditEvent.objects.filter(
        action="gateway.request.refused", details__what=f"more than {MAX_CHANNELS} channels open at once"
    )
    assert refusals.count() == 1  # audited once, not once per channel
    wait_for(lambda: not gateway.server.connections, what="the connection to end")
    threads_settle(baseline)
    served(gateway, alice)


# --- Floods of logins -------------------------------------------------------------------


def test_floods_of_wrong_passwords_and_keys_are_locked_out_and_others_still_log_in(
    gateway, settings, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    limit = settings.LOGIN_FAILURE_LIMIT
    # One connection, wrong password after wrong password for bob.
    transport = paramiko.Transport(raw(gateway.port, ATTACKER))
    transport.start_client(timeout=10)
    tries = 0
    try:
        while tries < 20 and transport.is_active():
            tries += 1
            try:
                transport.auth_password("bob", f"Winter2026-{tries}!")
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError):
                break
    finally:
        transport.close()
    # Each attempt audited; once the lockout started only keyboard-interactive is left: its
    # round says until when (paramiko falls back to it), then the gateway disconnects
    # (paramiko's own limit would have allowed 10).
    assert tries == limit
    assert AuditEvent.objects.filter(action="auth.login.failure", actor_username="bob").count() == limit
    assert AuditEvent.objects.filter(action="auth.lockout").exists()
    locked = gateway.ssh(bob, "bob", "true", options=("-b", ATTACKER))
    assert locked.returncode == 255 and "sign-in is locked until" in locked.stderr.decode(), locked.stderr

    # Keys that are nobody's, over and over from another address, against a few usernames: each
    # connection counts once, and the address is locked once they reach its (here lowered) limit.
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = limit
    settings.LOGIN_ADDRESS_USERNAMES = 3
    for n in range(limit):
        transport = paramiko.Transport(raw(gateway.port, OTHER_ATTACKER))
        transport.start_client(timeout=10)
        try:
            for _ in range(3):
                with pytest.raises(paramiko.AuthenticationException):
                    transport.auth_publickey(f"svc{n % 3}", paramiko.ECDSAKey.generate())
        finally:
            transport.close()
    wait_for(
        lambda: (
            AuditEvent.objects.filter(action="auth.login.failure", details__reason="keys_refused").count()
            == limit
        ),
        what="each key-spraying connection to be audited",
    )
    # Counted just after its audit row (in a transaction of its own), as the connection ends.
    wait_for(
        lambda: gateway_locked_out(username="alice", client_ip=OTHER_ATTACKER),
        what="the last key-spraying connection to be counted",
    )
    # Each key refused is audited too (svc0..2 are nobody here: "unknown_user").
    keys = AuditEvent.objects.filter(
        action="auth.login.failure", actor_username__startswith="svc", details__step="publickey"
    )
    assert keys.exclude(details__reason="keys_refused").count() == 3 * limit
    assert gateway_locked_out(username="alice", client_ip=OTHER_ATTACKER)
    refused = gateway.ssh(alice, "alice:pacs01-admin", "true", options=("-b", OTHER_ATTACKER))
    assert refused.returncode == 255, refused.stderr
    assert "sign-in from this address is locked until" in refused.stderr.decode(), refused.stderr

    # Alice, from her own address, is not locked out by either.
    served(gateway, alice)


# --- Window sizes ------------------------------------------------------------------------


def test_absurd_window_sizes_are_clamped_for_the_target_and_the_recording(
    gateway, settings, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    transport = paramiko_login(gateway.port, alice, "alice:pacs01-admin")
    sizes = []
    try:
        channel = transport.open_session()
        channel.get_pty("xterm", width=2**31, height=0, width_pixels=2**32 - 1, height_pixels=2**32 - 1)
        channel.invoke_shell()

        def size() -> str:
            marker = len(sizes)
            channel.sendall(f"echo S{marker}-$(stty size)-E\n".encode())
            found = re.search(rb"S%d-(\d+ \d+)-E" % marker, read_until(channel, rb"S%d-\d+ \d+-E" % marker))
            sizes.append(found.group(1).decode())
            return sizes[-1]

        assert size() == "24 1000"  # rows unknown (0): the default; columns 2^31: the most allowed
        channel.resize_pty(2**31, 2**31, 2**32 - 1, 2**32 - 1)
        assert size() == "1000 1000"
        channel.resize_pty(2**32 - 1, 5)  # -1 columns, as an unsigned 32-bit number
        assert size() == "5 1000"
        channel.resize_pty(0, 0)  # "unknown": nothing changes
        assert size() == "5 1000"
        channel.resize_pty(100, 30)
        assert size() == "30 100"
        channel.sendall(b"exit\n")
        channel.recv_exit_status()
    finally:
        transport.close()
    session = wait_for(
        lambda: GatewaySession.objects.filter(
            user=alice, grant__isnull=False, ended_at__isnull=False
        ).first(),
        what="the session to end",
    )
    assert session.end_reason == GatewaySession.EndReason.CLOSED
    cast = session.recordings.get(kind=Recording.Kind.TERMINAL)
    lines = (Path(settings.RECORDINGS_ROOT) / cast.path).read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["width"], header["height"]) == (1000, 24)
    resizes = [json.loads(line)[2] for line in lines[1:] if json.loads(line)[1] == "r"]
    assert resizes == ["1000x1000", "1000x5", "100x30"]


def test_blocking_calls_take_turns_on_the_pool_and_close_their_database_connections(settings, tmp_path):
    """GATEWAY_MAX_DATABASE_CONNECTIONS threads at most do the gateway's blocking work, and
    with DATABASE_CONN_MAX_AGE 0 none keeps its connection after a call."""
    import asyncio

    from django.db import connection

    from gateway.ssh.server import GatewayServer, listen_socket, load_host_key

    settings.GATEWAY_MAX_DATABASE_CONNECTIONS = 3
    sock = listen_socket("127.0.0.1", 0)
    server = GatewayServer(sock=sock, host_key=load_host_key(tmp_path / "host_key"), node="pool-test:1")
    lock = threading.Lock()
    inside = [0, 0]  # now, most at once
    threads: set[str] = set()

    def work() -> bool:
        with lock:
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
            threads.add(threading.current_thread().name)
        GatewaySession.objects.exists()  # a real query on this thread's connection
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return connection.connection is not None

    def still_open() -> bool:
        return connection.connection is not None

    async def main() -> tuple[list[bool], list[bool]]:
        during = await asyncio.gather(*(server.call(work) for _ in range(12)))
        after = await asyncio.gather(*(server.call(still_open) for _ in range(6)))
        return list(during), list(after)

    results = []
    runner = threading.Thread(target=lambda: results.append(asyncio.run(main())))
    try:
        runner.start()
        runner.join(timeout=30)
    finally:
        server.pool.shutdown(wait=True)
        sock.close()
    during, after = results[0]
    assert inside[1] == 3 and len(threads) == 3
    assert during == [True] * 12  # the query had a connection
    assert after == [False] * 6  # ... closed when its call ended
