"""What keeps hostile SSH clients from starving everyone else of the gateway.

- At the TCP accept, before any CPU is spent on a key exchange, one gateway
  process refuses a connection over ``GATEWAY_MAX_CONNECTIONS`` (all its connections),
  ``GATEWAY_MAX_CONNECTIONS_PER_ADDRESS`` (connections from that client address, logging
  in or logged in) or ``GATEWAY_MAX_UNAUTHENTICATED`` (connections still logging in). The
  client gets our SSH identification and a plain-text SSH_MSG_DISCONNECT saying why
  (OpenSSH prints it), and the socket is closed shortly after by housekeeping.
- After login, ``GATEWAY_MAX_SESSIONS_PER_USER``: a user's live GatewaySession rows in the
  database, so the limit holds across gateway processes and hosts. Over it, the client
  is disconnected with "too many sessions for alice: 10 live; close one ...".
- Every connection must be logged in ``GATEWAY_LOGIN_TIMEOUT`` seconds after its accept,
  wherever it stalls (no banner, a stalled key exchange, a stalled authentication); its
  own timer closes the ones that are not.
- ``PreauthGuard`` checks the client's bytes until login: the first line must be an SSH
  identification of at most 255 bytes (RFC 4253: clients send nothing before it), and
  at most ``PREAUTH_BYTES`` may arrive before the user has logged in.
- Each refusal is audited as ``security.alert.connection_limit``, at most once per limit
  and address (or user) per minute, the refusals in between counted in the next event, so
  a flood does not flood the audit trail. The events are written by the server's
  housekeeping task on the server's pool, never by the accept loop.

With ``--workers N`` the per-process limits apply to each process; the per-user limit is
exact across processes (the database counts).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import asyncssh
from django.conf import settings
from django.db import connection as db_connection
from django.db import transaction

from audit.services import audit_record
from gateway.ssh import asyncssh_compat
from identity.models import User
from recordings import sessions
from recordings.models import GatewaySession

logger = logging.getLogger(__name__)

IDENTIFICATION = "SSH-2.0-pamsite"
# RFC 4253 section 4.2: the identification line is at most 255 bytes with its CR LF.
BANNER_MAX = 255
# Bytes a client may send before it has logged in: its identification, the key exchange
# and its authentication requests take a few KiB (a few dozen agent keys, some KiB more).
PREAUTH_BYTES = 256 * 1024
MSG_DISCONNECT = 1
# SSH disconnect reason codes (RFC 4253 section 11.1).
DISCONNECT_TOO_MANY_CONNECTIONS = 12
DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE = 14
# A refused socket is closed this long after the refusal was sent (the client reads it first).
REFUSED_LINGER = 2.0
REFUSED_MAX_PENDING = 512
# Audit events about refusals: one per (limit, address or user) per interval, and at most
# ALERTS_PER_INTERVAL in all per interval (a flood from many addresses).
ALERT_INTERVAL = 60.0
# Advisory lock class (PostgreSQL) serialising the opening of one user's sessions.
SESSION_LIMIT_LOCK = 0x5053
ALERTS_PER_INTERVAL = 100


class SessionLimitReached(Exception):
    """The user already has as many live sessions as GATEWAY_MAX_SESSIONS_PER_USER allows."""


@dataclass(frozen=True)
class Refusal:
    """Why a connection is refused: which limit (its audit name), its value, whose it is."""

    limit: str
    maximum: int
    key: str
    message: str


def normal_address(ip: str) -> str:
    """The client address as counted: a dual-stack listener's ``::ffff:a.b.c.d`` is ``a.b.c.d``."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def admission_refusal(*, address: str, live: Iterable) -> Refusal | None:
    """Whether a new connection from ``address`` is over a limit, given the process's connections.

    ``live`` holds objects with ``client_ip`` and ``authenticated`` (GatewayConnection).
    """
    address = normal_address(address)
    total = from_address = logging_in = 0
    for connection in live:
        total += 1
        if normal_address(connection.client_ip) == address:
            from_address += 1
        if not connection.authenticated:
            logging_in += 1
    if total >= settings.GATEWAY_MAX_CONNECTIONS:
        maximum = settings.GATEWAY_MAX_CONNECTIONS
        return Refusal(
            "connections", maximum, address, f"the gateway is full ({maximum} connections); try again later"
        )
    if from_address >= settings.GATEWAY_MAX_CONNECTIONS_PER_ADDRESS:
        maximum = settings.GATEWAY_MAX_CONNECTIONS_PER_ADDRESS
        return Refusal(
            "connections_per_address",
            maximum,
            address,
            f"too many connections from {address} ({maximum}); close one and try again",
        )
    if logging_in >= settings.GATEWAY_MAX_UNAUTHENTICATED:
        maximum = settings.GATEWAY_MAX_UNAUTHENTICATED
        return Refusal(
            "unauthenticated",
            maximum,
            address,
            f"too many logins in progress at the gateway ({maximum}); try again in a minute",
        )
    return None


