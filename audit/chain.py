"""Verifying the audit trail's hash chain."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction

from audit.hashing import GENESIS_HASH, HASHED_FIELDS, event_hash
from audit.models import AuditEvent, ChainHead

_COLUMNS = (*HASHED_FIELDS, "hash")


@dataclass(frozen=True)
class ChainVerification:
    """The outcome of :func:`verify_chain`.

    ``checked`` counts the events read; ``first_bad_sequence`` is the first sequence
    number found wrong (for a deletion, the first missing number); ``reason`` says
    what is wrong, empty when ``ok``; ``last_sequence`` is the last event read.
    """

    ok: bool
    checked: int
    first_bad_sequence: int | None
    reason: str
    last_sequence: int = 0
    from_sequence: int = 1

    @property
    def summary(self) -> str:
        if self.ok:
            start = f" (from sequence {self.from_sequence})" if self.from_sequence > 1 else ""
            return f"Audit trail intact: {self.checked} events, last sequence {self.last_sequence}{start}"
        where = f" at sequence {self.first_bad_sequence}" if self.first_bad_sequence is not None else ""
        return f"Audit trail broken{where}: {self.reason} ({self.checked} events checked)"


def verify_chain(*, from_sequence: int = 1, chunk_size: int = 5000) -> ChainVerification:
    """Check every event from ``from_sequence`` on, in sequence order, and the chain head.

    Finds the first of: a missing sequence number (a deleted event), a number out of
    order or repeated (an inserted or renumbered event), a ``prev_hash`` that is not
    the previous event's hash (inserted, deleted or reordered), a hash that does not
    match the event's contents (an edited event), a time not after the one before
    (``audit_record`` makes times increase), and a head that does not name the
    last event (events deleted from, or added behind the back of, the end).

    Rows are streamed in chunks, so memory stays flat over millions of events, and
    read in one snapshot, so events recorded meanwhile do not look like tampering.
    Starting after 1 trusts the stored hash of event ``from_sequence - 1``.
    """
    if from_sequence < 1:
        raise ValueError("from_sequence starts at 1.")
    if connection.in_atomic_block:
        return _verify(from_sequence, chunk_size)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # One snapshot for the head and the events (the default, READ COMMITTED,
            # takes one per statement). SQLite reads in one snapshot anyway.
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _verify(from_sequence, chunk_size)


def _verify(from_sequence: int, chunk_size: int) -> ChainVerification:
    head = ChainHead.objects.filter(pk=1).values_list("last_sequence", "last_hash").first()
    events = AuditEvent.objects.order_by("sequence")
    expected_sequence, expected_prev, previous_time = 1, GENESIS_HASH, None
    if from_sequence > 1:
        previous = (
            AuditEvent.objects.filter(sequence=from_sequence - 1).values_list("hash", "created_at").first()
        )
        if previous is None:
            return ChainVerification(
                ok=False,
                checked=0,
                first_bad_sequence=from_sequence - 1,
                reason=f"cannot start at {from_sequence}: event {from_sequence - 1} does not exist",
                from_sequence=from_sequence,
            )
        expected_sequence, (expected_prev, previous_time) = from_sequence, previous
        events = events.filter(sequence__gte=from_sequence)
    # From 1, no lower bound: a row inserted with sequence 0 or below is found too.

    checked = 0
    last_sequence = expected_sequence - 1

    def broken(sequence: int | None, reason: str) -> ChainVerification:
        return ChainVerification(
            ok=False,
            checked=checked,
            first_bad_sequence=sequence,
            reason=reason,
            last_sequence=last_sequence,
            from_sequence=from_sequence,
        )

    for row in events.values_list(*_COLUMNS).iterator(chunk_size=chunk_size):
        values = dict(zip(_COLUMNS, row, strict=True))
        sequence = values["sequence"]
        checked += 1
        if sequence > expected_sequence:
            missing = (
                f"event {expected_sequence} is"
                if sequence == expected_sequence + 1
                else f"events {expected_sequence} to {sequence - 1} are"
            )
            return broken(expected_sequence, f"{missing} missing (deleted): the chain jumps to {sequence}")
        if sequence < expected_sequence:
            return broken(
                sequence,
                f"event {sequence} is out of order or repeated (expected {expected_sequence}): inserted",
            )
        if values["prev_hash"] != expected_prev:
            before = f"event {sequence - 1}" if sequence > 1 else "the start of the chain"
            return broken(
                sequence,
                f"event {sequence} does not link to {before} (its prev_hash differs): "
                "an event was inserted, deleted or reordered here",
            )
        if event_hash(values) != values["hash"]:
            return broken(sequence, f"event {sequence} was altered: its hash does not match its contents")
        if previous_time is not None and values["created_at"] <= previous_time:
            return broken(
                sequence,
                f"event {sequence} is dated {values['created_at'].isoformat()}, "
                f"not after the event before it ({previous_time.isoformat()}): inserted or forged",
            )
        expected_sequence, expected_prev, previous_time = sequence + 1, values["hash"], values["created_at"]
        last_sequence = sequence

    if head is None:
        if checked == 0 and from_sequence == 1:
            return ChainVerification(ok=True, checked=0, first_bad_sequence=None, reason="", last_sequence=0)
        return broken(None, "the chain head is missing (deleted)")
    head_sequence, head_hash = head
    if head_sequence > last_sequence:
        return broken(
            last_sequence + 1,
            f"the chain head records {head_sequence} events but the last event is {last_sequence}: "
            f"events after {last_sequence} were deleted",
        )
    if head_sequence < last_sequence:
        return broken(
            head_sequence + 1,
            f"event {head_sequence + 1} is beyond the chain head ({head_sequence}): "
            "added outside pamsite (written into the database directly)",
        )
    if head_hash != expected_prev:
        return broken(last_sequence, f"the chain head's hash differs from event {last_sequence}'s")
    return ChainVerification(
        ok=True,
        checked=checked,
        first_bad_sequence=None,
        reason="",
        last_sequence=last_sequence,
        from_sequence=from_sequence,
    )
