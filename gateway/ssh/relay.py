"""Byte pumps between a user's channel and the target, on the gateway's event loop.

A relayed session channel is a ``Pipe``: the user's channel (``down``, asyncssh's server
channel) and the target's (``up``, a client channel opened with ``TargetSession``). The
target's output goes to the recorder, to a file-transfer tracker if there is one, and
then to the user; the user's input to the tracker and the target. Nothing is copied or
queued here beyond what asyncssh buffers: when one side's send buffer is full, the other
side's channel stops reading (asyncssh's ``pause_reading``), so SSH window adjustments
stop and the sender waits. A forwarded TCP connection (``ForwardSession``) is the same
with a socket in place of the target's channel.

Nothing here waits on the database or Vault: the recorders buffer in memory
(``recordings.recorder``) and the trackers only hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncssh
from asyncssh import EXTENDED_DATA_STDERR

from gateway.ssh import asyncssh_compat
from recordings.recorder import RecordingError

logger = logging.getLogger(__name__)

# Errors of a write or EOF on a channel the peer has already closed.
CHANNEL_GONE = (BrokenPipeError, ConnectionError, OSError, asyncssh.Error)
# A channel's queued output before the other side is paused. asyncssh's 64 KiB paused the
# target's channel for every 2 MiB window a client granted: a window's worth keeps it going.
WRITE_BUFFER_HIGH = 2 * 1024 * 1024
RECEIVE_STEP = 64 * 1024  # bytes handed to asyncssh at a time (see streamline)


def streamline(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Make ``conn`` cheaper per packet; the bytes on the wire mean the same.

    Framing, sequence numbers, encryption, rekeying and the deferral of packets during a
    key exchange all stay asyncssh's; only how its packets reach the socket, one packet
    it adds, and how a large read is handed to it change (the hooks are
    ``asyncssh_compat``'s, the rules here):

    - asyncssh writes each packet to the socket as it is made: the packets made while the
      loop handles one read are joined and written at once, when that read is done
      (``Coalescer``). What is pending is written before the connection closes (a
      disconnect message is not lost).
    - asyncssh puts an empty SSH_MSG_IGNORE packet before every packet it encrypts, a
      countermeasure against attacks on CBC ciphers: left out unless the sending cipher
      is CBC (``ignore_needed``; the gateway offers GCM).
    - A large read is handed to asyncssh in steps of RECEIVE_STEP bytes, because asyncssh
      copies its whole input buffer again for each packet it takes from it. Nothing read
      after a packet that closed the connection (a protocol error, a disconnect) is
      parsed: the steps stop (``feed_in_steps``), and what asyncssh holds of the current
      step is dropped (``asyncssh_compat.end_input_at_close``).
    """
    loop = asyncio.get_running_loop()
    out = Coalescer(lambda: asyncssh_compat.transport(conn), loop.call_soon)
    asyncssh_compat.route_output(conn, out.send, before_close=out.flush)
    asyncssh_compat.end_input_at_close(conn)
    asyncssh_compat.skip_empty_ignore(conn, lambda: ignore_needed(conn.get_extra_info("send_cipher")))
    asyncssh_compat.receive_through(
        conn, lambda receive, data: feed_in_steps(receive, data, lambda: asyncssh_compat.is_open(conn))
    )


class Coalescer:
    """The writes made during one turn of the event loop, joined into one socket write.

    ``send`` queues; the first send of a turn schedules ``flush`` with ``call_soon``, so the
    packets asyncssh makes while it handles one read (channel data, window adjustments)
    leave in one write, and one system call, instead of one each. ``transport()`` gives the
    current transport, None once the connection is closing: nothing is queued then.
    """

    __slots__ = ("call_soon", "pending", "transport")

    def __init__(self, transport: Callable[[], asyncio.WriteTransport | None], call_soon: Callable):
        self.transport = transport
        self.call_soon = call_soon
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.transport() is None:
            return
        if not self.pending:
            self.call_soon(self.flush)
        self.pending.append(data)

    def flush(self) -> None:
        pending = self.pending
        if not pending:
            return
        data = b"".join(pending) if len(pending) > 1 else pending[0]
        pending.clear()
        transport = self.transport()
        if transport is not None:
            with contextlib.suppress(ConnectionError):
                transport.write(data)


