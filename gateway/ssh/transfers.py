"""Passive file-transfer tracking for the gateway's relayed SSH channels.

The gateway relays a channel's bytes unchanged; for a channel that carries file transfers it
also hands both byte streams to a tracker, which reports each file moved as a ``Transfer``
(direction, path, size, sha256) through a callback. Trackers never alter, hold back or delay
the stream: they only look at it, on the relay thread, so they are pure logic with no I/O,
no threads and no locks (one tracker per channel, called from one thread).

``SftpTracker`` reads SFTP version 3 (draft-ietf-secsh-filexfer-02), what OpenSSH's
sftp-server speaks; ``sftp`` and OpenSSH 9's ``scp`` both use it. What it follows:

- OPEN (path, flags), whose HANDLE reply maps the handle to the path; WRITE (upload bytes at
  an offset); READ (offset) and its DATA reply (download bytes at that offset); CLOSE, whose
  STATUS reply ends the file and emits its Transfer(s). Emitting on the reply, not on the
  request, means every earlier answer (DATA for pipelined READs, STATUS for WRITEs) has been
  seen: OpenSSH's sftp-server answers requests in order.
- A handle opened for writing (WRITE, CREAT, TRUNC or APPEND) gives an upload, of size 0 if
  nothing was written; a handle with at least one READ gives a download (of size 0 for an
  empty file, whose first READ gets EOF). A handle opened for reading and never read is not a
  transfer; a handle both written and read gives two Transfers.
- ``size`` is the highest offset + length written or read. ``sha256`` is the hash of the
  bytes in offset order: in-order bytes go straight into a running sha256 (no copy); bytes
  ahead of it (pipelined READs answered out of order, sftp's up to 64 outstanding requests)
  wait in a per-file dict keyed by offset, drained as the gap fills. The hash is given up,
  and the Transfer marked incomplete with a note, when the bytes waiting in all the
  channel's files would pass ``max_pending`` (so one channel holds at most that much), when
  data overlaps data already seen, or when a gap is left at the end; ``sha256`` is then ""
  (it is only ever the hash of exactly the bytes 0..size). Resumed transfers (``reput``,
  ``reget``) start past offset 0 and are therefore reported incomplete with their size.
- A WRITE or READ the server refused, or a failed CLOSE, marks the Transfer incomplete.
- With ``on_operation`` set, successful REMOVE, RENAME (and posix-rename@openssh.com), MKDIR,
  RMDIR and SETSTAT/FSETSTAT/lsetstat@openssh.com are reported as tuples: ``("remove",
  path)``, ``("rename", old, new)``, ``("mkdir", path)``, ``("rmdir", path)``,
  ``("setstat", path)``. Refused ones are not (nothing changed).
- ``close()`` (the channel ended) reports every file still open as incomplete.

Paths are reported as the client sent them (OpenSSH's clients send absolute paths), decoded
as UTF-8 with invalid bytes replaced.

``ScpTracker`` reads the legacy scp protocol (``scp -O``: an exec channel running ``scp -t
PATH`` on the target for an upload, ``scp -f PATH`` for a download; ``scp_mode()`` and
``ScpTracker.for_command()`` recognise the command). The source side sends ``T`` (times),
``C<mode> <size> <name>`` (a file: then exactly size bytes and a ``\\0``), ``D`` (enter a
directory) and ``E`` (leave it) lines, and the sink answers each with ``\\0`` or an error
line; the source waits for each answer, so the tracker follows the two streams in lockstep.
A file is emitted when the sink answers its trailing ``\\0``; one the sink refused before any
data is not a transfer. Paths: inside a ``D``, the directory path joined with the name. At the
top level of a download, the ``-f`` path if its last component is the name (else that path's
folder joined with the name: a glob the remote shell expanded). At the top level of an
upload the remote ``scp -t`` writes to ``TARGET/name`` if TARGET is an existing directory and
to TARGET itself otherwise, which the tracker cannot see; its rule is ``TARGET/name`` for a
``D`` record, when the client sent ``-d`` (several files), when TARGET ends in ``/`` or is
``~``, or when the name differs from TARGET's last component, and TARGET itself otherwise
(TARGET ``.``, what ``scp f host:`` sends, gives just the name, relative to the home
directory). So ``scp a.txt host:/tmp/b.txt`` is reported as ``/tmp/b.txt/a.txt``: both the
name the client sent and the target stay in the record, even when the guess is wrong.

Following the real peer, not a stricter reading of the protocol: where OpenSSH accepts
something, the trackers accept it the same way, so a client cannot hide a transfer by
sending what the server takes and the tracker would not. sftp-server ignores bytes after the
fields of a packet (the tracker skips them too) and answers a handle of the wrong length
with a failure (the tracker treats it as an unknown handle). scp reads a control line of
more than 2047 bytes as two records, and an answer of more than 2048 as two answers; the
tracker cuts the lines the target's scp reads at the same places, and takes the lines it
writes whole.

Limits, both trackers: on a stream the real peer would not accept either (a packet longer
than ``MAX_PACKET``, truncated fields, a control line that is not scp's, an answer byte that
is neither ``\0`` nor an error; or more than ``MAX_OUTSTANDING`` requests without an answer,
or one scp side sending ``SCP_MAX_AHEAD`` bytes out of turn) the tracker stops for good:
``failed`` says why, files open at that moment are reported incomplete with the reason, all
later bytes are ignored and nothing ever raises; the gateway keeps relaying. The server then
usually ends the session itself, but a user could still make tracking stop on purpose, so
the gateway must log ``failed`` as an event of its own. Other limits: SFTP versions other
than 3 are not followed; the trackers assume the server answers SFTP requests in order (as
OpenSSH's does: a READ answered after its file's CLOSE is lost, and the file then has a
gap); data the server copies itself (copy-data@openssh.com) and files moved by a shell
command are not seen; random-access writes (sshfs, editors) usually end with overlaps or
gaps, so the size is right but the hash is given up.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import posixpath
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from struct import Struct

logger = logging.getLogger(__name__)

# OpenSSH's SFTP_MAX_MSG_LENGTH is 256 KiB; sftp-server refuses longer messages and sftp
# (with the limits@openssh.com extension) writes and reads 255 KiB at a time.
MAX_PACKET = 256 * 1024 + 4096
# Requests waiting for an answer (sftp pipelines 64). The SSH channel windows bound how many
# can be in flight (a few MiB of 29-byte READs); this only stops a runaway table.
MAX_OUTSTANDING = 1 << 20
MAX_OPEN = 1 << 16  # handles open at once (sftp-server allows a few hundred)
MAX_NOTES = 4
# scp reads a control line into a 2048-byte buffer: at most 2047 bytes, the rest of a longer
# line being the next record; an answer is its first byte and at most 2047 more. Lines the
# target's scp writes itself have no such limit (only SCP_MAX_AHEAD).
SCP_LINE = 2047
SCP_MAX_AHEAD = 1024 * 1024  # bytes one side may send before its turn

_U32 = Struct(">I").unpack_from
_U64 = Struct(">Q").unpack_from

# SFTP v3 packet types and status codes.
FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 1, 2, 3, 4, 5, 6
FXP_SETSTAT, FXP_FSETSTAT = 9, 10
FXP_REMOVE, FXP_MKDIR, FXP_RMDIR, FXP_RENAME = 13, 14, 15, 18
FXP_STATUS, FXP_HANDLE, FXP_DATA, FXP_NAME, FXP_ATTRS = 101, 102, 103, 104, 105
FXP_EXTENDED, FXP_EXTENDED_REPLY = 200, 201
FX_OK, FX_EOF = 0, 1
PFLAG_READ, PFLAG_WRITE, PFLAG_APPEND, PFLAG_CREAT, PFLAG_TRUNC = 0x1, 0x2, 0x4, 0x8, 0x10
_WRITING = PFLAG_WRITE | PFLAG_APPEND | PFLAG_CREAT | PFLAG_TRUNC

# Kinds of requests waiting for an answer.
_OPEN, _READ, _WRITE, _CLOSE, _OP = range(5)


@dataclass(frozen=True)
class Transfer:
    """One file moved over a channel, as far as the tracker could see it."""

    direction: str  # "upload" (to the target) | "download"
    path: str
    size: int  # highest offset + length moved
    sha256: str  # hex digest of bytes 0..size in offset order; "" when it could not be computed
    complete: bool  # False: never closed, gaps or overlaps, refused, or tracking gave up
    note: str = ""  # why it is incomplete


class _Malformed(Exception):
    """The stream is not what the tracker can follow: it stops tracking."""


def _emit(callback: Callable, value) -> None:
    # A logging bug in the gateway must not stop the relay or the tracker.
    try:
        callback(value)
    except Exception:
        logger.exception("file-transfer callback failed")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _add_note(notes: list[str], note: str) -> None:
    if len(notes) < MAX_NOTES:
        notes.append(note)
    elif len(notes) == MAX_NOTES:
        notes.append("more problems not listed")


class _Budget:
    """Out-of-order bytes held for all the files of one channel, and the most allowed."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0


