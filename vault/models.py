"""What pamsite keeps of Vault: the public keys of the recordings' signing key."""

from __future__ import annotations

from django.db import models


class TransitPublicKey(models.Model):
    """One version of the transit key that signs recordings: its public key, as Vault gave it.

    Kept so that a recording's signature is checked here, with no call to Vault: while
    Vault is down, and after the Vault that signed it is gone (its key lost with it).
    Public keys are not secrets. Written only by ``vault.signatures.transit_keys_keep``
    (which audits each new one); never changed. The same version number may appear with
    different keys when Vault was replaced: each row is one key Vault really held,
    ``vault_created_at`` the time Vault says it made that version.
    """

    mount = models.CharField(max_length=200)
    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    key_type = models.CharField(max_length=40)
    public_key = models.CharField(max_length=200, help_text="base64 of the raw public key")
    vault_created_at = models.DateTimeField()
    vault_addr = models.CharField(max_length=300, blank=True)
    vault_cluster_id = models.CharField(max_length=100, blank=True)
    kept_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["version", "vault_created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["mount", "name", "version", "public_key"], name="vault_transit_key_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.mount}/{self.name} v{self.version} ({self.key_type})"
