"""manage.py verify_audit: check the audit trail's hash chain from end to end."""

from django.core.management.base import BaseCommand, CommandError

from audit.chain import verify_chain


class Command(BaseCommand):
    """Verify the audit trail; exit 0 when intact, 1 naming the first bad sequence otherwise.

    Suitable for cron or a monitoring probe. Read-only: it records nothing.
    """

    help = (
        "Verify the audit trail's hash chain: detects edited, inserted, reordered and deleted events. "
        "Exits 0 when intact, 1 naming the first bad sequence number."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--from-sequence",
            type=int,
            default=1,
            metavar="N",
            help="Start at event N, trusting the stored hash of event N-1 (default: 1, the whole chain).",
        )
        parser.add_argument(
            "--chunk-size", type=int, default=5000, help="Events fetched per round trip (default: 5000)."
        )

    def handle(self, *args, from_sequence: int, chunk_size: int, **options):
        if from_sequence < 1:
            raise CommandError("--from-sequence starts at 1.")
        if chunk_size < 1:
            raise CommandError("--chunk-size must be positive.")
        result = verify_chain(from_sequence=from_sequence, chunk_size=chunk_size)
        if not result.ok:
            raise CommandError(result.summary)
        self.stdout.write(self.style.SUCCESS(result.summary))
