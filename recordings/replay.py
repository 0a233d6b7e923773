"""Replay and live view of session recordings: the pages and the endpoints the player reads.

Pages (both audited, both need ``'wasm-unsafe-eval'`` in the CSP: the player's terminal
emulator is WebAssembly):

- ``replay:session``: every recording of a session: each terminal channel in
  asciinema-player (play, pause, speed, seek, a marker per command typed), the commands with
  their exit codes, file transfers and forwarded connections from ``events.jsonl``, and each
  non-pty command's output as text. For whoever may see the session
  (``recordings.selectors.get_session_for``); audited ``recording.viewed``.
- ``replay:watch``: a live session, read-only, a flush interval behind the gateway; for
  approvers, auditors and pam-admins (approvers and pam-admins also get the Terminate form);
  audited ``recording.watched``.

Endpoints (JSON or asciicast; the same authorisation, and only for a session whose replay or
watch page this browser session has opened, so no recording is read without its audit row):

- ``replay:cast`` ``?from=OFFSET&max=BYTES``: the cast file's header line and then the whole
  event lines that start at or after ``from`` (a ``from`` inside a line starts at the next
  one), at most ``max`` bytes of them but at least one line; headers ``X-Cast-Start``,
  ``X-Cast-Next`` (where the next page starts), ``X-Cast-Size`` (the file's size now) and
  ``X-Cast-Complete`` (1 when the recording is finalised and everything was read). The live
  view polls it with the last ``X-Cast-Next``.
- ``replay:index`` and ``replay:segment``: the same file as the player's *segmented
  recording* (asciinema-player 3.18 ``{url, format: "segmented"}``): an index with the
  duration, markers and a segment every ~512 KiB of the file, each segment the events of
  its byte range. The player fetches the index and the first segment, starts playing, and
  fetches the next segment ahead of playback; a seek fetches only the segment it lands in.
  Building the index reads the file once with ``bytes.find`` (no per-line parsing; ~0.1 s
  for 100 MB) and it is cached beside a finalised recording.

What a seek shows: playing on from the start is exact, segment after segment on the same
terminal. Jumping into another segment starts that segment from a *snapshot*: a fresh
terminal fed the last ``SNAPSHOT_CONTEXT`` bytes of output before it. For a shell that is
the screen as it was; a full-screen program that set up its screen earlier (the alternate
screen, scroll regions, colours set long before) may show partly wrong until it redraws.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from csp.decorators import csp_update
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html_join
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from audit.services import audit_record
from common.roles import has_role
from identity.models import User
from recordings import selectors
from recordings.forms import TerminateForm
from recordings.models import GatewaySession, Recording
from recordings.recorder import REPLAY_INDEX_SUFFIX, recordings_root
from recordings.terminal import strip_controls

logger = logging.getLogger(__name__)

CAST_PAGE_DEFAULT = 1024 * 1024  # bytes of event lines per cast page unless ?max= says
CAST_PAGE_MAX = 8 * 1024 * 1024  # a larger ?max= is served as this
LINE_MAX = 16 * 1024 * 1024  # a longer line is not a recorder's line: refuse the file
HEADER_MAX = 64 * 1024
SEGMENT_BYTES = 512 * 1024  # aim of the player's segments: ~50 ms to fetch and parse
SEGMENT_MAX = 16 * 1024 * 1024  # the most one segment request may span
SNAPSHOT_CONTEXT = 256 * 1024  # output replayed to rebuild the screen at a segment's start
# The player draws each marker on its progress bar with its own reactive element: 1,400 of them
# held its first frame back ~0.8 s (bench/replay_bench.py). Past this many, the bar shows none;
# the page lists them all beside the player either way.
PLAYER_MARKERS_MAX = 100
MARKERS_LISTED_MAX = 5000
SCAN_BLOCK = 8 * 1024 * 1024
INDEX_VERSION = 1
INDEX_SUFFIX = REPLAY_INDEX_SUFFIX
EXEC_PREVIEW_BYTES = 64 * 1024  # of a non-pty command's output shown on the page
EXEC_PREVIEWS_MAX = 20  # commands whose output is shown; the others are listed
EVENTS_MAX_LINES = 5000  # of events.jsonl shown on the page
EVENTS_MAX_BYTES = 8 * 1024 * 1024
AUDITED_KEY = "replay_audited_sessions"  # web-session key: sessions whose page was opened
AUDITED_KEEP = 50
WASM_CSP = {"script-src": ["'wasm-unsafe-eval'"]}  # the player's terminal is WebAssembly

_SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ReplayError(Exception):
    """A recording file cannot be read as what its row says it is; the message says why."""


# --- Who may read what ----------------------------------------------------------------


def _remember_audited(request: HttpRequest, session: GatewaySession) -> None:
    audited = [pk for pk in request.session.get(AUDITED_KEY, []) if pk != session.pk]
    request.session[AUDITED_KEY] = [*audited, session.pk][-AUDITED_KEEP:]


def _recording_for(request: HttpRequest, pk: int, *, kind: str) -> Recording:
    """A recording of a session the user may see and whose page was opened (audited)."""
    try:
        recording = Recording.objects.get(pk=pk, kind=kind)
    except Recording.DoesNotExist:
        raise Http404("No such recording.") from None
    selectors.get_session_for(user=request.user, pk=recording.session_id)
    if recording.session_id not in request.session.get(AUDITED_KEY, []):
        raise PermissionDenied("Open the session's replay or watch page first: viewing is audited there.")
    return recording


def _require_overseer(user: User) -> None:
    if not has_role(user, *selectors.OVERSEERS):
        raise PermissionDenied("Watching a live session is for approvers, auditors and pam-admins.")


@transaction.atomic
def recording_access_record(
    *,
    session: GatewaySession,
    acting_user: User,
    action: str,
    recordings: list[Recording],
    request: HttpRequest,
) -> None:
    """Audit that someone viewed (``recording.viewed``) or watched (``recording.watched``) a session.

    The session detail page audits ``recording.viewed`` too; ``page`` says which one it was.
    """
    audit_record(
        action=action,
        actor=acting_user,
        request=request,
        obj=session,
        details={
            "page": "watch" if action == "recording.watched" else "replay",
            "user": session.user.username,
            "account": session.account,
            "recordings": [r.pk for r in recordings],
            "live": session.is_live,
        },
    )


# --- Reading cast files -------------------------------------------------------------------


def recording_file(recording: Recording, *, index: bool = False) -> Path:
    """The recording's file (or its index file) under RECORDINGS_ROOT."""
    relative = recording.index_path if index else recording.path
    root = recordings_root().resolve()
    path = (root / relative).resolve()
    if not relative or not path.is_relative_to(root):
        raise Http404("The recording's file is not in the recordings folder.")
    return path


