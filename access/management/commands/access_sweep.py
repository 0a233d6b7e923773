"""Run the access workflow's periodic jobs: expiry, stale requests, warnings, releases."""

import logging
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from access.tasks import directory_sync_task, sweep_task
from identity.tasks import directory_sync_due

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Expire grants whose time is up, lapse stale requests, warn holders before expiry and retry "
        "credential releases and rotations. With --loop, every ACCESS_SWEEP_SECONDS (the embedded "
        "default's worker, which then also runs the directory sync every LDAP_SYNC_INTERVAL_MINUTES "
        "when LDAP is configured; with a broker, `celery -A pamsite worker -B` runs the same jobs)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="keep running until stopped")

    def handle(self, *args, loop: bool, **options):
        if not loop:
            result = sweep_task()
            self.stdout.write(", ".join(f"{k}: {v}" for k, v in result.items()))
            return
        while True:
            # A connection the database dropped (restart, failover) is replaced, and a pass
            # that fails is logged and tried again: the worker never stops by itself.
            close_old_connections()
            try:
                result = sweep_task()
                if any(result.values()):
                    self.stdout.write(", ".join(f"{k}: {v}" for k, v in result.items()))
                self._directory_sync_if_due()
            except Exception:
                logger.exception("Worker pass failed; trying again in %s s", settings.ACCESS_SWEEP_SECONDS)
            time.sleep(settings.ACCESS_SWEEP_SECONDS)

    def _directory_sync_if_due(self) -> None:
        """The embedded worker also runs the directory sync, every LDAP_SYNC_INTERVAL_MINUTES
        (then at once revokes what the users it deactivated held)."""
        if directory_sync_due():
            self.stdout.write(f"directory sync: {directory_sync_task()}")
