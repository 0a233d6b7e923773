"""The canonical form of an audit event and its hash: pure functions, no database.

An event's hash is the SHA-256 (hex) of its canonical serialisation: a JSON object
of every hashed field, keys sorted, compact separators, UTF-8, non-ASCII kept as is.
The chain links each event to the one before through ``prev_hash``; the first
event links to :data:`GENESIS_HASH`.

The canonical form must come out byte for byte the same whether the row was just
built in Python or read back from SQLite or PostgreSQL. Hence:

- times are ISO 8601 in UTC with microseconds and a ``Z`` (both databases keep
  microseconds; the time zone a driver hands back does not matter);
- IP addresses are written the way Django stores them (IPv4-mapped IPv6 as
  ``::ffff:a.b.c.d``, whatever the Python version or PostgreSQL's ``inet`` output);
- ``details`` is first made into plain JSON (:func:`json_normalise`) that jsonb
  returns unchanged: no NaN, no NUL characters, no ``-0.0``, and no float in
  exponent form above 1e16 (jsonb would hand it back as an integer).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import ipaddress
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from django.utils.ipv6 import clean_ipv6_address

GENESIS_HASH = "0" * 64

# Every field of AuditEvent that the hash covers: all of them but the hash itself.
HASHED_FIELDS = (
    "sequence",
    "created_at",
    "actor_id",
    "actor_username",
    "source_ip",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "details",
    "prev_hash",
)


def canonical_time(value: dt.datetime) -> str:
    """The event time as ISO 8601 in UTC with microseconds, e.g. ``2025-01-31T09:30:00.000123Z``."""
    if value.tzinfo is None:
        raise ValueError("Audit times must be timezone-aware.")
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_ip(value: str | None) -> str | None:
    """The address as Django's GenericIPAddressField stores it; raises ValueError if it is not one."""
    if value is None or value == "":
        return None
    address = ipaddress.ip_address(value)
    if address.version == 6:
        # Not str(address): Python before 3.13 writes IPv4-mapped addresses as ::ffff:102:304.
        return clean_ipv6_address(str(address))
    return str(address)


def clean_text(value: str) -> str:
    """The string with what neither database can store replaced by U+FFFD.

    NUL is refused by PostgreSQL text and jsonb; lone surrogates cannot be encoded as
    UTF-8. Such text comes from clients (a username typed at a failed login), and
    recording the event matters more than those characters.
    """
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in value)
    return value


def json_normalise(value: Any, *, _path: str = "details") -> Any:
    """``value`` as plain JSON data that both databases return unchanged.

    Tuples become lists; datetimes, dates, times, UUIDs and Decimals become strings;
    strings are cleaned (:func:`clean_text`). Raises ValueError for what JSON cannot
    hold: non-string keys, NaN or infinity, and any other type.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{_path} is {value!r}: JSON has no NaN or infinity.")
        if value == 0:
            return 0.0  # jsonb has no negative zero
        if "e+" in repr(value):
            # jsonb prints 1e+16 as 10000000000000000, which reads back as an int.
            return int(value)
        return value
    if isinstance(value, Mapping):
        normalised = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{_path} has a key that is not a string: {key!r}.")
            normalised[clean_text(key)] = json_normalise(item, _path=f"{_path}.{key}")
        return normalised
    if isinstance(value, list | tuple):
        return [json_normalise(item, _path=f"{_path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    raise ValueError(f"{_path} is a {type(value).__name__}, which cannot be stored as JSON.")


def _stored_ip(value: str | None) -> str | None:
    # IPv4 is stored and read back in one form already; only IPv6 text can differ
    # (PostgreSQL's inet output). Parsing every IPv4 address would double verification time.
    if value is None or ":" not in value:
        return value or None
    return canonical_ip(value)


def canonical_bytes(values: Mapping[str, Any]) -> bytes:
    """The canonical serialisation of an event given as a mapping of :data:`HASHED_FIELDS`."""
    document = {
        "sequence": int(values["sequence"]),
        "created_at": canonical_time(values["created_at"]),
        "actor_id": values["actor_id"],
        "actor_username": values["actor_username"],
        "source_ip": _stored_ip(values["source_ip"]),
        "action": values["action"],
        "object_type": values["object_type"],
        "object_id": values["object_id"],
        "object_repr": values["object_repr"],
        "details": values["details"],
        "prev_hash": values["prev_hash"],
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def event_hash(values: Mapping[str, Any]) -> str:
    """The SHA-256 hex digest of the event's canonical serialisation."""
    return hashlib.sha256(canonical_bytes(values)).hexdigest()