def _open(path: Path):
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise Http404("The recording's file is missing from the recordings folder.") from None


def _read_header(f) -> bytes:
    f.seek(0)
    header = f.readline(HEADER_MAX)
    if not header.endswith(b"\n"):
        raise ReplayError("the file has no asciicast header line")
    return header


def _next_line_start(f, offset: int, size: int) -> int:
    """``offset`` if a line starts there, else the offset after the next newline (or size)."""
    if offset <= 0 or offset >= size:
        return max(0, min(offset, size))
    f.seek(offset - 1)
    if f.read(1) == b"\n":
        return offset
    position = offset
    while position < size:
        block = f.read(64 * 1024)
        if not block:
            break
        newline = block.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(block)
    return size


def _read_lines(f, start: int, max_bytes: int, size: int) -> bytes:
    """Whole lines from ``start`` (a line start): up to ``max_bytes``, but at least one line."""
    f.seek(start)
    data = f.read(min(max_bytes, size - start))
    cut = data.rfind(b"\n") + 1
    while cut == 0 and start + len(data) < size:  # one line longer than max_bytes
        if len(data) > LINE_MAX:
            raise ReplayError(f"a line at byte {start} is longer than {LINE_MAX} bytes")
        more = f.read(min(256 * 1024, size - start - len(data)))
        if not more:
            break
        newline = more.find(b"\n")
        data += more
        if newline >= 0:
            cut = len(data) - len(more) + newline + 1
    return data[:cut]