def ignore_needed(cipher: str | None) -> bool:
    """Whether the empty SSH_MSG_IGNORE asyncssh sends before each encrypted packet is
    worth its bytes: only for CBC ciphers, whose chained IVs it protects (the chosen
    plaintext attack of RFC 4251, 9.3.1). CTR, GCM and ChaCha20-Poly1305 need none."""
    return (cipher or "").endswith("-cbc")


def feed_in_steps(
    receive: Callable[[bytes], None], data: bytes, is_open: Callable[[], bool], step: int = RECEIVE_STEP
) -> None:
    """Hand ``data`` to ``receive`` in pieces of at most ``step`` bytes, while ``is_open()``.

    A step that makes the connection close (a bad MAC, a malformed packet, a disconnect)
    is the last one: the bytes after it are never parsed, so no channel data that follows
    a protocol error in the same read reaches a channel. Nor is a read that comes after
    the close (asyncio may deliver one more before the transport is gone).
    """
    if not is_open():
        return
    if len(data) <= step:
        receive(data)
        return
    view = memoryview(data)
    for start in range(0, len(data), step):
        if start and not is_open():
            return
        receive(bytes(view[start : start + step]))


class Counter:
    """Bytes relayed in each direction, summed over a connection's channels."""

    __slots__ = ("to_target", "to_user")

    def __init__(self) -> None:
        self.to_target = 0
        self.to_user = 0


