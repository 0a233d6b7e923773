"""Users of pamsite."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


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