@dataclass
class CastPage:
    """A run of whole lines of a cast file, and where it sits in the file."""

    header: bytes
    body: bytes
    start: int
    next: int
    size: int


def read_cast_page(path: Path, *, start: int, max_bytes: int) -> CastPage:
    """The header line and the whole event lines from ``start`` (see the module docstring)."""
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        header = _read_header(f)
        first = _next_line_start(f, max(start, len(header)), size)
        body = _read_lines(f, first, max_bytes, size) if first < size else b""
    return CastPage(header=header, body=body, start=first, next=first + len(body), size=size)


def _event(line: bytes) -> list | None:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if (
        isinstance(event, list)
        and len(event) == 3
        and isinstance(event[0], int | float)
        and isinstance(event[1], str)
    ):
        return event
    return None


def _terminal_size(header: bytes) -> tuple[int, int]:
    try:
        meta = json.loads(header)
        cols, rows = int(meta["width"]), int(meta["height"])
    except (ValueError, KeyError, TypeError):
        raise ReplayError("the asciicast header has no width and height") from None
    if not (0 < cols <= 10000 and 0 < rows <= 10000):
        raise ReplayError("the asciicast header's width or height is out of range")
    return cols, rows


# --- The time index (segments, markers, duration) -----------------------------------------


@dataclass
class CastIndex:
    """Where a cast file's segments start (byte offset, time, terminal size), its markers."""

    cols: int
    rows: int
    header_end: int
    end: int  # after the last whole line
    duration: float
    segments: list[tuple[int, float, int, int]] = field(default_factory=list)
    markers: list[tuple[float, str]] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "cols": self.cols,
            "rows": self.rows,
            "header_end": self.header_end,
            "end": self.end,
            "duration": self.duration,
            "segments": self.segments,
            "markers": self.markers,
        }

    @classmethod
    def from_json(cls, data: dict) -> CastIndex:
        index = cls(
            cols=int(data["cols"]),
            rows=int(data["rows"]),
            header_end=int(data["header_end"]),
            end=int(data["end"]),
            duration=float(data["duration"]),
            segments=[(int(o), float(t), int(c), int(r)) for o, t, c, r in data["segments"]],
            markers=[(float(t), str(label)) for t, label in data["markers"]],
        )
        offsets = [s[0] for s in index.segments]
        if not offsets or offsets[0] != index.header_end or offsets != sorted(set(offsets)):
            raise ValueError("segments are not contiguous")
        if offsets[-1] > index.end:
            raise ValueError("a segment starts after the end")
        return index


