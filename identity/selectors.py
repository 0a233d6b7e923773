"""Who may see and act on which user: one decision per object."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from common.roles import BREAK_GLASS_GROUP, Role, require_role
from identity.models import Invitation, SSHPublicKey, User


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


# --- The Users page -------------------------------------------------------------------------

USER_STATES = {
    "active": "Active",
    "deactivated": "Deactivated",
    "invited": "Invited, no password yet",
    "no-mfa": "No authenticator yet",
}
NO_ROLE = "none"


@dataclass(frozen=True)
class UserFilters:
    """The Users page's search and filters, as typed (blank: no filter)."""

    q: str = ""
    role: str = ""
    state: str = ""
    source: str = ""

    @property
    def active(self) -> bool:
        return bool(self.q or self.role or self.state or self.source)


def user_filters_from(params) -> UserFilters:
    """The filters from a query string; unknown values are ignored rather than refused."""
    role = params.get("role", "")
    state = params.get("state", "")
    source = params.get("source", "")
    roles = {*Role.values, BREAK_GLASS_GROUP, NO_ROLE}
    return UserFilters(
        q=" ".join(params.get("q", "").split())[:150],
        role=role if role in roles else "",
        state=state if state in USER_STATES else "",
        source=source if source in User.Source.values else "",
    )


def user_search_for(*, acting_user: User, filters: UserFilters) -> QuerySet[User]:
    """pam-admins: the users matching the filters, by username, with what the list shows
    (whether enrolled, backup codes left, an open invitation). A hospital has thousands of
    directory users: page the result; each annotation is a subquery on indexed columns."""
    require_role(acting_user, Role.PAM_ADMIN)
    enrolled = TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)
    codes = (
        StaticToken.objects.filter(device__user=OuterRef("pk"), device__confirmed=True)
        .order_by()
        .values("device__user")
        .annotate(n=Count("pk"))
        .values("n")
    )
    invited = Invitation.objects.filter(
        user=OuterRef("pk"), used_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    )
    users = User.objects.annotate(
        mfa_enrolled=Exists(enrolled),
        backup_codes_left=Coalesce(Subquery(codes, output_field=IntegerField()), 0),
        invitation_open=Exists(invited),
    )
    if filters.q:
        for word in filters.q.split():
            users = users.filter(
                Q(username__icontains=word)
                | Q(first_name__icontains=word)
                | Q(last_name__icontains=word)
                | Q(display_name__icontains=word)
                | Q(email__icontains=word)
            )
    if filters.role == NO_ROLE:
        users = users.exclude(groups__name__in=[*Role.values, BREAK_GLASS_GROUP])
    elif filters.role:
        users = users.filter(groups__name=filters.role)
    if filters.state == "active":
        users = users.filter(is_active=True)
    elif filters.state == "deactivated":
        users = users.filter(is_active=False)
    elif filters.state == "invited":
        users = users.filter(is_active=True, must_change_password=True)
    elif filters.state == "no-mfa":
        users = users.filter(is_active=True, mfa_enrolled=False)
    if filters.source:
        users = users.filter(source=filters.source)
    return users.select_related("deactivated_by").prefetch_related("groups").order_by("username")


def get_user_for_admin(*, acting_user: User, pk: int) -> User:
    """A user a pam-admin manages on the Users page (their own included: the page says what
    she may not do to herself); 404 for none."""
    require_role(acting_user, Role.PAM_ADMIN)
    return get_object_or_404(User.objects.select_related("deactivated_by"), pk=pk)


@dataclass(frozen=True)
class UserOverview:
    """A user's page, as far as identity knows it: roles, authenticator, invitation, keys.
    (The Users page adds what they hold in access and the gateway: web.selectors.)"""

    user: User
    roles: list[str]
    mfa_enrolled: bool
    backup_codes_left: int
    open_invitation: Invitation | None
    ssh_keys: int


def user_overview_for(*, acting_user: User, pk: int) -> UserOverview:
    """pam-admins: one user, with their roles, authenticator, invitation and SSH keys."""
    user = get_user_for_admin(acting_user=acting_user, pk=pk)
    role_names = {*Role.values, BREAK_GLASS_GROUP}
    return UserOverview(
        user=user,
        roles=sorted(user.groups.filter(name__in=role_names).values_list("name", flat=True)),
        mfa_enrolled=TOTPDevice.objects.filter(user=user, confirmed=True).exists(),
        backup_codes_left=StaticToken.objects.filter(device__user=user, device__confirmed=True).count(),
        open_invitation=Invitation.objects.filter(user=user, used_at__isnull=True, revoked_at__isnull=True)
        .order_by("-created_at", "-pk")
        .first(),
        ssh_keys=SSHPublicKey.objects.filter(user=user).count(),
    )
