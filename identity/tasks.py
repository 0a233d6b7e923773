"""Background jobs of identity: the periodic directory sync (a thin wrapper over the service)."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from identity import directory
from identity.models import DirectorySyncRun


def directory_sync_due(*, now=None) -> bool:
    """Whether the periodic sync should run now: LDAP configured, and the last run (of any
    outcome, so a failing directory is not hammered) began LDAP_SYNC_INTERVAL_MINUTES ago."""
    if not settings.LDAP_SERVER_URI:
        return False
    now = now or timezone.now()
    last = DirectorySyncRun.objects.filter(dry_run=False).order_by("-started_at").first()
    return last is None or now - last.started_at >= timedelta(minutes=settings.LDAP_SYNC_INTERVAL_MINUTES)


@shared_task(name="identity.directory_sync")
def directory_sync_task(full: bool | None = None) -> dict:
    """Incremental sync, or a full one when none succeeded for LDAP_SYNC_FULL_INTERVAL_HOURS."""
    if not settings.LDAP_SERVER_URI:
        return {"skipped": "LDAP_SERVER_URI is not set"}
    if full is None:
        last_full = directory.last_successful_run(full_only=True)
        full = last_full is None or timezone.now() - last_full.started_at >= timedelta(
            hours=settings.LDAP_SYNC_FULL_INTERVAL_HOURS
        )
    try:
        result = directory.directory_sync(full=full, dry_run=False, trigger=DirectorySyncRun.Trigger.SCHEDULE)
    except directory.DirectorySyncBusy as exc:
        return {"skipped": str(exc)}
    run = result.run
    return {
        "ok": result.ok,
        "full": run.full,
        "created": run.created,
        "updated": run.updated,
        "deactivated": run.deactivated,
        "error": result.error,
    }
