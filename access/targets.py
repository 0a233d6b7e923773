"""Target configuration services: pinning a target's SSH host key."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from access.models import Target
from audit.services import audit_record
from identity.models import User
from sessions import upstream


def target_fetch_host_key(*, target: Target) -> upstream.HostKey:
    """Ask the target for its SSH host key (to be shown to a pam-admin, not trusted yet)."""
    return upstream.fetch_host_key(host=target.host, port=target.port)


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
    previous = target.host_key_fingerprint
    target.host_key = current.openssh
    target.host_key_fingerprint = current.fingerprint
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
        details={"fingerprint": current.fingerprint, "previous": previous},
    )


def _account_ref(account):
    from access.services import account_ref

    return account_ref(account)


@transaction.atomic
def account_setup_ssh(*, account, acting_user: User, http_request=None) -> None:
    """Create (or update) the Vault SSH role that signs certificates for the account's principal."""
    from vault import sources

    sources.configure_ssh_role(account=_account_ref(account))
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

    The administrative password goes to Vault only; pamsite keeps none of it.
    """
    from vault import sources

    ref = _account_ref(account)
    sources.configure_database_connection(
        name=ref.connection,
        host=host,
        port=port,
        database=database,
        admin_username=admin_username,
        admin_password=admin_password,
        sslmode=sslmode,
    )
    sources.configure_database_role(account=ref, max_ttl=max_ttl_seconds)
    if account.database_name != database:
        account.database_name = database
        account.save(update_fields=["database_name"])
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
        },
    )


def account_setup_static(*, account, acting_user: User, current_password: str, http_request=None) -> bool:
    """Store the account's current password in Vault; returns whether it logged in to the target.

    The password is checked against the target first when its host key is pinned, so a
    typo never becomes the password pamsite hands out and rotates from.
    """
    from vault import sources

    ref = _account_ref(account)
    verified = False
    if ref.host_key:
        verified = upstream.check_password_login(
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