def build_cast_index(path: Path, *, segment_bytes: int | None = None) -> CastIndex:
    """Scan a cast file once: segment starts every ~``segment_bytes``, markers, resizes, duration.

    Lines are not parsed one by one: markers and resizes are found with ``bytes.find`` (a
    ``"m"`` or ``"r"`` between quotes is always an event code, never text, which JSON
    escapes), and only the few lines after each segment target are parsed for their time.
    A segment starts at a line whose time is later than the line before it, so every
    event of a segment is earlier than the next segment's start, as the player requires.
    """
    segment_bytes = segment_bytes or SEGMENT_BYTES
    with _open(path) as f:
        header = _read_header(f)
        cols, rows = _terminal_size(header)
        header_end = len(header)
        boundaries: list[tuple[int, float]] = []
        markers: list[tuple[int, float, str]] = []
        resizes: list[tuple[int, int, int]] = []
        target = header_end + segment_bytes
        last_t: float | None = None  # time of the last line of the previous block
        block_start = header_end
        end = header_end
        carry = b""
        f.seek(header_end)
        while True:
            chunk = f.read(SCAN_BLOCK)
            buf = carry + chunk if carry else chunk
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                if not chunk or len(buf) > LINE_MAX:
                    break  # a partial last line (being written, or interrupted)
                carry = buf
                continue
            lines, carry = buf[:cut], buf[cut:]
            for code, sink in ((b'"m"', markers), (b'"r"', resizes)):
                found = lines.find(code)
                while found >= 0:
                    line_start = lines.rfind(b"\n", 0, found) + 1
                    line_end = lines.find(b"\n", found)
                    event = _event(lines[line_start:line_end])
                    if event is not None and event[1] == code[1:2].decode():
                        if code == b'"m"':
                            sink.append((block_start + line_start, float(event[0]), str(event[2])))
                        else:
                            size_match = _SIZE_RE.match(str(event[2]))
                            if size_match:
                                sink.append((block_start + line_start, *map(int, size_match.groups())))
                    found = lines.find(code, line_end)
            block_end = block_start + cut
            while target < block_end:
                position = max(target - block_start, 0)
                if position > 0 and lines[position - 1] != 0x0A:
                    position = lines.find(b"\n", position) + 1
                previous = last_t
                if position > 0:
                    before = lines.rfind(b"\n", 0, position - 1) + 1
                    event = _event(lines[before : position - 1])
                    previous = float(event[0]) if event else previous
                found = False
                while position < cut:
                    line_end = lines.find(b"\n", position)
                    event = _event(lines[position:line_end])
                    if event is not None:
                        t = float(event[0])
                        if (
                            previous is not None
                            and t > previous
                            and (not boundaries or t > boundaries[-1][1])
                        ):
                            boundaries.append((block_start + position, t))
                            found = True
                            break
                        previous = t
                    position = line_end + 1
                target = boundaries[-1][0] + segment_bytes if found else block_end
            last_line_start = lines.rfind(b"\n", 0, cut - 1) + 1
            event = _event(lines[last_line_start : cut - 1])
            if event is not None:
                last_t = float(event[0])
            block_start, end = block_end, block_end
            if not chunk:
                break
        duration = last_t if last_t is not None else 0.0
    boundaries = [b for b in boundaries if b[1] < duration]
    segments = []
    resize_at = 0
    size_now = (cols, rows)
    for offset, t in [(header_end, 0.0), *boundaries]:
        while resize_at < len(resizes) and resizes[resize_at][0] < offset:
            size_now = resizes[resize_at][1:]
            resize_at += 1
        segments.append((offset, t, *size_now))
    return CastIndex(
        cols=cols,
        rows=rows,
        header_end=header_end,
        end=end,
        duration=duration,
        segments=segments,
        markers=[(t, label) for _, t, label in sorted(markers)],
    )


def cast_index(recording: Recording) -> CastIndex:
    """The recording's index: from the cache beside a finalised recording, else built now."""
    path = recording_file(recording)
    cache = path.with_name(path.name + INDEX_SUFFIX)
    sealed = recording.finalized_at is not None and bool(recording.sha256)
    if sealed:
        try:
            data = orjson.loads(cache.read_bytes())
            if (
                data.get("version") == INDEX_VERSION
                and data.get("sha256") == recording.sha256
                and data.get("size") == path.stat().st_size
                and data.get("segment_bytes") == SEGMENT_BYTES
            ):
                return CastIndex.from_json(data["index"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("Ignoring the unreadable replay index %s", cache, exc_info=True)
    index = build_cast_index(path)
    if sealed:
        _write_cache(cache, recording=recording, size=path.stat().st_size, index=index)
    return index


def _write_cache(cache: Path, *, recording: Recording, size: int, index: CastIndex) -> None:
    # A cache only: when the web process may not write beside the recordings, it rebuilds.
    data = {
        "version": INDEX_VERSION,
        "recording": recording.pk,
        "sha256": recording.sha256,
        "size": size,
        "segment_bytes": SEGMENT_BYTES,
        "index": index.as_json(),
    }
    temporary = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o640)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data))
        os.replace(temporary, cache)
    except OSError as exc:
        logger.info("Not caching the replay index beside %s: %s", cache.parent, exc.strerror or exc)
        temporary.unlink(missing_ok=True)