class _Content:
    """One direction of one file: its size and the running sha256 of its bytes in offset order."""

    __slots__ = ("budget", "next", "notes", "pending", "pending_bytes", "sha", "size")

    def __init__(self, budget: _Budget):
        self.budget = budget
        self.sha = hashlib.sha256()
        self.next = 0  # bytes 0..next are in the hash
        self.pending: dict[int, bytes] = {}  # offset -> bytes that came before their turn
        self.pending_bytes = 0
        self.size = 0
        self.notes: list[str] = []

    def add(self, offset: int, piece) -> None:
        end = offset + len(piece)
        if end > self.size:
            self.size = end
        sha = self.sha
        if sha is None or not piece:
            return
        if offset == self.next:
            sha.update(piece)
            self.next = end
            if self.pending:
                self._drain()
        elif offset > self.next:
            if offset in self.pending:
                self.give_up(f"data at offset {offset} arrived twice")
                return
            self.pending[offset] = bytes(piece)
            self.pending_bytes += len(piece)
            budget = self.budget
            budget.used += len(piece)
            if budget.used > budget.limit:
                self.give_up(f"more than {budget.limit} bytes arrived out of order")
        else:
            self.give_up(f"data at offset {offset} overlapped data already seen")

    def _drain(self) -> None:
        pending, sha, nxt, drained = self.pending, self.sha, self.next, 0
        while (chunk := pending.pop(nxt, None)) is not None:
            sha.update(chunk)
            nxt += len(chunk)
            drained += len(chunk)
        self.next = nxt
        self.pending_bytes -= drained
        self.budget.used -= drained

    def _release(self) -> None:
        self.budget.used -= self.pending_bytes
        self.pending = {}
        self.pending_bytes = 0

    def give_up(self, note: str) -> None:
        self.sha = None
        self._release()
        _add_note(self.notes, f"hash given up: {note}")

    def transfer(self, direction: str, path: str, extra: str = "") -> Transfer:
        notes = list(self.notes)
        digest = ""
        if self.sha is not None:
            if self.pending:
                notes.append(f"no data seen for offsets {self.next} to {min(self.pending)}")
            elif self.next != self.size:
                notes.append(f"no data seen for offsets {self.next} to {self.size}")
            else:
                digest = self.sha.hexdigest()
        self._release()
        if extra:
            notes.append(extra)
        return Transfer(direction, path, self.size, digest, not notes, "; ".join(notes))


