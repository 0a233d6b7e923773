"""What keeps hostile SSH clients from starving everyone else of the gateway.

- At the TCP accept, before paramiko spends any CPU on a key exchange, one gateway
  process refuses a connection over ``GATEWAY_MAX_CONNECTIONS`` (all its connections),
  ``GATEWAY_MAX_CONNECTIONS_PER_ADDRESS`` (connections from that client address, logging
  in or logged in) or ``GATEWAY_MAX_UNAUTHENTICATED`` (connections still logging in). The
  client gets our SSH identification and a plain-text SSH_MSG_DISCONNECT saying why
  (OpenSSH prints it), and the socket is closed shortly after without a thread of its own.
- After login, ``GATEWAY_MAX_SESSIONS_PER_USER``: a user's live Session rows in the
  database, so the limit holds across gateway processes and hosts. Over it, the client
  is disconnected with "too many sessions for alice: 10 live; close one ...".
- Every connection must be logged in ``GATEWAY_LOGIN_TIMEOUT`` seconds after its accept,
  wherever it stalls (no banner, a stalled key exchange, a stalled authentication);
  ``Limiter.sweep`` closes the ones that are not, which frees their threads.
- ``ClientSocket`` wraps the client's socket for paramiko: the first line must be an SSH
  identification of at most 255 bytes (RFC 4253: clients send nothing before it), and
  until the user has logged in at most ``PREAUTH_BYTES`` are read, in small reads, so a
  "packet" announcing 4 GiB cannot make paramiko buffer it.
- Each refusal is audited as ``security.alert.connection_limit``, at most once per limit
  and address (or user) per minute, the refusals in between counted in the next event, so
  a flood does not flood the audit trail. The events are written by the server's
  housekeeping thread, never by the accept loop.

- ``database_slot()``: at most ``GATEWAY_MAX_DATABASE_CONNECTIONS`` threads of a process
  use the database at once (each thread has a connection of its own), and each closes its
  connection when its slot ends. Without it, hundreds of connections ending together
  (a network outage, a gateway restart of the clients' side) opened hundreds of database
  connections, past PostgreSQL's ``max_connections``, and sessions could not be ended.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paramiko
from django.conf import settings
from django.db import connection as db_connection
from django.db import connections as db_connections
from django.db import transaction
from paramiko.common import cMSG_DISCONNECT

from audit.services import audit_record
from identity.models import User
from sessions import upstream
from sessions.gateway import records
from sessions.models import Session

logger = logging.getLogger(__name__)

IDENTIFICATION = "SSH-2.0-pamsite"
# RFC 4253 section 4.2: the identification line is at most 255 bytes with its CR LF.
BANNER_MAX = 255
# Bytes a client may send before it has logged in: its identification, the key exchange
# and its authentication requests take a few KiB (a few dozen agent keys, some KiB more).
PREAUTH_BYTES = 256 * 1024
PREAUTH_READ = 16 * 1024
# SSH disconnect reason codes (RFC 4253 section 11.1).
DISCONNECT_TOO_MANY_CONNECTIONS = 12
DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE = 14
# A refused socket is closed this long after the refusal was sent (the client reads it first).
REFUSED_LINGER = 2.0
REFUSED_MAX_PENDING = 512
# The accept loop closes overdue logins this often; paramiko and the connection's own
# deadline usually end them first, this is the backstop.
SWEEP_INTERVAL = 0.5
LOGIN_GRACE = 2.0
# Audit events about refusals: one per (limit, address or user) per interval, and at most
# ALERTS_PER_INTERVAL in all per interval (a flood from many addresses).
ALERT_INTERVAL = 60.0
# Advisory lock class (PostgreSQL) serialising the opening of one user's sessions.
SESSION_LIMIT_LOCK = 0x5053
ALERTS_PER_INTERVAL = 100


_database_slots: threading.BoundedSemaphore | None = None
_database_slots_size = 0
_database_slot_depth = threading.local()
_database_slots_lock = threading.Lock()


@contextlib.contextmanager
def database_slot():
    """Hold one of the process's database slots; the thread's connection is closed after.

    Re-entrant within a thread (a call that needs the database inside another one), so
    nested use never waits on itself. Never hold a slot while waiting for another thread.
    """
    global _database_slots, _database_slots_size
    depth = getattr(_database_slot_depth, "value", 0)
    if depth:
        _database_slot_depth.value = depth + 1
        try:
            yield
        finally:
            _database_slot_depth.value = depth
        return
    size = settings.GATEWAY_MAX_DATABASE_CONNECTIONS
    with _database_slots_lock:
        if _database_slots is None or _database_slots_size != size:
            _database_slots, _database_slots_size = threading.BoundedSemaphore(size), size
        slots = _database_slots
    slots.acquire()
    _database_slot_depth.value = 1
    try:
        yield
    finally:
        _database_slot_depth.value = 0
        try:
            db_connections.close_all()
        finally:
            slots.release()


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
    live = Session.objects.filter(user=user, ended_at__isnull=True).count()
    if live < maximum:
        return None
    return Refusal(
        "sessions_per_user",
        maximum,
        user.username,
        f"too many sessions for {user.username}: {live} live; close one and connect again",
    )


@transaction.atomic
def session_open_within_limit(*, user: User, grant, client_address: str, node: str) -> Session:
    """``records.session_open`` unless the user is at her session limit (SessionLimitReached).

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
    return records.session_open(user=user, grant=grant, client_address=client_address, node=node)


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def refusal_bytes(message: str) -> bytes:
    """Our identification and an unencrypted SSH_MSG_DISCONNECT (valid before any key exchange)."""
    payload = (
        bytes([cMSG_DISCONNECT[0]])
        + struct.pack(">I", DISCONNECT_TOO_MANY_CONNECTIONS)
        + _ssh_string(message.encode()[:400])
        + _ssh_string(b"en")
    )
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    packet = struct.pack(">IB", 1 + len(payload) + padding, padding) + payload + bytes(padding)
    return (IDENTIFICATION + "\r\n").encode() + packet


