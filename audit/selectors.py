"""Reading the audit trail, and the one rule for who may read it: auditors."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from django.conf import settings

from audit.chain import ChainVerification, verify_chain
from audit.destinations import Destination
from audit.models import AuditEvent, ChainHead, ForwardCursor
from common.roles import Role, require_role


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

    def without_cursor(self) -> AuditEventFilters:
        """The same filters for every page at once (an export): no keyset cursor."""
        return replace(self, before=None, after=None)

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


def audit_events_export_for(
    *, user, filters: AuditEventFilters, through_sequence: int, batch_size: int = 1000
) -> Iterator[list[AuditEvent]]:
    """The events matching ``filters`` up to ``through_sequence``, oldest first, in batches.

    PermissionDenied (at once, not when iterated) unless an auditor. The keyset cursors
    of ``filters`` are ignored: an export covers every page. Each batch is one index range
    scan after the last sequence of the batch before, so memory holds one batch whatever
    the size of the trail; the upper bound makes the export end even while events are
    recorded (events are never changed, so batches read at different times agree).
    """
    audit_trail_require_access(user=user)
    if batch_size < 1:
        raise ValueError("batch_size must be positive.")
    events = _filtered(filters.without_cursor()).filter(sequence__lte=through_sequence)
    return _in_batches(events, batch_size)


def _in_batches(events, batch_size: int) -> Iterator[list[AuditEvent]]:
    last = 0
    while True:
        batch = list(events.filter(sequence__gt=last).order_by("sequence")[:batch_size])
        if batch:
            yield batch
        if len(batch) < batch_size:
            return
        last = batch[-1].sequence


@dataclass(frozen=True)
class ForwardingStatus:
    """One destination of ``AUDIT_FORWARD`` as the System status page shows it."""

    destination: Destination
    cursor: int
    head: int
    last_success_at: dt.datetime | None
    last_error: str
    last_error_at: dt.datetime | None
    failing: bool

    @property
    def backlog(self) -> int:
        return max(self.head - self.cursor, 0)


def audit_forwarding_status(*, destinations=None) -> list[ForwardingStatus]:
    """Each destination's cursor, backlog (newest event less cursor) and last error; for the status page.

    The page's view checks the role (pam-admin). Names and states only: nothing of an event.
    """
    destinations = tuple(settings.AUDIT_FORWARD if destinations is None else destinations)
    if not destinations:
        return []
    head = ChainHead.objects.filter(pk=1).values_list("last_sequence", flat=True).first() or 0
    cursors = {c.name: c for c in ForwardCursor.objects.filter(name__in=[d.name for d in destinations])}
    rows = []
    for destination in destinations:
        cursor = cursors.get(destination.name) or ForwardCursor(name=destination.name)
        rows.append(
            ForwardingStatus(
                destination=destination,
                cursor=cursor.last_sequence,
                head=head,
                last_success_at=cursor.last_success_at,
                last_error=cursor.last_error,
                last_error_at=cursor.last_error_at,
                failing=cursor.failing,
            )
        )
    return rows


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
