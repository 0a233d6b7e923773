"""Users of pamsite."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone


class User(AbstractUser):
    """A person who uses pamsite: requester, approver, auditor or pam-admin (or several).

    Local users have a password here; directory users (source ``ldap``) are mirrored
    from LDAP / Active Directory and authenticate against it. Users are deactivated,
    never deleted, so the audit trail and recordings keep their actor.
    """

    class Source(models.TextChoices):
        LOCAL = "local", "Local"
        LDAP = "ldap", "Directory (LDAP)"

    display_name = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.LOCAL)
    # The directory's stable identifier (entryUUID / objectGUID): a rename is an update.
    external_id = models.CharField(max_length=200, null=True, blank=True, unique=True)

    class Meta:
        ordering = ["username"]

    def __str__(self) -> str:
        return self.display_name or self.get_full_name() or self.username


class SSHPublicKey(models.Model):
    """A public key a user registered on her account page to log in to the SSH gateway.

    The key is the first factor there (a TOTP code always follows). A key belongs to
    one person: its data is unique across all users. Only the public part is stored;
    the fingerprint is kept as ``ssh-keygen -l`` prints it, for the page and the audit
    trail, which never hold the key itself.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=100, help_text="The user's label, e.g. “work laptop”.")
    key_type = models.CharField(max_length=50)  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"
    # Base64 of the key data, canonical (as decoded then re-encoded): at most about
    # 1.4 kB for the largest accepted key (RSA 8192), so it fits a unique index.
    key_base64 = models.CharField(max_length=2000, unique=True)
    fingerprint = models.CharField(max_length=60)  # "SHA256:…", as ssh-keygen -l prints it
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]
        verbose_name = "SSH public key"
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="identity_sshkey_unique_name_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"
