"""Byte pumps between a user's channel and the target: session channels and forwards.

A relayed session channel has two pumps: the target's output to the user (this is what
is recorded, and what file-transfer trackers read for downloads) and the user's input to
the target. A non-pty exec adds a third for standard error.

Reads take all a channel holds (READ_SIZE is more than any channel's window): paramiko's
buffer drops what a read took by moving the rest to its front, so a smaller read of a
full 2 MiB window moved up to 2 MiB for each 128 KiB. Sends go out as memoryviews:
paramiko's ``sendall`` slices off each packet it sent, which copied the rest of a bytes
object each time.

Nothing here blocks on the database or Vault on the hot path: the recorders buffer in
memory (``sessions.recorder``) and the trackers only hash.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import paramiko
from django.db import connections

from sessions.recorder import RecordingError

logger = logging.getLogger(__name__)

READ_SIZE = 16 * 1024 * 1024  # more than paramiko's largest window (see above)
# A socket's recv allocates what it is asked for: forwarded TCP is read in these.
SOCKET_READ_SIZE = 256 * 1024


def thread(target: Callable, *args, name: str) -> threading.Thread:
    """Start a daemon thread that closes its own database connections when it ends."""

    def run() -> None:
        try:
            target(*args)
        except Exception:
            logger.exception("Gateway thread %s failed", name)
        finally:
            connections.close_all()

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    return worker


class Counter:
    """Bytes relayed in each direction, summed over a connection's channels."""

    def __init__(self) -> None:
        self.to_target = 0
        self.to_user = 0


class ChannelRelay:
    """Pump one user channel (``down``) to one target channel (``up``) until both end.

    ``record_out`` / ``record_err`` receive the target's output before the user sees it;
    ``observe_in`` / ``observe_out`` (file-transfer trackers) see each direction. A
    RecordingError from a recorder calls ``on_recording_failed`` (the connection ends the
    session: no unrecorded privileged access), also when the gateway's housekeeping flush
    finds it (the recorder's ``on_failure``) while the channel is idle. ``run()`` returns
    the exit status (or None: none was sent, e.g. the target's connection was lost).
    """

    def __init__(
        self,
        *,
        down: paramiko.Channel,
        up: paramiko.Channel,
        counter: Counter,
        record_out: Callable[[bytes], None] | None = None,
        record_err: Callable[[bytes], None] | None = None,
        observe_in: Callable[[bytes], None] | None = None,
        observe_out: Callable[[bytes], None] | None = None,
        on_recording_failed: Callable[[str], None],
        separate_stderr: bool,
    ):
        self.down, self.up = down, up
        self.counter = counter
        self.record_out, self.record_err = record_out, record_err
        self.observe_in, self.observe_out = observe_in, observe_out
        self.on_recording_failed = on_recording_failed
        self.separate_stderr = separate_stderr
        self.ended = False
        for record in (record_out, record_err):
            # record_* are a recorder's bound methods: its background flush reports here too.
            recorder = getattr(record, "__self__", None)
            if recorder is not None and hasattr(recorder, "on_failure"):
                recorder.on_failure = on_recording_failed

    def run(self) -> int | None:
        """Relay until the target's side ends; the exit status it sent, if any."""
        name = f"relay-in-{self.down.get_id()}"
        thread(self._user_to_target, name=name)
        stderr = (
            thread(self._target_stderr_to_user, name=f"relay-err-{self.down.get_id()}")
            if self.separate_stderr
            else None
        )
        self._target_to_user()
        if stderr is not None:
            stderr.join(timeout=30)
        # sshd sends the exit status just before closing; a target that never does is not waited
        # for long, and one whose connection is gone (sshd killed, host down) not at all.
        transport = self.up.get_transport()
        deadline = time.monotonic() + 10
        while not self.up.status_event.wait(0.1):
            if time.monotonic() > deadline or transport is None or not transport.is_active():
                break
        status = self.up.exit_status if self.up.status_event.is_set() else -1
        # The user's side may never send EOF (ssh without -n keeps stdin open): the thread
        # reading it ends when the channel is closed, and records nothing from now on.
        self.ended = True
        return status if status >= 0 else None

    def _target_to_user(self) -> None:
        up, down, record, observe = self.up, self.down, self.record_out, self.observe_out
        counter = self.counter
        while True:
            try:
                data = up.recv(READ_SIZE)
            except (OSError, EOFError, paramiko.SSHException):
                return
            if not data:
                return
            if record is not None:
                try:
                    record(data)
                except RecordingError as exc:
                    self.on_recording_failed(str(exc))
                    return
            if observe is not None:
                observe(data)
            try:
                down.sendall(memoryview(data))
            except (OSError, EOFError, paramiko.SSHException):
                up.close()
                return
            counter.to_user += len(data)

    def _target_stderr_to_user(self) -> None:
        up, down, record = self.up, self.down, self.record_err
        while True:
            try:
                data = up.recv_stderr(READ_SIZE)
            except (OSError, EOFError, paramiko.SSHException):
                return
            if not data:
                return
            if record is not None:
                try:
                    record(data)
                except RecordingError as exc:
                    self.on_recording_failed(str(exc))
                    return
            try:
                down.sendall_stderr(memoryview(data))
            except (OSError, EOFError, paramiko.SSHException):
                return
            self.counter.to_user += len(data)

    def _user_to_target(self) -> None:
        up, down, observe = self.up, self.down, self.observe_in
        while True:
            try:
                data = down.recv(READ_SIZE)
            except (OSError, EOFError, paramiko.SSHException):
                data = b""
            if not data:
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    up.shutdown_write()
                return
            if observe is not None and not self.ended:
                observe(data)
            try:
                up.sendall(memoryview(data))
            except (OSError, EOFError, paramiko.SSHException):
                return
            self.counter.to_target += len(data)


def relay_socket(*, down: paramiko.Channel, sock: socket.socket, counter: Counter) -> tuple[int, int]:
    """Pump a forwarded TCP connection both ways until one side closes: (bytes in, bytes out)."""
    sent = [0, 0]

    def user_to_target() -> None:
        while True:
            try:
                data = down.recv(READ_SIZE)
            except (OSError, EOFError, paramiko.SSHException):
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                return
            try:
                sock.sendall(data)
            except OSError:
                return
            sent[0] += len(data)
            counter.to_target += len(data)

    inbound = thread(user_to_target, name=f"forward-in-{down.get_id()}")
    while True:
        try:
            data = sock.recv(SOCKET_READ_SIZE)
        except OSError:
            data = b""
        if not data:
            break
        try:
            down.sendall(memoryview(data))
        except (OSError, EOFError, paramiko.SSHException):
            break
        sent[1] += len(data)
        counter.to_user += len(data)
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        down.shutdown_write()
    inbound.join(timeout=5)
    down.close()
    sock.close()
    return sent[0], sent[1]
