"""Fixtures for the audit trail: recorded events, and an attacker with database access."""

from __future__ import annotations

import importlib

import pytest
from django.db import connection

from audit.services import audit_record

_triggers = importlib.import_module("audit.migrations.0003_append_only_triggers")


def install_triggers() -> None:
    """Put the append-only triggers (back) on the table; idempotent."""
    with connection.cursor() as cursor:
        for sql in _triggers.STATEMENTS[connection.vendor][0]:
            cursor.execute(sql)


def drop_triggers() -> None:
    """What an attacker with database access does first. Inside a test's transaction it is rolled back."""
    with connection.cursor() as cursor:
        for sql in _triggers.STATEMENTS[connection.vendor][1]:
            cursor.execute(sql)


def tamper(sql: str, params: list | tuple = ()) -> None:
    """Run raw SQL against the audit table as an attacker would, triggers out of the way."""
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def record_events(count: int, **fields) -> list:
    """``count`` chained events: auth.login.success by alice, numbered in details."""
    fields.setdefault("action", "auth.login.success")
    fields.setdefault("actor_username", "alice")
    return [audit_record(details={"n": i}, **fields) for i in range(count)]


@pytest.fixture
def events(db):
    """Seven chained events."""
    return record_events(7)


# A transactional test ends with pytest-django emptying every table. PostgreSQL does
# it with TRUNCATE, which the triggers allow; SQLite with DELETE, which they refuse.
# So around such a test the triggers come off just before the flush and go back on
# after it. These two fixtures only act for transactional tests; tests/conftest.py
# could adopt them for every app whose transactional tests record audit events.


@pytest.fixture(autouse=True)
def _audit_triggers_back_after_flush(request, django_db_blocker):
    """Set up before transactional_db, so torn down after its flush: reinstall the triggers."""
    yield
    if "transactional_db" in request.fixturenames or "live_server" in request.fixturenames:
        with django_db_blocker.unblock():
            install_triggers()


@pytest.fixture(autouse=True)
def _audit_triggers_off_for_flush(request, _audit_triggers_back_after_flush):
    """Depends on transactional_db, so torn down before its flush: drop the triggers."""
    if "transactional_db" not in request.fixturenames and "live_server" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("transactional_db")
    yield
    drop_triggers()
