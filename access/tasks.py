"""Background jobs of the access workflow: thin wrappers over the services."""

from __future__ import annotations

from celery import shared_task

from access import services
from identity import tasks as identity_tasks


@shared_task(name="access.sweep")
def sweep_task() -> dict:
    """Expire grants whose time is up, revoke those of users or accounts deactivated around the
    services, lapse stale requests, warn holders, retry releases, and
    rotate the passwords break-glass handed out from the sealed envelope once Vault is back."""
    return {
        "grants_expired": services.grants_expire_due(),
        "grants_of_inactive_revoked": services.grants_of_inactive_revoke(),
        "requests_of_inactive_cancelled": services.requests_of_inactive_cancel(),
        "requests_expired": services.requests_expire_stale(),
        "warned": services.grants_warn_expiring(),
        "released": services.grants_cleanup_due(),
        "rotated_after_break_glass": services.break_glass_rotations_due(),
    }


@shared_task(name="access.grant_cleanup")
def grant_cleanup_task(grant_pk: int) -> bool:
    """Release or rotate the credential of one ended grant."""
    return services.grant_cleanup(grant_pk=grant_pk)


@shared_task(name="access.directory_sync")
def directory_sync_task(full: bool | None = None) -> dict:
    """The scheduled directory sync (identity.tasks), then at once what the users it
    deactivated held here: their grants revoked, their requests cancelled."""
    result = identity_tasks.directory_sync_task(full)
    if result.get("deactivated"):
        result["grants_of_inactive_revoked"] = services.grants_of_inactive_revoke()
        result["requests_of_inactive_cancelled"] = services.requests_of_inactive_cancel()
    return result
