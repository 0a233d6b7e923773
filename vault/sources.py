"""Credential sources: how each kind of account gets, shows and gives back its credential.

Pure of Django models: the access workflow describes an account with an ``AccountRef``
and calls these functions; every Vault call goes through ``vault.client.VaultClient``.
Nothing here talks to a target: the static-password rotation, which changes the password
on the target and records it here, is ``access.rotation``; it uses the KV operations of
the "Static passwords" section.

| kind     | checkout                        | reveal (show once)         | release                    |
| -------- | ------------------------------- | -------------------------- | -------------------------- |
| ssh-ca   | checks the account's SSH role   | nothing to show            | nothing (certs expire)     |
| database | dynamic role, lease = the grant | the stashed password, once | lease revoked, role dropped |
| static   | checks the KV secret            | the KV password            | none; ``access.rotation``  |

A dynamic database password is handed out by Vault only when the role is created, and
pamsite's database must never hold it: it is stashed in Vault's KV (``grants/<grant>``),
destroyed when shown, and the stash is removed at release.

Callers catch ``VaultError`` (Vault down, sealed, refused, misconfigured; ``CredentialError``
is a subclass). No message, log line or repr here holds a secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from audit.timefmt import duration_words
from vault.client import VaultClient, VaultConflict, VaultError, VaultNotFound, get_client

logger = logging.getLogger(__name__)

SSH_CA, DATABASE, STATIC = "ssh-ca", "database", "static"
KINDS = (SSH_CA, DATABASE, STATIC)

# A checkout whose lease Vault caps below the grant by more than this is refused.
LEASE_SLACK_SECONDS = 5
# The lease (and database user) Vault hands out lives this long until the checkout renews it
# to the grant's length: when Vault becomes unreachable between the two, and so cannot be
# told to revoke it either, the lease left behind ends by itself this soon.
CHECKOUT_LEASE_SECONDS = 300
# The per-account SSH roles: a certificate only has to be valid when the gateway logs in.
SSH_CERT_TTL = 300
SSH_CERT_MAX_TTL = 3600
# What the user is told to have done, in the words of the pages (never a function's name).
SET_UP_IN_VAULT = (
    'a pam-admin must set the account up in Vault (Targets page: the account, "Set it up in Vault")'
)

# PostgreSQL identifiers we put inside double quotes ourselves: plain names only, so that
# neither a quote nor a Vault template ({{...}}) can get into the statements.
_PG_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$.-]{0,62}$")
_VAULT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_HOSTNAME = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PG_SCRAM = "scram-sha-256"  # how Vault hashes the passwords it sets

# A dynamic database user: a LOGIN role valid until its lease ends, member of the group role.
_CREATION_STATEMENTS = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    'GRANT "<group>" TO "{{name}}";',
)
# Its end, in one guarded block: a role a DBA already dropped must not make the revocation
# fail (Vault would retry it for ever). Its sessions are ended first (DROP ROLE alone leaves
# a live connection working); REVOKE on the database comes before DROP ROLE (else 2BP01);
# what it created is handed to the group role rather than blocking the drop.
_REVOCATION_STATEMENTS = (
    "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{{name}}') THEN "
    "PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'; "
    'REVOKE ALL PRIVILEGES ON DATABASE "<database>" FROM "{{name}}"; '
    'REASSIGN OWNED BY "{{name}}" TO "<group>"; '
    'DROP OWNED BY "{{name}}"; '
    'DROP ROLE "{{name}}"; '
    "END IF; END $$;",
)


class CredentialError(VaultError):
    """An account's credential cannot be handed out, shown or configured; the message says why."""


class SecretAlreadyShown(CredentialError):
    """The show-once secret of a grant was already shown."""


class RotationPending(CredentialError):
    """A static password rotation is pending in KV: which password the target takes is not known here.

    ``access.rotation`` settles it by asking the target, then reads again.
    """


