"""GatewaySession search: the text of an ended session, its word index, and free-text queries.

What goes into a session's text (``session_index``), in this order so that the cap cuts
output rather than commands:

1. from the events file: exec commands, file transfers (direction, path, sha256),
   forwarded ``host:port``, SFTP file operations and refused requests;
2. the terminal markers (the command line as the target echoed it at each Enter);
3. each channel's output: terminal output as the screen showed it, read by the terminal
   model the replay markers use (``recordings.terminal``: line edits applied, escape
   sequences dropped), so a marker's label is a line of this text;
   exec output when it is text-like: read in 64 KiB blocks; a block with more than 10 %
   non-text (control bytes, invalid UTF-8: tar, DICOM, gzip) keeps only its lines that are
   themselves text-like; at most 256 MiB of one output is read.

The text is capped at ``SESSIONS_SEARCH_MAX_CHARS`` characters (2,000,000 by default;
``SessionText.truncated`` says so, and the page shows it).

Matching. A query is terms separated by spaces, a term in double quotes may hold spaces.

- A term of letters, digits and ``_`` is a whole word, case-insensitive: ``rm`` finds
  ``rm -rf /x`` but not ``format``; ``dcm*`` is a prefix (``dcmsend``, ``dcmqr``).
- Any other term (``/var/pacs/archive``, ``"rm -rf /var/pacs"``, ``pacs01:104``) is an exact
  substring, case-insensitive.

Every term must appear. Words are looked up in an index of the text's distinct words (split
on anything that is not a letter, digit or ``_``, lower-cased), the same list on both
databases: a tsvector built with ``array_to_tsvector`` (so no parser or dictionary changes a
word, unlike ``to_tsvector``, which keeps ``/var/pacs/archive`` as one token and splits
``foo_bar``; it matches as config ``simple`` would, without stemming or stop words) under a
GIN index on PostgreSQL, an FTS5 table on SQLite. A substring term is narrowed by the words
it must contain (those with a non-word character either side inside the term are whole
words, the last one a prefix), then checked exactly against the text.

A trigram index (pg_trgm) was considered for substrings; it needs the extension created
in the database and indexes every 3-character window of up to 2 MB per session, and SQLite
would need a second FTS5 table of the same size. Narrowing by words finds the same
sessions for any substring that holds one word boundary, with one index on each database.

The word index of one text holds at most ~900 KB of distinct words (a PostgreSQL tsvector
holds at most 1 MB); a text with more (a ``find /`` listing) has ``all_words_indexed``
false, and its words are matched against its text by regular expression instead, so that
flooding a session with output cannot hide a later command from the search.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import orjson
from django import forms
from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.search import SearchQuery, SearchVectorField
from django.db import connection, transaction
from django.db.models import BooleanField, Exists, Func, OuterRef, Q, TextField, Value
from django.db.models.expressions import RawSQL
from django.utils import timezone

from audit.forms import DATETIME_LOCAL_FORMATS, DateTimeLocalInput, ReasonableTimesMixin
from recordings.models import GatewaySession, Recording, SessionText
from recordings.terminal import LineScreen

logger = logging.getLogger(__name__)

# SQLite: the FTS5 table made by migration 0003 (rowid = session id).
FTS_MATCH_SQL = "SELECT rowid FROM recordings_sessiontext_fts WHERE recordings_sessiontext_fts MATCH %s"
# "+" keeps SQLite from driving the query by this list (it would then sort every match).
FTS_MEMBER_SQL = f"+recordings_session.id IN ({FTS_MATCH_SQL})"
FTS_SELECTIVE_MAX = 2000  # matching sessions up to which SQLite reads the matches by id
WORD_MAX_CHARS = 128  # longer "words" are blobs (base64); a sha512 in hex is 128
WORDS_MAX_BYTES = 900_000  # distinct words per text: a PostgreSQL tsvector holds at most 1 MB
EXEC_BLOCK = 64 * 1024
EXEC_SCAN_MAX = 256 * 1024 * 1024  # bytes of one exec output read at most (a multi-GB tar)
BINARY_RATIO = 0.10  # an exec output block or line with more non-text than this is binary
QUERY_MAX_TERMS = 10
# The worker's quick indexing step looks at the sessions ended this recently, this many at most.
RECENT_SECONDS = 3600
RECENT_LIMIT = 200
TERM_MAX_CHARS = 200

_WORD = re.compile(r"\w+")
_WORD_TERM = re.compile(r"^\w+\*?$")
_TERMS = re.compile(r'"([^"]*)"|(\S+)')

# Non-text in an exec output block: C0 controls but tab, newline, CR, FF, ESC, backspace; DEL;
# U+FFFD (an invalid UTF-8 byte).
_NON_TEXT = re.compile(r"[\x00-\x07\x0e-\x1a\x1c-\x1f\x7f\ufffd]")


# --- Reading a session's recordings --------------------------------------------------------


@dataclass
class _Extract:
    commands: list[str]
    outputs: list[str]
    budget: int
    partial: bool = False
    truncated: bool = False

    @property
    def used(self) -> int:
        return sum(len(c) + 1 for c in self.commands) + sum(len(o) for o in self.outputs)

    def remaining(self) -> int:
        return self.budget - self.used


def _event_line(event: dict) -> str:
    name = event.get("event")
    if name == "exec":
        return str(event.get("command", ""))
    if name == "exit":
        return ""
    if name == "file-transfer":
        return " ".join(str(event.get(k, "")) for k in ("direction", "path", "sha256")).strip()
    if name == "forward":
        return f"forward {event.get('host', '')}:{event.get('port', '')}"
    values = []
    for field, value in event.items():
        if field in ("t", "event", "channel"):
            continue
        if isinstance(value, list):
            values.extend(str(v) for v in value)
        elif isinstance(value, str):
            values.append(value)
    return f"{name} {' '.join(values)}".strip()


def _read_events(path: Path, extract: _Extract) -> None:
    with path.open("rb") as f:
        for raw in f:
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a line cut short by a killed gateway
            if isinstance(event, dict) and "event" in event:
                line = _event_line(event).replace("\x00", "")
                if line:
                    extract.commands.append(line)


def _read_cast(path: Path, extract: _Extract) -> None:
    screen, room, skipped = LineScreen(), extract.remaining(), False
    with path.open("rb") as f:
        for number, raw in enumerate(f):
            if number == 0:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                    header = orjson.loads(raw)
                    screen = LineScreen(int(header.get("width") or 80), int(header.get("height") or 24))
                continue
            full = screen.size >= room
            # Past the cap only the markers are read: cheaper than decoding every line.
            # (The code sits in the first 32 bytes; quotes inside the text are escaped.)
            if full and b'"m"' not in raw[:32]:
                skipped = skipped or b'"o"' in raw[:32]
                continue
            try:
                _t, code, data = orjson.loads(raw)
            except (orjson.JSONDecodeError, ValueError, TypeError):
                continue
            if code == "o" and not full and isinstance(data, str):
                screen.feed(data)
            elif code == "m" and isinstance(data, str) and data.strip():
                extract.commands.append(data.strip())
            elif code == "r" and isinstance(data, str) and "x" in data:
                with contextlib.suppress(ValueError):
                    width, height = data.split("x", 1)
                    screen.resize(int(width), int(height))
    text = screen.close()
    extract.truncated = extract.truncated or skipped or len(text) > room
    extract.outputs.append(text)


def _text_lines(text: str) -> str:
    """A block's text-like lines (at most 10 % non-text each): what survives of mixed output."""
    kept = [
        line for line in text.split("\n") if line and len(_NON_TEXT.findall(line)) <= BINARY_RATIO * len(line)
    ]
    return "\n".join(kept) + "\n" if kept else "\n"


