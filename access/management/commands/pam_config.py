"""Export or apply targets, accounts and policies as one YAML file (access.config_file)."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from access.config_file import ConfigFileError, config_apply, config_export
from identity.models import User


class Command(BaseCommand):
    help = (
        "export FILE: write every target (with its accounts and pinned host key) and policy to FILE "
        "('-': standard output); no secret is in it. apply FILE: make pamsite match FILE (created or "
        "changed, never deleted), checked whole first, in one transaction, each change audited; a "
        "second apply changes nothing. --dry-run prints what would change and changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["export", "apply"])
        parser.add_argument("file", help="the YAML file ('-' for standard output or input)")
        parser.add_argument("--dry-run", action="store_true", help="apply: print the changes, make none")
        parser.add_argument(
            "--as",
            dest="as_user",
            metavar="USER",
            help="the pam-admin the audit trail names for the changes (else: the command itself)",
        )
        parser.add_argument(
            "--pin-host-keys",
            action="store_true",
            help="apply: pin the host keys in the file (needs --as: you vouch that they are the hosts' keys)",
        )

    def handle(
        self, *args, action: str, file: str, dry_run: bool, as_user: str | None, pin_host_keys: bool, **o
    ):
        user = None
        if as_user:
            user = User.objects.filter(username=as_user).first()
            if user is None:
                raise CommandError(f"No user {as_user!r}: --as names a pam-admin of this site.")
        if action == "export":
            text = config_export(acting_user=user)
            if file == "-":
                self.stdout.write(text, ending="")
            else:
                Path(file).write_text(text, encoding="utf-8")
                self.stdout.write(f"Wrote {file}.")
            return
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from None
        source = "<stdin>" if file == "-" else file
        try:
            outcome = config_apply(
                text=text, source=source, acting_user=user, dry_run=dry_run, pin_host_keys=pin_host_keys
            )
        except ConfigFileError as exc:
            raise CommandError(
                f"{source} was not applied; nothing was changed:\n  " + "\n  ".join(exc.problems)
            ) from None
        for change in outcome.changes:
            self.stdout.write(("would " if dry_run else "") + str(change))
        for note in outcome.notes:
            self.stdout.write(f"note: {note}")
        if not outcome.changes:
            self.stdout.write("No change: pamsite already matches the file.")
        elif dry_run:
            self.stdout.write(f"Dry run: {len(outcome.changes)} change(s) not made.")
        else:
            self.stdout.write(f"Applied {len(outcome.changes)} change(s).")
