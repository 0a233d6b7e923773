"""Background jobs of sessions and recordings: thin wrappers over sessions.search and sessions.retention."""

from __future__ import annotations

from celery import shared_task

from sessions.models import Session
from sessions.recorder import seal_leftovers
from sessions.retention import recordings_expire
from sessions.search import session_index, sessions_index_pending


@shared_task(name="sessions.maintain")
def maintain_task() -> dict:
    """Seal what a gateway left unsealed, index ended sessions not indexed yet, then delete
    the recordings past their retention."""
    return {"sealed": seal_leftovers(), "indexed": sessions_index_pending(), "expired": recordings_expire()}


@shared_task(name="sessions.index")
def index_task(session_pk: int) -> bool:
    """Index one ended session (the gateway may queue this rather than index in its own thread)."""
    session = Session.objects.filter(pk=session_pk, ended_at__isnull=False).first()
    if session is None:
        return False
    session_index(session=session)
    return True