def _read_exec(path: Path, extract: _Extract) -> None:
    # No pty: lines are as long as the program wrote them (a margin of 1,000 characters only
    # keeps a line without newlines, a blob, counted against the cap as it goes).
    screen = LineScreen(1000)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    room, scanned = extract.remaining(), 0
    with path.open("rb") as f:
        while block := f.read(EXEC_BLOCK):
            scanned += len(block)
            if screen.size >= room or scanned > EXEC_SCAN_MAX:
                extract.truncated = True
                break
            text = decoder.decode(block)
            if len(_NON_TEXT.findall(text)) > BINARY_RATIO * len(text):
                # Mostly binary (tar, DICOM) or mixed: keep only the lines that read as text.
                decoder.reset()
                text = _text_lines(text)
            screen.feed(text)
    extract.outputs.append(screen.close())


def session_text_extract(
    *, session: GatewaySession, root: Path | str | None = None
) -> tuple[str, bool, bool]:
    """The searchable text of a session from its recordings: (text, truncated, partial).

    ``partial`` is true when a recording was still being written (not sealed). A file that
    is missing or unreadable is skipped (logged); deleted recordings are skipped.
    """
    root = Path(root) if root is not None else Path(settings.RECORDINGS_ROOT)
    extract = _Extract(commands=[], outputs=[], budget=settings.SESSIONS_SEARCH_MAX_CHARS)
    recordings = list(
        Recording.objects.filter(session=session, deleted_at__isnull=True).order_by("channel", "pk")
    )
    # The events file first (channel is empty), then the channels in order.
    recordings.sort(key=lambda r: (r.channel is not None, r.channel or 0, r.pk))
    for recording in recordings:
        if recording.finalized_at is None:
            extract.partial = True
        reader = {
            Recording.Kind.EVENTS: _read_events,
            Recording.Kind.TERMINAL: _read_cast,
            Recording.Kind.EXEC: _read_exec,
        }.get(recording.kind)
        if reader is None:
            continue
        try:
            reader(root / recording.path, extract)
        except OSError as exc:
            logger.warning("Cannot read %s to index session %s: %s", recording.path, session.pk, exc)
    text = "\n".join(extract.commands)
    for output in extract.outputs:
        if output.strip():
            text += "\n" + output
    limit = settings.SESSIONS_SEARCH_MAX_CHARS
    truncated = extract.truncated or len(text) > limit
    return text[:limit].strip("\n"), truncated, extract.partial