@dataclass(frozen=True)
class AccountRef:
    """What the credential sources need to know of an account; never a secret."""

    slug: str
    kind: str  # "ssh-ca" | "database" | "static"
    # ssh principal / static login / for database: the DB role the dynamic user is granted.
    username: str
    vault_role: str = ""  # Vault role name (database, ssh-ca); default: the slug
    kv_path: str = ""  # KV path (static); default f"accounts/{slug}"
    host: str = ""
    port: int = 22
    host_key: str = ""  # pinned OpenSSH line (static rotation)
    database: str = ""  # database name (database kind)
    connection: str = ""  # Vault database connection name (database kind)

    @property
    def role_name(self) -> str:
        """The Vault role (database or SSH) of the account."""
        return self.vault_role or self.slug

    @property
    def secret_path(self) -> str:
        """The KV path of a static account's password."""
        return self.kv_path or f"accounts/{self.slug}"


@dataclass(frozen=True)
class CheckedOut:
    """What a checkout handed out: the lease (database), the login, when it ends. No secret."""

    lease_id: str
    login: str
    expires_at: datetime | None


@dataclass(frozen=True)
class RevealedSecret:
    """A login and its password, to show once; the password stays out of the repr."""

    login: str
    password: str = field(repr=False)


# --- Checkout, reveal, release --------------------------------------------------------


def checkout(
    *, account: AccountRef, grant_ref: str, ttl_seconds: int, vault: VaultClient | None = None
) -> CheckedOut:
    """Hand out the account's credential for a grant of ``ttl_seconds``.

    database: new dynamic credentials whose lease lasts exactly the grant (renewed to it;
    refused when the role's max_ttl would cut it short), the password stashed in Vault for
    one reveal. Anything failing after the lease exists revokes it before raising.
    ssh-ca: checks the account's SSH role (the gateway signs a certificate at connect).
    static: checks that Vault holds the password.
    """
    vault = vault or get_client()
    _check_kind(account)
    _check_grant_ref(grant_ref)
    if ttl_seconds <= 0:
        raise CredentialError(f"A checkout of {account.slug} needs a positive duration, not {ttl_seconds} s")
    if account.kind == DATABASE:
        return _database_checkout(account, grant_ref, ttl_seconds, vault)
    if account.kind == SSH_CA:
        _ssh_role(account, vault)
        return CheckedOut(
            lease_id="", login=account.username, expires_at=_now() + timedelta(seconds=ttl_seconds)
        )
    _static_secret(account, vault)
    return CheckedOut(lease_id="", login=account.username, expires_at=None)


@sensitive_variables("creds")
def _database_checkout(
    account: AccountRef, grant_ref: str, ttl_seconds: int, vault: VaultClient
) -> CheckedOut:
    role = account.role_name
    try:
        creds = vault.database_credentials(role)
    except VaultNotFound:
        raise CredentialError(
            f"No database role {role} in Vault for {account.slug}: {SET_UP_IN_VAULT}"
        ) from None
    try:
        # Vault sets the lease's TTL to the increment, within the role's max_ttl.
        ttl = vault.lease_renew(creds.lease_id, ttl_seconds)
        if ttl < ttl_seconds - LEASE_SLACK_SECONDS:
            raise CredentialError(
                f"The Vault database role of {account.slug} ({role}) allows leases of at most about "
                f"{duration_words(ttl)}, shorter than the grant ({duration_words(ttl_seconds)}): ask for a "
                "shorter grant, or a pam-admin to raise the role's maximum lease time (max_ttl) in Vault"
            )
        expires_at = _now() + timedelta(seconds=ttl)
        try:
            vault.kv_write(
                _stash_path(grant_ref),
                {
                    "login": creds.username,
                    "password": creds.password,
                    "lease_id": creds.lease_id,
                    "expires_at": expires_at.isoformat(),
                },
                cas=0,  # only if absent: never overwrite another checkout's stash
            )
        except VaultConflict:
            raise CredentialError(
                f"Grant {grant_ref} already has database credentials checked out: release them first"
            ) from None
    except BaseException:
        _revoke_quietly(vault, creds.lease_id, account)
        raise
    logger.info(
        "Checked out %s for grant %s as %s until %s", account.slug, grant_ref, creds.username, expires_at
    )
    return CheckedOut(lease_id=creds.lease_id, login=creds.username, expires_at=expires_at)


