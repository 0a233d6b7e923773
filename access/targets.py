"""Configuration of targets and accounts (pam-admin pages, ``pam_config apply``).

Creating and changing targets and accounts, pinning a target's SSH host key, connecting an
account to Vault, testing an account's login as the gateway would, and each account's
readiness (pinned / in Vault / last test). Every change is audited in its own transaction;
calls to targets and Vault are made outside the transactions that record them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from access import rotation
from access.changes import assign_changes
from access.models import Account, Target
from access.services import account_ref
from audit.services import audit_record
from identity.models import User
from targets import errors, postgres, ssh, ssh_blocking
from vault import sources
from vault.client import VaultError, get_client

logger = logging.getLogger(__name__)

# The fields pam-admins set, in the order the pages and the YAML file show them.
TARGET_FIELDS = ("name", "kind", "host", "port", "description", "tags", "forward_ports")
# An account's slug names it in Vault (the role and KV path default to it), and its kind
# decides how Vault holds its credential: both are fixed once it exists.
ACCOUNT_FIELDS = (
    "username",
    "description",
    "tags",
    "vault_role",
    "kv_path",
    "database_name",
    "database_sslmode",
)
# The gateway's certificates live 2 minutes; a test's needs only the login.
TEST_CERTIFICATE_SECONDS = 60


def _via(via: str) -> dict:
    return {"via": via} if via else {}


def _full_clean(obj, *, exclude=()) -> None:
    try:
        obj.full_clean(exclude=list(exclude))
    except ValidationError as exc:
        messages = exc.message_dict
        if "slug" in messages and any("already exists" in m for m in messages["slug"]):
            messages["slug"] = [f"An account called {obj.slug} exists already: choose another name."]
        if "name" in messages and any("already exists" in m for m in messages["name"]):
            messages["name"] = [f"{obj.name} exists already: choose another name."]
        raise ValidationError(messages) from None


# --- Targets ------------------------------------------------------------------------------


@transaction.atomic
def target_create(*, acting_user: User | None, values: dict, http_request=None, via: str = "") -> Target:
    """Add a target (no host key yet: that is pinned after a pam-admin checks it)."""
    target = Target(**{k: v for k, v in values.items() if k in TARGET_FIELDS})
    _full_clean(target)
    target.save()
    audit_record(
        action="access.target.created",
        actor=acting_user,
        request=http_request,
        obj=target,
        details={
            "kind": target.kind,
            "host": target.host,
            "port": target.port,
            "tags": target.tags,
            "forward_ports": target.forward_ports,
            **_via(via),
        },
    )
    return target


@transaction.atomic
def target_update(
    *, target: Target, acting_user: User | None, values: dict, http_request=None, via: str = ""
) -> list[dict]:
    """Change a target's settings; returns the changes (none: nothing written, nothing audited).

    A new host or port drops the pinned host key: it was the old address's, and the new one
    must be checked and pinned again. A kind that its accounts cannot have is refused.
    """
    locked = Target.objects.select_for_update().get(pk=target.pk)
    changes = assign_changes(locked, values, TARGET_FIELDS)
    if not changes:
        return []
    changed = {c["field"] for c in changes}
    if "kind" in changed:
        wrong = [a.slug for a in locked.accounts.all() if a.kind not in locked.account_kinds()]
        if wrong:
            raise ValidationError(
                {
                    "kind": f"A {locked.get_kind_display()} target cannot hold the accounts "
                    f"{', '.join(wrong)} (their kind): keep the kind, or move the accounts first."
                }
            )
    if locked.host_key and (changed & {"host", "port"} or not locked.has_host_key):
        changes.append({"field": "host_key", "from": locked.host_key_fingerprint, "to": ""})
        locked.host_key = locked.host_key_fingerprint = ""
        locked.host_key_confirmed_by = None
        locked.host_key_confirmed_at = None
    _full_clean(locked)
    locked.save()
    audit_record(
        action="access.target.changed",
        actor=acting_user,
        request=http_request,
        obj=locked,
        details={"changes": changes, **_via(via)},
    )
    target.refresh_from_db()
    return changes


def target_fetch_host_key(*, target: Target) -> ssh.HostKey:
    """Ask the target for its SSH host key (to be shown to a pam-admin, not trusted yet)."""
    return ssh_blocking.fetch_host_key(host=target.host, port=target.port, target=target.name)


@transaction.atomic
def target_pin_host_key(
    *, target: Target, acting_user: User, host_key: str, fingerprint: str, http_request=None
) -> None:
    """Pin the host key the pam-admin confirmed; refuse if the host now shows another key."""
    current = target_fetch_host_key(target=target)
    if current.openssh != host_key.strip() or current.fingerprint != fingerprint.strip():
        raise ValidationError(
            "The host now shows a different key from the one you confirmed: nothing was pinned. "
            "Check the fingerprint with the host's administrator before trying again."
        )
    _pin(target, current, acting_user=acting_user, http_request=http_request)


@transaction.atomic
def target_set_host_key(*, target: Target, acting_user: User, host_key: str, via: str) -> None:
    """Pin a host key a pam-admin vouches for without asking the host (``pam_config apply
    --pin-host-keys``: the key of a file pamsite exported). Refused without a person."""
    if acting_user is None:
        raise ValidationError("Pinning a host key is a pam-admin's decision: name the pam-admin.")
    try:
        key = ssh.parse_host_key(host_key)
    except errors.TargetError as exc:
        raise ValidationError({"host_key": str(exc)}) from None
    _pin(target, key, acting_user=acting_user, http_request=None, via=via)


def _pin(target: Target, key: ssh.HostKey, *, acting_user: User, http_request, via: str = "") -> None:
    previous = target.host_key_fingerprint
    target.host_key = key.openssh
    target.host_key_fingerprint = key.fingerprint
    target.host_key_confirmed_by = acting_user
    target.host_key_confirmed_at = timezone.now()
    target.save(
        update_fields=["host_key", "host_key_fingerprint", "host_key_confirmed_by", "host_key_confirmed_at"]
    )
    audit_record(
        action="access.target.host_pinned",
        actor=acting_user,
        request=http_request,
        obj=target,
        details={"fingerprint": key.fingerprint, "previous": previous, **_via(via)},
    )


# --- Accounts -----------------------------------------------------------------------------


def _check_kind_fits(account: Account) -> None:
    target = account.target
    if account.kind not in target.account_kinds():
        kinds = ", ".join(Account.Kind(k).label for k in target.account_kinds())
        raise ValidationError(
            {"kind": f"A {target.get_kind_display()} target takes these accounts only: {kinds}."}
        )


@transaction.atomic
def account_create(
    *, target: Target, acting_user: User | None, values: dict, http_request=None, via: str = ""
) -> Account:
    """Add an account to a target (then: pin the key, set it up in Vault, test it)."""
    fields = {k: v for k, v in values.items() if k in (*ACCOUNT_FIELDS, "slug", "kind")}
    account = Account(target=target, **fields)
    if account.kind != Account.Kind.DATABASE:
        account.database_name, account.database_sslmode = "", ""
    _check_kind_fits(account)
    _full_clean(account)
    account.save()
    audit_record(
        action="access.account.created",
        actor=acting_user,
        request=http_request,
        obj=account,
        details={
            "target": target.name,
            "kind": account.kind,
            "login": account.username,
            "tags": account.tags,
            **_via(via),
        },
    )
    return account


@transaction.atomic
def account_update(
    *, account: Account, acting_user: User | None, values: dict, http_request=None, via: str = ""
) -> list[dict]:
    """Change an account's settings (not its slug or kind); returns the changes.

    A new login of an ssh-ca account needs its Vault role set up again: the readiness
    line and the connection test say so.
    """
    locked = Account.objects.select_for_update(of=("self",)).select_related("target").get(pk=account.pk)
    changes = assign_changes(locked, values, ACCOUNT_FIELDS)
    if not changes:
        return []
    _full_clean(locked)
    locked.save()
    audit_record(
        action="access.account.changed",
        actor=acting_user,
        request=http_request,
        obj=locked,
        details={"changes": changes, **_via(via)},
    )
    account.refresh_from_db()
    return changes


@transaction.atomic
def account_setup_ssh(*, account, acting_user: User, http_request=None) -> None:
    """Create (or update) the Vault SSH role that signs certificates for the account's principal."""
    sources.configure_ssh_role(account=account_ref(account))
    audit_record(
        action="vault.account.configured",
        actor=acting_user,
        request=http_request,
        obj=account,
        details={"kind": account.kind, "principal": account.username},
    )


