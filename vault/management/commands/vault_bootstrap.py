"""``manage.py vault_bootstrap``: make Vault / OpenBao ready for pamsite (idempotent)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.services import audit_record
from vault.bootstrap import POLICIES, privileged_client, render_policy, vault_bootstrap
from vault.client import VaultError
from vault.signatures import public_key_fingerprint, transit_keys_keep


class Command(BaseCommand):
    """Enable pamsite's engines, its SSH CA and transit key, its policy and its AppRole.

    Safe to run again: it changes only what is missing or different, and never replaces
    an existing SSH CA. It also keeps the transit signing key's public keys (every version)
    in pamsite's database, for checking recordings without Vault. It authenticates with
    VAULT_TOKEN (the root token of the embedded OpenBao, else a token with the pamsite-admin
    policy), never with the AppRole.
    """

    help = (
        "Set up Vault for pamsite (idempotent): KV v2, database, SSH CA and transit engines, "
        "the pamsite-app policy and the AppRole. Uses VAULT_TOKEN. --write-approle DIR also "
        "writes role_id and a new secret_id to DIR (mode 0600) for VAULT_ROLE_ID_FILE / "
        "VAULT_SECRET_ID_FILE."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--write-approle",
            metavar="DIR",
            type=Path,
            help="write DIR/role_id and a new DIR/secret_id (mode 0600); the secret_id is never printed",
        )
        parser.add_argument(
            "--print-policy",
            metavar="NAME",
            choices=POLICIES,
            help="print a policy with the settings filled in, and do nothing else",
        )

    def handle(self, *args, write_approle: Path | None = None, print_policy: str | None = None, **options):
        try:
            if print_policy:
                self.stdout.write(render_policy(print_policy), ending="")
                return
            vault = privileged_client()
            result = vault_bootstrap(vault=vault, approle_dir=write_approle, echo=self.stdout.write)
            # The recordings' signing key: its public keys kept in pamsite's database, so that
            # recordings verify without Vault (and after Vault lost the key).
            kept = transit_keys_keep(vault=vault)
        except VaultError as exc:
            raise CommandError(str(exc)) from None
        for row in kept:
            self.stdout.write(
                f"kept the public key of {row.mount}/{row.name} version {row.version} "
                f"({public_key_fingerprint(row.public_key)})"
            )

        audit_record(
            action="vault.bootstrap",
            actor=None,
            details={
                "changed": result.changed,
                "mounts": result.mounts,
                "warnings": result.warnings,
                "approle_files_written": bool(result.approle_files),
            },
        )
        summary = f"{len(result.changed)} change(s)" if result.changed else "nothing to change"
        self.stdout.write(self.style.SUCCESS(f"Vault is ready for pamsite: {summary}."))