def _revoke_quietly(vault: VaultClient, lease_id: str, account: AccountRef) -> None:
    try:
        vault.lease_revoke(lease_id)
    except VaultError as exc:
        # Vault itself is failing; the lease still ends at its TTL. Say which one, loudly.
        logger.error(
            "Could not revoke lease %s of %s after a failed checkout: %s", lease_id, account.slug, exc
        )


@sensitive_variables("data")
def reveal(*, account: AccountRef, grant_ref: str, vault: VaultClient | None = None) -> RevealedSecret:
    """The secret to show the grant's holder: once for a database grant, the KV password for static.

    database: the stash is consumed (check-and-set, so two concurrent reveals cannot both
    succeed) and its password destroyed; a second reveal raises ``SecretAlreadyShown``.
    static: the KV password; ``RotationPending`` while a rotation is pending (the access
    layer settles it with ``access.rotation.static_reconcile`` first).
    """
    vault = vault or get_client()
    _check_kind(account)
    _check_grant_ref(grant_ref)
    if account.kind == SSH_CA:
        raise CredentialError(f"{account.slug} has no secret to show: connect through the gateway")
    if account.kind == STATIC:
        return RevealedSecret(login=account.username, password=_current_static_password(account, vault))

    path = _stash_path(grant_ref)
    try:
        data, version = vault.kv_read_version(path)
    except VaultNotFound:
        raise CredentialError(
            f"No database credentials for grant {grant_ref} of {account.slug}: not checked out, or "
            "already released"
        ) from None
    if "password" not in data:
        raise SecretAlreadyShown(
            f"The password of grant {grant_ref} was already shown: it is shown only once"
        )
    try:
        shown = {"shown_at": _now().isoformat(), "login": data["login"], "lease_id": data.get("lease_id", "")}
        vault.kv_write(path, shown, cas=version)
    except VaultConflict:
        raise SecretAlreadyShown(
            f"The password of grant {grant_ref} was already shown: it is shown only once"
        ) from None
    try:
        vault.kv_destroy(path, [version])
    except VaultError as exc:
        # Marked shown already; release removes every version anyway.
        logger.warning("Could not destroy the shown password of grant %s yet: %s", grant_ref, exc)
    return RevealedSecret(login=data["login"], password=data["password"])


@sensitive_variables("data")
def _current_static_password(account: AccountRef, vault: VaultClient) -> str:
    """The static password the target takes now; ``RotationPending`` while a rotation is pending."""
    data = _static_secret(account, vault)
    if data.get("pending_password"):
        raise RotationPending(
            f"A password rotation of {account.slug} is running or was interrupted, and pamsite "
            "cannot tell which password the target takes now: retry in a few minutes; if it "
            "persists, a pam-admin must check the target and reset the password"
        )
    return data["password"]


def static_login_password(*, account: AccountRef, vault: VaultClient | None = None) -> str:
    """The static account's current password, for the gateway to log in with (never shown).

    ``RotationPending`` while a rotation is pending: ``access.rotation.static_login_password``
    settles it first.
    """
    vault = vault or get_client()
    _check_kind(account, STATIC)
    return _current_static_password(account, vault)


def release(
    *, account: AccountRef, grant_ref: str, checked_out: CheckedOut, vault: VaultClient | None = None
) -> None:
    """Give back what a checkout handed out. Safe to call again (and after a failed checkout).

    database: the lease is revoked (Vault drops the role and its sessions; an expired or
    already revoked lease is fine) and the stash removed. ssh-ca, static: nothing (a
    static password is rotated separately, ``access.rotation.static_rotate``).
    """
    vault = vault or get_client()
    _check_kind(account)
    _check_grant_ref(grant_ref)
    if account.kind != DATABASE:
        return
    path = _stash_path(grant_ref)
    lease_ids = [checked_out.lease_id] if checked_out.lease_id else []
    try:
        # The stash knows the lease too: a caller that lost lease_id still gives it back.
        stashed = vault.kv_read(path).get("lease_id", "")
    except VaultNotFound:
        stashed = ""
    if stashed and stashed not in lease_ids:
        lease_ids.append(stashed)
    prefix = f"{vault.config.database_mount}/creds/{account.role_name}/"
    for lease_id in lease_ids:
        if not lease_id.startswith(prefix):
            raise CredentialError(f"Lease {lease_id[:120]!r} is not one of {account.slug}'s: not revoked")
    for lease_id in lease_ids:
        vault.lease_revoke(lease_id)
    vault.kv_delete_all(path)
    logger.info("Released %s for grant %s (lease revoked)", account.slug, grant_ref)