def player_index(recording: Recording, index: CastIndex) -> dict:
    """The index in asciinema-player's segmented-recording format (version 1)."""
    url = reverse("replay:segment", args=[recording.pk])
    ends = [s[0] for s in index.segments[1:]] + [index.end]
    return {
        "version": 1,
        "term": {"cols": index.cols, "rows": index.rows},
        "duration": index.duration,
        "segments": [
            {"start": t, "url": f"{url}?from={offset}&to={end}&cols={cols}&rows={rows}"}
            for (offset, t, cols, rows), end in zip(index.segments, ends, strict=True)
        ],
        "markers": [[t, label] for t, label in index.markers]
        if len(index.markers) <= PLAYER_MARKERS_MAX
        else [],
    }


def player_segment(path: Path, *, start: int, end: int, cols: int, rows: int) -> dict:
    """One segment for the player: the events of bytes [start, end) and the screen before them."""
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        header = _read_header(f)
        header_end = len(header)
        if not (header_end <= start <= end <= size) or end - start > SEGMENT_MAX:
            raise ValueError(
                f"from and to must lie between {header_end} and {size}, at most {SEGMENT_MAX} apart"
            )
        if _next_line_start(f, start, size) != start:
            raise ValueError("from must be the start of a line")
        if end > start:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                raise ValueError("to must be the end of a line")
        init = ""
        if start > header_end:
            context_start = _next_line_start(f, max(header_end, start - SNAPSHOT_CONTEXT), size)
            f.seek(context_start)
            context = f.read(start - context_start)
            init = "".join(
                event[2]
                for event in map(_event, context.split(b"\n"))
                if event is not None and event[1] == "o" and isinstance(event[2], str)
            )
        f.seek(start)
        data = f.read(end - start)
    events, previous = [], None
    for line in data.split(b"\n"):
        event = _event(line) if line else None
        if event is None:
            continue
        t, code, payload = event
        if code == "m":
            # The player takes markers from the index (or none: PLAYER_MARKERS_MAX); an empty
            # output keeps the event's time, which may be the recording's last.
            code, payload = "o", ""
        t = max(float(t), previous) if previous is not None else float(t)
        events.append([t, code, payload])
        previous = t
    if not events:  # a recording with no output yet: one empty event keeps the player happy
        events = [[0.0, "o", ""]]
    return {"snapshot": {"cols": cols, "rows": rows, "init": init}, "events": events}


# --- events.jsonl and exec output -----------------------------------------------------------


@dataclass
class SessionEvents:
    """What events.jsonl says happened, grouped for the replay page."""

    started: datetime.datetime | None = None
    commands: list[dict] = field(default_factory=list)
    transfers: list[dict] = field(default_factory=list)
    forwards: list[dict] = field(default_factory=list)
    other: list[dict] = field(default_factory=list)
    truncated: bool = False
    error: str = ""


def _at(started: datetime.datetime | None, t) -> dict:
    seconds = float(t) if isinstance(t, int | float) else 0.0
    return {
        "t": seconds,
        "offset": f"{int(seconds // 60):02d}:{seconds % 60:04.1f}",
        "at": started + datetime.timedelta(seconds=seconds) if started else None,
    }


