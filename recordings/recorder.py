"""GatewaySession recording: the files the gateway writes as a session goes, and their sealing.

Three writers, one file (or pair of files) each, under ``RECORDINGS_ROOT``:

- ``TerminalRecorder``: a pty channel as asciicast v2 (``asciinema cat`` plays it). A header
  line ``{"version": 2, "width", "height", "timestamp", "title", "env"?}`` then one JSON
  array per line: ``[t, "o", text]`` output, ``[t, "r", "COLSxROWS"]`` resize. Output is
  decoded as UTF-8 with one incremental decoder per channel, so a character split across
  two reads stays whole; invalid bytes become U+FFFD; escape sequences are kept (JSON
  escapes them, e.g. ``\\u001b``). Output chunks less than 10 ms apart share one event.
  ``[t, "m", label]`` markers: what the user types is never recorded (``input()``), but each
  Enter adds a marker labelled with the screen line the target echoed for it, placed where
  that line is on the screen, so the replay lists and jumps to each command (also each line
  of input pasted or piped in at once).
- ``ExecRecorder``: a non-pty exec channel's output, which may be binary (tar, DICOM), as
  the exact raw bytes in ``channel-N.bin`` plus a text timing index ``channel-N.idx`` with
  one line ``"<t> <offset> <length> <stream>"`` per chunk (stream ``o`` stdout, ``e``
  stderr). Chunks of one stream less than 10 ms apart share a line. No JSON escaping of
  binary data, so the recording is the data's size plus ~30 bytes per index line.
- ``EventLog``: the session's events as JSON lines: a header
  ``{"format": "pamsite-events", "version": 1, "session", "timestamp"}`` then objects with
  ``t`` and ``event``: ``exec`` (channel, command), ``exit`` (channel, status),
  ``file-transfer`` (channel, direction, path, size, sha256), ``forward`` (channel, host,
  port, bytes_in, bytes_out).

``t`` is seconds since the file was opened (monotonic clock), 6 decimals.

Buffering, and one writer thread per process: ``write()`` is called on the relay's hot
path, so it only appends a reference to an in-memory list (conversion to asciicast JSON and
index lines is deferred to the flush). A flush happens in ``write()`` only when
FLUSH_INTERVAL (0.25 s) has passed since the last one or MAX_BUFFER (256 KiB) is pending,
and it only encodes and queues the bytes: the process's one writer thread (``_Writer``) makes the
``write(2)`` calls, in order, so the relay never waits on the disk (writing to the page
cache took a quarter of a busy gateway's relay time). The queue is bounded
(WRITER_QUEUE_MAX): when the disk falls behind, flushing waits for room, so a slow disk
slows the relay instead of filling memory. A channel that goes quiet right after some output
would keep it in memory, so the gateway calls ``flush_due()`` from its one housekeeping loop
(four times a second) to flush every recorder that is due: one timer and one writer per
process, not threads per recorder (the prototype measured 5 threads and ~10 MB per recorder
process; recorders must be cheap and shared). ``flush()`` and ``close()`` wait until the
writer has written everything queued. A flush hands the bytes to the kernel, so a killed
gateway (SIGKILL) loses at most the last 0.25 s and what was queued; fsync is done at close
only (a power cut may lose what the kernel had not written back yet).

Sealing: ``close()`` (or ``finalize_interrupted()`` for files a dead gateway left) computes the
sha256 of the file(s) and has Vault's transit key sign the canonical manifest line
(``signed_manifest``), which names the recording, session, kind, paths, size, sha256(s) and
the interrupted flag, so a signature cannot be moved to another row or file; the public key
of the signing key's version is kept in pamsite's database (``vault.signatures``).
``verify_recording()`` checks both, the signature here against the kept public key: it
needs no Vault, and a Vault that lost its key makes "cannot check", never "tampered".
File names come from ids and dates only, never from anything a user typed; no secret is
ever put in a Recording row.

Errors: a recording that cannot be created (missing or read-only folder, disk nearly full)
raises ``RecordingError`` at open, so the gateway refuses the session; a write that fails
mid-session (found by the writer thread) raises ``RecordingError`` from the next
``write()``/``flush()`` and every later call, so the gateway ends the session;
``flush_due()`` calls the recorder's ``on_failure`` with it, so an idle channel is ended
too. A failed write is cut back to the end of the last complete flush, so a recording
always ends at a whole record: an asciicast or event line, an exec chunk with its index
line. A full recordings volume says so in every message ("recordings volume is full").

Vault down at close: the file is complete, but cannot be signed. ``close()`` keeps the
sha256 it computed on the row (not finalised) and raises ``SealDeferred``: the session
ends normally, and ``seal_leftovers()`` (the worker's ``sessions_maintain``) signs it once
Vault is back, as complete if the file still has that sha256 (else it is not signed: it
changed after its gateway closed it).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import datetime
import errno
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
import typing
import weakref
from pathlib import Path

import orjson
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from recordings.models import GatewaySession, Recording
from recordings.sessions import session_end
from recordings.terminal import ESCAPES_BUT_NEWLINE, MARKER_LABEL_MAX, screen_line
from vault import signatures
from vault.client import VaultError, VaultSealed, VaultUnavailable, get_client
from vault.signatures import KeyRing, transit_key_keep_for

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.25  # seconds: the most a killed gateway may lose, and how far live viewers lag
# Bytes pending before write() flushes regardless of time. Each flush is a hand-over to the
# writer thread: at 64 KiB a busy gateway spent a fifth more CPU per GiB relayed than at 256.
MAX_BUFFER = 256 * 1024
WRITER_QUEUE_MAX = 16 * 1024 * 1024  # bytes queued for the writer thread before flushes wait
MIN_FREE_BYTES = 16 * 1024 * 1024  # refuse to start a recording on a nearly full disk
COALESCE_SECONDS = 0.01  # exec chunks of one stream closer than this share an index line
LINE_TAIL_MAX = 4096  # bytes of the current output line kept to label the next marker
# Pasted or piped lines arrive before the target echoes them: each Enter waits for the output
# line that echoes it (TerminalRecorder.input). The line being typed is kept in memory only,
# to recognise that echo, at most this many characters of it:
TYPED_TAIL_MAX = 256
ECHO_WAITING_MAX = 1000  # Enters waiting for their echo at once; more lines pasted at once get none
# Output read while Enters wait for their echo, before they are given the line shown when
# Enter came: bounds the relay's work when a pasted command prints a lot before the next echo.
ECHO_SCAN_MAX = 1024 * 1024  # ~25 ms of the relay's CPU, at most, per paste (escape sequences stripped)
ECHO_LOOKAHEAD = 200  # output lines searched for a prompt-and-command echo before a bare one
ECHO_SKIP_MAX = 4  # later Enters looked at when the oldest waiting one finds no echo
SHORT_LINE = 32  # output lines shorter than this are always looked at (an empty echo, say)
_HASH_BLOCK = 1024 * 1024
SEAL_SAVE_TRIES = 3
REPLAY_INDEX_SUFFIX = ".replay-index.json"  # the player's index beside a terminal recording
LEFTOVER_GRACE_SECONDS = 60  # an ended session's gateway may still be sealing its files

_live: weakref.WeakSet[_Recorder] = weakref.WeakSet()
_live_lock = threading.Lock()


class RecordingError(Exception):
    """A recording could not be created, written or sealed; the message says what and where."""


KEY_NOT_FOUND_REASON = "signing key not found"


class SignatureUncheckable(RecordingError):
    """A recording's signature could not be checked (not a verdict: never intact, never tampered).

    ``reason`` is short, for a label: "signing key not found", "Vault unreachable", "Vault
    sealed" or "Vault refused the check"; the message says which recording and why.
    """

    def __init__(self, message: str, *, reason: str, vault_error: VaultError | None = None):
        super().__init__(message)
        self.reason = reason
        self.vault_error = vault_error


class SealDeferred(RecordingError):
    """The recording was written completely but could not be signed yet (Vault or the database
    unreachable): ``seal_leftovers()`` seals it later. Not a reason to end a session as failed."""


def _os_error(exc: OSError, what: str) -> str:
    """What went wrong writing a recording; a full volume named as such."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"The recordings volume is full: {what} failed ({exc.strerror}). Free space under RECORDINGS_ROOT"
        )
    return f"{what[:1].upper()}{what[1:]} failed: {exc.strerror or exc}"


