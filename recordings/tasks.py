"""Background jobs of sessions and recordings: thin wrappers over recordings.search and .retention."""

from __future__ import annotations

from celery import shared_task

from recordings.models import GatewaySession
from recordings.recorder import seal_leftovers
from recordings.retention import recordings_expire
from recordings.search import session_index, sessions_index_pending


@shared_task(name="sessions.maintain")
def maintain_task() -> dict:
    """Seal what a gateway left unsealed, index ended sessions not indexed yet, then delete
    the recordings past their retention."""
    return {"sealed": seal_leftovers(), "indexed": sessions_index_pending(), "expired": recordings_expire()}


@shared_task(name="sessions.index")
def index_task(session_pk: int) -> bool:
    """Index one ended session (the gateway may queue this rather than index in its own thread)."""
    session = GatewaySession.objects.filter(pk=session_pk, ended_at__isnull=False).first()
    if session is None:
        return False
    session_index(session=session)
    return True