def ssh_sign(
    *, account: AccountRef, public_key: str, ttl_seconds: int, vault: VaultClient | None = None
) -> str:
    """A user certificate for public_key, valid only for the account's principal, for at most ttl_seconds."""
    vault = vault or get_client()
    _check_kind(account, SSH_CA)
    if ttl_seconds <= 0:
        raise CredentialError(
            f"A certificate for {account.slug} needs a positive lifetime, not {ttl_seconds} s"
        )
    try:
        return vault.ssh_sign_public_key(account.role_name, public_key, [account.username], ttl_seconds)
    except VaultError as exc:
        # Vault answers a signing request for a role it lacks with 400 "Unknown role", not 404.
        if not isinstance(exc, VaultNotFound) and "unknown role" not in str(exc).lower():
            raise
        raise CredentialError(
            f"No SSH role {account.role_name} in Vault for {account.slug}: {SET_UP_IN_VAULT}"
        ) from None


# --- Configuration (pam-admin pages) -----------------------------------------------------


@sensitive_variables("admin_password", "body")
def configure_database_connection(
    *,
    name: str,
    host: str,
    port: int,
    database: str,
    admin_username: str,
    admin_password: str,
    allowed_roles: Iterable[str] = (),
    sslmode: str = "require",
    vault: VaultClient | None = None,
) -> None:
    """Create or update a Vault database connection (PostgreSQL) to a target's database.

    Vault checks the connection at once (``verify_connection``). The admin password goes
    to Vault only (Vault never returns it). Roles already allowed on the connection stay
    allowed; ``configure_database_role`` adds each account's role. The admin user needs
    CREATEROLE, the ADMIN option on the accounts' group roles and pg_signal_backend
    (to end a revoked role's sessions), or is a superuser.
    """
    vault = vault or get_client()
    _vault_name(name, "connection name")
    _pg_identifier(database, "database name")
    _pg_identifier(admin_username, "admin user name")
    if not _HOSTNAME.match(host or ""):
        raise CredentialError(f"Not a host name or address: {host[:80]!r}")
    if not 0 < int(port) < 65536:
        raise CredentialError(f"Not a TCP port: {port!r}")
    if sslmode not in _SSLMODES:
        raise CredentialError(f"sslmode must be one of {', '.join(_SSLMODES)}, not {sslmode!r}")
    if not admin_password:
        raise CredentialError("The database admin password is empty")
    path = f"{vault.config.database_mount}/config/{name}"
    current = vault.read(path)
    allowed = list(
        dict.fromkeys([*((current or {}).get("data", {}).get("allowed_roles") or []), *allowed_roles])
    )
    for role in allowed:
        _vault_name(role, "role name")
    host_part = host if ":" not in host or host.startswith("[") else f"[{host}]"
    body = {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@{host_part}:{int(port)}/{database}"
        f"?sslmode={sslmode}",
        "username": admin_username,
        "password": admin_password,
        "allowed_roles": allowed,
        "verify_connection": True,
        # Vault hashes the passwords it sets: no plaintext password in PostgreSQL's logs.
        "password_authentication": _PG_SCRAM,
    }
    vault.write(path, body, sensitive=[admin_password])
    logger.info("Configured database connection %s (%s:%s/%s)", name, host, port, database)


