"""The gateway process: host key, listener, event loop, housekeeping, workers.

One process accepts connections and serves all of them on one asyncio event loop
(asyncssh): an idle session costs a few dozen KB and no thread of its own. Its
housekeeping task, four times a second, flushes due recordings (a killed gateway loses
at most a quarter of a second; live viewers lag as little) and, once a second, asks the
database which of its live sessions must end — grant expired, checked in or revoked, or
terminated from the web — and cuts them. That query is the only coupling with the web
app and the worker, so any number of gateway processes on any number of hosts can run
beside them. Blocking calls (the database, Vault, hashing a recording) run on a pool of
GATEWAY_MAX_DATABASE_CONNECTIONS threads.

``GATEWAY_WORKERS`` > 1 (by default one per CPU) forks that many processes sharing one
listening socket, because one Python process relays on one core. Each worker publishes
its number of live connections in memory the workers share (``WorkerLoads``); a worker
with more than the least loaded one lets the others take a new connection first, so
sessions spread evenly (the kernel's SO_REUSEPORT hashing put 12 and 8 of 20 on two).

At start, recordings left unfinalised by a gateway process of this host that is no
longer running (killed with SIGKILL, power cut) are sealed and marked interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mmap
import os
import signal
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncssh
from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from gateway.ssh import asyncssh_compat, limits
from gateway.ssh.connection import GatewayConnection, UserConnection
from recordings import sessions
from recordings.models import GatewaySession
from recordings.recorder import finalize_interrupted, flush_due
from targets.ssh import generate_keypair
from vault.client import reset_client

logger = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 0.25  # recordings flushed at least this often (live viewers, crashes)
BYTES_INTERVAL = 10.0
# How long a worker with more connections than the least loaded one leaves a new connection
# to the others before it accepts it itself (a busy or stuck worker never strands one).
BALANCE_GRACE = 0.005


class GatewayError(Exception):
    """The gateway cannot start: the message says what to fix."""


def host_name() -> str:
    return settings.GATEWAY_NODE or socket.gethostname()


def node_name(pid: int | None = None) -> str:
    """This process's name in GatewaySession rows: ``host:pid``."""
    return f"{host_name()}:{pid or os.getpid()}"


def load_host_key(path: Path) -> asyncssh.SSHKey:
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
        return asyncssh.read_private_key(str(path))
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
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
    # The workers share this one socket; SO_REUSEPORT lets a restarted gateway listen while
    # the old one is still ending its sessions.
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
        GatewaySession.objects.filter(ended_at__isnull=True, gateway_node__startswith=prefix).values_list(
            "gateway_node", flat=True
        )
    )
    recovered = 0
    for node in nodes:
        pid = node[len(prefix) :]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        recovered += finalize_interrupted(gateway_node=node)
        for session in GatewaySession.objects.filter(gateway_node=node, ended_at__isnull=True):
            sessions.session_end(
                session=session,
                reason=GatewaySession.EndReason.INTERRUPTED,
                message="The gateway process relaying it stopped.",
            )
        logger.warning("Recovered the sessions of gateway process %s, which is gone", node)
    return recovered


class WorkerLoads:
    """Live connections of each gateway worker process, in memory the workers share.

    Made by the parent before it forks (an anonymous shared mapping); each worker is given
    its ``slot`` and publishes its count with ``publish()``. ``ahead()``: this worker has
    more connections than the least loaded live one. A worker that has exited is marked
    ``retire()``d by the parent so that it is never the least loaded.
    """

    _RETIRED = 2**62

    def __init__(self, workers: int):
        self.workers = workers
        self._counts = mmap.mmap(-1, 8 * workers)
        self.slot: int | None = None

    def publish(self, count: int) -> None:
        if self.slot is not None:
            struct.pack_into("q", self._counts, 8 * self.slot, count)

    def counts(self) -> tuple[int, ...]:
        return struct.unpack_from(f"{self.workers}q", self._counts)

    def ahead(self) -> bool:
        if self.slot is None:
            return False
        counts = self.counts()
        return counts[self.slot] > min(counts)

    def retire(self, slot: int) -> None:
        struct.pack_into("q", self._counts, 8 * slot, self._RETIRED)