def words_of(text: str) -> tuple[list[str], bool]:
    """The distinct words of a text, lower case, in order of first appearance; and whether
    all of them fit in the word index (``WORDS_MAX_BYTES``)."""
    words, used = [], 0
    for word in dict.fromkeys(_WORD.findall(text.lower())):
        if len(word) > WORD_MAX_CHARS:
            continue
        used += len(word.encode()) + 8  # the tsvector's entry header, aligned
        if used > WORDS_MAX_BYTES:
            return words, False
        words.append(word)
    return words, True


# --- Storing it -------------------------------------------------------------------------


def _vector(words: list[str]):
    return Func(
        Value(words, output_field=ArrayField(TextField())),
        function="array_to_tsvector",
        output_field=SearchVectorField(),
    )


@transaction.atomic
def session_text_store(
    *, session_pk: int, text: str, truncated: bool = False, partial: bool = False
) -> SessionText:
    """Store a session's text and (re)build its word index. ``session_index`` extracts the
    text from the recordings and calls this; tests and the benchmark call it with a text."""
    text = text.replace("\x00", "")  # PostgreSQL text cannot hold NUL
    words, complete = words_of(text)
    postgresql = connection.vendor == "postgresql"
    fields = {
        "text": text,
        "indexed_at": timezone.now(),
        "truncated": truncated,
        "all_words_indexed": complete,
        "partial": partial,
        "search_vector": _vector(words) if postgresql and words else None,
    }
    row, _ = SessionText.objects.update_or_create(session_id=session_pk, defaults=fields)
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM recordings_sessiontext_fts WHERE rowid = %s", [session_pk])
            if words:
                cursor.execute(
                    "INSERT INTO recordings_sessiontext_fts (rowid, words) VALUES (%s, %s)",
                    [session_pk, " ".join(words)],
                )
    elif not postgresql:
        raise NotImplementedError(f"No session search index for the {connection.vendor} database.")
    return row


def session_index(*, session: GatewaySession, root: Path | str | None = None) -> SessionText:
    """Extract an ended session's text from its recordings and (re)build its search index.

    The worker calls this, not the gateways (their time is for live sessions): for the
    sessions that ended lately every SESSIONS_INDEX_SECONDS (``sessions_index_recent``), for
    any others at each upkeep pass (``sessions_index_pending``). Idempotent: a second call
    replaces the text. Reading the files happens outside any transaction; a file that cannot
    be read is skipped and logged. Raises ValueError for a live session.
    """
    session = GatewaySession.objects.get(pk=session.pk)
    if session.ended_at is None:
        raise ValueError(f"GatewaySession {session.pk} is live: it is indexed when it ends.")
    text, truncated, partial = session_text_extract(session=session, root=root)
    with transaction.atomic():
        # One indexer at a time per session (two worker processes, or a pass and a task, may race).
        GatewaySession.objects.select_for_update().filter(pk=session.pk).values_list("pk").first()
        if Recording.objects.filter(session=session, deleted_at__isnull=False).exists():
            # The retention job deleted the files meanwhile: their text must not come back.
            text, truncated, partial = "", False, False
        return session_text_store(session_pk=session.pk, text=text, truncated=truncated, partial=partial)