def user_refusal(*, user: User) -> Refusal | None:
    """Whether the user already has GATEWAY_MAX_SESSIONS_PER_USER live sessions (any gateway process)."""
    maximum = settings.GATEWAY_MAX_SESSIONS_PER_USER
    live = GatewaySession.objects.filter(user=user, ended_at__isnull=True).count()
    if live < maximum:
        return None
    return Refusal(
        "sessions_per_user",
        maximum,
        user.username,
        f"too many sessions for {user.username}: {live} live; close one and connect again",
    )


@transaction.atomic
def session_open_within_limit(*, user: User, grant, client_address: str, node: str) -> GatewaySession:
    """``sessions.session_open`` unless the user is at her session limit (SessionLimitReached).

    A lock on the user's sessions is held while her live sessions are counted and the new
    one is created, so two logins at once in two gateway processes cannot both take the last
    place. It is an advisory lock of its own, not the user's row: a transaction that holds the
    audit trail's head and then updates the user (a web login) would deadlock with this one,
    which takes the head after (SQLite runs one writer at a time and needs no lock).
    """
    if db_connection.vendor == "postgresql":
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [SESSION_LIMIT_LOCK, user.pk % 2**31])
    refusal = user_refusal(user=user)
    if refusal is not None:
        raise SessionLimitReached(refusal.message)
    return sessions.session_open(
        user=user,
        grant=grant,
        protocol=GatewaySession.Protocol.SSH,
        client_address=client_address,
        node=node,
    )


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def refusal_bytes(message: str) -> bytes:
    """Our identification and an unencrypted SSH_MSG_DISCONNECT (valid before any key exchange)."""
    payload = (
        bytes([MSG_DISCONNECT])
        + struct.pack(">I", DISCONNECT_TOO_MANY_CONNECTIONS)
        + _ssh_string(message.encode()[:400])
        + _ssh_string(b"en")
    )
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    packet = struct.pack(">IB", 1 + len(payload) + padding, padding) + payload + bytes(padding)
    return (IDENTIFICATION + "\r\n").encode() + packet


class PreauthGuard:
    """What a client may send before it has logged in, checked as its bytes arrive.

    The first line must look like an SSH identification of at most BANNER_MAX bytes (RFC
    4253: clients send nothing before it), and at most PREAUTH_BYTES may arrive before
    login. ``check(data)`` is False once the client broke a rule; ``refusal`` says which.
    """

    __slots__ = ("_banner_done", "_head", "_received", "refusal")

    def __init__(self) -> None:
        self._head = b""
        self._banner_done = False
        self._received = 0
        self.refusal = ""

    def check(self, data: bytes) -> bool:
        if self.refusal:
            return False
        self._received += len(data)
        if not self._banner_done:
            self._check_banner(data)
        if not self.refusal and self._received > PREAUTH_BYTES:
            self.refusal = f"sent more than {PREAUTH_BYTES // 1024} KiB without logging in"
        return not self.refusal

    def _check_banner(self, data: bytes) -> None:
        head = (self._head + data)[: BANNER_MAX + 1]
        if not (head.startswith(b"SSH-") or b"SSH-".startswith(head)):
            self.refusal = f"not an SSH client (it sent {head[:32]!r})"
            return
        end = head.find(b"\n")
        if end >= 0:
            self._banner_done = True
            self._head = b""
        elif len(head) > BANNER_MAX:
            self.refusal = f"an SSH identification longer than {BANNER_MAX} bytes ({head[:32]!r}...)"
        else:
            self._head = head

    @staticmethod
    def kex_done(conn) -> bool:
        """Whether the connection got past its first key exchange."""
        return asyncssh_compat.kex_done(conn)

    def failure_reason(self, exc: BaseException | None) -> str:
        """One short line saying why a handshake failed (the guard's reason first)."""
        why = self.refusal
        if not why:
            if exc is None or isinstance(
                exc, (asyncssh.ConnectionLost, ConnectionResetError, BrokenPipeError, EOFError)
            ):
                why = "the client closed the connection"
            else:
                why = getattr(exc, "reason", "") or str(exc) or type(exc).__name__
        why = " ".join(why.split())
        return why if len(why) <= 200 else why[:200] + "..."