class _File:
    """An open SFTP file handle."""

    __slots__ = ("done", "download", "path", "upload")

    def __init__(self, path: str):
        self.path = path
        self.upload: _Content | None = None
        self.download: _Content | None = None
        self.done = False


class _Reader:
    """One direction's parse state: a partial packet header, or the rest of a data payload."""

    __slots__ = ("buf", "left", "offset", "skip", "streamed", "target")

    def __init__(self, streamed: int):
        self.streamed = streamed  # WRITE from the client, DATA from the server: payload streamed
        self.buf = bytearray()  # an incomplete header or small packet
        self.left = 0  # payload bytes still to come
        self.target: _Content | None = None  # where they go (None: skipped)
        self.offset = 0  # their file offset
        self.skip = 0  # bytes after the payload, up to the packet's end (the server ignores them)


class _Cursor:
    """Reads SFTP fields from b[pos:end]; a field running past end is a malformed packet."""

    __slots__ = ("b", "end", "pos")

    def __init__(self, b, pos: int, end: int):
        self.b, self.pos, self.end = b, pos, end

    def u32(self) -> int:
        pos = self.pos
        if pos + 4 > self.end:
            raise _Malformed("truncated packet")
        self.pos = pos + 4
        return _U32(self.b, pos)[0]

    def u64(self) -> int:
        pos = self.pos
        if pos + 8 > self.end:
            raise _Malformed("truncated packet")
        self.pos = pos + 8
        return _U64(self.b, pos)[0]

    def string(self) -> bytes:
        n = self.u32()
        pos = self.pos
        if pos + n > self.end:
            raise _Malformed("truncated string in packet")
        self.pos = pos + n
        return bytes(self.b[pos : pos + n])

    def remaining(self) -> int:
        return self.end - self.pos


