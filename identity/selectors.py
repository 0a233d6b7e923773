"""Who may see and act on which user: one decision per object."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.shortcuts import get_object_or_404
from django_otp.plugins.otp_totp.models import TOTPDevice

from identity.models import SSHPublicKey, User
from identity.roles import Role, require_role


def users_for(*, acting_user: User) -> QuerySet[User]:
    """All users, with whether each has enrolled TOTP; pam-admins only."""
    require_role(acting_user, Role.PAM_ADMIN)
    enrolled = TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)
    return (
        User.objects.annotate(mfa_enrolled=Exists(enrolled)).prefetch_related("groups").order_by("username")
    )


def get_user_for_mfa_reset(*, acting_user: User, pk: int) -> User:
    """The user whose authenticator a pam-admin may reset; never the pam-admin's own."""
    require_role(acting_user, Role.PAM_ADMIN)
    user = get_object_or_404(User, pk=pk)
    if user.pk == acting_user.pk:
        raise PermissionDenied("Reset your own authenticator from My account, with your password and a code.")
    return user


def ssh_keys_for(*, user: User) -> QuerySet[SSHPublicKey]:
    """The user's own SSH public keys, oldest first."""
    return SSHPublicKey.objects.filter(user=user).order_by("created_at", "pk")


def get_ssh_key_for(*, user: User, pk: int) -> SSHPublicKey:
    """One of the user's own SSH keys; anyone else's (or none) is a 404, so ids reveal nothing."""
    return get_object_or_404(SSHPublicKey, pk=pk, user=user)
