"""Index ended sessions for search and delete recordings past their retention."""

import time

from django.conf import settings
from django.core.management.base import BaseCommand

from sessions.tasks import maintain_task


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
        while True:
            result = maintain_task()
            if any(result.values()) or not loop:
                self.stdout.write(", ".join(f"{k}: {v}" for k, v in result.items()))
            if not loop:
                return
            time.sleep(settings.SESSIONS_MAINTAIN_SECONDS)