def configure_database_role(
    *,
    account: AccountRef,
    default_ttl: int | None = None,
    max_ttl: int = 86400,
    vault: VaultClient | None = None,
) -> None:
    """Create or update the Vault role that makes the account's dynamic database users.

    Each user is a LOGIN role, valid until its lease ends, granted membership of the
    account's group role (``account.username``). At revocation its sessions are ended,
    what it created is handed to the group role, and it is dropped. The role is also
    added to the connection's ``allowed_roles``. ``default_ttl`` (the lease before the
    checkout renews it to the grant) defaults to CHECKOUT_LEASE_SECONDS, within ``max_ttl``.
    """
    vault = vault or get_client()
    if default_ttl is None:
        default_ttl = min(CHECKOUT_LEASE_SECONDS, max_ttl)
    _check_kind(account, DATABASE)
    group = _pg_identifier(account.username, "group role (account username)")
    database = _pg_identifier(account.database, "database name")
    connection = _vault_name(account.connection, "connection name")
    role = _vault_name(account.role_name, "role name")
    if not 0 < default_ttl <= max_ttl:
        raise CredentialError(
            "The lease time must be more than 0 and at most the longest lease time, not "
            f"{default_ttl} s and {max_ttl} s"
        )
    mount = vault.config.database_mount
    conn = vault.read(f"{mount}/config/{connection}")
    if conn is None:
        raise CredentialError(
            f"No database connection {connection} in Vault: a pam-admin must save it first (the "
            'account\'s "Set it up in Vault" page saves the connection and the role)'
        )
    # Only names checked against _PG_IDENTIFIER above go in (no quote can); Vault fills in
    # {{name}}, {{password}} and {{expiration}} itself.
    creation = [stmt.replace("<group>", group) for stmt in _CREATION_STATEMENTS]
    revocation = [
        stmt.replace("<database>", database).replace("<group>", group) for stmt in _REVOCATION_STATEMENTS
    ]
    vault.write(
        f"{mount}/roles/{role}",
        {
            "db_name": connection,
            "creation_statements": creation,
            "revocation_statements": revocation,
            "default_ttl": default_ttl,
            "max_ttl": max_ttl,
        },
    )
    allowed = conn["data"].get("allowed_roles") or []
    if role not in allowed and "*" not in allowed:
        vault.write(f"{mount}/config/{connection}", {"allowed_roles": [*allowed, role]})
    logger.info("Configured database role %s for %s (group %s in %s)", role, account.slug, group, database)


def configure_ssh_role(
    *,
    account: AccountRef,
    ttl: int = SSH_CERT_TTL,
    max_ttl: int = SSH_CERT_MAX_TTL,
    vault: VaultClient | None = None,
) -> None:
    """Create or update the account's CA-mode SSH role: user certificates for its principal only."""
    vault = vault or get_client()
    _check_kind(account, SSH_CA)
    role = _vault_name(account.role_name, "role name")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$", account.username):
        raise CredentialError(f"Not a login name for an SSH principal: {account.username[:40]!r}")
    if not 0 < ttl <= max_ttl:
        raise CredentialError(
            "The certificate lifetime must be more than 0 and at most the longest lifetime, not "
            f"{ttl} s and {max_ttl} s"
        )
    if role == settings.VAULT_SSH_ROLE:
        raise CredentialError(f"{role} is the gateway's own SSH role: choose another Vault role name")
    vault.write(
        f"{vault.config.ssh_mount}/roles/{role}",
        {
            "key_type": "ca",
            "allow_user_certificates": True,
            "allow_host_certificates": False,
            "allowed_users": account.username,
            "allowed_users_template": False,
            "default_user": account.username,
            "allowed_extensions": "permit-pty,permit-port-forwarding",
            "default_extensions": {"permit-pty": "", "permit-port-forwarding": ""},
            "allowed_critical_options": "",
            "allow_user_key_ids": False,
            "ttl": ttl,
            "max_ttl": max_ttl,
        },
    )
    logger.info("Configured SSH role %s for %s (principal %s)", role, account.slug, account.username)


@sensitive_variables("password")
def static_set_password(*, account: AccountRef, password: str, vault: VaultClient | None = None) -> int:
    """Store a static account's current password (onboarding); returns the KV version."""
    vault = vault or get_client()
    _check_kind(account, STATIC)
    if not password:
        raise CredentialError(f"The password for {account.slug} is empty")
    version = vault.kv_write(account.secret_path, {"username": account.username, "password": password})
    logger.info("Stored the password of %s (KV version %d)", account.slug, version)
    return version


# --- Readiness and connection tests (pam-admin pages) -----------------------------------------

_KV_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$")


@dataclass(frozen=True)
class VaultReadiness:
    """Whether Vault holds what an account needs to be handed out, in words (never a secret)."""

    ready: bool
    message: str


