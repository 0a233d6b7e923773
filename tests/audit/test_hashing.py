"""The canonical form of an event: the same bytes from Python, SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid

import pytest

from audit.hashing import (
    GENESIS_HASH,
    canonical_bytes,
    canonical_ip,
    canonical_time,
    clean_text,
    event_hash,
    json_normalise,
)

pytestmark = pytest.mark.unit


def sample(**overrides):
    values = {
        "sequence": 1,
        "created_at": dt.datetime(2025, 3, 4, 5, 6, 7, 890, tzinfo=dt.UTC),
        "actor_id": 3,
        "actor_username": "alice",
        "source_ip": "192.0.2.7",
        "action": "auth.login.success",
        "object_type": "identity.user",
        "object_id": "3",
        "object_repr": "Alice",
        "details": {"b": 1, "a": "é"},
        "prev_hash": GENESIS_HASH,
    }
    values.update(overrides)
    return values


def test_genesis_hash_is_64_zeros():
    assert GENESIS_HASH == "0" * 64


def test_canonical_form_is_sorted_compact_utf8_json_of_every_field():
    data = canonical_bytes(sample())
    assert (
        data
        == (
            '{"action":"auth.login.success","actor_id":3,"actor_username":"alice",'
            '"created_at":"2025-03-04T05:06:07.000890Z","details":{"a":"é","b":1},'
            '"object_id":"3","object_repr":"Alice","object_type":"identity.user",'
            f'"prev_hash":"{GENESIS_HASH}","sequence":1,"source_ip":"192.0.2.7"}}'
        ).encode()
    )
    assert event_hash(sample()) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("field", ["sequence", "action", "details", "prev_hash", "actor_id", "created_at"])
def test_hash_changes_with_any_field(field):
    changed = {
        "sequence": 2,
        "action": "auth.login.failure",
        "details": {"b": 2, "a": "é"},
        "prev_hash": "1" * 64,
        "actor_id": None,
        "created_at": dt.datetime(2025, 3, 4, 5, 6, 7, 891, tzinfo=dt.UTC),
    }[field]
    assert event_hash(sample(**{field: changed})) != event_hash(sample())


def test_times_are_utc_with_microseconds_whatever_their_zone():
    paris = dt.timezone(dt.timedelta(hours=1))
    assert canonical_time(dt.datetime(2025, 1, 1, 1, 0, tzinfo=paris)) == "2025-01-01T00:00:00.000000Z"


def test_naive_times_are_refused():
    with pytest.raises(ValueError):
        canonical_time(dt.datetime(2025, 1, 1))


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("::ffff:c000:201", "::ffff:192.0.2.1"),
        (None, None),
        ("", None),
    ],
)
def test_addresses_are_written_as_django_stores_them(given, canonical):
    assert canonical_ip(given) == canonical


def test_a_non_address_is_refused():
    with pytest.raises(ValueError):
        canonical_ip("192.0.2.1:22")


def test_details_become_json_that_jsonb_returns_unchanged():
    when = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    ident = uuid.UUID(int=7)
    assert json_normalise(
        {
            "t": (1, 2),
            "f": 1e20,
            "z": -0.0,
            "x": 0.5,
            "w": when,
            "u": ident,
            "d": decimal.Decimal("1.5"),
            "s": "a\x00b",
        }
    ) == {
        "t": [1, 2],
        "f": 10**20,
        "z": 0.0,
        "x": 0.5,
        "w": "2025-01-01T00:00:00+00:00",
        "u": str(ident),
        "d": "1.5",
        "s": "a\ufffdb",
    }


@pytest.mark.parametrize(
    "bad", [{1: "x"}, {"n": float("nan")}, {"i": float("inf")}, {"o": object()}, {"s": {1, 2}}]
)
def test_details_that_are_not_json_are_refused(bad):
    with pytest.raises(ValueError):
        json_normalise(bad)


def test_text_neither_database_can_store_is_replaced():
    assert clean_text("a\x00b\udcffc?") == "a\ufffdb\ufffdc?"
    json.dumps(clean_text("\udcff")).encode("utf-8")
