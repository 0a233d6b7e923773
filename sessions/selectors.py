"""Reads of gateway sessions, and who may see or terminate which one.

A session is visible to its own user and to approvers, pam-admins and auditors; anyone
else gets a 404, as if it did not exist. Only approvers and pam-admins terminate one:
its own user ends it by leaving her ssh session, and auditors are read-only.
"""

from __future__ import annotations

from django.db.models import F, QuerySet
from django.http import Http404

from access.models import Grant
from identity.models import User
from identity.roles import Role, has_role
from sessions.models import Recording, Session

OVERSEERS = (Role.APPROVER, Role.PAM_ADMIN, Role.AUDITOR)
TERMINATORS = (Role.APPROVER, Role.PAM_ADMIN)


def _with_relations(sessions: QuerySet[Session]) -> QuerySet[Session]:
    return sessions.select_related("user", "grant__account__target", "terminate_requested_by")


def get_session_for(*, user: User, pk: int) -> Session:
    """A session its own user, approvers, pam-admins and auditors may see; else 404."""
    try:
        session = _with_relations(Session.objects.all()).get(pk=pk)
    except Session.DoesNotExist:
        raise Http404("No such session.") from None
    if session.user_id != user.pk and not has_role(user, *OVERSEERS):
        raise Http404("No such session.")
    return session


def live_sessions_for(*, user: User) -> QuerySet[Session]:
    """Live sessions, newest first: everyone's for overseers, one's own for anyone else."""
    live = _with_relations(Session.objects.filter(ended_at__isnull=True))
    if not has_role(user, *OVERSEERS):
        live = live.filter(user=user)
    return live.order_by("-started_at")


def sessions_of_grant(*, grant: Grant) -> QuerySet[Session]:
    """The gateway sessions opened under a grant, newest first (the grant's viewer may see them)."""
    return Session.objects.filter(grant=grant).select_related("user").order_by("-started_at")


def recordings_of(*, session: Session) -> QuerySet[Recording]:
    """The session's recorded files: its events file first, then one per channel."""
    return session.recordings.order_by(F("channel").asc(nulls_first=True), "pk")


def can_terminate(*, user: User, session: Session) -> bool:
    """Whether the user may ask the gateway to end the session: approver or pam-admin, session live."""
    return session.is_live and has_role(user, *TERMINATORS)