class GatewayServer:
    """Accept SSH connections on ``sock`` and serve them until ``stop()``.

    ``serve_forever()`` runs the process's event loop on the calling thread: every
    connection, channel and relay lives on it. Blocking work (the database, Vault, sealing
    recordings) goes to ``call()``, a pool of GATEWAY_MAX_DATABASE_CONNECTIONS threads.
    """

    def __init__(
        self,
        *,
        sock: socket.socket,
        host_key: asyncssh.SSHKey,
        node: str | None = None,
        loads: WorkerLoads | None = None,
    ):
        self.sock = sock
        self.loads = loads
        self.host_key = host_key
        self.node = node or node_name()
        self.ciphers = tuple(settings.GATEWAY_CIPHERS)
        self.connections: set[GatewayConnection] = set()
        # Sessions whose connection ended without saving their end (the database was busy
        # or down then): housekeeping ends them (end_orphans).
        self.unended: dict[int, GatewaySession] = {}
        # Connection limits and login deadlines (hostile clients): gateway.ssh.limits.
        self.limiter = limits.Limiter(node=self.node)
        self.pool_size = settings.GATEWAY_MAX_DATABASE_CONNECTIONS
        self.pool = ThreadPoolExecutor(max_workers=self.pool_size, thread_name_prefix="gateway-db")
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def options(self) -> asyncssh.SSHServerConnectionOptions:
        """The SSH settings every user connection of this process shares."""
        return asyncssh.SSHServerConnectionOptions(
            server_factory=lambda: GatewayConnection(self),
            server_host_keys=[self.host_key],
            server_version=limits.IDENTIFICATION.removeprefix("SSH-2.0-"),
            encryption_algs=list(self.ciphers),
            # Delayed compression only (after login, as OpenSSH's sshd since 7.4): a client
            # asks for it (ssh -C) or not; the plain "zlib" would compress the login too.
            compression_algs=["zlib@openssh.com", "none"],
            public_key_auth=True,
            password_auth=True,
            kbdint_auth=True,
            allow_pty=True,
            line_editor=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            sftp_factory=None,
            encoding=None,
            # The connection's own timer (GATEWAY_LOGIN_TIMEOUT) ends slow logins first.
            login_timeout=settings.GATEWAY_LOGIN_TIMEOUT + 30,
            keepalive_interval=60,
            keepalive_count_max=3,
            config=None,
        )

    async def call(self, fn, *args, **kwargs):
        """Run a blocking call (database, Vault, file hashing) on the pool.

        The pool has GATEWAY_MAX_DATABASE_CONNECTIONS threads, each with at most one
        database connection: hundreds of connections ending at once take turns rather
        than exhaust the database's max_connections.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(_pooled, fn, *args, **kwargs))

    def serve_forever(self) -> None:
        quiet_asyncssh()
        problem = asyncssh_compat.version_problem()
        if problem:
            logger.warning("%s", problem)
        # One AES-GCM object per key instead of per packet: ~5 % of the relay's CPU.
        asyncssh_compat.reuse_gcm_contexts()
        asyncio.run(self._serve())

    def stop(self) -> None:
        """Stop serving (any thread, or a signal handler)."""
        self._stop_requested.set()
        loop, stopping = self.loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stopping.set)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_requested.is_set():
            self._stopping.set()
        _on_every_thread(self.pool, self.pool_size, None)  # started now: a steady thread count
        # asyncssh prepares each connection's options to a target on the loop's default
        # executor: the same threads, so a busy gateway does not grow a second pool.
        self.loop.set_default_executor(self.pool)
        options = self.options()
        housekeeping = self.loop.create_task(self._housekeeping())
        accepting = self.loop.create_task(self._accept_loop(options))
        await self._stopping.wait()
        accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await accepting
        await self._shutdown()
        housekeeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await housekeeping
        await self.call(self.limiter.alerts.write_pending)  # refusals of the last second
        _on_every_thread(self.pool, self.pool_size, connections.close_all)
        self.pool.shutdown(wait=True)

    async def _accept_loop(self, options) -> None:
        self.sock.setblocking(False)

        while True:
            await self._readable()
            if self.loads is not None and self.loads.ahead():
                await asyncio.sleep(BALANCE_GRACE)  # a less loaded worker takes it first
            try:
                client, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            except OSError:
                await asyncio.sleep(0.05)
                continue
            client.setblocking(False)
            # Over a limit: refused here, before a key exchange is spent on it.
            if not self.limiter.admit(client, address, list(self.connections)):
                continue
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await asyncssh_compat.accept(client, UserConnection, options)
            except Exception:
                logger.exception("Could not set up a connection from %s", address[0])
                client.close()
            self._publish_load()

    async def _readable(self) -> None:
        """Until the listening socket has a connection waiting (for any worker)."""
        loop = self.loop
        ready = loop.create_future()
        fd = self.sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    def _publish_load(self) -> None:
        if self.loads is not None:
            self.loads.publish(len(self.connections))

    def connection_done(self, connection: GatewayConnection) -> None:
        """A connection has ended and saved what it could (GatewayConnection._finish)."""
        self.connections.discard(connection)
        self._publish_load()
        session = connection.session
        if session is not None and session.ended_at is None:
            self.unended[session.pk] = session

    async def _shutdown(self) -> None:
        """Stopping (SIGTERM): tell every user, end every session cleanly."""
        self.sock.close()
        self.limiter.close()
        live = list(self.connections)
        for connection in live:
            connection.cut(
                GatewaySession.EndReason.CLOSED, "The gateway is shutting down; connect again in a minute."
            )
        waits = [self.loop.create_task(c.finished.wait()) for c in live]
        if waits:
            await asyncio.wait(waits, timeout=10)
        for connection in list(self.connections):
            if connection.conn is not None:
                connection.conn.abort()
        if self.connections:
            await asyncio.sleep(0.1)

    async def _housekeeping(self) -> None:
        last_check = last_bytes = 0.0
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                flush_due()
                self.limiter.sweep()  # refused sockets to close
                now = time.monotonic()
                if now - last_check >= 1.0:
                    last_check = now
                    await self.enforce()
                    await self.call(self.limiter.alerts.write_pending)  # refusals of the last second
                if now - last_bytes >= BYTES_INTERVAL:
                    last_bytes = now
                    await self.call(self.report_bytes)
                    await self.call(self.end_orphans)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Gateway housekeeping failed; retrying")

    def end_orphans(self) -> int:
        """End the sessions whose connection is gone but whose end could not be saved.

        A connection that could not write its end (the database was busy or down at that
        moment) would otherwise stay "live" until the process restarts. Only sessions a
        finished connection handed over are ended: a session row is created a moment before
        its connection holds it, and a scan of "this node's live rows that no connection
        holds" would end sessions that are just starting.
        """
        orphans = list(self.unended)
        if not orphans:
            return 0
        finalize_interrupted(session_ids=orphans)
        for session in GatewaySession.objects.filter(pk__in=orphans, ended_at__isnull=True):
            sessions.session_end(
                session=session,
                reason=GatewaySession.EndReason.ERROR,
                message="The gateway could not record the end of this session when it closed.",
            )
        for pk in orphans:
            self.unended.pop(pk, None)
        return len(orphans)

    def report_bytes(self) -> None:
        """Keep the live sessions' byte counts current for the live sessions page."""
        live = [c for c in list(self.connections) if c.session is not None and c.session.ended_at is None]
        for connection in live:
            counts = (connection.counter.to_target, connection.counter.to_user)
            if counts != connection.reported_bytes:
                GatewaySession.objects.filter(pk=connection.session.pk, ended_at__isnull=True).update(
                    bytes_in=counts[0], bytes_out=counts[1]
                )
                connection.reported_bytes = counts

    async def enforce(self) -> int:
        """Cut the sessions whose grant ended or that were terminated; how many were cut."""
        live = {
            c.session.pk: c for c in list(self.connections) if c.session is not None and c.cut_reason is None
        }
        if not live:
            return 0
        try:
            cuts = await self.call(sessions.sessions_to_cut, session_ids=list(live))
        finally:
            # A grant past its end is cut here even if the database is unreachable for a while.
            now = timezone.now()
            late = {
                pk: sessions.end_of(session=c.session, now=now)
                for pk, c in live.items()
                if c.grant is not None and c.grant.ends_at <= now
            }
            for pk, (reason, message) in late.items():
                if live[pk].cut_reason is None:
                    logger.info("Ending session %s: %s", pk, message)
                    live[pk].cut(reason, message)
        for pk, (reason, message) in cuts.items():
            if pk in live and live[pk].cut_reason is None:
                logger.info("Ending session %s: %s", pk, message)
                live[pk].cut(reason, message)
        return len(cuts) + len(late)


