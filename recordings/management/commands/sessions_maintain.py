"""Index ended sessions for search and delete recordings past their retention."""

import logging
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from recordings.tasks import index_recent_task, maintain_task

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Seal the recordings a gateway left unsealed, index the ended sessions for search and "
        "delete the files of recordings older than RECORDINGS_RETENTION_DAYS that no legal hold "
        "keeps. With --loop, keep going: the sessions that ended lately are indexed every "
        "SESSIONS_INDEX_SECONDS, everything else every SESSIONS_MAINTAIN_SECONDS (with a broker, "
        "`celery -A pamsite worker -B` runs the same jobs)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="keep running until stopped")

    def handle(self, *args, loop: bool, **options):
        if not loop:
            result = maintain_task()
            self.stdout.write(", ".join(f"{k}: {v}" for k, v in result.items()))
            return
        next_upkeep = time.monotonic()
        while True:
            # A dropped database connection is replaced, and a failed pass (the database or
            # Vault down) is logged and tried again at the next: the loop never stops by itself.
            close_old_connections()
            if time.monotonic() >= next_upkeep:
                next_upkeep = time.monotonic() + settings.SESSIONS_MAINTAIN_SECONDS
                self._run(maintain_task)
            else:
                self._run(index_recent_task)
            time.sleep(settings.SESSIONS_INDEX_SECONDS)

    def _run(self, task) -> None:
        try:
            result = task()
        except Exception:
            logger.exception(
                "Recordings upkeep failed; trying again in %s s", settings.SESSIONS_INDEX_SECONDS
            )
            return
        if isinstance(result, dict):
            if any(result.values()):
                self.stdout.write(", ".join(f"{k}: {v}" for k, v in result.items()))
        elif result:
            self.stdout.write(f"indexed: {result}")
