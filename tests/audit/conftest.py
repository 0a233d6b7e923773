"""Fixtures for the audit trail: recorded events, and an attacker with database access."""

from __future__ import annotations

import importlib

import pytest
from django.db import connection

from audit.services import audit_record

_triggers = importlib.import_module("audit.migrations.0003_append_only_triggers")


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