class Pipe:
    """One user session channel (``down``) relayed to one target channel (``up``).

    ``record_out`` / ``record_err`` receive the target's output before the user sees it;
    ``observe_in`` / ``observe_out`` (file-transfer trackers, the terminal recorder's input
    markers) see each direction. A RecordingError calls ``on_recording_failed`` (the
    connection ends the session: no unrecorded privileged access), also when the gateway's
    housekeeping flush finds it while the channel is idle (the recorder's ``on_failure``).
    ``ended`` resolves to (exit status, exit signal) when the target's channel closes.
    """

    def __init__(
        self,
        *,
        down: asyncssh.SSHServerChannel,
        counter: Counter,
        record_out: Callable[[bytes], None] | None = None,
        record_err: Callable[[bytes], None] | None = None,
        observe_in: Callable[[bytes], None] | None = None,
        observe_out: Callable[[bytes], None] | None = None,
        on_recording_failed: Callable[[str], None],
    ):
        self.down = down
        down.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.up: asyncssh.SSHClientChannel | None = None
        self.counter = counter
        self.record_out, self.record_err = record_out, record_err or record_out
        self.observe_in, self.observe_out = observe_in, observe_out
        self.on_recording_failed = on_recording_failed
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()
        for record in (record_out, record_err):
            # record_* are a recorder's bound methods: its background flush reports here too.
            recorder = getattr(record, "__self__", None)
            if recorder is not None and hasattr(recorder, "on_failure"):
                recorder.on_failure = on_recording_failed

    def session(self) -> TargetSession:
        return TargetSession(self)

    # --- The user's side (called by the user's session channel) ------------------------

    def from_user(self, data: bytes) -> None:
        if self.ended.done() or self.up is None:
            return
        if self.observe_in is not None:
            self.observe_in(data)
        try:
            self.up.write(data)
        except CHANNEL_GONE:
            return
        self.counter.to_target += len(data)

    def user_eof(self) -> None:
        if self.up is not None:
            with contextlib.suppress(*CHANNEL_GONE):
                self.up.write_eof()

    def user_closed(self) -> None:
        if self.up is not None:
            self.up.close()

    def user_paused(self) -> None:
        """The user's channel has more queued than she takes: stop reading the target."""
        if self.up is not None:
            self.up.pause_reading()

    def user_resumed(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    # --- The target's side (TargetSession) --------------------------------------------

    def from_target(self, data: bytes, stderr: bool) -> None:
        record = self.record_err if stderr else self.record_out
        if record is not None:
            try:
                record(data)
            except RecordingError as exc:
                self.on_recording_failed(str(exc))
                if self.up is not None:
                    self.up.close()
                return
        if self.observe_out is not None and not stderr:
            self.observe_out(data)
        try:
            if stderr:
                self.down.write_stderr(data)
            else:
                self.down.write(data)
        except CHANNEL_GONE:
            if self.up is not None:
                self.up.close()
            return
        self.counter.to_user += len(data)

    def target_eof(self) -> None:
        with contextlib.suppress(*CHANNEL_GONE):
            self.down.write_eof()

    def target_closed(self) -> None:
        if self.ended.done():
            return
        status = signal = None
        if self.up is not None:
            status = self.up.get_exit_status()
            signal = self.up.get_exit_signal()
        if status is not None and status < 0:
            status = None
        self.ended.set_result((status, signal))


class TargetSession(asyncssh.SSHClientSession):
    """The target's side of a Pipe: asyncssh calls these as the target's channel speaks."""

    def __init__(self, pipe: Pipe):
        self.pipe = pipe

    def connection_made(self, chan) -> None:
        chan.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.pipe.up = chan

    def data_received(self, data, datatype) -> None:
        self.pipe.from_target(data, datatype == EXTENDED_DATA_STDERR)

    def eof_received(self) -> bool:
        self.pipe.target_eof()
        return True  # the target's EOF is passed on; its channel stays open for the status

    def connection_lost(self, exc) -> None:
        self.pipe.target_closed()

    def pause_writing(self) -> None:
        # The target takes the user's input more slowly than she types/uploads it.
        self.pipe.down.pause_reading()

    def resume_writing(self) -> None:
        self.pipe.down.resume_reading()


class _SocketSide(asyncio.Protocol):
    """The target's socket of a forwarded connection."""

    def __init__(self, forward: ForwardSession):
        self.forward = forward
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        forward = self.forward
        if forward.chan is None:
            return
        try:
            forward.chan.write(data)
        except CHANNEL_GONE:
            self.transport.close()
            return
        forward.bytes_out += len(data)
        forward.counter.to_user += len(data)

    def eof_received(self) -> bool:
        if self.forward.chan is not None:
            with contextlib.suppress(*CHANNEL_GONE):
                self.forward.chan.write_eof()
        return True

    def connection_lost(self, exc) -> None:
        self.forward.side_closed()

    def pause_writing(self) -> None:
        if self.forward.chan is not None:
            self.forward.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.forward.chan is not None:
            self.forward.chan.resume_reading()


class ForwardSession(asyncssh.SSHTCPSession):
    """A forwarded TCP connection (``ssh -L``): the user's channel and a socket to the target.

    ``on_done(bytes_in, bytes_out)`` is called once, when both sides are closed.
    """

    def __init__(self, *, counter: Counter, on_done: Callable[[int, int], None]):
        self.counter = counter
        self.on_done = on_done
        self.chan = None
        self.side = _SocketSide(self)
        self.bytes_in = self.bytes_out = 0
        self._open = 2

    async def connect(self, host: str, port: int, timeout: float) -> None:
        """Open the socket to the target (OSError / TimeoutError if it cannot be reached)."""
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: self.side, host, port), timeout)

    def connection_made(self, chan) -> None:
        self.chan = chan

    def data_received(self, data, datatype) -> None:
        transport = self.side.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        self.bytes_in += len(data)
        self.counter.to_target += len(data)

    def eof_received(self) -> bool:
        transport = self.side.transport
        if transport is not None and transport.can_write_eof():
            with contextlib.suppress(OSError):
                transport.write_eof()
        return True

    def connection_lost(self, exc) -> None:
        if self.side.transport is not None:
            self.side.transport.close()
        self.side_closed()

    def pause_writing(self) -> None:
        if self.side.transport is not None:
            self.side.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.side.transport is not None and not self.side.transport.is_closing():
            self.side.transport.resume_reading()

    def side_closed(self) -> None:
        """One side is gone: close the other; report once both are."""
        self._open -= 1
        if self._open == 1:
            if self.chan is not None:
                self.chan.close()
            elif self.side.transport is not None:
                self.side.transport.close()
        if self._open == 0:
            try:
                self.on_done(self.bytes_in, self.bytes_out)
            except Exception:
                logger.exception("Recording the end of a forwarded connection failed")
