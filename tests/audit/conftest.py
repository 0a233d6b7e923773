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


def restore_triggers() -> None:
    """Put the triggers back as the migration made them (after a test that committed their removal)."""
    with connection.cursor() as cursor:
        for sql in _triggers.STATEMENTS[connection.vendor][0]:
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


@pytest.fixture
def receiver():
    """A real syslog receiver over TCP, on a free port of 127.0.0.1, stopped after the test."""
    from tests.audit.syslog_server import SyslogReceiver

    server = SyslogReceiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A throwaway CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    from tests.audit.syslog_server import make_tls_files

    return make_tls_files(tmp_path_factory.mktemp("syslog-tls"))


@pytest.fixture
def tls_receiver(tls_files):
    """A real syslog receiver over TLS (RFC 5425) presenting the test CA's certificate for 127.0.0.1."""
    from tests.audit.syslog_server import SyslogReceiver

    server = SyslogReceiver(tls=tls_files.server_context()).start()
    yield server
    server.stop()
