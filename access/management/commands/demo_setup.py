"""`manage.py demo_setup`: the demo PACS host, its accounts, three users and a policy (make demo)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from access.demo import (
    DemoError,
    demo_files,
    demo_instructions,
    demo_prepare_host,
    demo_setup,
    shown_path,
)
from targets.errors import TargetError
from vault.client import VaultError


class Command(BaseCommand):
    help = (
        "Set up the demo (make demo): with --prepare, write the demo sshd's host key and config "
        "under var/demo/ before it starts; then, with it running, pin its host key, set up its "
        "ssh-ca (and, as root, static) account in Vault, create the requester, approver and "
        "auditor users and a policy, and print the walk-through. Idempotent: a second run changes "
        "nothing and prints the same walk-through."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--prepare", action="store_true", help="write the demo sshd's files (before it starts) and exit"
        )
        parser.add_argument(
            "--web-url",
            default="",
            help="the web app's address: wait for it, the gateway and the demo sshd, and print it",
        )

    def handle(self, *args, prepare: bool, web_url: str, **options):
        try:
            if prepare:
                host = demo_prepare_host()
                config, port = shown_path(demo_files().config), settings.DEMO_SSH_PORT
                self.stdout.write(
                    f"Demo PACS host: sshd config {config} (127.0.0.1:{port}, run as {host.run_as})"
                )
                return
            report = demo_setup(web_url=web_url or None)
        except (DemoError, VaultError, TargetError) as exc:
            raise CommandError(f"The demo could not be set up: {exc}") from None
        if report.changes:
            self.stdout.write("Demo set up:\n" + "\n".join(f"  - {change}" for change in report.changes))
        else:
            self.stdout.write("Demo already set up: nothing changed.")
        self.stdout.write(demo_instructions(report, web_url=web_url or settings.PAMSITE_BASE_URL))