def read_session_events(recording: Recording | None) -> SessionEvents:
    """Commands with exit codes, transfers, forwards and other events from ``events.jsonl``."""
    result = SessionEvents()
    if recording is None:
        return result
    try:
        with recording_file(recording).open("rb") as f:
            data = f.read(EVENTS_MAX_BYTES + 1)
    except (FileNotFoundError, Http404):
        result.error = "The events file is missing from the recordings folder."
        return result
    if len(data) > EVENTS_MAX_BYTES:
        data, result.truncated = data[: data.rfind(b"\n", 0, EVENTS_MAX_BYTES) + 1], True
    lines = data.split(b"\n")
    try:
        header = orjson.loads(lines[0])
        result.started = datetime.datetime.fromtimestamp(int(header["timestamp"]), tz=datetime.UTC)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        result.error = "The events file has no header line."
    by_channel: dict[int, dict] = {}
    for number, line in enumerate(lines[1:]):
        if number >= EVENTS_MAX_LINES:
            result.truncated = True
            break
        if not line:
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        row = {**event, **_at(result.started, event.get("t"))}
        if kind == "exec":
            row["exit"] = None
            result.commands.append(row)
            by_channel[event.get("channel")] = row
        elif kind == "exit":
            command = by_channel.get(event.get("channel"))
            if command is not None and command["exit"] is None:
                command["exit"] = event.get("status")
            else:
                result.commands.append({**row, "command": None, "exit": event.get("status")})
        elif kind == "file-transfer":
            result.transfers.append(row)
        elif kind == "forward":
            result.forwards.append(row)
        else:
            details = {k: v for k, v in event.items() if k not in ("t", "event")}
            result.other.append({**row, "details": json.dumps(details, ensure_ascii=False)[:500]})
    return result


def _display_text(data: bytes) -> str:
    return strip_controls(data.decode("utf-8", errors="replace"))


def exec_preview(recording: Recording, *, limit: int = EXEC_PREVIEW_BYTES) -> dict:
    """The first ``limit`` bytes of a non-pty command's output, as text unless it is binary."""
    preview = {"recording": recording, "size": 0, "binary": False, "chunks": [], "truncated": False}
    try:
        data_path, index_path = recording_file(recording), recording_file(recording, index=True)
        size = data_path.stat().st_size
        with data_path.open("rb") as f:
            head = f.read(limit)
        index_lines = []
        with index_path.open("rb") as f:
            for raw in f:
                parts = raw.split()
                if len(parts) != 4:
                    continue
                offset, length = int(parts[1]), int(parts[2])
                if offset >= limit:
                    break
                index_lines.append((offset, length, parts[3].decode("ascii", "replace")))
    except (FileNotFoundError, Http404):
        preview["missing"] = True
        return preview
    except ValueError:
        index_lines = [(0, len(head), "o")]
    preview["size"] = size
    preview["truncated"] = size > len(head)
    sample = head[: limit - 4]  # a multibyte character cut at the limit is not binary
    try:
        sample.decode("utf-8")
        text = b"\x00" not in sample
    except UnicodeDecodeError as exc:
        text = exc.start >= len(sample) - 3 and b"\x00" not in sample
    if not text:
        preview["binary"] = True
        return preview
    chunks: list[tuple[str, bytes]] = []
    for offset, length, stream in index_lines or [(0, len(head), "o")]:
        piece = head[offset : offset + length]
        if chunks and chunks[-1][0] == stream:
            chunks[-1] = (stream, chunks[-1][1] + piece)
        else:
            chunks.append((stream, piece))
    preview["chunks"] = [
        {"stream": "stderr" if stream == "e" else "stdout", "text": _display_text(piece)}
        for stream, piece in chunks
    ]
    return preview


# --- Views ----------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


MARKER_ITEM = (
    '<li><button type="button" class="link marker" data-time="{}" title="Jump to {}">'
    '<span class="mono muted">{}</span> <span class="mono">{}</span></button></li>'
)


