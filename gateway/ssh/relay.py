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
import os
import time
from collections.abc import Callable

import asyncssh
from asyncssh import EXTENDED_DATA_STDERR
from asyncssh.constants import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_EXTENDED_DATA,
    MSG_CHANNEL_WINDOW_ADJUST,
    MSG_IGNORE,
)
from asyncssh.encryption import GCMEncryption
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from recordings.recorder import RecordingError

logger = logging.getLogger(__name__)

# Errors of a write or EOF on a channel the peer has already closed.
CHANNEL_GONE = (BrokenPipeError, ConnectionError, OSError, asyncssh.Error)
# A channel's queued output before the other side is paused. asyncssh's 64 KiB paused the
# target's channel for every 2 MiB window a client granted: a window's worth keeps it going.
WRITE_BUFFER_HIGH = 2 * 1024 * 1024
_EMPTY_STRING = b"\x00\x00\x00\x00"  # an SSH string of no bytes
_SEALED_HERE = frozenset({MSG_CHANNEL_WINDOW_ADJUST, MSG_CHANNEL_DATA, MSG_CHANNEL_EXTENDED_DATA})
RECEIVE_STEP = 64 * 1024  # bytes handed to asyncssh at a time (see streamline)


def _asyncssh_as_expected() -> bool:
    """Whether asyncssh has the internals the GCM path uses (it is pinned; an upgrade that
    changed them falls back to asyncssh's own path, slower but correct, and says so)."""
    from asyncssh.connection import SSHConnection
    from asyncssh.crypto import GCMCipher

    needed = {
        SSHConnection: ("_send", "_force_close", "send_packet", "data_received"),
        GCMCipher: ("_update_iv",),
        GCMEncryption: ("decrypt_packet", "encrypt_packet"),
    }
    missing = [
        f"{cls.__name__}.{name}" for cls, names in needed.items() for name in names if not hasattr(cls, name)
    ]
    if missing:
        logger.warning(
            "asyncssh %s lacks %s: the gateway relays through asyncssh's own path",
            asyncssh.__version__,
            ", ".join(missing),
        )
    return not missing


# What the GCM path reads and updates on a connection (set by asyncssh at its start).
_CONNECTION_STATE = (
    "_send_encryption",
    "_recv_encryption",
    "_kex_complete",
    "_auth_complete",
    "_compressor",
    "_send_seq",
    "_send_blocksize",
    "_send_enchdrlen",
    "_rekey_bytes",
    "_rekey_bytes_sent",
    "_rekey_seconds",
    "_rekey_time",
)
_ASYNCSSH_AS_EXPECTED = _asyncssh_as_expected()