def recordings_root() -> Path:
    return Path(settings.RECORDINGS_ROOT)


def _session_dir(session: GatewaySession) -> str:
    # Dates and ids only: never a user name, account or command in a path.
    started = session.started_at.astimezone(datetime.UTC)
    return f"{started:%Y/%m/%d}/session-{session.pk}"


def _create(root: Path, relative: str) -> int:
    """A new file (never an existing one) opened for writing; RecordingError if impossible."""
    path = root / relative
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        free = shutil.disk_usage(path.parent).free
    except OSError as exc:
        raise RecordingError(
            f"Cannot create the recordings folder {path.parent}: {exc.strerror or exc}. "
            "Check RECORDINGS_ROOT exists and the gateway may write to it"
        ) from None
    if free < MIN_FREE_BYTES:
        raise RecordingError(
            f"The recordings volume is full: the disk holding {root} has {free // 1024} KiB free (at "
            f"least {MIN_FREE_BYTES // (1024 * 1024)} MiB needed). Free space under RECORDINGS_ROOT"
        )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, flags, 0o640)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RecordingError(_os_error(exc, f"creating the recording {path}")) from None
        raise RecordingError(f"Cannot create the recording {path}: {exc.strerror or exc}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _hash_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def signed_manifest(recording: Recording) -> bytes:
    """The exact bytes the transit key signs for a finalised recording (one ASCII line)."""
    return (
        f"pamsite-recording v1 id={recording.pk} session={recording.session_id} kind={recording.kind} "
        f"path={recording.path} index={recording.index_path or '-'} size={recording.size} "
        f"sha256={recording.sha256} index-sha256={recording.index_sha256 or '-'} "
        f"interrupted={int(recording.interrupted)}"
    ).encode("ascii")


def _seal(recording: Recording, *, root: Path, interrupted: bool) -> None:
    """Hash the file(s) as they are on disk, sign the manifest with Vault, save the row."""
    try:
        recording.sha256, recording.size = _hash_file(root / recording.path)
        recording.index_sha256 = _hash_file(root / recording.index_path)[0] if recording.index_path else ""
    except OSError as exc:
        raise RecordingError(
            f"Cannot read back the recording {recording.path}: {exc.strerror or exc}"
        ) from None
    recording.interrupted = interrupted
    manifest = signed_manifest(recording)
    try:
        vault = get_client()
        signature = vault.transit_sign(manifest)
    except VaultError as exc:
        _defer(recording, f"was written but could not be signed yet ({exc})")
    fields = ["sha256", "size", "index_sha256", "interrupted", "signature", "finalized_at"]
    # Many sessions ending at once (a gateway stopping) can find the database busy or the
    # connection gone: retried on a fresh connection before giving up.
    for attempt in range(SEAL_SAVE_TRIES):
        try:
            # The public key of the version that signed is kept before the recording counts
            # as sealed: every sealed recording can then be checked without Vault, and one
            # whose kept key does not verify it is tampered, not signed by a key never seen.
            transit_key_keep_for(data=manifest, signature=signature, vault=vault)
            recording.signature = signature
            recording.finalized_at = timezone.now()
            recording.save(update_fields=fields)
            return
        except VaultError as exc:
            _defer(recording, f"was signed, but the signing key's public key could not be kept ({exc})")
        except DatabaseError as exc:
            if attempt + 1 == SEAL_SAVE_TRIES:
                raise SealDeferred(
                    f"Recording {recording.path} was signed but its row could not be saved ({exc}); "
                    "sessions_maintain seals it again later"
                ) from None
            if not connection.in_atomic_block:
                connection.close()
            time.sleep(0.5 * (attempt + 1))


def _defer(recording: Recording, why: str) -> typing.NoReturn:
    """Leave the row unfinalised, with the sha256 its writer saw, for seal_leftovers() (or
    finalize_interrupted() at the next gateway start) to sign once Vault is back."""
    with contextlib.suppress(DatabaseError):
        recording.save(update_fields=["sha256", "size", "index_sha256", "interrupted"])
    raise SealDeferred(f"Recording {recording.path} {why}; sessions_maintain signs it once Vault is back")


class _Writer:
    """The process's one thread writing flushed recordings to their files, in order.

    ``put()`` queues one flush (a recorder's data and index bytes) and returns; it waits only
    while more than WRITER_QUEUE_MAX bytes are queued. The thread writes each flush with
    ``_Recorder._write_out`` (which records a failure on the recorder; it never takes the
    recorder's lock). ``wait_for(recorder)`` returns once that recorder's flushes are written.
    Started at the first flush; a forked child (``ssh_gateway --workers``) starts its own.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: collections.deque = collections.deque()
        self._queued_bytes = 0
        self._thread: threading.Thread | None = None

    def put(self, recorder: _Recorder, data: bytes, index: bytes) -> None:
        size = len(data) + len(index)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
                self._thread.start()
            while self._queued_bytes > WRITER_QUEUE_MAX:
                self._cond.wait()
            self._jobs.append((recorder, data, index, size))
            self._queued_bytes += size
            recorder._queued += 1
            self._cond.notify_all()

    def wait_for(self, recorder: _Recorder) -> None:
        with self._cond:
            while recorder._queued:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                recorder, data, index, size = self._jobs.popleft()
            try:
                recorder._write_out(data, index)
            except Exception:  # never lose the thread: the recorder is marked failed
                logger.exception("Writing a recording failed")
                recorder._failed = recorder._failed or "Writing the recording failed unexpectedly"
            with self._cond:
                self._queued_bytes -= size
                recorder._queued -= 1
                self._cond.notify_all()


_writer = _Writer()


def _new_writer_in_child() -> None:
    global _writer
    _writer = _Writer()  # the parent's thread does not exist here; its queue is not ours


os.register_at_fork(after_in_child=_new_writer_in_child)


class _Recorder:
    """What the three writers share: create, buffer, flush, close and seal."""

    kind: str

    def __init__(self, *, session: GatewaySession, channel: int | None, root: Path | str | None = None):
        if session.pk is None:
            raise RecordingError("The session must be saved before its recordings are opened")
        self.root = Path(root) if root is not None else recordings_root()
        self._lock = threading.Lock()
        self._pending: list = []
        self._pending_bytes = 0
        self._failed: str | None = None
        self._failure_reported = False
        self._queued = 0  # flushes queued for the writer thread and not written yet
        self._closed = False
        self._fds: list[int] = []
        self._sizes: dict[int, int] = {}  # bytes of each file written by complete flushes
        # Called with the message when a flush that nobody waits on fails (flush_due): the
        # gateway ends the session then, not at the channel's next output.
        self.on_failure = None
        path, index_path = self._paths(_session_dir(session), channel)
        created: list[str] = []
        try:
            self._fd = self._open(path)
            created.append(path)
            self._index_fd = self._open(index_path) if index_path else None
            created.append(index_path)
            self._write_header(session)
            self.recording = Recording.objects.create(
                session=session, channel=channel, kind=self.kind, path=path, index_path=index_path
            )
        except BaseException:
            self._close_fds()
            for name in created:  # only files this recorder made, never an existing one
                if name:
                    (self.root / name).unlink(missing_ok=True)
            raise
        self._start = time.monotonic()
        self._last_flush = self._start
        with _live_lock:
            _live.add(self)

    def _paths(self, folder: str, channel: int | None) -> tuple[str, str]:
        raise NotImplementedError

    def _open(self, relative: str) -> int:
        fd = _create(self.root, relative)
        self._fds.append(fd)
        self._sizes[fd] = 0
        return fd

    def _write_header(self, session: GatewaySession) -> None:
        """Written at open, unbuffered, so a disk that cannot take it refuses the session."""

    def _put_now(self, fd: int, data: bytes) -> None:
        try:
            _write_all(fd, data)
        except OSError as exc:
            raise RecordingError(_os_error(exc, "writing the recording's header")) from None
        self._sizes[fd] += len(data)

    # --- Hot path -------------------------------------------------------------------

    def _append(self, entry: tuple, size: int) -> None:
        if self._failed or self._closed:
            raise RecordingError(self._failed or "The recording is closed")
        now = time.monotonic()
        with self._lock:
            self._pending.append((now - self._start, *entry))
            self._pending_bytes += size
            if self._pending_bytes >= MAX_BUFFER or now - self._last_flush >= FLUSH_INTERVAL:
                self._flush_locked()

    # --- Flushing -------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything pending to the file(s) now; returns once it is written."""
        with self._lock:
            if self._closed:
                return
            self._flush_locked()
            _writer.wait_for(self)
            if self._failed:
                raise RecordingError(self._failed)

    def flush_if_due(self) -> bool:
        """Flush if something is pending and the last flush was FLUSH_INTERVAL ago or more; True if it did.

        Does not wait for the writer. Raises the recording's failure once, also when it was
        found by the writer while nothing is pending (the channel has gone quiet).
        """
        if self._failed and not self._failure_reported and not self._closed:
            self._failure_reported = True
            raise RecordingError(self._failed)
        if not self._pending or time.monotonic() - self._last_flush < FLUSH_INTERVAL:
            return False
        with self._lock:
            if not self._closed:
                self._flush_locked()
        return True

    def _flush_locked(self) -> None:
        """Encode what is pending and queue it for the writer thread."""
        if self._failed:
            raise RecordingError(self._failed)
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        data, index = self._encode(pending)
        if data or index:
            _writer.put(self, data, index)

    def _write_out(self, data: bytes, index: bytes) -> None:
        """On the writer thread: one flush to the file(s), or the failure recorded and the
        files cut back to the last complete flush."""
        if self._failed:
            return  # nothing is written after a failure
        try:
            if data:
                _write_all(self._fd, data)
            if index:
                _write_all(self._index_fd, index)
        except OSError as exc:
            self._failed = _os_error(exc, f"writing the recording {self.recording.path}")
            self._cut_back()
            return
        if data:
            self._sizes[self._fd] += len(data)
        if index:
            self._sizes[self._index_fd] += len(index)

    def _cut_back(self) -> None:
        """Truncate each file to its last complete flush, so no half record is left at its end
        (a half JSON line, output its index does not describe). Nothing is written after."""
        for fd, size in self._sizes.items():
            try:
                os.ftruncate(fd, size)
            except OSError:
                logger.warning("Could not cut %s back to %s bytes", self.recording.path, size, exc_info=True)

    def _encode(self, pending: list) -> tuple[bytes, bytes]:
        raise NotImplementedError

    def _finish(self) -> None:
        """Queue whatever the writer still holds (a decoder's tail) before the last flush."""

    # --- Closing ----------------------------------------------------------------------

    def close(self) -> Recording:
        """Flush, fsync, close, then hash and sign the file(s); the finalised Recording.

        If the last flush failed the file is still sealed as it is on disk, marked
        interrupted, and RecordingError is raised. If it cannot be signed now (Vault
        unreachable), SealDeferred is raised: ``seal_leftovers()`` signs it later. Calling
        close() again does nothing.
        """
        with self._lock:
            if self._closed:
                return self.recording
            self._closed = True
            error = None
            try:
                try:
                    self._finish()
                    self._flush_locked()
                finally:
                    _writer.wait_for(self)
                if self._failed:
                    raise RecordingError(self._failed)
                for fd in self._fds:
                    os.fsync(fd)
            except RecordingError as exc:
                error = exc
            except OSError as exc:
                error = RecordingError(
                    f"Cannot sync the recording {self.recording.path}: {exc.strerror or exc}"
                )
            self._close_fds()
        with _live_lock:
            _live.discard(self)
        try:
            _seal(self.recording, root=self.root, interrupted=error is not None)
        except SealDeferred:
            if error is None:
                raise
            # The write failure is what the session ends for; the seal waits for Vault.
        if error is not None:
            raise error
        return self.recording

    def _close_fds(self) -> None:
        while self._fds:
            try:
                os.close(self._fds.pop())
            except OSError:
                logger.warning("Closing a recording file failed", exc_info=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class TerminalRecorder(_Recorder):
    """A pty channel's output and resizes, as asciicast v2 (``channel-N.cast``)."""

    kind = Recording.Kind.TERMINAL

    def __init__(
        self,
        *,
        session: GatewaySession,
        channel: int,
        width: int,
        height: int,
        term: str = "",
        title: str = "",
        root: Path | str | None = None,
    ):
        self._header = {"version": 2, "width": int(width), "height": int(height), "title": title}
        self._width = int(width)  # the terminal's, for the screen lines that label markers
        if term:
            self._header["env"] = {"TERM": term}
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line_tail = b""  # flushed output since the last newline, for marker labels
        self._input_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._typing = ""  # the end of the line being typed: in memory only, never written
        self._after_cr = False  # the last input byte was CR (a CRLF split across two reads)
        self._awaiting: collections.deque[_AwaitedEcho] = collections.deque()
        self._echo_from = 0  # index in _pending of the first output after the oldest waiting Enter
        self._echo_scanned = 0  # bytes of output read for the waiting Enters' echoes
        self._last_t = 0.0  # time of the last event encoded: times never go back in the file
        super().__init__(session=session, channel=channel, root=root)

    def _paths(self, folder: str, channel: int | None) -> tuple[str, str]:
        return f"{folder}/channel-{channel}.cast", ""

    def _write_header(self, session: GatewaySession) -> None:
        header = {**self._header, "timestamp": int(time.time())}
        self._put_now(self._fd, json.dumps(header, ensure_ascii=False).encode() + b"\n")

    def write(self, data: bytes) -> None:
        """Output from the target to the user's terminal, exactly as relayed."""
        if type(data) is not bytes:
            data = bytes(data)  # the relay may reuse its buffer
        self._append(("o", data), len(data))

    def resize(self, width: int, height: int) -> None:
        """The user's terminal changed size (a window-change request)."""
        self._width = int(width)
        self._append(("r", f"{int(width)}x{int(height)}"), 16)

    def input(self, data: bytes) -> None:
        """What the user typed on this pty channel: never recorded; each Enter adds a marker.

        The typed bytes are not written anywhere (a password typed at a prompt with echo off
        would be in the recording otherwise). Each Enter (CR, LF or CRLF) adds a marker event
        ``[t, "m", label]`` labelled with the screen line the target echoed for it: the output
        line with carriage returns, backspaces and line edits applied and escape sequences
        stripped (``recordings.terminal``, the model the search text is made with, so the
        label is the line the search holds), at most 80 characters; empty when nothing was
        echoed.

        Typed key by key, the line is on the screen when Enter comes: the marker goes there,
        before the command's output. Pasted or piped lines (several Enters in one read, or
        text and Enter together) come before the target has echoed them: each Enter then
        waits for its echo, the first later output line ending with what was typed on that
        line (after the prompt, preferred to a bare copy, which is the terminal echoing input
        sent before the shell read it), or left as it was on the screen (echo off: a password
        prompt). The marker goes right after that line, so a jump shows the command and not
        yet its output. The end of the line being typed is kept in memory for that match
        only (TYPED_TAIL_MAX characters), and dropped when it is found or given up: an Enter
        typed on an echoed line gives up those still waiting (the target is echoing what is
        typed now), as does more than ECHO_SCAN_MAX of output or the end of the recording;
        a marker given up is labelled with the line shown when its Enter came.

        Cheap on the relay's input path: keystrokes without Enter only update the typed line;
        on Enter only the output since the last newline is looked at.
        """
        if type(data) is not bytes:
            data = bytes(data)
        text = self._input_decoder.decode(data)
        lines, self._typing, self._after_cr = typed_lines(self._typing, text, after_cr=self._after_cr)
        if not lines:
            return
        if self._failed or self._closed:
            raise RecordingError(self._failed or "The recording is closed")
        with self._lock:
            if self._awaiting and self._pending:
                self._flush_locked()  # the echoes already relayed are placed before this Enter
            now = time.monotonic() - self._start
            shown = screen_line(
                _line_since_newline(self._pending, self._line_tail), width=self._width, limit=None
            )
            first = lines[0]
            if not first or shown.endswith(first):
                if first:
                    self._give_up_echoes(now)
                if not self._awaiting:
                    label = shown[:MARKER_LABEL_MAX]
                    self._pending.append((now, "m", label))
                    self._pending_bytes += len(label) + 16
                    lines = lines[1:]
            if lines and not self._awaiting:
                self._echo_from, self._echo_scanned = len(self._pending), 0
            for typed in lines[: max(0, ECHO_WAITING_MAX - len(self._awaiting))]:
                self._awaiting.append(_AwaitedEcho(typed, shown))

    def _give_up_echoes(self, now: float, *, into: list | None = None) -> None:
        """Each Enter still waiting for its echo gets the line shown when it came."""
        into = self._pending if into is None else into
        while self._awaiting:
            into.append((now, "m", self._awaiting.popleft().before[:MARKER_LABEL_MAX]))

    def _place_echoes(self, pending: list) -> list:
        """``pending`` with a marker after each output line that echoes a waiting Enter."""
        start, self._echo_from = self._echo_from, 0
        # An echo ends with what was typed (or the line shown at Enter), escape sequences aside:
        # that is tested on the whole output at once, the screen text made only for lines that
        # pass (or are short: an Enter alone echoed on a line of its own).
        ends = tuple(
            {
                text.encode()
                for waiting in itertools.islice(self._awaiting, ECHO_LOOKAHEAD)
                for text in (waiting.typed, waiting.before)
                if text
            }
        )
        # 1. The output lines completed in this flush that may be an echo, in order.
        candidates: list[tuple[int, int, str]] = []  # entry index, end of the line in it, text
        carry = self._line_tail
        over_budget = None
        for number, (_t, code, payload) in enumerate(pending):
            if code != "o" or not isinstance(payload, bytes):
                continue
            if number < start:  # output from before the oldest waiting Enter: no echo of it
                carry = _line_since_newline([(0, "o", payload)], carry)
                continue
            if self._echo_scanned > ECHO_SCAN_MAX:
                over_budget = number
                break
            self._echo_scanned += len(payload)
            text = carry + payload
            raws = text.split(b"\n")
            plains = ESCAPES_BUT_NEWLINE.sub(b"", text).split(b"\n")
            end = -len(carry)
            for raw, plain in zip(raws[:-1], plains, strict=False):
                end += len(raw) + 1
                if len(raw) < SHORT_LINE or plain.rstrip().endswith(ends):
                    candidates.append(
                        (number, end, screen_line(raw[-LINE_TAIL_MAX:], width=self._width, limit=None))
                    )
            carry = raws[-1][-LINE_TAIL_MAX:]
        # 2. Each waiting Enter, oldest first, takes its echo among the lines after the last one
        # taken. One not echoed yet holds the next ones back, unless one of the next few finds
        # the prompt and its line: then the target did not echo it in a form seen here (the
        # Enter that runs a bracketed paste, say), and it is given up there.
        placed: dict[int, list[tuple[int, str]]] = {}
        taken = 0
        while self._awaiting and taken < len(candidates):
            for skipped, waiting in enumerate(itertools.islice(self._awaiting, ECHO_SKIP_MAX + 1)):
                found = waiting.echo_in(candidates, taken, prompted_only=skipped > 0)
                if found is not None:
                    break
            if found is None:
                break  # not echoed yet; the Enters after it wait too
            number, end, text = candidates[found]
            marks = placed.setdefault(number, [])
            for _ in range(skipped):
                marks.append((end, self._awaiting.popleft().before[:MARKER_LABEL_MAX]))
            marks.append((end, text[:MARKER_LABEL_MAX]))
            self._awaiting.popleft()
            taken = found + 1
        if not placed and over_budget is None:
            return pending
        # 3. Output entries split after each echoed line, the marker between: a jump to it
        # shows the line, not what came after (the player shows what is at or before its time).
        out: list = []
        for number, entry in enumerate(pending):
            if number == over_budget:
                self._give_up_echoes(entry[0], into=out)
            marks = placed.get(number)
            if not marks:
                out.append(entry)
                continue
            t, code, payload = entry
            t, cut = round(t, 6), 0
            for end, label in marks:
                if end > cut:
                    out.append((t, code, payload[cut:end]))
                out.append((t, "m", label))
                t, cut = round(t + 1e-6, 6), end
            if cut < len(payload):
                out.append((t, code, payload[cut:]))
        if not self._awaiting:
            self._echo_scanned = 0
        return out

    def _finish(self) -> None:
        self._flush_locked()  # decode what is pending before asking the decoder for its tail
        now = time.monotonic() - self._start
        if self._awaiting:  # the session ended: a last echo without its newline, or none
            shown = screen_line(self._line_tail, width=self._width, limit=None)
            if self._awaiting[0].echo_in([(0, 0, shown)], 0) is not None:
                self._awaiting.popleft()
                self._pending.append((now, "m", shown[:MARKER_LABEL_MAX]))
            self._give_up_echoes(now)
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._pending.append((now, "o", tail))

    def _encode(self, pending: list) -> tuple[bytes, bytes]:
        # orjson escapes ~5x faster than the json module (2.7 GB/s of terminal text here):
        # this runs on the relay thread at each flush.
        if self._awaiting:
            pending = self._place_echoes(pending)
        self._line_tail = _line_since_newline(pending, self._line_tail)
        lines = []
        last_t = self._last_t
        group_t, group = 0.0, []  # output chunks less than 10 ms apart become one event
        for t, code, payload in [*pending, (None, "", None)]:
            if group and (code != "o" or t - group_t >= COALESCE_SECONDS):
                text = self._decoder.decode(b"".join(group))
                if text:  # empty when all we have is the start of a multibyte character
                    last_t = max(round(group_t, 6), last_t)
                    lines.append(orjson.dumps([last_t, "o", text]))
                group = []
            if code == "o" and isinstance(payload, bytes):
                if not group:
                    group_t = t
                group.append(payload)
            elif code:
                last_t = max(round(t, 6), last_t)
                lines.append(orjson.dumps([last_t, code, payload]))
        self._last_t = last_t
        return (b"\n".join(lines) + b"\n") if lines else b"", b""


class _AwaitedEcho:
    """An Enter whose line the target has not echoed yet (TerminalRecorder.input)."""

    __slots__ = ("before", "typed")

    def __init__(self, typed: str, before: str):
        self.typed = typed  # what was typed on the line, to recognise its echo; never written
        self.before = before  # the screen line when Enter came: the label if no echo is seen

    def echo_in(
        self, lines: list[tuple[int, int, str]], start: int, *, prompted_only: bool = False
    ) -> int | None:
        """Which of ``lines[start:]`` (their screen text last) echoes this Enter, or None.

        The first that shows the typed line after a prompt (or, nothing typed being visible,
        the line as it was when Enter came); else, unless ``prompted_only``, the first that
        is the typed line alone (an empty line for an Enter alone).
        """
        typed, size, bare = self.typed, len(self.typed), None
        for number in range(start, min(len(lines), start + ECHO_LOOKAHEAD)):
            text = lines[number][2]
            if typed and text.endswith(typed):
                if len(text) == size:
                    bare = number if bare is None else bare
                    continue
                if not text[-size - 1].isalnum():  # "$ ls", not "tools"
                    return number
            elif prompted_only:
                continue
            elif text == self.before and (self.before or not typed):
                return number
            elif not typed and not text and bare is None:
                bare = number  # an Enter alone, echoed on a line of its own
        return None if prompted_only else bare


# The keys whose effect on the line being typed is known; any other control or escape sequence
# (completion, history, cursor movement) makes the line's start unknown, so only what is typed
# after it is matched against the echo.
_INPUT_TOKENS = re.compile(r"\r\n?|\n|\x1b(?:\[[0-?]*[ -/]*[@-~]|O[ -~]|[ -~])?|[\x00-\x1f\x7f]")


def typed_lines(tail: str, text: str, *, after_cr: bool = False) -> tuple[list[str], str, bool]:
    """The lines ended by each Enter in ``text`` (typed after ``tail``), what is typed after the
    last one, and whether ``text`` ended with CR (its LF may come in the next read).

    Each line is what it ends with as typed: backspace and delete remove a character, Ctrl-U
    the line, Ctrl-W a word; after another control key only what is typed later is kept.
    At most TYPED_TAIL_MAX characters; surrounding spaces stripped.
    """
    lines: list[str] = []
    position = 0
    for match in _INPUT_TOKENS.finditer(text):
        if match.start() > position:
            tail, after_cr = (tail + text[position : match.start()])[-TYPED_TAIL_MAX:], False
        position = match.end()
        key = match.group()
        if key == "\n" and after_cr:
            after_cr = False  # the LF of a CRLF whose CR ended the last read
            continue
        after_cr = key == "\r"
        if key[0] in "\r\n":
            if len(lines) < ECHO_WAITING_MAX:
                lines.append(tail.strip())
            tail = ""
        elif key in ("\x7f", "\x08"):
            tail = tail[:-1]
        elif key == "\x17":
            kept = tail.rstrip()
            tail = kept[: max(kept.rfind(" "), kept.rfind("\t")) + 1]
        else:
            tail = ""
    if position < len(text):
        tail, after_cr = (tail + text[position:])[-TYPED_TAIL_MAX:], False
    return lines, tail, after_cr


def _line_since_newline(pending: list, tail: bytes) -> bytes:
    """The raw output since the last newline: ``tail`` (flushed before) plus ``pending``."""
    parts, size = [], 0
    for entry in reversed(pending):
        payload = entry[2]
        if entry[1] != "o" or not isinstance(payload, bytes):
            continue
        newline = payload.rfind(b"\n")
        if newline >= 0:
            parts.append(payload[newline + 1 :])
            break
        parts.append(payload)
        size += len(payload)
        if size >= LINE_TAIL_MAX:
            break
    else:
        parts.append(tail)
    return b"".join(reversed(parts))[-LINE_TAIL_MAX:]


class ExecRecorder(_Recorder):
    """A non-pty exec channel's output: raw bytes (``.bin``) plus a timing index (``.idx``)."""

    kind = Recording.Kind.EXEC

    def __init__(self, *, session: GatewaySession, channel: int, root: Path | str | None = None):
        self._offset = 0
        super().__init__(session=session, channel=channel, root=root)

    def _paths(self, folder: str, channel: int | None) -> tuple[str, str]:
        return f"{folder}/channel-{channel}.bin", f"{folder}/channel-{channel}.idx"

    def write(self, data: bytes) -> None:
        """Standard output from the target, any bytes."""
        if type(data) is not bytes:
            data = bytes(data)
        self._append(("o", data), len(data))

    def write_stderr(self, data: bytes) -> None:
        """Standard error from the target, any bytes."""
        if type(data) is not bytes:
            data = bytes(data)
        self._append(("e", data), len(data))

    def _encode(self, pending: list) -> tuple[bytes, bytes]:
        lines = []
        group = None  # [t, offset, length, stream]
        for t, stream, data in pending:
            if not data:
                continue
            if group and group[3] == stream and t - group[0] < COALESCE_SECONDS:
                group[2] += len(data)
            else:
                if group:
                    lines.append(f"{group[0]:.6f} {group[1]} {group[2]} {group[3]}\n")
                group = [t, self._offset, len(data), stream]
            self._offset += len(data)
        if group:
            lines.append(f"{group[0]:.6f} {group[1]} {group[2]} {group[3]}\n")
        return b"".join(data for _, _, data in pending), "".join(lines).encode("ascii")


class EventLog(_Recorder):
    """The session's events, one JSON object a line (``events.jsonl``)."""

    kind = Recording.Kind.EVENTS

    def __init__(self, *, session: GatewaySession, root: Path | str | None = None):
        super().__init__(session=session, channel=None, root=root)

    def _paths(self, folder: str, channel: int | None) -> tuple[str, str]:
        return f"{folder}/events.jsonl", ""

    def _write_header(self, session: GatewaySession) -> None:
        header = {
            "format": "pamsite-events",
            "version": 1,
            "session": session.pk,
            "timestamp": int(time.time()),
        }
        self._put_now(self._fd, json.dumps(header).encode() + b"\n")

    def _event(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, **fields}, ensure_ascii=False).encode()
        self._append((line,), len(line))

    def exec_started(self, *, channel: int, command: str) -> None:
        self._event("exec", channel=channel, command=command)

    def exit_status(self, *, channel: int, status: int) -> None:
        self._event("exit", channel=channel, status=status)

    def file_transfer(
        self,
        *,
        channel: int,
        direction: str,
        path: str,
        size: int,
        sha256: str,
        complete: bool = True,
        note: str = "",
    ) -> None:
        """An SFTP/scp transfer; direction is "upload" (to the target) or "download".

        ``complete`` is False (with ``note`` saying why, and sha256 possibly empty) when the
        gateway could not follow the whole file: never closed, gaps, tracking stopped.
        """
        if direction not in ("upload", "download"):
            raise ValueError(f"direction must be upload or download, not {direction!r}")
        fields = {"direction": direction, "path": path, "size": size, "sha256": sha256}
        if not complete:
            fields.update(complete=False, note=note)
        self._event("file-transfer", channel=channel, **fields)

    def note(self, event: str, **fields) -> None:
        """Any other session event (a refused request, a file operation, tracking stopped)."""
        self._event(event, **fields)

    def forwarded_connection(
        self, *, channel: int, host: str, port: int, bytes_in: int, bytes_out: int
    ) -> None:
        self._event("forward", channel=channel, host=host, port=port, bytes_in=bytes_in, bytes_out=bytes_out)

    def _encode(self, pending: list) -> tuple[bytes, bytes]:
        # The event's time goes first; the line was built when the event happened.
        out = b"".join(b'{"t": %.6f, ' % t + line[1:] + b"\n" for t, line in pending)
        return out, b""


def flush_due() -> int:
    """Flush every open recorder of this process that is due; the number flushed.

    The gateway calls this from its housekeeping loop at least once a second. It does not
    wait for the writer thread. A recorder whose writes failed (found by the writer, maybe
    while its channel is quiet) has its ``on_failure`` called once, from here; its owner
    also gets RecordingError at its next call.
    """
    with _live_lock:
        recorders = list(_live)
    flushed = 0
    for recorder in recorders:
        try:
            flushed += recorder.flush_if_due()
        except RecordingError as exc:
            logger.error("Flushing a recording failed: %s", exc)
            if recorder.on_failure is not None:
                try:
                    recorder.on_failure(str(exc))
                except Exception:
                    logger.exception("Ending the session of a failed recording failed")
    return flushed


def finalize_interrupted(
    *, root: Path | str | None = None, gateway_node: str | None = None, session_ids: list[int] | None = None
) -> int:
    """Seal the recordings a killed gateway left unfinalised; the number sealed.

    Call it when a gateway starts, with its node name when several gateway hosts share the
    database (without it, every node's unfinalised recordings are sealed, live ones too).
    Each is hashed and signed as it is on disk and marked interrupted; its session gets end
    reason "interrupted" and, if unset, an end time from the files' last modification.
    A recording its writer closed but could not sign (Vault was down) keeps the writer's
    verdict when the file still has the sha256 the writer saved; one that no longer has it
    is not signed (it was changed after its gateway closed it: logged as an error).
    """
    root = Path(root) if root is not None else recordings_root()
    pending = Recording.objects.filter(finalized_at__isnull=True).select_related("session")
    if gateway_node is not None:
        pending = pending.filter(session__gateway_node=gateway_node)
    if session_ids is not None:
        pending = pending.filter(session_id__in=session_ids)
    sealed = 0
    for recording in pending:
        try:
            _seal(recording, root=root, interrupted=_interrupted_on_disk(recording, root))
        except RecordingError as exc:
            logger.error("Could not seal the recording %s left unsealed: %s", recording.path, exc)
            continue
        sealed += 1
        session = recording.session
        if session.ended_at is None:
            # Ended like any session (audited), at the time its files were last written.
            mtime = (root / recording.path).stat().st_mtime
            session_end(
                session=session,
                reason=GatewaySession.EndReason.INTERRUPTED,
                message="The gateway process relaying it stopped before it ended the session.",
                bytes_in=session.bytes_in,
                bytes_out=session.bytes_out,
                ended_at=datetime.datetime.fromtimestamp(mtime, tz=datetime.UTC),
            )
        elif not session.end_reason:
            session.end_reason = GatewaySession.EndReason.INTERRUPTED
            session.save(update_fields=["end_reason"])
    return sealed


def _interrupted_on_disk(recording: Recording, root: Path) -> bool:
    """Whether a recording left unsealed must be sealed as interrupted (see finalize_interrupted)."""
    if not recording.sha256:
        return True  # its writer never closed it: the end may be missing
    try:
        sha256, size = _hash_file(root / recording.path)
        index_sha256 = _hash_file(root / recording.index_path)[0] if recording.index_path else ""
    except OSError as exc:
        raise RecordingError(f"Cannot read the recording {recording.path}: {exc.strerror or exc}") from None
    if (sha256, size, index_sha256) != (recording.sha256, recording.size, recording.index_sha256):
        raise RecordingError(
            f"{recording.path} no longer has the sha256 its gateway computed when it closed it: "
            "it was changed since, so it is not signed"
        )
    return recording.interrupted


def seal_leftovers(*, grace_seconds: int = LEFTOVER_GRACE_SECONDS, root: Path | str | None = None) -> int:
    """Seal the recordings of sessions that ended but whose gateway could not seal them.

    A gateway seals each recording as its session ends; when that fails (Vault or the
    database unreachable at that moment) the session still ends and the recording waits
    here. Sessions ended less than ``grace_seconds`` ago are left to their gateway. A file
    its writer closed completely (its sha256 saved on the row) is sealed as complete; any
    other is marked interrupted. The number sealed.
    """
    cutoff = timezone.now() - datetime.timedelta(seconds=grace_seconds)
    ended = (
        GatewaySession.objects.filter(ended_at__lt=cutoff, recordings__finalized_at__isnull=True)
        .values_list("pk", flat=True)
        .distinct()
    )
    ids = list(ended)
    return finalize_interrupted(root=root, session_ids=ids) if ids else 0


def verify_recording(
    recording: Recording, *, root: Path | str | None = None, keyring: KeyRing | None = None
) -> tuple[bool, str]:
    """(True, why) if the file(s) match the sha256 kept at close and the signature over them holds.

    The signature is checked here, against the public key pamsite keeps for the signing
    key's version (``vault.signatures``): no Vault needed. (False, why) for an unfinalised,
    missing or tampered recording. Raises SignatureUncheckable (a RecordingError) when the
    signature cannot be checked: signed by a key neither pamsite nor Vault has, or a key
    version pamsite does not keep yet while Vault cannot be asked. Pass one ``keyring`` to
    check many recordings with one read of the kept keys.
    """
    root = Path(root) if root is not None else recordings_root()
    if recording.finalized_at is None or not recording.signature:
        return False, f"{recording.path} is not finalised: no sha256 or signature yet"
    try:
        sha256, size = _hash_file(root / recording.path)
        index_sha256 = _hash_file(root / recording.index_path)[0] if recording.index_path else ""
    except FileNotFoundError as exc:
        return False, f"missing: {exc.filename} is not in the recordings folder"
    if sha256 != recording.sha256 or size != recording.size:
        return False, f"tampered: {recording.path} does not match the sha256 recorded at close"
    if index_sha256 != recording.index_sha256:
        return False, f"tampered: {recording.index_path} does not match the sha256 recorded at close"
    keyring = keyring or KeyRing()
    check = keyring.check(
        data=signed_manifest(recording), signature=recording.signature, signed_at=recording.finalized_at
    )
    if check.verdict == signatures.INVALID:
        why = f"the signature of {recording.path} does not cover its sha256 and details"
        return False, f"tampered: {why}: {check.message}"
    if check.verdict == signatures.KEY_NOT_FOUND:
        raise SignatureUncheckable(
            f"Cannot check the signature of {recording.path}: {check.message}", reason=KEY_NOT_FOUND_REASON
        )
    if check.verdict != signatures.VALID:
        raise SignatureUncheckable(
            f"Cannot check the signature of {recording.path}: {check.message}",
            reason=_vault_reason(check.vault_error),
            vault_error=check.vault_error,
        )
    note = " (interrupted: the end of the session may be missing)" if recording.interrupted else ""
    return True, f"intact: {recording.path} matches its sha256 and signature{note}"


def _vault_reason(error: VaultError | None) -> str:
    if isinstance(error, VaultSealed):
        return "Vault sealed"
    if isinstance(error, VaultUnavailable):
        return "Vault unreachable"
    return "Vault refused the check"
