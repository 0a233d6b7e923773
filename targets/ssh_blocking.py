"""The SSH door for synchronous callers: rotation, host-key pinning, Test connection, the demo.

A thin facade over ``targets.ssh``: each function runs the same coroutine on one private
event loop, in a thread of its own, and waits for it. So there is one SSH client, one set
of rules and one set of messages; the pam-admin pages and the worker simply block.

The private loop (not ``asyncio.run``) is what lets a caller already running on an event
loop's thread block here too (an async view's sync_to_async thread, a test with a browser
loop in the main thread): ``asyncio.run`` refuses to start inside a running loop, and the
caller's own loop cannot be used because the caller blocks it. A forked child (a Celery
worker) starts a loop of its own at its first call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncssh
from django.views.decorators.debug import sensitive_variables

from targets import ssh
from targets.errors import TargetError, describe_target
from targets.ssh import HostKey, RunResult

__all__ = [
    "Connection",
    "answers_ssh",
    "change_password",
    "check_password_login",
    "connect",
    "fetch_host_key",
    "run",
]

T = TypeVar("T")
# Beyond a call's own timeouts (connect, then login, then the command): a last bound so a
# caller never waits forever on a loop that stopped answering.
_GRACE_SECONDS = 30

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid = 0


def _private_loop() -> asyncio.AbstractEventLoop:
    """The running private loop, started at the first call in this process."""
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="pamsite-targets-ssh", daemon=True)
            thread.start()
            _loop, _thread, _pid = loop, thread, os.getpid()
        return _loop


def _forget_loop_in_child() -> None:
    """After fork the loop's thread is gone from the child: start afresh at the next call."""
    global _loop, _thread, _pid, _lock
    _loop, _thread, _pid = None, None, 0
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_loop_in_child)


def _wait(coroutine: Coroutine[Any, Any, T], *, timeout: float) -> T:
    """Run ``coroutine`` on the private loop and wait for its result (or its exception)."""
    loop = _private_loop()
    if threading.current_thread() is _thread:
        coroutine.close()
        raise RuntimeError("targets.ssh_blocking called from its own event loop: await targets.ssh instead")
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    try:
        return future.result(timeout=timeout + _GRACE_SECONDS)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TargetError(f"The SSH call did not finish within {timeout + _GRACE_SECONDS:g} s") from None
    except BaseException:
        future.cancel()  # KeyboardInterrupt or SystemExit in the caller: stop the coroutine too
        raise


def fetch_host_key(*, host: str, port: int, timeout: float = 10, target: str = "") -> HostKey:
    """``targets.ssh.fetch_host_key``, blocking."""
    return _wait(
        ssh.fetch_host_key(host=host, port=port, timeout=timeout, target=target), timeout=2 * timeout
    )


class Connection:
    """An authenticated SSH connection to a target, living on the private loop.

    Run commands with ``run(connection=...)``; close it when done (it is also a context
    manager).
    """

    def __init__(
        self, conn: asyncssh.SSHClientConnection, *, host: str, port: int, username: str, target: str
    ):
        self.conn = conn
        self.host = host
        self.port = port
        self.username = username
        self.target = target

    def __repr__(self) -> str:
        state = "closed" if self.conn.is_closed() else "open"
        return f"<Connection {self.username}@{self.host}:{self.port} {state}>"

    @property
    def where(self) -> str:
        return describe_target(host=self.host, port=self.port, target=self.target)

    def close(self) -> None:
        async def close() -> None:
            self.conn.close()
            await self.conn.wait_closed()

        _wait(close(), timeout=10)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@sensitive_variables("password", "private_key")
def connect(
    *,
    host: str,
    port: int,
    username: str,
    host_key: str,
    password: str | None = None,
    private_key: str | bytes | None = None,
    certificate: str | None = None,
    timeout: float = 10,
    target: str = "",
) -> Connection:
    """``targets.ssh.connect``, blocking: the same checks, the same errors."""
    conn = _wait(
        ssh.connect(
            host=host,
            port=port,
            username=username,
            host_key=host_key,
            password=password,
            private_key=private_key,
            certificate=certificate,
            timeout=timeout,
            target=target,
        ),
        timeout=3 * timeout,
    )
    return Connection(conn, host=host, port=port, username=username, target=target)


@sensitive_variables("stdin")
def run(
    *, connection: Connection, command: str, stdin: bytes | str | None = None, timeout: float = 30
) -> RunResult:
    """``targets.ssh.run`` on a blocking ``Connection``."""
    return _wait(
        ssh.run(connection.conn, command=command, stdin=stdin, timeout=timeout, where=connection.where),
        timeout=timeout,
    )


@sensitive_variables("password")
def check_password_login(
    *,
    host: str,
    port: int,
    username: str,
    host_key: str,
    password: str,
    timeout: float = 10,
    target: str = "",
) -> bool:
    """``targets.ssh.check_password_login``, blocking: True, False, or a ``TargetError``."""
    return _wait(
        ssh.check_password_login(
            host=host,
            port=port,
            username=username,
            host_key=host_key,
            password=password,
            timeout=timeout,
            target=target,
        ),
        timeout=3 * timeout,
    )


@sensitive_variables("current_password", "new_password")
def change_password(
    *,
    host: str,
    port: int,
    username: str,
    host_key: str,
    current_password: str,
    new_password: str,
    timeout: float = 30,
    target: str = "",
) -> None:
    """``targets.ssh.change_password``, blocking."""
    _wait(
        ssh.change_password(
            host=host,
            port=port,
            username=username,
            host_key=host_key,
            current_password=current_password,
            new_password=new_password,
            timeout=timeout,
            target=target,
        ),
        timeout=4 * timeout,
    )


def answers_ssh(host: str, port: int, *, timeout: float = 2) -> bool:
    """Whether an SSH server answers on host:port (its banner, "SSH-..."), to wait for one to start.

    Only the server's banner is read; nothing is sent.
    """
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 1)) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False
