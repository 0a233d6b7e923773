"""Background jobs of sessions and recordings: thin wrappers over recordings.search and .retention.

The gateways only relay: sealing what a gateway left, indexing ended sessions for search and
deleting expired recordings all happen here, in the worker (``sessions_maintain --loop``, or
Celery beat's "sessions-index" and "sessions-maintain" schedules).
"""

from __future__ import annotations

from celery import shared_task

from recordings.models import GatewaySession
from recordings.recorder import seal_leftovers
from recordings.retention import recordings_expire
from recordings.search import session_index, sessions_index_pending, sessions_index_recent


@shared_task(name="sessions.maintain")
def maintain_task() -> dict:
    """Seal what a gateway left unsealed, index ended sessions not indexed yet, then delete
    the recordings past their retention."""
    return {"sealed": seal_leftovers(), "indexed": sessions_index_pending(), "expired": recordings_expire()}


@shared_task(name="sessions.index_recent")
def index_recent_task() -> int:
    """Index the sessions that ended lately (every SESSIONS_INDEX_SECONDS): searchable within
    seconds of their end, whichever gateway process relayed them."""
    return sessions_index_recent()


@shared_task(name="sessions.index")
def index_task(session_pk: int) -> bool:
    """Index one ended session now (a session indexed again on demand)."""
    session = GatewaySession.objects.filter(pk=session_pk, ended_at__isnull=False).first()
    if session is None:
        return False
    session_index(session=session)
    return True