@transaction.atomic
def account_setup_database(
    *,
    account,
    acting_user: User,
    host: str,
    port: int,
    database: str,
    admin_username: str,
    admin_password: str,
    sslmode: str,
    max_ttl_seconds: int,
    http_request=None,
) -> None:
    """Point Vault's database engine at the target's PostgreSQL and create the account's role.

    The administrative password goes to Vault only; pamsite keeps none of it. The account
    keeps the database and the TLS mode (its connection test uses them).
    """
    ref = account_ref(account)
    sources.configure_database_connection(
        name=ref.connection,
        host=host,
        port=port,
        database=database,
        admin_username=admin_username,
        admin_password=admin_password,
        sslmode=sslmode,
    )
    if account.database_name != database or account.database_sslmode != sslmode:
        account.database_name = database
        account.database_sslmode = sslmode
        account.save(update_fields=["database_name", "database_sslmode"])
    sources.configure_database_role(account=account_ref(account), max_ttl=max_ttl_seconds)
    audit_record(
        action="vault.account.configured",
        actor=acting_user,
        request=http_request,
        obj=account,
        details={
            "kind": account.kind,
            "host": host,
            "port": port,
            "database": database,
            "admin": admin_username,
            "sslmode": sslmode,
        },
    )


def account_setup_static(*, account, acting_user: User, current_password: str, http_request=None) -> bool:
    """Store the account's current password in Vault; returns whether it logged in to the target.

    The password is checked against the target first when its host key is pinned, so a
    typo never becomes the password pamsite hands out and rotates from.
    """
    ref = account_ref(account)
    verified = False
    if ref.host_key:
        verified = ssh_blocking.check_password_login(
            host=ref.host,
            port=ref.port,
            username=ref.username,
            host_key=ref.host_key,
            password=current_password,
        )
        if not verified:
            raise ValidationError(
                f"{account.username} could not log in to {account.target.name} with that password: "
                "nothing was stored."
            )
    with transaction.atomic():
        version = sources.static_set_password(account=ref, password=current_password)
        audit_record(
            action="vault.account.configured",
            actor=acting_user,
            request=http_request,
            obj=account,
            details={"kind": account.kind, "kv_version": version, "verified_on_target": verified},
        )
    return verified


