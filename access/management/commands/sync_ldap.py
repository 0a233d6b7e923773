"""Mirror the directory (LDAP / Active Directory) into pamsite: joiners, movers, leavers.

The sync is identity's; the command lives here because right after it the leavers lose their
grants and requests (access.services sweep), as after every scheduled sync.
"""

from django.core.management.base import BaseCommand, CommandError

from access import services
from identity.directory import DirectoryNotConfigured, DirectorySyncBusy, directory_sync


class Command(BaseCommand):
    help = (
        "Sync users and their roles from the directory (LDAP_* settings). Incremental by default "
        "(users changed since the last successful run); --full reads every user and deactivates "
        "those gone. --dry-run prints the changes and makes none. Exits non-zero when the run "
        "fails: directory unreachable, or the safety limit (LDAP_SYNC_MAX_DEACTIVATE[_PERCENT]) "
        "stopped it, in which case nothing was changed and pam-admins were e-mailed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--full", action="store_true", help="read every user; deactivate those gone")
        parser.add_argument("--dry-run", action="store_true", help="print the changes, make none")
        parser.add_argument(
            "--override-safety-limit",
            action="store_true",
            help="apply a run even if it deactivates more users than the safety limit (audited)",
        )

    def handle(self, *args, full: bool, dry_run: bool, override_safety_limit: bool, **options):
        try:
            result = directory_sync(full=full, dry_run=dry_run, override_safety_limit=override_safety_limit)
        except (DirectoryNotConfigured, DirectorySyncBusy) as exc:
            raise CommandError(str(exc)) from None
        if dry_run or result.refused:
            if result.changes:
                self.stdout.write("Changes this run would make (none was made):")
            for change in result.changes:
                self.stdout.write(f"  {change.line()}")
        elif options["verbosity"] > 1:
            for change in result.changes:
                self.stdout.write(f"  {change.line()}")
        for problem in result.problems:
            self.stderr.write(f"problem: {problem}")
        if not dry_run and result.run.deactivated:
            services.grants_of_inactive_revoke()
            services.requests_of_inactive_cancel()
        if not result.ok:
            raise CommandError(result.summary())
        self.stdout.write(result.summary())