def _pooled(fn, *args, **kwargs):
    """A blocking call on a pool thread: the thread's database connection is reused only
    as DATABASE_CONN_MAX_AGE allows, and dropped after an error (a restarted database)."""
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


def _on_every_thread(pool: ThreadPoolExecutor, size: int, fn) -> None:
    """Run ``fn`` once on each of the pool's ``size`` threads (starting those not yet started)."""
    barrier = threading.Barrier(size)

    def run() -> None:
        if fn is not None:
            fn()
        barrier.wait(5)

    futures = [pool.submit(run) for _ in range(size)]
    for future in futures:
        with contextlib.suppress(threading.BrokenBarrierError):
            future.result()


def run(*, listen: str, host_key_file: Path, workers: int) -> None:
    """``manage.py ssh_gateway``: listen, recover, serve until SIGTERM / SIGINT."""
    host, port = parse_listen(listen)
    quiet_asyncssh()
    host_key = load_host_key(host_key_file)
    recover_dead_processes()
    connections.close_all()
    if workers <= 1:
        _serve_process(host, port, host_key, listen_socket(host, port))
        return
    # One socket for all workers (made before they fork), and their loads beside it.
    sock = listen_socket(host, port)
    loads = WorkerLoads(workers)
    children: dict[int, int] = {}  # pid -> slot
    for slot in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            # Nothing network-bound is shared with the parent: its Vault session is rebuilt.
            reset_client()
            loads.slot = slot
            try:
                _serve_process(host, port, host_key, sock, loads)
            finally:
                os._exit(0)
        children[pid] = slot
    sock.close()  # the parent never accepts

    def forward(signum, frame):
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while children:
        try:
            pid, _ = os.wait()
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        slot = children.pop(pid, None)
        if slot is not None:
            loads.retire(slot)  # the others stop leaving connections to it


def quiet_asyncssh() -> None:
    """asyncssh logs each connection, channel and failed handshake at INFO; the gateway
    logs one line per connection itself. Its logger shows warnings and up only, unless
    its own level was set (to DEBUG, say) on purpose."""
    asyncssh_logger = logging.getLogger("asyncssh")
    if asyncssh_logger.level == logging.NOTSET:
        asyncssh_logger.setLevel(logging.WARNING)


def _serve_process(
    host: str, port: int, host_key: asyncssh.SSHKey, sock: socket.socket, loads: WorkerLoads | None = None
) -> None:
    server = GatewayServer(sock=sock, host_key=host_key, loads=loads)

    def stop(signum, frame):
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("SSH gateway %s listening on %s:%s", server.node, host, port)
    print(f"pamsite SSH gateway {server.node} listening on {host}:{port}", flush=True)
    server.serve_forever()
