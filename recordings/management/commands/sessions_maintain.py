"""Index ended sessions for search and delete recordings past their retention."""

import logging
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from recordings.tasks import maintain_task

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Index the ended sessions not indexed yet (the gateway indexes each as it ends; this "
        "catches any it missed) and delete the files of recordings older than "
        "RECORDINGS_RETENTION_DAYS that no legal hold keeps. With --loop, every "
        "SESSIONS_MAINTAIN_SECONDS (with a broker, `celery -A pamsite worker -B` runs the same job)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="keep running until stopped")

    def handle(self, *args, loop: bool, **options):
        if not loop:
            result = maintain_task()
            self.stdout.write(", ".join(f"{k}: {v}" for k, v in result.items()))
            return
        while True:
            # A dropped database connection is replaced, and a failed pass (the database or
            # Vault down) is logged and tried again at the next: the loop never stops by itself.
            close_old_connections()
            try:
                result = maintain_task()
                if any(result.values()):
                    self.stdout.write(", ".join(f"{k}: {v}" for k, v in result.items()))
            except Exception:
                logger.exception(
                    "Recordings upkeep failed; trying again in %s s", settings.SESSIONS_MAINTAIN_SECONDS
                )
            time.sleep(settings.SESSIONS_MAINTAIN_SECONDS)