def account_vault_readiness(*, account: AccountRef, vault: VaultClient | None = None) -> VaultReadiness:
    """Is this account set up in Vault? What is missing, in words, if not.

    ssh-ca: its SSH role exists and allows the account's principal. database: its role
    exists and so does the connection the role names. static: a password is stored (read
    from the KV metadata: the password itself is not fetched). Raises ``VaultError`` when
    Vault cannot be asked (down, sealed, permission refused): then nobody knows.
    """
    vault = vault or get_client()
    _check_kind(account)
    try:
        if account.kind == SSH_CA:
            return _ssh_readiness(account, vault)
        if account.kind == DATABASE:
            return _database_readiness(account, vault)
        return _static_readiness(account, vault)
    except CredentialError as exc:
        return VaultReadiness(False, str(exc))


def _ssh_readiness(account: AccountRef, vault: VaultClient) -> VaultReadiness:
    role = _vault_name(account.role_name, "role name")
    resp = vault.read(f"{vault.config.ssh_mount}/roles/{role}")
    if resp is None:
        return VaultReadiness(False, f"No SSH role {role} in Vault for {account.slug}")
    allowed = [u.strip() for u in str(resp["data"].get("allowed_users", "")).split(",")]
    if account.username not in allowed and "*" not in allowed:
        return VaultReadiness(
            False, f"The SSH role {role} does not sign certificates for the login {account.username}"
        )
    return VaultReadiness(True, f"SSH role {role} signs certificates for {account.username}")


def _database_readiness(account: AccountRef, vault: VaultClient) -> VaultReadiness:
    mount = vault.config.database_mount
    role = _vault_name(account.role_name, "role name")
    resp = vault.read(f"{mount}/roles/{role}")
    if resp is None:
        return VaultReadiness(False, f"No database role {role} in Vault for {account.slug}")
    connection = str(resp["data"].get("db_name", ""))
    if not _VAULT_NAME.match(connection) or vault.read(f"{mount}/config/{connection}") is None:
        return VaultReadiness(
            False, f"The database role {role} names the connection {connection[:100]!r}, which Vault lacks"
        )
    return VaultReadiness(True, f"Database role {role} makes users on the connection {connection}")


def _static_readiness(account: AccountRef, vault: VaultClient) -> VaultReadiness:
    path = account.secret_path
    if not _KV_PATH.match(path) or ".." in path.split("/"):
        raise CredentialError(f"Not a plain KV path: {path[:80]!r}")
    resp = vault.read(f"{vault.config.kv_mount}/metadata/{path}")
    where = f"{vault.config.kv_mount}/{path}"
    if resp is None:
        return VaultReadiness(False, f"No password in Vault for {account.slug} (at {where})")
    current = resp["data"].get("current_version") or 0
    version = (resp["data"].get("versions") or {}).get(str(current)) or {}
    if not current or version.get("destroyed") or version.get("deletion_time"):
        return VaultReadiness(False, f"The password of {account.slug} in Vault (at {where}) was deleted")
    return VaultReadiness(True, f"Password stored in Vault (at {where}, version {current})")


@sensitive_variables("creds")
def database_probe(
    *, account: AccountRef, probe: Callable[[str, str], Any], vault: VaultClient | None = None
) -> Any:
    """Short-lived credentials of a database account, handed to ``probe(login, password)``, then revoked.

    For a pam-admin's connection test: the dynamic user exists only while ``probe`` runs
    (its lease is revoked after, whatever ``probe`` did; if Vault cannot be told, the
    lease ends by itself within the role's default TTL). Returns what ``probe`` returned.
    """
    vault = vault or get_client()
    _check_kind(account, DATABASE)
    role = _vault_name(account.role_name, "role name")
    try:
        creds = vault.database_credentials(role)
    except VaultNotFound:
        raise CredentialError(
            f"No database role {role} in Vault for {account.slug}: set the account up in Vault first"
        ) from None
    try:
        return probe(creds.username, creds.password)
    finally:
        _revoke_quietly(vault, creds.lease_id, account)


# --- Static passwords: the KV operations of a rotation (``access.rotation``) -----------------


