"""Background jobs of the access workflow: thin wrappers over the services."""

from __future__ import annotations

from celery import shared_task

from access import services


@shared_task(name="access.sweep")
def sweep_task() -> dict:
    """Expire grants whose time is up, revoke those of users or accounts deactivated around the
    services, lapse stale requests, warn holders, retry releases, and
    rotate the passwords break-glass handed out from the sealed envelope once Vault is back."""
    return {
        "grants_expired": services.grants_expire_due(),
        "grants_of_inactive_revoked": services.grants_of_inactive_revoke(),
        "requests_expired": services.requests_expire_stale(),
        "warned": services.grants_warn_expiring(),
        "released": services.grants_cleanup_due(),
        "rotated_after_break_glass": services.break_glass_rotations_due(),
    }


@shared_task(name="access.grant_cleanup")
def grant_cleanup_task(grant_pk: int) -> bool:
    """Release or rotate the credential of one ended grant."""
    return services.grant_cleanup(grant_pk=grant_pk)
