"""Reading the audit trail, and the one rule for who may read it: auditors."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.conf import settings

from audit.chain import ChainVerification, verify_chain
from audit.models import AuditEvent
from identity.roles import Role, require_role


@dataclass(frozen=True)
class AuditEventFilters:
    """What the auditor asked for. ``action`` ending in "." or "*" is a prefix.

    ``before`` / ``after`` are keyset cursors: the page of events just older than
    (newer than) that sequence number.
    """

    actor: str = ""
    action: str = ""
    since: dt.datetime | None = None  # inclusive
    until: dt.datetime | None = None  # exclusive
    before: int | None = None
    after: int | None = None

    def as_details(self) -> dict:
        """The filters as audit details (times in ISO 8601), leaving out the unset ones."""
        values = {
            "actor": self.actor,
            "action": self.action,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "before": self.before,
            "after": self.after,
        }
        return {name: value for name, value in values.items() if value not in ("", None)}


@dataclass(frozen=True)
class AuditEventPage:
    """One page of events, newest first, with the cursors to the pages either side (None: no such page)."""

    events: list[AuditEvent] = field(default_factory=list)
    newer_cursor: int | None = None
    older_cursor: int | None = None


def audit_trail_require_access(*, user) -> None:
    """Raise PermissionDenied unless the user may read the audit trail: auditors only."""
    require_role(user, Role.AUDITOR)


def audit_events_for(*, user, filters: AuditEventFilters, page_size: int | None = None) -> AuditEventPage:
    """One page of the events matching ``filters``, newest first; PermissionDenied unless an auditor.

    Keyset pagination on ``sequence``: each page is one index range scan of
    ``page_size + 1`` rows whatever its depth, and nothing counts the table.
    """
    audit_trail_require_access(user=user)
    size = page_size or settings.AUDIT_PAGE_SIZE
    events = _filtered(filters)
    if filters.after is not None:
        rows = list(events.filter(sequence__gt=filters.after).order_by("sequence")[: size + 1])
        has_newer = len(rows) > size
        rows = rows[:size][::-1]
        has_older = bool(rows) and events.filter(sequence__lt=rows[-1].sequence).exists()
    else:
        if filters.before is not None:
            events = events.filter(sequence__lt=filters.before)
        rows = list(events.order_by("-sequence")[: size + 1])
        has_older = len(rows) > size
        rows = rows[:size]
        has_newer = (
            filters.before is not None
            and bool(rows)
            and _filtered(filters).filter(sequence__gt=rows[0].sequence).exists()
        )
    return AuditEventPage(
        events=rows,
        newer_cursor=rows[0].sequence if rows and has_newer else None,
        older_cursor=rows[-1].sequence if rows and has_older else None,
    )


def audit_chain_verify_for(*, user) -> ChainVerification:
    """Verify the whole hash chain; PermissionDenied unless an auditor."""
    audit_trail_require_access(user=user)
    return verify_chain()


def _filtered(filters: AuditEventFilters):
    events = AuditEvent.objects.all()
    if filters.actor:
        events = events.filter(actor_username=filters.actor)
    if filters.action.endswith("*"):
        events = events.filter(action__startswith=filters.action[:-1])
    elif filters.action.endswith("."):
        events = events.filter(action__startswith=filters.action)
    elif filters.action:
        events = events.filter(action=filters.action)
    # Event times increase with sequence (audit_record sees to it and verify_chain
    # checks it), so a time range is a sequence range, found with one probe of the
    # created_at index per end. The page then walks the sequence like any other,
    # rather than sorting every event of a wide range by sequence.
    if filters.since is not None:
        first = _first_sequence(
            AuditEvent.objects.filter(created_at__gte=filters.since).order_by("created_at")
        )
        events = events.none() if first is None else events.filter(sequence__gte=first)
    if filters.until is not None:
        last = _first_sequence(
            AuditEvent.objects.filter(created_at__lt=filters.until).order_by("-created_at")
        )
        events = events.none() if last is None else events.filter(sequence__lte=last)
    return events


def _first_sequence(events) -> int | None:
    return events.values_list("sequence", flat=True).first()