def static_secret(*, account: AccountRef, vault: VaultClient | None = None) -> tuple[dict[str, Any], int]:
    """A static account's KV data (a pending rotation's fields included) and its version."""
    vault = vault or get_client()
    _check_kind(account, STATIC)
    return _static_secret_version(account, vault)


@sensitive_variables("data", "new_password", "pending")
def static_write_pending(
    *,
    account: AccountRef,
    data: dict[str, Any],
    version: int,
    new_password: str,
    since: datetime,
    vault: VaultClient | None = None,
) -> int:
    """A KV version holding the current password and ``new_password`` as pending; its version.

    Written only if KV is still at ``version`` (check-and-set): ``VaultConflict`` if another
    writer came first.
    """
    vault = vault or get_client()
    _check_kind(account, STATIC)
    pending = {
        **_settled(data, data["password"]),
        "pending_password": new_password,
        "pending_since": since.isoformat(),
    }
    return vault.kv_write(account.secret_path, pending, cas=version)


@sensitive_variables("data", "password")
def static_write_settled(
    *,
    account: AccountRef,
    data: dict[str, Any],
    password: str,
    cas: int | None,
    vault: VaultClient | None = None,
) -> int:
    """A KV version holding only ``password`` (no rotation pending); its version.

    ``cas``: written only if KV is still at that version (``VaultConflict`` otherwise);
    None writes whatever KV holds.
    """
    vault = vault or get_client()
    _check_kind(account, STATIC)
    return vault.kv_write(account.secret_path, _settled(data, password), cas=cas)


@sensitive_variables("data", "password")
def _settled(data: dict[str, Any], password: str) -> dict[str, Any]:
    """The KV data of a static account holding only ``password`` (no rotation pending)."""
    kept = {k: v for k, v in data.items() if k not in ("password", "pending_password", "pending_since")}
    return {**kept, "password": password}


# --- Helpers ----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _stash_path(grant_ref: str) -> str:
    return f"grants/{grant_ref}"


def _check_kind(account: AccountRef, *expected: str) -> None:
    if account.kind not in KINDS:
        raise CredentialError(f"{account.slug} has an unknown account kind {account.kind!r}")
    if expected and account.kind not in expected:
        raise CredentialError(f"{account.slug} is a {account.kind} account, not {' or '.join(expected)}")


def _check_grant_ref(grant_ref: str) -> None:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", grant_ref or ""):
        raise CredentialError(f"Not a grant reference: {grant_ref[:40]!r}")


def _ssh_role(account: AccountRef, vault: VaultClient) -> dict:
    role = _vault_name(account.role_name, "role name")
    resp = vault.read(f"{vault.config.ssh_mount}/roles/{role}")
    if resp is None:
        raise CredentialError(f"No SSH role {role} in Vault for {account.slug}: {SET_UP_IN_VAULT}")
    allowed = [u.strip() for u in str(resp["data"].get("allowed_users", "")).split(",")]
    if account.username not in allowed and "*" not in allowed:
        raise CredentialError(
            f"The SSH role {role} does not allow the principal {account.username}: "
            "configure the account again"
        )
    return resp["data"]


def _static_secret(account: AccountRef, vault: VaultClient) -> dict[str, Any]:
    return _static_secret_version(account, vault)[0]


def _static_secret_version(account: AccountRef, vault: VaultClient) -> tuple[dict[str, Any], int]:
    try:
        data, version = vault.kv_read_version(account.secret_path)
    except VaultNotFound:
        raise CredentialError(
            f"No password in Vault for {account.slug} (at {vault.config.kv_mount}/{account.secret_path}): "
            f"{SET_UP_IN_VAULT} (it stores the password)"
        ) from None
    if not data.get("password"):
        raise CredentialError(f"The Vault secret of {account.slug} holds no password")
    return data, version


def _pg_identifier(value: str, what: str) -> str:
    if not _PG_IDENTIFIER.match(value or ""):
        raise CredentialError(
            f"Not a plain PostgreSQL {what}: {value[:70]!r} "
            "(letters, digits, _ $ . -; starting with a letter or _)"
        )
    return value


def _vault_name(value: str, what: str) -> str:
    if not _VAULT_NAME.match(value or ""):
        raise CredentialError(f"Not a plain Vault {what}: {value[:70]!r} (letters, digits, _ . -)")
    return value
