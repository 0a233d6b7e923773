"""The gateway process: host key, listener, connection threads, housekeeping, workers.

One process accepts connections and serves each on its own thread (paramiko is
threaded). Its housekeeping loop, four times a second, flushes due recordings (a killed
gateway loses at most a quarter of a second; live viewers lag as little) and, once a
second, asks the database which of its live
sessions must end — grant expired, checked in or revoked, or terminated from the web —
and cuts them. That query is the only coupling with the web app and the worker, so any
number of gateway processes on any number of hosts can run beside them.

``GATEWAY_WORKERS`` > 1 forks that many processes sharing the listening port
(SO_REUSEPORT: the kernel spreads connections), because one Python process relays on
one core.

At start, recordings left unfinalised by a gateway process of this host that is no
longer running (killed with SIGKILL, power cut) are sealed and marked interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import paramiko
from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from sessions.gateway import limits, records
from sessions.gateway.connection import GatewayConnection
from sessions.models import Session
from sessions.recorder import finalize_interrupted, flush_due
from sessions.upstream import generate_keypair
from vault.client import reset_client

logger = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 0.25  # recordings flushed at least this often (live viewers, crashes)
BYTES_INTERVAL = 10.0


class GatewayError(Exception):
    """The gateway cannot start: the message says what to fix."""


def host_name() -> str:
    return settings.GATEWAY_NODE or socket.gethostname()


def node_name(pid: int | None = None) -> str:
    """This process's name in Session rows: ``host:pid``."""
    return f"{host_name()}:{pid or os.getpid()}"