def session_text_clear(*, session: GatewaySession) -> None:
    """Empty a session's text and its word index (its recordings were deleted)."""
    session_text_store(session_pk=session.pk, text="")


def sessions_index_pending(
    *, limit: int = 1000, root: Path | str | None = None, ended_after: datetime | None = None
) -> int:
    """Index ended sessions that have no text yet, or were indexed before their recordings
    were all sealed; at most ``limit`` per call, oldest first. ``ended_after``: only those
    that ended since then. The number indexed."""
    unsealed = Recording.objects.filter(
        session=OuterRef("pk"), finalized_at__isnull=True, deleted_at__isnull=True
    )
    ended = GatewaySession.objects.filter(ended_at__isnull=False)
    if ended_after is not None:
        ended = ended.filter(ended_at__gte=ended_after)
    pending = (
        ended.annotate(has_unsealed=Exists(unsealed))
        .filter(Q(search_text__isnull=True) | Q(search_text__partial=True, has_unsealed=False))
        .order_by("ended_at", "pk")
    )
    done = 0
    for session in pending[:limit]:
        try:
            session_index(session=session, root=root)
        except Exception:
            logger.exception("Indexing session %s failed", session.pk)
            continue
        done += 1
    return done


def sessions_index_recent(*, root: Path | str | None = None) -> int:
    """Index the sessions that ended in the last RECENT_SECONDS and have no text yet: the
    worker's quick step, every SESSIONS_INDEX_SECONDS, so a session is searchable seconds
    after it ends. Reads only the latest ended sessions (the index on ``ended_at``); older
    ones missed (the worker was down) are left to ``sessions_index_pending``."""
    since = timezone.now() - timedelta(seconds=RECENT_SECONDS)
    return sessions_index_pending(root=root, ended_after=since, limit=RECENT_LIMIT)


# --- Queries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextQuery:
    """A parsed free-text query: words (``(word, is_prefix)``) that must be in the word
    index, and substrings that must be in the text."""

    words: tuple[tuple[str, bool], ...] = ()
    substrings: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.words or self.substrings)


def parse_query(q: str) -> TextQuery:
    """Split a free-text query into word terms and substring terms (see the module docstring)."""
    words: dict[tuple[str, bool], None] = {}
    substrings: dict[str, None] = {}
    terms = [m.group(1) if m.group(1) is not None else m.group(2) for m in _TERMS.finditer(q)]
    for term in terms[:QUERY_MAX_TERMS]:
        term = term.strip()[:TERM_MAX_CHARS]
        if not term or term == "*":
            continue
        if _WORD_TERM.match(term) and len(term.rstrip("*")) <= WORD_MAX_CHARS:
            words[(term.rstrip("*").lower(), term.endswith("*"))] = None
            continue
        substrings[term] = None
        for match in _WORD.finditer(term.lower()):
            starts_word = match.start() > 0  # a non-word character before it, inside the term
            ends_word = match.end() < len(term)
            if starts_word and len(match.group()) <= WORD_MAX_CHARS:
                words[(match.group(), not ends_word)] = None
    return TextQuery(words=tuple(words), substrings=tuple(substrings))


class _Lexemes(SearchQuery):
    """A tsquery from its text form, cast rather than parsed (``'a' & 'b':*``)."""

    def as_sql(self, compiler, connection, function=None, template=None):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"({sql})::tsquery", params


def _tsquery(words) -> str:
    def quote(word: str) -> str:
        return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"

    return " & ".join(quote(w) + (":*" if prefix else "") for w, prefix in words)


def _fts5_query(words) -> str:
    return " ".join('"' + w.replace('"', '""') + '"' + ("*" if prefix else "") for w, prefix in words)


def _word_regex(word: str, prefix: bool) -> str:
    if connection.vendor == "postgresql":
        return r"\m" + re.escape(word) + ("" if prefix else r"\M")
    return r"\b" + re.escape(word) + ("" if prefix else r"\b")


