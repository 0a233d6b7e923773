"""targets/postgres.py (the database door) against the machine's real PostgreSQL."""

from __future__ import annotations

import pytest

from targets import postgres
from targets.errors import TargetError, TargetUnreachable, TlsError
from tests.fixtures.openbao import free_port


def login(pg_target, **kwargs) -> str:
    arguments = {
        "host": pg_target.host,
        "port": pg_target.port,
        "database": pg_target.database,
        "username": pg_target.admin_username,
        "password": pg_target.admin_password,
        "sslmode": "prefer",
        "target": "pacsdb",
    } | kwargs
    return postgres.check_database_login(**arguments)


def test_a_login_runs_a_query_and_gives_the_servers_version(pg_target):
    version = login(pg_target)

    assert version and version[0].isdigit()


def test_a_closed_port_is_unreachable_in_words(pg_target):
    port = free_port()  # nothing listens there

    with pytest.raises(TargetUnreachable) as excinfo:
        login(pg_target, port=port)

    assert str(excinfo.value) == (
        f"target pacsdb ({pg_target.host}:{port}) refused the connection: "
        "is PostgreSQL listening on that port?"
    )


def test_a_missing_database_says_which(pg_target):
    with pytest.raises(TargetError) as excinfo:
        login(pg_target, database="no_such_pacsdb")

    assert str(excinfo.value) == (
        f"The database no_such_pacsdb does not exist on target pacsdb ({pg_target.host}:{pg_target.port}): "
        "correct the account's database"
    )


def test_tls_required_of_a_server_without_tls_is_a_tls_error(pg_target):
    with pytest.raises(TlsError, match="does not offer TLS, but this account's TLS mode is require"):
        login(pg_target, sslmode="require")