def load_host_key(path: Path) -> paramiko.PKey:
    """The gateway's Ed25519 host key, created (mode 0600) on first start and kept after."""
    path = Path(path)
    if not path.exists():
        private, public = generate_keypair()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another worker created it first
        except OSError as exc:
            raise GatewayError(f"Cannot create the gateway host key {path}: {exc.strerror or exc}") from None
        else:
            with os.fdopen(fd, "w") as f:
                f.write(private)
            path.with_name(path.name + ".pub").write_text(public + " pamsite-gateway\n")
            logger.info("Created the gateway host key %s", path)
    try:
        return paramiko.Ed25519Key(filename=str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise GatewayError(
            f"Cannot read the gateway host key {path} ({exc}): it must be an unencrypted OpenSSH Ed25519 key"
        ) from None


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    # An explicit ":2222" means every address, as sshd's ListenAddress does.
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104  # nosec B104
    try:
        number = int(port)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise GatewayError(f"GATEWAY_LISTEN must be host:port (e.g. 127.0.0.1:2222), not {value!r}")
    return host, number


def listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GatewayError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(256)
    return sock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_processes() -> int:
    """Seal recordings and end sessions of this host's gateway processes that are gone."""
    close_old_connections()
    prefix = host_name() + ":"
    nodes = set(
        Session.objects.filter(ended_at__isnull=True, gateway_node__startswith=prefix).values_list(
            "gateway_node", flat=True
        )
    )
    recovered = 0
    for node in nodes:
        pid = node[len(prefix) :]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        recovered += finalize_interrupted(gateway_node=node)
        for session in Session.objects.filter(gateway_node=node, ended_at__isnull=True):
            records.session_end(
                session=session,
                reason=Session.EndReason.INTERRUPTED,
                message="The gateway process relaying it stopped.",
            )
        logger.warning("Recovered the sessions of gateway process %s, which is gone", node)
    return recovered


class GatewayServer:
    """Accept SSH connections on ``sock`` and serve them until ``stop()``."""

    def __init__(self, *, sock: socket.socket, host_key: paramiko.PKey, node: str | None = None):
        self.sock = sock
        self.host_key = host_key
        self.node = node or node_name()
        self.ciphers = tuple(settings.GATEWAY_CIPHERS)
        self.connections: set[GatewayConnection] = set()
        # Sessions whose connection ended without saving their end (the database was busy
        # or down then): housekeeping ends them (end_orphans).
        self.unended: dict[int, Session] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Connection limits and login deadlines (hostile clients): sessions.gateway.limits.
        self.limiter = limits.Limiter(node=self.node)

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def serve_forever(self) -> None:
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
        self.sock.settimeout(0.5)
        while not self._stopping.is_set():
            with self._lock:
                live = list(self.connections)
            self.limiter.sweep(live)  # logins past their deadline, refused sockets to close
            try:
                client, address = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                time.sleep(0.05)
                continue
            # Over a limit: refused here, before a thread or a key exchange is spent on it.
            with self._lock:
                live = list(self.connections)
            if not self.limiter.admit(client, address, live):
                continue
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                connection = GatewayConnection(
                    sock=client,
                    address=address,
                    host_key=self.host_key,
                    node=self.node,
                    ciphers=self.ciphers,
                    limiter=self.limiter,
                )
            except Exception:
                logger.exception("Could not set up a connection from %s", address[0])
                client.close()
                continue
            with self._lock:
                self.connections.add(connection)
            threading.Thread(
                target=self._serve, args=(connection,), name=f"conn-{address[0]}", daemon=True
            ).start()
        self._shutdown()

    def _serve(self, connection: GatewayConnection) -> None:
        try:
            connection.serve()
        finally:
            session = connection.session
            with self._lock:
                self.connections.discard(connection)
                if session is not None and session.ended_at is None:
                    self.unended[session.pk] = session
            connections.close_all()

    def stop(self) -> None:
        self._stopping.set()

    def _shutdown(self) -> None:
        """Stopping (SIGTERM): tell every user, end every session cleanly."""
        self.sock.close()
        self.limiter.close()
        with self._lock:
            live = list(self.connections)
        for connection in live:
            connection.cut(
                Session.EndReason.CLOSED, "The gateway is shutting down; connect again in a minute."
            )
        deadline = time.monotonic() + 10
        for connection in live:
            connection.finished.wait(max(0.1, deadline - time.monotonic()))
        connections.close_all()

    def _housekeeping(self) -> None:
        last_check = last_bytes = 0.0
        while not self._stopping.wait(HOUSEKEEPING_INTERVAL):
            try:
                flush_due()
                now = time.monotonic()
                if now - last_check >= 1.0:
                    last_check = now
                    self.enforce()
                    self.limiter.alerts.write_pending()  # refusals of the last second, audited
                if now - last_bytes >= BYTES_INTERVAL:
                    last_bytes = now
                    self.report_bytes()
                    self.end_orphans()
            except Exception:
                logger.exception("Gateway housekeeping failed; retrying")
                connections.close_all()
        self.limiter.alerts.write_pending()  # refusals of the last second
        connections.close_all()  # this thread's own (connections are per thread)

    def end_orphans(self) -> int:
        """End the sessions whose connection is gone but whose end could not be saved.

        A connection that could not write its end (the database was busy or down at that
        moment) would otherwise stay "live" until the process restarts. Only sessions a
        finished connection handed over are ended: a session row is created a moment before
        its connection holds it, and a scan of "this node's live rows that no connection
        holds" would end sessions that are just starting.
        """
        with self._lock:
            orphans = list(self.unended)
        if not orphans:
            return 0
        finalize_interrupted(session_ids=orphans)
        for session in Session.objects.filter(pk__in=orphans, ended_at__isnull=True):
            records.session_end(
                session=session,
                reason=Session.EndReason.ERROR,
                message="The gateway could not record the end of this session when it closed.",
            )
        with self._lock:
            for pk in orphans:
                self.unended.pop(pk, None)
        return len(orphans)

    def report_bytes(self) -> None:
        """Keep the live sessions' byte counts current for the live sessions page."""
        with self._lock:
            live = [c for c in self.connections if c.session is not None and c.session.ended_at is None]
        for connection in live:
            counts = (connection.counter.to_target, connection.counter.to_user)
            if counts != connection.reported_bytes:
                Session.objects.filter(pk=connection.session.pk, ended_at__isnull=True).update(
                    bytes_in=counts[0], bytes_out=counts[1]
                )
                connection.reported_bytes = counts

    def enforce(self) -> int:
        """Cut the sessions whose grant ended or that were terminated; how many were cut."""
        with self._lock:
            live = {
                c.session.pk: c for c in self.connections if c.session is not None and c.cut_reason is None
            }
        if not live:
            return 0
        cuts = records.sessions_to_cut(session_ids=list(live))
        # A grant past its end is cut here even if the database is unreachable for a while.
        now = timezone.now()
        for pk, connection in live.items():
            if pk not in cuts and connection.grant is not None and connection.grant.ends_at <= now:
                cuts[pk] = records.end_of(session=connection.session, now=now)
        for pk, (reason, message) in cuts.items():
            logger.info("Ending session %s: %s", pk, message)
            live[pk].cut(reason, message)
        return len(cuts)


def run(*, listen: str, host_key_file: Path, workers: int) -> None:
    """``manage.py ssh_gateway``: listen, recover, serve until SIGTERM / SIGINT."""
    host, port = parse_listen(listen)
    # Paramiko logs every failed handshake (port scanners, health checks) as an ERROR with a
    # traceback; the gateway logs one line per connection itself.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    host_key = load_host_key(host_key_file)
    recover_dead_processes()
    connections.close_all()
    if workers <= 1:
        _serve_process(host, port, host_key)
        return
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            # Nothing network-bound is shared with the parent: its Vault session is rebuilt.
            reset_client()
            try:
                _serve_process(host, port, host_key)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum, frame):
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break


def _serve_process(host: str, port: int, host_key: paramiko.PKey) -> None:
    sock = listen_socket(host, port)
    server = GatewayServer(sock=sock, host_key=host_key)

    def stop(signum, frame):
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("SSH gateway %s listening on %s:%s", server.node, host, port)
    print(f"pamsite SSH gateway {server.node} listening on {host}:{port}", flush=True)
    server.serve_forever()