# --- Test connection ----------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionTest:
    """What an account's connection test found: whether the login worked, in words, and when."""

    ok: bool
    message: str
    at: datetime


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def account_test_connection(
    *, account: Account, acting_user: User | None, http_request=None, vault=None
) -> ConnectionTest:
    """Log in to the account's target with its vaulted credential, as the gateway would.

    ssh-ca: a fresh key, a certificate signed by Vault for the account's principal, a login
    checked against the pinned host key. static: the password Vault holds. database: a
    short-lived user from Vault's role, a login and one query, then its lease revoked.
    The result (never a secret) is kept on the account and audited; what failed is said in
    words: host unreachable, host key changed, password refused, TLS mode wrong, not set up
    in Vault...
    """
    account = Account.objects.select_related("target").get(pk=account.pk)
    ok, message = _try_login(account, vault or get_client())
    message = _sentence(message)[:2000]
    now = timezone.now()
    with transaction.atomic():
        Account.objects.filter(pk=account.pk).update(
            last_test_at=now, last_test_ok=ok, last_test_message=message
        )
        audit_record(
            action="access.account.tested",
            actor=acting_user,
            request=http_request,
            obj=account,
            details={"ok": ok, "message": message[:500], "kind": account.kind, "target": account.target.name},
        )
    return ConnectionTest(ok=ok, message=message, at=now)


