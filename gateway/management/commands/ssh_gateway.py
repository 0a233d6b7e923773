"""``manage.py ssh_gateway``: the SSH gateway process (see gateway/ssh/server.py)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gateway.ssh.server import GatewayError, run


class Command(BaseCommand):
    help = (
        "Run the SSH gateway: users connect with ssh -p 2222 USER:ACCOUNT@HOST, log in with their key "
        "or password plus TOTP, and reach the account's target with the grant's credential, recorded."
    )

    def add_arguments(self, parser):
        parser.add_argument("--listen", default=None, help="host:port (default: GATEWAY_LISTEN)")
        parser.add_argument("--workers", type=int, default=None, help="processes (default: GATEWAY_WORKERS)")

    def handle(self, *args, listen=None, workers=None, **options):
        try:
            run(
                listen=listen or settings.GATEWAY_LISTEN,
                host_key_file=Path(settings.GATEWAY_HOST_KEY_FILE),
                workers=workers or settings.GATEWAY_WORKERS,
            )
        except GatewayError as exc:
            raise CommandError(str(exc)) from None