def _fts5_condition(match: str) -> Q:
    """SQLite: the sessions whose words match, chosen by how many match.

    Few (a rare word): their ids, fetched first, so the page reads only those sessions.
    Many (a common word): the matches are gathered once into a temporary set that each
    session is checked against while the page walks the sessions newest first, stopping
    at the page's end. (Left to itself, SQLite would read every matching session and sort
    them all: 3x slower at 20,000 sessions, and growing with the matches.)
    """
    with connection.cursor() as cursor:
        cursor.execute(FTS_MATCH_SQL + " LIMIT %s", [match, FTS_SELECTIVE_MAX + 1])
        ids = [row[0] for row in cursor.fetchall()]
    if len(ids) <= FTS_SELECTIVE_MAX:
        return Q(pk__in=ids)
    # The FTS5 table is not a model; the query is a bound parameter.
    member = RawSQL(FTS_MEMBER_SQL, [match], output_field=BooleanField())  # noqa: S611  # nosec B611
    return Q(member)


def text_filter(query: TextQuery) -> Q:
    """The condition on GatewaySession for a parsed query (only indexed sessions can match)."""
    condition = Q(search_text__isnull=False)
    if query.words:
        if connection.vendor == "postgresql":
            indexed = Q(search_text__search_vector=_Lexemes(_tsquery(query.words)))
        else:
            indexed = _fts5_condition(_fts5_query(query.words))
        if SessionText.objects.filter(all_words_indexed=False).exists():
            # Texts whose words did not all fit in the index: their text is searched.
            fallback = Q(search_text__all_words_indexed=False)
            for word, prefix in query.words:
                fallback &= Q(search_text__text__iregex=_word_regex(word, prefix))
            indexed |= fallback
        condition &= indexed
    for substring in query.substrings:
        condition &= Q(search_text__text__icontains=substring)
    return condition


# --- The search form ------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionSearchFilters:
    """What the searcher asked for; ``before``/``after`` are keyset cursors (session ids)."""

    user: str = ""
    target: str = ""
    account: str = ""
    grant: int | None = None
    since: object = None  # datetime, inclusive (started at)
    until: object = None  # datetime, exclusive
    end_reason: str = ""  # an EndReason value, "live", or empty for any
    q: str = ""
    before: int | None = None
    after: int | None = None

    def as_details(self) -> dict:
        """The filters as audit details (times in ISO 8601), leaving out the unset ones."""
        values = {
            "user": self.user,
            "target": self.target,
            "account": self.account,
            "grant": self.grant,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "end_reason": self.end_reason,
            "q": self.q,
            "before": self.before,
            "after": self.after,
        }
        return {name: value for name, value in values.items() if value not in ("", None)}


MAX_ID = 2**63 - 1


class SessionSearchForm(ReasonableTimesMixin, forms.Form):
    """The session search page's filters; every field optional and bounded."""

    q = forms.CharField(
        required=False,
        max_length=500,
        strip=True,
        label="Appeared in the session",
        help_text='Words (rm, dcm* for a prefix) or exact text (/var/pacs/archive, "rm -rf /var/pacs").',
    )
    user = forms.CharField(
        required=False, max_length=150, strip=True, label="User", help_text="Username, exact."
    )
    target = forms.CharField(
        required=False, max_length=100, strip=True, label="Target", help_text="Name, exact."
    )
    account = forms.CharField(
        required=False, max_length=63, strip=True, label="Account", help_text="Slug, exact."
    )
    grant = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, label="Grant #")
    since = forms.DateTimeField(
        required=False,
        label="Started from",
        input_formats=DATETIME_LOCAL_FORMATS,
        widget=DateTimeLocalInput(),
        help_text="Inclusive, in the site's time zone.",
    )
    until = forms.DateTimeField(
        required=False,
        label="Started before",
        input_formats=DATETIME_LOCAL_FORMATS,
        widget=DateTimeLocalInput(),
        help_text="Exclusive.",
    )
    end_reason = forms.ChoiceField(
        required=False,
        label="End",
        choices=[("", "Any"), ("live", "Live now"), *GatewaySession.EndReason.choices],
    )
    before = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, widget=forms.HiddenInput)
    after = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID, widget=forms.HiddenInput)

    def clean_q(self):
        q = self.cleaned_data["q"]
        if q and not parse_query(q):
            raise forms.ValidationError("Type a word or some text to look for.")
        return q

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            self.add_error("until", "The end of the range must be after its start.")
        if cleaned.get("before") is not None and cleaned.get("after") is not None:
            raise forms.ValidationError("A page is either before or after a session, not both.")
        return cleaned

    def to_filters(self) -> SessionSearchFilters:
        data = self.cleaned_data
        return SessionSearchFilters(
            **{name: data[name] for name in SessionSearchFilters.__dataclass_fields__}
        )
