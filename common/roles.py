"""The four roles of pamsite, held as Django groups (created by a data migration)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import models


class Role(models.TextChoices):
    REQUESTER = "requester", "Requester (PACS/VNA admin, vendor engineer)"
    APPROVER = "approver", "Approver (helpdesk)"
    AUDITOR = "auditor", "Auditor"
    PAM_ADMIN = "pam-admin", "PAM administrator"


# Members may activate an emergency grant without approval (always reviewed after).
BREAK_GLASS_GROUP = "break-glass"


def roles_of(user) -> frozenset[str]:
    """The role names the user holds; none for an anonymous or deactivated user.

    Cached on the user object for the request.
    """
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    cached = getattr(user, "_pamsite_roles", None)
    if cached is None:
        names = user.groups.filter(name__in=[*Role.values, BREAK_GLASS_GROUP]).values_list("name", flat=True)
        cached = frozenset(names)
        user._pamsite_roles = cached
    return cached


def has_role(user, *roles: str) -> bool:
    """True when the user holds at least one of the roles."""
    return bool(roles_of(user) & set(roles))


def require_role(user, *roles: str) -> None:
    """Raise PermissionDenied unless the user holds at least one of the roles."""
    if not has_role(user, *roles):
        raise PermissionDenied("This page needs the role: " + " or ".join(roles) + ".")