def _try_login(account: Account, vault) -> tuple[bool, str]:
    target = account.target
    ref = account_ref(account)
    where = errors.describe_target(host=target.host, port=target.port, target=target.name)
    if target.kind == Target.Kind.WEB_CONSOLE:
        return False, (
            "pamsite cannot test a web console login yet: check the account by signing in to the "
            "console yourself"
        )
    try:
        readiness = sources.account_vault_readiness(account=ref, vault=vault)
        if not readiness.ready:
            return False, f"Not set up in Vault: {readiness.message}. Next: Vault setup"
        if account.kind == Account.Kind.SSH_CA:
            private, public = ssh.generate_keypair()
            certificate = sources.ssh_sign(
                account=ref, public_key=public, ttl_seconds=TEST_CERTIFICATE_SECONDS, vault=vault
            )
            ssh_blocking.connect(
                host=target.host,
                port=target.port,
                username=account.username,
                host_key=target.host_key,
                private_key=private,
                certificate=certificate,
                target=target.name,
            ).close()
            return True, f"Logged in to {where} as {account.username} with a certificate signed by Vault"
        if account.kind == Account.Kind.STATIC:
            password = rotation.static_login_password(account=ref, vault=vault)
            works = ssh_blocking.check_password_login(
                host=target.host,
                port=target.port,
                username=account.username,
                host_key=target.host_key,
                password=password,
                target=target.name,
            )
            del password
            if not works:
                return False, (
                    f"Password refused: the password Vault holds for {account.username} does not log in "
                    f"to {where} (changed on the target behind pamsite's back?). Store the current one "
                    "again: Vault setup"
                )
            return True, f"Logged in to {where} as {account.username} with the password Vault holds"
        version = sources.database_probe(
            account=ref,
            probe=lambda login, password: postgres.check_database_login(
                host=target.host,
                port=target.port,
                database=account.database_name,
                username=login,
                password=password,
                sslmode=account.database_sslmode or "prefer",
                target=target.name,
            ),
            vault=vault,
        )
        return True, (
            f"Logged in to the database {account.database_name} on {where} (PostgreSQL {version}) as a "
            "short-lived user from Vault, released again"
        )
    except ssh.HostKeyMismatch as exc:
        return False, f"Host key changed or not pinned: {exc}"
    except errors.TargetUnreachable as exc:
        return False, f"Host unreachable: {exc}"
    except errors.TlsError as exc:
        return False, f"TLS mode wrong: {exc}"
    except errors.AuthFailed as exc:
        if account.kind == Account.Kind.SSH_CA:
            return False, (
                f"Certificate refused: {exc}. The target's sshd must trust pamsite's SSH CA "
                f"(TrustedUserCAKeys; the key is on System status) and let {account.username} log in"
            )
        return False, f"Login refused: {exc}"
    except errors.TargetError as exc:
        return False, f"The target refused: {exc}"
    except sources.CredentialError as exc:
        return False, f"Not set up in Vault: {exc}"
    except VaultError as exc:
        return False, f"Vault could not be asked: {exc}"


# --- Readiness ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Readiness:
    """One account's readiness line: pinned / in Vault / last test, and the next step.

    ``pinned`` is None for targets without a host key; ``in_vault`` is None when Vault could
    not be asked (``vault_message`` says why). ``next_step`` is "pin", "vault", "test" or "".
    """

    pinned: bool | None
    in_vault: bool | None
    vault_message: str
    tested_ok: bool | None
    next_step: str


def accounts_readiness(*, accounts: list[Account], vault=None) -> dict[int, Readiness]:
    """The readiness of each account (by pk), asking Vault once per account (once in all when
    Vault is down or sealed: then "in Vault" is unknown for every one)."""
    vault = vault or get_client()
    health = vault.health() if accounts else None
    result = {}
    for account in accounts:
        target = account.target
        pinned = bool(target.host_key) if target.has_host_key else None
        if health is not None and not health.ok:
            in_vault, message = None, health.message
        else:
            try:
                status = sources.account_vault_readiness(account=account_ref(account), vault=vault)
                in_vault, message = status.ready, status.message
            except VaultError as exc:
                in_vault, message = None, str(exc)
        if pinned is False:
            step = "pin"
        elif in_vault is False:
            step = "vault"
        elif not account.last_test_ok:
            step = "test"
        else:
            step = ""
        result[account.pk] = Readiness(
            pinned=pinned,
            in_vault=in_vault,
            vault_message=message,
            tested_ok=account.last_test_ok,
            next_step=step,
        )
    return result