class SftpTracker:
    """Follows one SFTP session's two byte streams and reports each file transferred.

    ``from_client``/``from_server`` take the bytes as relayed, in any chunking; call them in
    the order the gateway relayed the bytes (an answer is seen before the request that
    depends on it). ``close()`` when the channel ends. ``failed`` is None while tracking, or
    why tracking stopped.
    """

    def __init__(
        self,
        on_transfer: Callable[[Transfer], None],
        *,
        on_operation: Callable[[tuple[str, ...]], None] | None = None,
        max_pending: int = 64 * 1024 * 1024,
    ):
        self.failed: str | None = None
        self.version: int | None = None
        self._on_transfer = on_transfer
        self._on_operation = on_operation
        self._budget = _Budget(max_pending)
        self._closed = False
        self._client = _Reader(FXP_WRITE)
        self._server = _Reader(FXP_DATA)
        self._client_started = False
        self._server_started = False
        self._handles: dict[bytes, _File] = {}
        self._requests: dict[int, tuple] = {}

    def from_client(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the client sent (requests)."""
        if self.failed is None and not self._closed:
            self._feed(self._client, data)

    def from_server(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the server sent (answers)."""
        if self.failed is None and not self._closed:
            self._feed(self._server, data)

    def close(self) -> None:
        """The channel ended: report the files still open as incomplete."""
        if self._closed:
            return
        self._closed = True
        if self.failed is None:
            self._finish_all(
                "the channel ended before the file was closed",
                "the channel ended before the server answered the CLOSE",
            )

    # Parsing -----------------------------------------------------------------------------

    def _feed(self, r: _Reader, data) -> None:
        try:
            self._parse(r, data)
        except _Malformed as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug here must never break the relay
            logger.exception("SFTP tracker failed")
            self._fail(f"internal error: {exc!r}")

    def _parse(self, r: _Reader, data) -> None:
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        end = len(mv)
        pos = 0
        while pos < end and self.failed is None:
            left = r.left
            if left:
                take = end - pos
                if take > left:
                    take = left
                target = r.target
                if target is not None:
                    target.add(r.offset, mv[pos : pos + take])
                    r.offset += take
                pos += take
                r.left = left - take
                continue
            if r.skip:
                take = min(r.skip, end - pos)
                pos += take
                r.skip -= take
                continue
            buf = r.buf
            if buf:
                need = self._need(r, buf, 0, len(buf))
                while len(buf) < need:
                    take = min(need - len(buf), end - pos)
                    if take <= 0:
                        return
                    buf += mv[pos : pos + take]
                    pos += take
                    need = self._need(r, buf, 0, len(buf))
                self._packet(r, buf, 0, need)
                buf.clear()
                continue
            need = self._need(r, mv, pos, end - pos)
            if end - pos < need:
                buf += mv[pos:end]
                return
            self._packet(r, mv, pos, need)
            pos += need

    @staticmethod
    def _need(r: _Reader, b, pos: int, avail: int) -> int:
        """How many bytes from pos the packet's header needs (the whole packet if not streamed)."""
        if avail < 4:
            return 5
        length = _U32(b, pos)[0]
        if length < 5 or length > MAX_PACKET:
            raise _Malformed(f"bad packet length {length}")
        if avail < 5:
            return 5
        typ = b[pos + 4]
        if typ != r.streamed:
            return 4 + length
        if typ == FXP_WRITE:
            if avail < 13:
                return 13
            # sftp-server refuses a handle that is not 4 bytes long, but reads the packet: so
            # must the tracker (it is only a bigger header, buffered up to MAX_PACKET).
            header = 25 + _U32(b, pos + 9)[0]
        else:
            header = 13
        if header > 4 + length:
            raise _Malformed("truncated packet")
        return header

    def _packet(self, r: _Reader, b, pos: int, n: int) -> None:
        typ = b[pos + 4]
        if typ == r.streamed:
            length = _U32(b, pos)[0]
            if typ == FXP_WRITE:
                self._write_header(r, b, pos, n, length)
            else:
                self._data_header(r, b, pos, length)
        elif r is self._client:
            self._client_packet(typ, _Cursor(b, pos + 5, pos + n))
        else:
            self._server_packet(typ, _Cursor(b, pos + 5, pos + n))

    def _write_header(self, r: _Reader, b, pos: int, n: int, length: int) -> None:
        if not self._client_started:
            raise _Malformed("not an SFTP session: the client did not start with INIT")
        rid = _U32(b, pos + 5)[0]
        hlen = _U32(b, pos + 9)[0]
        handle = bytes(b[pos + 13 : pos + 13 + hlen])
        offset = _U64(b, pos + 13 + hlen)[0]
        size = _U32(b, pos + 21 + hlen)[0]
        if n + size > 4 + length:
            raise _Malformed("WRITE data runs past the end of the packet")
        r.left = size
        r.skip = 4 + length - n - size  # sftp-server ignores bytes after the fields it reads
        f = self._handles.get(handle)
        if f is None:
            r.target = None
            return
        content = f.upload
        if content is None:
            content = f.upload = _Content(self._budget)
        r.target = content
        r.offset = offset
        self._track(rid, (_WRITE, f, offset))

    def _data_header(self, r: _Reader, b, pos: int, length: int) -> None:
        if not self._server_started:
            raise _Malformed("not an SFTP session: the server did not start with VERSION")
        rid = _U32(b, pos + 5)[0]
        size = _U32(b, pos + 9)[0]
        if 13 + size > 4 + length:
            raise _Malformed("DATA runs past the end of the packet")
        r.left = size
        r.skip = 4 + length - 13 - size
        r.target = None
        request = self._requests.pop(rid, None)
        if request is not None and request[0] == _READ and not request[1].done:
            r.target = request[1].download
            r.offset = request[2]

    def _track(self, rid: int, request: tuple) -> None:
        if len(self._requests) >= MAX_OUTSTANDING:
            raise _Malformed(f"more than {MAX_OUTSTANDING} requests without an answer")
        self._requests[rid] = request

    def _client_packet(self, typ: int, c: _Cursor) -> None:
        if typ == FXP_INIT:
            self._client_started = True
            return
        if not self._client_started:
            raise _Malformed("not an SFTP session: the client did not start with INIT")
        rid = c.u32()
        if typ == FXP_OPEN:
            path = _text(c.string())
            self._track(rid, (_OPEN, path, c.u32()))
        elif typ == FXP_READ:
            f = self._handles.get(c.string())
            offset = c.u64()
            c.u32()
            if f is not None:
                if f.download is None:
                    f.download = _Content(self._budget)
                self._track(rid, (_READ, f, offset))
        elif typ == FXP_CLOSE:
            f = self._handles.pop(c.string(), None)
            if f is not None:
                self._track(rid, (_CLOSE, f))
        elif self._on_operation is not None:
            op = self._operation(typ, c)
            if op is not None:
                self._track(rid, (_OP, op))

    def _operation(self, typ: int, c: _Cursor) -> tuple[str, ...] | None:
        if typ == FXP_REMOVE:
            return ("remove", _text(c.string()))
        if typ == FXP_RENAME:
            return ("rename", _text(c.string()), _text(c.string()))
        if typ == FXP_MKDIR:
            return ("mkdir", _text(c.string()))
        if typ == FXP_RMDIR:
            return ("rmdir", _text(c.string()))
        if typ == FXP_SETSTAT:
            return ("setstat", _text(c.string()))
        if typ == FXP_FSETSTAT:
            f = self._handles.get(c.string())
            return ("setstat", f.path) if f is not None else None
        if typ == FXP_EXTENDED:
            name = c.string()
            if name == b"posix-rename@openssh.com":
                return ("rename", _text(c.string()), _text(c.string()))
            if name == b"lsetstat@openssh.com":
                return ("setstat", _text(c.string()))
        return None

    def _server_packet(self, typ: int, c: _Cursor) -> None:
        if typ == FXP_VERSION:
            self._server_started = True
            self.version = c.u32()
            if self.version != 3:
                raise _Malformed(f"SFTP version {self.version} is not supported")
            return
        if not self._server_started:
            raise _Malformed("not an SFTP session: the server did not start with VERSION")
        request = self._requests.pop(c.u32(), None)
        if request is None:
            return
        kind = request[0]
        if typ == FXP_HANDLE:
            if kind == _OPEN:
                self._opened(c.string(), request[1], request[2])
        elif typ == FXP_STATUS:
            code = c.u32()
            message = _text(c.string()) if c.remaining() >= 4 else ""
            self._status(request, code, message or f"status {code}")

    def _opened(self, handle: bytes, path: str, pflags: int) -> None:
        old = self._handles.get(handle)
        if old is not None:
            self._finish(old, "the server reused the handle before it was closed")
        elif len(self._handles) >= MAX_OPEN:
            raise _Malformed(f"more than {MAX_OPEN} files open")
        f = _File(path)
        if pflags & _WRITING:
            f.upload = _Content(self._budget)
        self._handles[handle] = f

    def _status(self, request: tuple, code: int, message: str) -> None:
        kind = request[0]
        if kind == _CLOSE:
            self._finish(request[1], "" if code == FX_OK else f"the server failed to close it: {message}")
        elif code == FX_OK:
            if kind == _OP:
                _emit(self._on_operation, request[1])
        elif kind == _WRITE:
            _add_note(
                request[1].upload.notes, f"the server refused the write at offset {request[2]}: {message}"
            )
        elif kind == _READ and code != FX_EOF:
            _add_note(
                request[1].download.notes, f"the server refused the read at offset {request[2]}: {message}"
            )

    # Reporting ---------------------------------------------------------------------------

    def _finish(self, f: _File, extra: str = "") -> None:
        if f.done:
            return
        f.done = True
        if f.upload is not None:
            _emit(self._on_transfer, f.upload.transfer("upload", f.path, extra))
        if f.download is not None:
            _emit(self._on_transfer, f.download.transfer("download", f.path, extra))

    def _finish_all(self, note: str, closing_note: str) -> None:
        files = list(self._handles.values())
        closing = [r[1] for r in self._requests.values() if r[0] == _CLOSE]
        self._handles = {}
        self._requests = {}
        for f in files:
            self._finish(f, note)
        for f in closing:
            self._finish(f, closing_note)

    def _fail(self, reason: str) -> None:
        if self.failed is not None:
            return
        self.failed = reason
        self._client.buf = bytearray()
        self._server.buf = bytearray()
        self._finish_all(f"tracking stopped: {reason}", f"tracking stopped: {reason}")


# Legacy scp --------------------------------------------------------------------------------

_SCP_FLAGS = set("12346ABCTdfOpqRrstv")
_SCP_VALUE_FLAGS = set("DFJMPSXcilo")


def _parse_scp_command(command: str) -> tuple[str, list[str], bool] | None:
    """(direction, paths, -d given) for a remote ``scp -t``/``scp -f`` command, else None."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv or posixpath.basename(argv[0]) != "scp":
        return None
    flags: set[str] = set()
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        for j, ch in enumerate(arg[1:], start=1):
            if ch in _SCP_VALUE_FLAGS:
                if j == len(arg) - 1:
                    i += 1  # the value is the next argument
                    if i >= len(argv):
                        return None
                break
            if ch not in _SCP_FLAGS:
                return None
            flags.add(ch)
        i += 1
    paths = argv[i:]
    if ("t" in flags) == ("f" in flags) or not paths:
        return None
    return ("upload" if "t" in flags else "download"), paths, "d" in flags


def scp_mode(command: str) -> tuple[str, str] | None:
    """``("upload", target)`` for a remote ``scp -t``, ``("download", path)`` for ``scp -f``.

    None when the exec command is not a plain scp in source or sink mode (the legacy
    protocol; OpenSSH 9's scp uses the sftp subsystem instead). With several ``-f`` paths
    (a glob the remote shell will expand is one path) the first is returned.
    """
    parsed = _parse_scp_command(command)
    if parsed is None:
        return None
    return parsed[0], parsed[1][0]


class _ScpFile:
    __slots__ = ("expected", "path", "received", "sha", "source_error")

    def __init__(self, path: str, expected: int):
        self.path = path
        self.expected = expected
        self.received = 0
        self.sha = hashlib.sha256()
        self.source_error = ""


class ScpTracker:
    """Follows one legacy scp exec channel and reports each file transferred.

    ``direction`` is "upload" (the client is the source, the target runs ``scp -t``) or
    "download" (the target runs ``scp -f``); ``paths`` are the command's path arguments and
    ``target_is_dir`` whether it had ``-d`` (see the module docstring for how paths are
    reported). ``for_command()`` builds one from the exec command.
    """

    def __init__(
        self,
        direction: str,
        on_transfer: Callable[[Transfer], None],
        *,
        paths: Sequence[str] = (),
        target_is_dir: bool = False,
    ):
        if direction not in ("upload", "download"):
            raise ValueError(f"direction must be 'upload' or 'download', not {direction!r}")
        self.direction = direction
        self.failed: str | None = None
        self._on_transfer = on_transfer
        self._paths = [p for p in paths if p]
        self._target_is_dir = target_is_dir
        self._closed = False
        self._src = bytearray()  # source bytes not yet consumed
        self._sink = bytearray()  # sink bytes not yet consumed
        self._awaiting: str | None = "start"  # what the sink's next answer is for; None: source's turn
        self._file: _ScpFile | None = None
        self._left = 0  # data bytes of _file still to come
        self._trailer = False  # the byte after the data is next
        self._dirs: list[str] = []
        self._entering = ""  # the D record waiting for its answer
        # Each stream is read as its reader on the target reads it (the client may be
        # anything; the target runs OpenSSH's scp): in an upload the target reads the
        # source's records and trailers and writes the answers; in a download, the reverse.
        upload = direction == "upload"
        self._record_limit = SCP_LINE if upload else SCP_MAX_AHEAD
        self._trailer_limit = SCP_LINE + 1 if upload else SCP_MAX_AHEAD
        self._answer_limit = SCP_MAX_AHEAD if upload else SCP_LINE + 1

    @classmethod
    def for_command(cls, command: str, on_transfer: Callable[[Transfer], None]) -> ScpTracker | None:
        """A tracker for an exec channel's command, or None if it is not legacy scp."""
        parsed = _parse_scp_command(command)
        if parsed is None:
            return None
        direction, paths, target_is_dir = parsed
        return cls(direction, on_transfer, paths=paths, target_is_dir=target_is_dir)

    def from_client(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the client sent."""
        if self.direction == "upload":
            self._feed(self._from_source, data)
        else:
            self._feed(self._from_sink, data)

    def from_server(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the server sent."""
        if self.direction == "upload":
            self._feed(self._from_sink, data)
        else:
            self._feed(self._from_source, data)

    def close(self) -> None:
        """The channel ended: report a file still in transit as incomplete."""
        if self._closed:
            return
        self._closed = True
        if self.failed is None:
            self._abandon("the channel ended")

    # Parsing -----------------------------------------------------------------------------

    def _feed(self, method, data) -> None:
        if self.failed is not None or self._closed or not len(data):
            return
        try:
            mv = data if isinstance(data, memoryview) else memoryview(data)
            if mv.ndim != 1 or mv.itemsize != 1:
                mv = mv.cast("B")
            method(mv)
        except _Malformed as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug here must never break the relay
            logger.exception("scp tracker failed")
            self._fail(f"internal error: {exc!r}")

    def _from_source(self, mv: memoryview) -> None:
        if self._left and self._awaiting is None and not self._src:
            # The file's bytes, straight into the hash without a copy.
            take = min(self._left, len(mv))
            self._data(mv[:take])
            mv = mv[take:]
            if not mv:
                return
        self._src += mv
        self._pump()
        if len(self._src) > SCP_MAX_AHEAD:
            raise _Malformed("the source sent too much without waiting for the sink's answer")

    def _from_sink(self, mv: memoryview) -> None:
        self._sink += mv
        self._pump()
        if len(self._sink) > SCP_MAX_AHEAD:
            raise _Malformed("the sink sent too much out of turn")

    def _data(self, piece) -> None:
        f = self._file
        f.sha.update(piece)
        f.received += len(piece)
        self._left -= len(piece)
        if not self._left:
            self._trailer = True

    def _pump(self) -> None:
        while self.failed is None:
            if self._awaiting is not None:
                answer = self._take_answer(self._sink, "sink", self._answer_limit)
                if answer is None:
                    return
                self._answered(answer)
            elif self._left:
                if not self._src:
                    return
                take = min(self._left, len(self._src))
                with memoryview(self._src) as view:
                    self._data(view[:take])
                del self._src[:take]
            elif self._trailer:
                answer = self._take_answer(self._src, "source", self._trailer_limit)
                if answer is None:
                    return
                self._trailer = False
                self._file.source_error = answer
                self._awaiting = "file"
            else:
                line = self._take_line(self._src, self._record_limit)
                if line is None:
                    return
                self._record(line)

    @staticmethod
    def _take_answer(buf: bytearray, side: str, limit: int) -> str | None:
        """Consume "\\0" (returns "") or an error line (returns its text); None: incomplete."""
        if not buf:
            return None
        first = buf[0]
        if first == 0:
            del buf[:1]
            return ""
        if first not in (1, 2):
            raise _Malformed(f"unexpected byte {first:#x} from the {side} where scp expects an answer")
        line = ScpTracker._take_line(buf, limit)
        if line is None:
            return None
        return _text(line[1:]).strip() or "error"

    @staticmethod
    def _take_line(buf: bytearray, limit: int) -> bytes | None:
        """A line without its newline; one of limit bytes without a newline is cut there."""
        nl = buf.find(b"\n", 0, limit)
        if nl >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            return line
        if len(buf) >= limit:
            line = bytes(buf[:limit])
            del buf[:limit]
            return line
        return None

    def _record(self, line: bytes) -> None:
        kind = line[:1]
        if kind in (b"\x01", b"\x02"):
            return  # the source's error message about a file it could not send; no answer
        if kind == b"T":
            self._awaiting = "T"
        elif kind == b"E":
            self._awaiting = "E"
        elif kind in (b"C", b"D"):
            try:
                mode, size, name = line[1:].split(b" ", 2)
                int(mode, 8)
                expected = int(size)
            except ValueError:
                raise _Malformed(f"malformed scp record {_text(line[:80])!r}") from None
            if not name or not mode.isdigit() or not size.isdigit():
                raise _Malformed(f"malformed scp record {_text(line[:80])!r}")
            path = self._path(_text(name), is_dir=kind == b"D")
            if kind == b"C":
                self._file = _ScpFile(path, expected)
                self._awaiting = "C"
            else:
                self._entering = path
                self._awaiting = "D"
        else:
            raise _Malformed(f"unexpected scp record {_text(line[:80])!r}")

    def _answered(self, error: str) -> None:
        awaiting, self._awaiting = self._awaiting, None
        if awaiting == "C":
            if error:
                self._file = None  # refused before any data: not a transfer
            else:
                self._left = self._file.expected
                self._trailer = not self._left
        elif awaiting == "file":
            f, self._file = self._file, None
            notes = []
            if f.source_error:
                notes.append(f"the source reported an error: {f.source_error}")
            if error:
                notes.append(f"the sink reported an error: {error}")
            self._report(f, notes)
        elif awaiting == "D":
            if not error:
                self._dirs.append(self._entering)
        elif awaiting == "E" and self._dirs:
            self._dirs.pop()

    def _path(self, name: str, *, is_dir: bool) -> str:
        if self._dirs:
            return posixpath.join(self._dirs[-1], name)
        if not self._paths:
            return name
        if self.direction == "download":
            for source in self._paths:
                source = source.rstrip("/") or "/"
                if posixpath.basename(source) == name:
                    return source
            for source in self._paths:
                source = source.rstrip("/") or "/"
                if fnmatch.fnmatchcase(name, posixpath.basename(source)):
                    return posixpath.join(posixpath.dirname(source), name)
            return posixpath.join(posixpath.dirname(self._paths[0].rstrip("/")), name)
        target = self._paths[0]
        if target == ".":
            return name
        if (
            is_dir
            or self._target_is_dir
            or target.endswith("/")
            or target == "~"
            or posixpath.basename(target) != name
        ):
            return posixpath.join(target, name)
        return target

    # Reporting ---------------------------------------------------------------------------

    def _report(self, f: _ScpFile, notes: list[str]) -> None:
        if f.received != f.expected:
            notes.insert(0, f"{f.received} of {f.expected} bytes seen")
        complete = not notes
        digest = f.sha.hexdigest() if f.received == f.expected else ""
        _emit(
            self._on_transfer,
            Transfer(self.direction, f.path, f.received, digest, complete, "; ".join(notes)),
        )

    def _abandon(self, why: str) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        if self._awaiting == "C":
            return  # the sink never accepted it: no data moved
        if self._awaiting == "file":
            self._report(f, [f"{why} before the sink confirmed the file"])
        else:
            self._report(f, [why])

    def _fail(self, reason: str) -> None:
        if self.failed is not None:
            return
        self.failed = reason
        self._src = bytearray()
        self._sink = bytearray()
        self._abandon(f"tracking stopped: {reason}")
