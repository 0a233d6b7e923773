"""The audit trail exported as CSV or JSON lines, produced batch by batch for a streamed response.

Each row carries the event's sequence, time (ISO 8601, UTC), actor, source address,
action, object, details (JSON), previous hash and hash (see ``audit.formats``): with
them an export can be checked against the hash chain away from pamsite.

CSV cells that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) are prefixed with ``'``: the export holds
what users typed (usernames at failed logins, reasons, comments).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from audit.formats import EXPORT_FIELDS, details_json, event_document, json_line
from audit.models import AuditEvent

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# Events per database query and per chunk of the response.
EXPORT_BATCH_SIZE = 1000

# format: (content type, file extension)
EXPORT_FORMATS = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/x-ndjson; charset=utf-8", "jsonl"),
}


def csv_safe(value: Any) -> Any:
    """The cell as text a spreadsheet shows rather than runs; numbers and empty cells unchanged."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def csv_row(event: AuditEvent) -> list[Any]:
    document = event_document(event)
    document["details"] = details_json(document["details"])
    return [csv_safe(document[name]) for name in EXPORT_FIELDS]


def csv_chunks(batches: Iterable[list[AuditEvent]]) -> Iterator[bytes]:
    """The header line, then one chunk of CSV (RFC 4180, UTF-8) per batch of events."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_FIELDS)
    yield _take(buffer)
    for batch in batches:
        writer.writerows(csv_row(event) for event in batch)
        yield _take(buffer)


def jsonl_chunks(batches: Iterable[list[AuditEvent]]) -> Iterator[bytes]:
    """One JSON object per line (UTF-8), one chunk per batch of events."""
    for batch in batches:
        yield "".join(json_line(event) + "\n" for event in batch).encode("utf-8")


def _take(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode("utf-8")
    buffer.seek(0)
    buffer.truncate()
    return data