class _Alerts:
    """Rate-limited ``security.alert.connection_limit`` events, written by housekeeping."""

    def __init__(self, node: str):
        self.node = node
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._window_start = 0.0
        self._window_count = 0
        self._pending: deque = deque(maxlen=ALERTS_PER_INTERVAL * 2)

    def refused(self, refusal: Refusal, *, source_ip: str, user: User | None = None) -> bool:
        """Count a refusal; True when it is the one to audit (and log) for its key this minute."""
        now = time.monotonic()
        key = (refusal.limit, refusal.key)
        with self._lock:
            if now - self._window_start >= ALERT_INTERVAL:
                self._window_start, self._window_count = now, 0
                if len(self._last) > 10_000:  # an attack from many addresses: forget the old ones
                    self._last = {k: t for k, t in self._last.items() if now - t < ALERT_INTERVAL}
            last = self._last.get(key)
            if (
                last is not None and now - last < ALERT_INTERVAL
            ) or self._window_count >= ALERTS_PER_INTERVAL:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            self._window_count += 1
            before = self._suppressed.pop(key, 0)
            self._pending.append((refusal, source_ip, user, before))
        return True

    def write_pending(self) -> int:
        """Write the queued events to the audit trail (housekeeping, on the pool); how many."""
        written = 0
        while True:
            with self._lock:
                if not self._pending:
                    return written
                refusal, source_ip, user, before = self._pending.popleft()
            try:
                with transaction.atomic():
                    audit_record(
                        action="security.alert.connection_limit",
                        actor=user,
                        source_ip=source_ip,
                        details={
                            "limit": refusal.limit,
                            "maximum": refusal.maximum,
                            "refused": refusal.key,
                            "refused_before": before,
                            "node": self.node,
                            "message": refusal.message,
                        },
                    )
                written += 1
            except Exception:
                logger.exception("Could not audit a gateway connection refusal (%s)", refusal.limit)


class Limiter:
    """One gateway process's limits: admission at accept, login deadlines, the user limit."""

    def __init__(self, *, node: str):
        self.alerts = _Alerts(node)
        self._refused: deque[tuple[float, socket.socket]] = deque()

    # --- The accept loop ---------------------------------------------------------------

    def admit(self, sock: socket.socket, address: tuple, live: Iterable) -> bool:
        """True if the connection may go on; else it is refused (told why, closed soon)."""
        refusal = admission_refusal(address=address[0], live=live)
        if refusal is None:
            return True
        self._refuse_socket(sock, refusal.message)
        if self.alerts.refused(refusal, source_ip=normal_address(address[0])):
            logger.warning("Refusing connections from %s: %s", address[0], refusal.message)
        return False

    def _refuse_socket(self, sock: socket.socket, message: str) -> None:
        try:
            sock.setblocking(False)
            sock.send(refusal_bytes(message))  # ~150 bytes into an empty send buffer: never blocks
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self._refused.append((time.monotonic() + REFUSED_LINGER, sock))
        while len(self._refused) > REFUSED_MAX_PENDING:
            _close_refused(self._refused.popleft()[1])

    def sweep(self) -> None:
        """Close refused sockets whose time is up (housekeeping, a few times a second)."""
        now = time.monotonic()
        while self._refused and self._refused[0][0] <= now:
            _close_refused(self._refused.popleft()[1])

    def close(self) -> None:
        """The server stops: close every refused socket still lingering."""
        while self._refused:
            _close_refused(self._refused.popleft()[1])

    # --- Logins (on the server's pool) ---------------------------------------------------

    def user_refusal(self, *, user: User, client_ip: str) -> str:
        """At login: the message for a user at her session limit (audited), or ""."""
        refusal = user_refusal(user=user)
        if refusal is None:
            return ""
        self._user_refused(refusal, user=user, client_ip=client_ip)
        return refusal.message

    def session_open(self, *, user: User, grant, client_address: str, node: str) -> GatewaySession:
        """Open the user's GatewaySession within her limit (SessionLimitReached, audited, if over)."""
        try:
            return session_open_within_limit(user=user, grant=grant, client_address=client_address, node=node)
        except SessionLimitReached as exc:
            refusal = Refusal(
                "sessions_per_user", settings.GATEWAY_MAX_SESSIONS_PER_USER, user.username, str(exc)
            )
            self._user_refused(refusal, user=user, client_ip=client_address)
            raise

    def _user_refused(self, refusal: Refusal, *, user: User, client_ip: str) -> None:
        if self.alerts.refused(refusal, source_ip=client_ip, user=user):
            logger.warning("Refusing a session of %s from %s: %s", user.username, client_ip, refusal.message)


def _close_refused(sock: socket.socket) -> None:
    # Read what the client sent first: closing with unread data would reset the connection
    # and could discard our message before the client reads it.
    with contextlib.suppress(OSError):
        for _ in range(8):
            if not sock.recv(65536):
                break
    sock.close()
