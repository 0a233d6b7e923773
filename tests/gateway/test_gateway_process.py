"""The gateway as its own process (``manage.py ssh_gateway``), beside the test process that
plays the web app: enforcement through the database only, and recovery after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from access import services
from audit.chain import verify_chain
from audit.models import AuditEvent
from gateway.ssh.server import WorkerLoads
from recordings.models import GatewaySession, Recording
from recordings.recorder import verify_recording
from recordings.services import session_terminate
from tests.fixtures.gateway_process import GatewayProcess, client_of, use_production_hasher, wait_ended
from tests.recordings.conftest import grant_for, live_session

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_terminating_from_the_web_closes_a_session_of_another_process(
    gateway_process, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    client = client_of(gateway_process).popen(alice, "alice:pacs01-admin", tty=True)
    client.stdin.write(b"echo ready-$((2+3))\n")
    client.stdin.flush()
    session = live_session(alice)
    time.sleep(0.5)
    session_terminate(session=session, acting_user=bob, reason="suspicious activity")
    asked = time.monotonic()
    out, _ = client.communicate(timeout=15)
    assert time.monotonic() - asked < 5
    text = out.decode(errors="replace")
    assert "ready-5" in text and "terminated by bob" in text and "suspicious activity" in text
    session = wait_ended(session)
    assert session.end_reason == GatewaySession.EndReason.TERMINATED
    for recording in session.recordings.all():
        assert recording.finalized_at is not None
        assert verify_recording(recording, root=gateway_process.recordings)[0]


def test_an_expiring_grant_cuts_the_session_with_a_message(gateway_process, alice, bob, ssh_account):
    from datetime import timedelta

    from django.utils import timezone

    from access.models import Grant

    grant = grant_for(alice, bob, ssh_account)
    client = client_of(gateway_process).popen(alice, "alice:pacs01-admin", tty=True)
    session = live_session(alice)
    # The grant's time is up (the worker has not swept it yet): the gateway cuts anyway.
    Grant.objects.filter(pk=grant.pk).update(ends_at=timezone.now() + timedelta(seconds=1))
    out, _ = client.communicate(timeout=15)
    assert "expired" in out.decode(errors="replace")
    assert wait_ended(session).end_reason == GatewaySession.EndReason.GRANT_ENDED
    services.grants_expire_due()


def test_a_gateway_killed_with_sigkill_has_its_recordings_sealed_at_the_next_start(
    gateway_process, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    client = client_of(gateway_process).popen(alice, "alice:pacs01-admin", tty=True)
    client.stdin.write(b"echo before-the-crash-$((40+2))\n")
    client.stdin.flush()
    session = live_session(alice)
    cast = session.recordings.get(kind=Recording.Kind.TERMINAL)
    path = gateway_process.recordings / cast.path
    deadline = time.monotonic() + 10
    while b"before-the-crash-42" not in path.read_bytes():  # written within a second, unflushed by close
        assert time.monotonic() < deadline, "the output was not written within the flush interval"
        time.sleep(0.2)
    gateway_process.stop(signal.SIGKILL)
    client.wait(timeout=15)
    session.refresh_from_db()
    assert session.ended_at is None  # nobody closed it

    gateway_process.start()  # same host name, new process: the dead one's sessions are recovered
    session = wait_ended(session)
    assert session.end_reason == GatewaySession.EndReason.INTERRUPTED
    for recording in session.recordings.all():
        assert recording.interrupted and recording.finalized_at is not None
        ok, why = verify_recording(recording, root=gateway_process.recordings)
        assert ok, why
    played = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "asciinema"), "cat", str(path)], capture_output=True, check=True
    )
    assert b"before-the-crash-42" in played.stdout
    # The recovery is audited like any end, and nothing in the trail was lost or broken.
    ended = AuditEvent.objects.get(action="gateway.session.ended", object_id=str(session.pk))
    assert ended.details["reason"] == GatewaySession.EndReason.INTERRUPTED
    assert verify_chain().ok, verify_chain().summary
    # The restarted gateway serves new sessions at once.
    done = client_of(gateway_process).ssh(alice, "alice:pacs01-admin", "echo after-the-crash-$((6*7))")
    assert done.returncode == 0 and b"after-the-crash-42" in done.stdout, done.stderr


def test_worker_loads_are_shared_across_fork_and_a_gone_worker_is_never_the_least_loaded():
    loads = WorkerLoads(3)
    pids = []
    for slot, count in enumerate((4, 2, 3)):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            loads.slot = slot
            loads.publish(count)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    assert loads.counts() == (4, 2, 3)  # what each forked worker published
    loads.slot = 0
    assert loads.ahead()  # 4 > 2: leave a new connection to the others first
    loads.slot = 1
    assert not loads.ahead()
    loads.retire(1)  # the worker with 2 has exited
    loads.slot = 2
    assert not loads.ahead()  # 3 is now the least of the live ones
    assert WorkerLoads(2).ahead() is False  # the parent (no slot) never defers


def test_sessions_spread_evenly_over_worker_processes_and_are_all_cut_when_the_grant_is_revoked(
    settings, approle_settings, tmp_path, alice, bob, ssh_account
):
    """Six sessions opened one after the other on two workers: three each (the least loaded
    worker takes a new connection), and a revocation cuts them all within 5 s."""
    use_production_hasher(alice)
    (tmp_path / "gw").mkdir()
    process = GatewayProcess(settings, tmp_path / "gw")
    process.workers = 2
    process.start()
    try:
        grant = grant_for(alice, bob, ssh_account)
        clients = []
        for number in range(1, 7):
            # One after the other: a code is spent by each login (the helper re-arms it).
            clients.append(client_of(process).popen(alice, "alice:pacs01-admin", tty=True))
            deadline = time.monotonic() + 30
            while GatewaySession.objects.filter(user=alice, ended_at__isnull=True).count() < number:
                assert time.monotonic() < deadline, "the session did not start:\n" + process.log()
                time.sleep(0.1)
        nodes = Counter(GatewaySession.objects.filter(user=alice).values_list("gateway_node", flat=True))
        assert all(node.startswith("gw-test-node:") for node in nodes)
        assert sorted(nodes.values()) == [3, 3], nodes
        services.grant_revoke(grant=grant, acting_user=bob, reason="end of maintenance window")
        revoked = time.monotonic()
        for client in clients:
            out, _ = client.communicate(timeout=15)
            assert b"revoked by bob" in out
        assert time.monotonic() - revoked < 5
    finally:
        process.stop()
    assert not GatewaySession.objects.filter(user=alice, ended_at__isnull=True).exists()


def test_many_sessions_ending_at_once_take_turns_for_the_database(
    settings, approle_settings, tmp_path, alice, bob, ssh_account, alice_key
):
    """Clients all gone at once (a network outage): every session is ended and every recording
    sealed, with at most GATEWAY_MAX_DATABASE_CONNECTIONS database connections at a time."""
    from django.db import connection

    (tmp_path / "gw").mkdir()
    process = GatewayProcess(settings, tmp_path / "gw")
    application = f"pamsite-gw-test-{process.port}"
    process.env.update(
        GATEWAY_MAX_DATABASE_CONNECTIONS="2",
        GATEWAY_MAX_SESSIONS_PER_USER="50",
        PGAPPNAME=application,  # libpq names the gateway's connections in pg_stat_activity
    )
    process.start()
    sessions = 12
    peak = [0]
    stop = threading.Event()
    clients: list[subprocess.Popen] = []
    sampler: threading.Thread | None = None

    def sample() -> None:
        from django.db import connections

        try:
            with connections["default"].cursor() as cursor:
                while not stop.is_set():
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application]
                    )
                    peak[0] = max(peak[0], cursor.fetchone()[0])
                    time.sleep(0.005)
        finally:
            connections.close_all()

    try:
        grant_for(alice, bob, ssh_account)
        for number in range(1, sessions + 1):
            clients.append(client_of(process).popen(alice, "alice:pacs01-admin", "cat", key=alice_key))
            deadline = time.monotonic() + 30
            while GatewaySession.objects.filter(user=alice, ended_at__isnull=True).count() < number:
                assert time.monotonic() < deadline, "the session did not start:\n" + process.log()
                time.sleep(0.05)
        for client in clients:
            client.stdin.write(b"some output to record\n")
            client.stdin.flush()
        time.sleep(1)
        sampler = threading.Thread(target=sample) if connection.vendor == "postgresql" else None
        if sampler is not None:
            sampler.start()
            time.sleep(0.2)
        for client in clients:  # every client gone in the same instant
            client.kill()
        deadline = time.monotonic() + 60
        while GatewaySession.objects.filter(user=alice, ended_at__isnull=True).exists():
            assert time.monotonic() < deadline, "sessions were left live:\n" + process.log()
            time.sleep(0.1)
        while Recording.objects.filter(session__user=alice, finalized_at__isnull=True).exists():
            assert time.monotonic() < deadline, "recordings were left unsealed:\n" + process.log()
            time.sleep(0.1)
    finally:
        stop.set()
        if sampler is not None:
            sampler.join()
        for client in clients:
            client.kill()
            client.wait()
        process.stop()
    ended = GatewaySession.objects.filter(user=alice)
    assert ended.count() == sessions
    assert set(ended.values_list("end_reason", flat=True)) == {GatewaySession.EndReason.CLOSED}
    for session in ended:
        for recording in session.recordings.all():
            assert verify_recording(recording, root=process.recordings)[0]
    assert "Could not end session" not in process.log()
    if sampler is not None:
        # The slots, plus the housekeeping thread's own connection.
        assert 1 <= peak[0] <= 3, f"{peak[0]} database connections at once"
