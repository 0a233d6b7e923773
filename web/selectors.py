"""Reads that join several layers for one page: a user with what they hold in access and the
gateway."""

from __future__ import annotations

from dataclasses import dataclass, fields

from django.utils import timezone

from access.models import AccessRequest, Grant
from identity import selectors as identity_selectors
from identity.models import User
from recordings.models import GatewaySession


@dataclass(frozen=True)
class UserOverview(identity_selectors.UserOverview):
    """A user's page: what they hold now, and so what a deactivation would end."""

    live_grants: int
    live_sessions: int
    open_requests: int


def user_overview_for(*, acting_user: User, pk: int) -> UserOverview:
    """pam-admins: one user, with their roles, authenticator, grants, sessions and requests."""
    base = identity_selectors.user_overview_for(acting_user=acting_user, pk=pk)
    user = base.user
    return UserOverview(
        **{f.name: getattr(base, f.name) for f in fields(base)},
        live_grants=Grant.objects.filter(
            user=user, state=Grant.State.ACTIVE, ends_at__gt=timezone.now()
        ).count(),
        live_sessions=GatewaySession.objects.filter(user=user, ended_at__isnull=True).count(),
        open_requests=AccessRequest.objects.filter(
            requester=user, state__in=[AccessRequest.State.PENDING, AccessRequest.State.APPROVED]
        ).count(),
    )


def live_gateway_sessions_of(*, user: User) -> list[int]:
    """The pks of the user's gateway sessions still open (what a deactivation cuts)."""
    return sorted(
        GatewaySession.objects.filter(user=user, ended_at__isnull=True).values_list("pk", flat=True)
    )
