"""The PostgreSQL door to targets (psycopg): the database accounts' login checks.

A database account's connection test logs in to the target's PostgreSQL as a client coming
through the gateway's port forward would, with a short-lived user from Vault, and runs one
query. Failures raise the ``targets.errors`` classes with libpq's reason in words and never
the password.
"""

from __future__ import annotations

import psycopg
from django.views.decorators.debug import sensitive_variables

from targets.errors import AuthFailed, TargetError, TargetUnreachable, TlsError, describe_target, scrub


@sensitive_variables("password")
def check_database_login(
    *,
    host: str,
    port: int,
    database: str,
    username: str,
    password: str,
    sslmode: str,
    timeout: float = 10,
    target: str = "",
) -> str:
    """Log in to a PostgreSQL target and run one query; returns the server's version.

    Raises ``TargetUnreachable``, ``TlsError`` (sslmode against what the server
    offers or its certificate), ``AuthFailed`` (password or role refused, no
    CONNECT privilege) or ``TargetError`` (no such database, anything else), each with
    libpq's reason in words and never the password.
    """
    where = describe_target(host=host, port=port, target=target)
    try:
        with psycopg.connect(
            host=host,
            port=port,
            dbname=database,
            user=username,
            password=password,
            sslmode=sslmode,
            connect_timeout=max(1, round(timeout)),
            application_name="pamsite connection test",
        ) as conn:
            conn.execute("SELECT 1")
            return str(conn.info.parameter_status("server_version") or "")
    except psycopg.Error as exc:
        said = scrub(str(exc).encode(), (password,))
        raise _database_failure(
            said, where=where, database=database, username=username, sslmode=sslmode
        ) from None


def _database_failure(said: str, *, where: str, database: str, username: str, sslmode: str) -> TargetError:
    """libpq's error text as the exception a person can act on."""
    text = said.lower()
    if "server does not support ssl" in text:
        return TlsError(
            f"{where} does not offer TLS, but this account's TLS mode is {sslmode}: turn TLS on in "
            "the server, or choose prefer or disable for the account"
        )
    if any(
        s in text
        for s in ("certificate verify failed", "root certificate", "ssl error", "server certificate")
    ):
        return TlsError(f"TLS with {where} failed with TLS mode {sslmode}: {said}")
    if "no pg_hba.conf entry" in text:
        return TlsError(
            f"{where} has no rule (pg_hba.conf) for this client with TLS mode {sslmode}: if the server "
            "accepts only TLS, choose require or stricter; otherwise its DBA must allow pamsite's address. "
            f"PostgreSQL said: {said}"
        )
    if "connection refused" in text:
        return TargetUnreachable(f"{where} refused the connection: is PostgreSQL listening on that port?")
    if "timeout expired" in text or "timed out" in text:
        return TargetUnreachable(f"{where} did not answer in time")
    if "could not translate host name" in text or "name or service not known" in text:
        return TargetUnreachable(f"{where}: cannot resolve the host name")
    if f'database "{database.lower()}" does not exist' in text:
        return TargetError(
            f"The database {database} does not exist on {where}: correct the account's database"
        )
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return AuthFailed(f"{where} refused the login of {username}: {said}")
    if "permission denied for database" in text or "connect privilege" in text:
        return AuthFailed(
            f"{username} may not connect to {database} on {where}: grant CONNECT on it to the "
            "account's group role"
        )
    if "could not connect" in text or ("connection to server" in text and "failed" in text):
        return TargetUnreachable(f"{where} cannot be reached: {said}")
    return TargetError(f"{where} refused the connection: {said}")
