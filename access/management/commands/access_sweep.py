"""Run the access workflow's periodic jobs: expiry, stale requests, warnings, releases."""

import time

from django.conf import settings
from django.core.management.base import BaseCommand

from access.tasks import sweep_task


class Command(BaseCommand):
    help = (
        "Expire grants whose time is up, lapse stale requests, warn holders before expiry and retry "
        "credential releases and rotations. With --loop, every ACCESS_SWEEP_SECONDS (the embedded "
        "default's worker; with a broker, `celery -A pamsite worker -B` runs the same job)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="keep running until stopped")

    def handle(self, *args, loop: bool, **options):
        while True:
            result = sweep_task()
            if any(result.values()) or not loop:
                self.stdout.write(", ".join(f"{k}: {v}" for k, v in result.items()))
            if not loop:
                return
            time.sleep(settings.ACCESS_SWEEP_SECONDS)