def disconnect(transport: paramiko.Transport, message: str, reason: int) -> None:
    """Send SSH_MSG_DISCONNECT with ``message`` (the client prints it) and close the transport.

    Called on the transport's own thread (from authentication), as paramiko's own
    "no more auth methods" disconnect is.
    """
    m = paramiko.Message()
    m.add_byte(cMSG_DISCONNECT)
    m.add_int(reason)
    m.add_string(message[:400])
    m.add_string("en")
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        transport._send_message(m)
    transport.close()


class ClientSocket:
    """The client's socket as paramiko reads it: no garbage before the banner, no huge reads.

    Until the user has logged in (``logged_in()``), the first line must look like an SSH
    identification and at most PREAUTH_BYTES may arrive, read PREAUTH_READ at a time;
    anything else ends the connection with ``refusal`` saying why. Once logged in, reads
    go straight to the socket (no wrapper on the relay's path).
    """

    def __init__(self, sock: socket.socket, *, logged_in: Callable[[], bool]):
        self._sock = sock
        self._logged_in = logged_in
        self._head = b""
        self._banner_done = False
        self._received = 0
        self.refusal = ""
        self.eof = False  # the client closed its side
        # Paramiko calls these often: bound to the socket's own methods, not looked up each time.
        self.send = sock.send
        self.sendall = sock.sendall
        self.settimeout = sock.settimeout
        self.gettimeout = sock.gettimeout
        self.shutdown = sock.shutdown
        self.close = sock.close
        self.fileno = sock.fileno
        self.getpeername = sock.getpeername
        self.getsockname = sock.getsockname

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(min(size, PREAUTH_READ))
        if not data:
            self.eof = True
            return data
        self._received += len(data)
        if not self._banner_done:
            self._check_banner(data)
        if self._received > PREAUTH_BYTES:
            if self._logged_in():
                # From now on paramiko reads the socket without this guard, read ahead.
                self.recv = upstream.ReadAhead(self._sock).recv
            else:
                self._refuse(f"sent more than {PREAUTH_BYTES // 1024} KiB without logging in")
        return data

    def _check_banner(self, data: bytes) -> None:
        head = (self._head + data)[: BANNER_MAX + 1]
        if not (head.startswith(b"SSH-") or b"SSH-".startswith(head)):
            self._refuse(f"not an SSH client (it sent {head[:32]!r})")
        end = head.find(b"\n")
        if end >= 0:
            self._banner_done = True
            self._head = b""
        elif len(head) > BANNER_MAX:
            self._refuse(f"an SSH identification longer than {BANNER_MAX} bytes ({head[:32]!r}...)")
        else:
            self._head = head

    def _refuse(self, why: str) -> None:
        self.refusal = self.refusal or why
        # EOFError: what paramiko's transport thread expects of a peer that is gone (an
        # OSError must carry an errno for its handler).
        raise EOFError(why)