def streamline(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Make ``conn`` cheaper per packet; the bytes on the wire mean the same.

    asyncssh has no option for any of this: ``send_packet``, ``_send``, ``_force_close`` and
    ``data_received`` are wrapped on the instance (asyncssh is pinned; the gateway's tests
    run every kind of channel through these paths).

    - asyncssh puts an empty SSH_MSG_IGNORE packet before every packet it encrypts, a
      countermeasure against attacks on CBC ciphers: left out unless the sending cipher is
      CBC (the gateway offers GCM; CTR and GCM need no such packet).
    - asyncssh writes each packet to the socket as it is made: the packets made while the
      loop handles one read are joined and written at once, when that read is done. What is
      pending is written before the connection closes (a disconnect message is not lost).
    - Channel data and window adjustments, once keys are exchanged and the user logged in,
      are framed and sealed with AES-GCM here (``_GcmSender``), with one copy of the data
      instead of asyncssh's seven. Anything else (key exchange, rekeying when due, other
      ciphers, compression, asyncssh's packet-level debug log) takes asyncssh's own path.
    - Received GCM packets are opened with one AES-GCM object per key, the data copied once.
    - A large read is handed to asyncssh in steps of RECEIVE_STEP bytes: asyncssh copies its
      whole input buffer again for each packet it takes from it.
    """
    loop = asyncio.get_running_loop()
    pending: list[bytes] = []
    force_close = conn._force_close
    send_packet = conn.send_packet
    data_received = conn.data_received

    def flush() -> None:
        if not pending:
            return
        data = b"".join(pending) if len(pending) > 1 else pending[0]
        pending.clear()
        transport = conn._transport
        if transport is not None:
            with contextlib.suppress(ConnectionError):
                transport.write(data)

    def send(data: bytes) -> None:
        if conn._transport is None:
            return
        if not pending:
            loop.call_soon(flush)
        pending.append(data)

    def close_now(exc) -> None:
        flush()
        force_close(exc)

    gcm = _GcmSender(conn, send)

    def send_packet_lean(pkttype: int, *args: bytes, **kwargs) -> None:
        if pkttype in _SEALED_HERE and gcm.try_send(pkttype, args):
            return
        if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,) and not kwargs:
            cipher = conn.get_extra_info("send_cipher") or ""
            if not cipher.endswith("-cbc"):
                return
        send_packet(pkttype, *args, **kwargs)

    def data_received_in_steps(data: bytes, datatype=None) -> None:
        if gcm.enabled:
            _open_gcm_once(conn._recv_encryption)
        if len(data) <= RECEIVE_STEP:
            data_received(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), RECEIVE_STEP):
            data_received(bytes(view[start : start + RECEIVE_STEP]))
            if gcm.enabled:
                _open_gcm_once(conn._recv_encryption)  # new keys may have come in this step

    conn._send = send
    conn._force_close = close_now
    conn.send_packet = send_packet_lean
    conn.data_received = data_received_in_steps


class _GcmSender:
    """Frames and seals one connection's channel data with AES-GCM (RFC 5647, as OpenSSH's
    aes128-gcm@openssh.com): the 4-byte length in clear as associated data, then padding
    length, type, payload and random padding sealed, the 16-byte tag after."""

    __slots__ = ("aead", "cipher", "conn", "enabled", "write")

    def __init__(self, conn, write: Callable[[bytes], None]):
        self.conn, self.write = conn, write
        self.cipher = self.aead = None
        self.enabled = _ASYNCSSH_AS_EXPECTED and all(hasattr(conn, name) for name in _CONNECTION_STATE)

    def try_send(self, pkttype: int, args: tuple[bytes, ...]) -> bool:
        """Send the packet if this path may (see streamline); False: asyncssh must."""
        conn = self.conn
        encryption = conn._send_encryption
        if (
            not self.enabled
            or type(encryption) is not GCMEncryption
            or not (conn._kex_complete and conn._auth_complete)
            or conn._compressor
            or conn._transport is None
            or conn._rekey_bytes_sent >= conn._rekey_bytes
            or (conn._rekey_seconds and time.monotonic() >= conn._rekey_time)
            or conn.logger._debug_level >= 3
        ):
            return False
        cipher = encryption._cipher
        if cipher is not self.cipher:
            if not _gcm_cipher_as_expected(cipher):
                return False
            self.cipher, self.aead = cipher, AESGCM(cipher._key)
        blocksize = conn._send_blocksize
        padlen = -(conn._send_enchdrlen + 1 + sum(map(len, args))) % blocksize
        if padlen < 4:
            padlen += blocksize
        packet = b"".join((bytes((padlen, pkttype)), *args, os.urandom(padlen)))
        header = len(packet).to_bytes(4, "big")
        sealed = self.aead.encrypt(cipher._iv, packet, header)
        cipher._update_iv()
        self.write(header)
        self.write(sealed)
        conn._send_seq = (conn._send_seq + 1) & 0xFFFFFFFF
        conn._rekey_bytes_sent += len(packet)
        return True


def _gcm_cipher_as_expected(cipher) -> bool:
    return all(hasattr(cipher, name) for name in ("_key", "_iv", "_update_iv"))


def _open_gcm_once(encryption) -> None:
    """Give a GCM receiving key one AES-GCM object, and its packets one copy (see streamline)."""
    if (
        not _ASYNCSSH_AS_EXPECTED
        or type(encryption) is not GCMEncryption
        or "decrypt_packet" in encryption.__dict__
    ):
        return
    cipher = encryption._cipher
    if not _gcm_cipher_as_expected(cipher):
        return
    aead = AESGCM(cipher._key)

    def decrypt_packet(seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes) -> bytes | None:
        try:
            data = aead.decrypt(cipher._iv, b"".join((first[header_len:], rest, mac)), first[:header_len])
        except InvalidTag:
            data = None
        cipher._update_iv()
        return data

    encryption.decrypt_packet = decrypt_packet


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