def _markers_of(recording: Recording) -> dict:
    """The commands typed in a terminal recording (its markers), for the list beside the player.

    The list items are built here, escaped by ``format_html_join``: a template loop took
    ~0.1 s for 1,400 markers, a tenth of the page's time to first frame.
    """
    if getattr(recording, "deleted_at", None):
        return {"count": 0, "items": "", "error": ""}
    try:
        markers = cast_index(recording).markers
    except Http404:
        return {
            "count": 0,
            "items": "",
            "error": "The recording's file is missing from the recordings folder.",
        }
    except ReplayError as exc:
        return {"count": 0, "items": "", "error": f"The recording cannot be read: {exc}."}
    items = format_html_join(
        "\n",
        MARKER_ITEM,
        (
            (repr(t), _clock(t), _clock(t), label or "(nothing echoed)")
            for t, label in markers[:MARKERS_LISTED_MAX]
        ),
    )
    return {
        "count": len(markers),
        "items": items,
        "more": max(0, len(markers) - MARKERS_LISTED_MAX),
        "error": "",
    }


def _int_param(request: HttpRequest, name: str, default: int | None = None, *, minimum: int = 0) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(f"{name} is required")
        return default
    if not raw.isdigit() or len(raw) > 15:
        raise ValueError(f"{name} must be a whole number of bytes, not {raw[:20]!r}")
    value = int(raw)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}")
    return value


def _speed(request: HttpRequest) -> float:
    try:
        speed = float(request.GET.get("speed", "1"))
    except ValueError:
        return 1.0
    return speed if 0.1 <= speed <= 64 else 1.0


def _start_at(request: HttpRequest) -> float:
    try:
        start = float(request.GET.get("t", "0"))
    except ValueError:
        return 0.0
    return start if 0 <= start < 1e9 else 0.0


@never_cache
@require_GET
@csp_update(WASM_CSP)
def session_replay(request: HttpRequest, pk: int) -> HttpResponse:
    """Every recording of a session: terminals in the player, commands, transfers, forwards."""
    session = selectors.get_session_for(user=request.user, pk=pk)
    recordings = list(selectors.recordings_of(session=session))
    terminals = [r for r in recordings if r.kind == Recording.Kind.TERMINAL]
    execs = [r for r in recordings if r.kind == Recording.Kind.EXEC]
    events_file = next((r for r in recordings if r.kind == Recording.Kind.EVENTS), None)
    recording_access_record(
        session=session,
        acting_user=request.user,
        action="recording.viewed",
        recordings=recordings,
        request=request,
    )
    _remember_audited(request, session)
    events = read_session_events(events_file)
    commands_by_channel = {c.get("channel"): c for c in events.commands if c.get("command")}
    context = {
        "session": session,
        "terminals": [(r, commands_by_channel.get(r.channel), _markers_of(r)) for r in terminals],
        "execs": [(exec_preview(r), commands_by_channel.get(r.channel)) for r in execs[:EXEC_PREVIEWS_MAX]],
        "execs_not_shown": [(r, commands_by_channel.get(r.channel)) for r in execs[EXEC_PREVIEWS_MAX:]],
        "events": events,
        "events_file": events_file,
        "can_watch": session.is_live and has_role(request.user, *selectors.OVERSEERS),
        "autoplay": request.GET.get("autoplay") == "1",
        "speed": _speed(request),
        "start_at": _start_at(request),
        "preview_limit": EXEC_PREVIEW_BYTES,
    }
    return render(request, "sessions/replay.html", context)


@never_cache
@require_GET
@csp_update(WASM_CSP)
def session_watch(request: HttpRequest, pk: int) -> HttpResponse:
    """A live session's terminals, read-only, as the gateway writes them."""
    session = selectors.get_session_for(user=request.user, pk=pk)
    _require_overseer(request.user)
    recordings = [r for r in selectors.recordings_of(session=session) if r.kind == Recording.Kind.TERMINAL]
    if session.is_live:
        recording_access_record(
            session=session,
            acting_user=request.user,
            action="recording.watched",
            recordings=recordings,
            request=request,
        )
        _remember_audited(request, session)
    context = {
        "session": session,
        "can_terminate": selectors.can_terminate(user=request.user, session=session),
        "form": TerminateForm(),
    }
    return render(request, "sessions/watch.html", context)