# Paramiko logs each failed handshake (scanners, garbage, clients that hang up) as ERRORs
# with a traceback, one record per line; the gateway logs one line itself. Its transports
# log here instead: nowhere, unless paramiko's logger is set to DEBUG.
_QUIET = logging.Logger("sessions.gateway.paramiko", logging.CRITICAL)


def quiet(transport: paramiko.Transport) -> None:
    """Silence a user connection's paramiko transport (see _QUIET)."""
    if not logging.getLogger("paramiko").isEnabledFor(logging.DEBUG):
        transport.logger = _QUIET
        transport.packetizer.set_log(_QUIET)


def failure_reason(transport: paramiko.Transport, exc: BaseException) -> str:
    """One short line saying why a handshake failed (the ClientSocket's reason first)."""
    why = getattr(transport.sock, "refusal", "")
    gone = isinstance(exc, (EOFError, ConnectionResetError, BrokenPipeError)) or getattr(
        transport.sock, "eof", False
    )
    if not why and gone:
        why = "the client closed the connection"
    why = why or str(exc) or type(exc).__name__
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
        """Write the queued events to the audit trail (housekeeping thread); how many."""
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
        self._last_sweep = 0.0

    # --- The accept loop's thread ---------------------------------------------------

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

    def sweep(self, live: Iterable) -> None:
        """Close refused sockets whose time is up and connections not logged in in time."""
        now = time.monotonic()
        while self._refused and self._refused[0][0] <= now:
            _close_refused(self._refused.popleft()[1])
        if now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = now
        timeout = settings.GATEWAY_LOGIN_TIMEOUT
        for connection in live:
            transport = connection.transport
            if connection.authenticated or now - connection.opened <= timeout + LOGIN_GRACE:
                continue
            if not transport.is_active():
                continue
            sock = transport.sock
            if isinstance(sock, ClientSocket) and not sock.refusal:
                sock.refusal = f"did not log in within {timeout} s"
            if transport.initial_kex_done:
                logger.info("Login from %s timed out after %s s", connection.client_ip, timeout)
            upstream.close_transport(transport)

    def close(self) -> None:
        """The server stops: close every refused socket still lingering."""
        while self._refused:
            _close_refused(self._refused.popleft()[1])

    # --- Connection threads -----------------------------------------------------------

    def user_refusal(self, *, user: User, client_ip: str) -> str:
        """At login: the message for a user at her session limit (audited), or ""."""
        refusal = user_refusal(user=user)
        if refusal is None:
            return ""
        self._user_refused(refusal, user=user, client_ip=client_ip)
        return refusal.message

    def session_open(self, *, user: User, grant, client_address: str, node: str) -> Session:
        """Open the user's Session within her limit (SessionLimitReached, audited, if over)."""
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