@never_cache
@require_GET
def watch_status(request: HttpRequest, pk: int) -> JsonResponse:
    """For the watch page: whether the session is live, and its terminal recordings so far."""
    session = selectors.get_session_for(user=request.user, pk=pk)
    _require_overseer(request.user)
    if session.pk not in request.session.get(AUDITED_KEY, []):
        raise PermissionDenied("Open the session's watch page first: watching is audited there.")
    recordings = [r for r in selectors.recordings_of(session=session) if r.kind == Recording.Kind.TERMINAL]
    return JsonResponse(
        {
            "live": session.is_live,
            "end_reason": session.get_end_reason_display() if session.end_reason else "",
            "terminate_requested": session.terminate_requested_at is not None,
            "recordings": [
                {
                    "id": r.pk,
                    "channel": r.channel,
                    "cast": reverse("replay:cast", args=[r.pk]),
                    "finalized": r.finalized_at is not None,
                }
                for r in recordings
            ],
        }
    )


@never_cache
@require_GET
def cast(request: HttpRequest, pk: int) -> HttpResponse:
    """Whole lines of a terminal recording from a byte offset, after its header (paged, live)."""
    recording = _recording_for(request, pk, kind=Recording.Kind.TERMINAL)
    try:
        start = _int_param(request, "from", 0)
        max_bytes = min(_int_param(request, "max", CAST_PAGE_DEFAULT, minimum=1), CAST_PAGE_MAX)
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc), content_type="text/plain; charset=utf-8")
    try:
        page = read_cast_page(recording_file(recording), start=start, max_bytes=max_bytes)
    except ReplayError as exc:
        return HttpResponse(f"Cannot read this recording: {exc}", status=422, content_type="text/plain")
    response = HttpResponse(page.header + page.body, content_type="application/x-asciicast")
    response["X-Cast-Start"] = str(page.start)
    response["X-Cast-Next"] = str(page.next)
    response["X-Cast-Size"] = str(page.size)
    complete = recording.finalized_at is not None and page.next >= page.size
    response["X-Cast-Complete"] = "1" if complete else "0"
    response["Content-Disposition"] = "inline"
    return response


@never_cache
@require_GET
def cast_index_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The recording as asciinema-player's segmented recording: duration, markers, segments."""
    recording = _recording_for(request, pk, kind=Recording.Kind.TERMINAL)
    try:
        index = cast_index(recording)
    except ReplayError as exc:
        return HttpResponse(f"Cannot read this recording: {exc}", status=422, content_type="text/plain")
    return HttpResponse(orjson.dumps(player_index(recording, index)), content_type="application/json")


@never_cache
@require_GET
def cast_segment(request: HttpRequest, pk: int) -> HttpResponse:
    """One segment of the player's segmented recording (the byte range the index named)."""
    recording = _recording_for(request, pk, kind=Recording.Kind.TERMINAL)
    try:
        start, end = _int_param(request, "from"), _int_param(request, "to")
        cols, rows = _int_param(request, "cols", minimum=1), _int_param(request, "rows", minimum=1)
        if cols > 10000 or rows > 10000:
            raise ValueError("cols and rows must be at most 10000")
        segment = player_segment(recording_file(recording), start=start, end=end, cols=cols, rows=rows)
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc), content_type="text/plain; charset=utf-8")
    except ReplayError as exc:
        return HttpResponse(f"Cannot read this recording: {exc}", status=422, content_type="text/plain")
    return HttpResponse(orjson.dumps(segment), content_type="application/json")
