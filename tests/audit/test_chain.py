"""verify_chain finds every kind of tampering, and names the first bad sequence number."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.chain import verify_chain
from audit.hashing import GENESIS_HASH, event_hash
from audit.models import AuditEvent, ChainHead
from audit.services import audit_record
from tests.audit.conftest import record_events, tamper


def forged_event(
    *,
    sequence: int,
    prev_hash: str,
    action: str = "access.grant.approved",
    created_at: dt.datetime | None = None,
) -> AuditEvent:
    """An event with a correct hash for its contents, as an attacker who knows the format makes it."""
    event = AuditEvent(
        sequence=sequence,
        created_at=created_at or timezone.now(),
        actor_username="mallory",
        action=action,
        details={"forged": True},
        prev_hash=prev_hash,
    )
    event.hash = event_hash(event.hashed_values())
    return event


def insert_behind_the_service(event: AuditEvent) -> None:
    # bulk_create skips save() and the chain head, as raw SQL would.
    AuditEvent.objects.bulk_create([event])


def renumber_up_from(sequence: int) -> None:
    """Shift events from ``sequence`` on up by one, highest first, to make room for an insert."""
    last = AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first()
    for number in range(last, sequence - 1, -1):
        tamper("UPDATE audit_auditevent SET sequence = sequence + 1 WHERE sequence = %s", [number])


def assert_broken_at(sequence: int | None, *words: str):
    result = verify_chain()
    assert not result.ok
    assert result.first_bad_sequence == sequence, result.reason
    for word in words:
        assert word in result.reason
    return result


def test_an_empty_trail_is_intact(db):
    result = verify_chain()
    assert (result.ok, result.checked, result.first_bad_sequence, result.reason) == (True, 0, None, "")


def test_an_untouched_trail_is_intact(events):
    result = verify_chain()
    assert result.ok
    assert (result.checked, result.last_sequence) == (7, 7)
    assert result.summary == "Audit trail intact: 7 events, last sequence 7"


def test_edited_details_are_found(events):
    tamper("""UPDATE audit_auditevent SET details = '{"n": 99}' WHERE sequence = 3""")
    assert_broken_at(3, "altered")


def test_an_edited_action_is_found(events):
    tamper("UPDATE audit_auditevent SET action = 'auth.login.failure' WHERE sequence = 5")
    assert_broken_at(5, "altered")


def test_an_edited_actor_name_is_found(events):
    tamper("UPDATE audit_auditevent SET actor_username = 'bob' WHERE sequence = 1")
    assert_broken_at(1, "altered")


def test_an_edited_time_is_found(events):
    event = AuditEvent.objects.get(sequence=2)
    tamper(
        "UPDATE audit_auditevent SET created_at = %s WHERE sequence = 2",
        [event.created_at - dt.timedelta(microseconds=1)],
    )
    assert_broken_at(2, "altered")


def test_an_edit_with_its_hash_recomputed_breaks_the_next_link(events):
    event = AuditEvent.objects.get(sequence=3)
    event.action = "auth.login.failure"
    tamper(
        "UPDATE audit_auditevent SET action = %s, hash = %s WHERE sequence = 3",
        [event.action, event_hash(event.hashed_values())],
    )
    assert_broken_at(4, "does not link to event 3")


def test_a_deleted_middle_event_is_found(events):
    tamper("DELETE FROM audit_auditevent WHERE sequence = 4")
    assert_broken_at(4, "event 4 is missing")


def test_several_deleted_events_are_found(events):
    tamper("DELETE FROM audit_auditevent WHERE sequence IN (2, 3)")
    assert_broken_at(2, "events 2 to 3 are missing")


def test_a_deleted_first_event_is_found(events):
    tamper("DELETE FROM audit_auditevent WHERE sequence = 1")
    assert_broken_at(1, "missing")


def test_deleted_last_events_are_found_by_the_head(events):
    tamper("DELETE FROM audit_auditevent WHERE sequence >= 6")
    assert_broken_at(6, "after 5 were deleted")


def test_a_trail_emptied_entirely_is_found(events):
    tamper("DELETE FROM audit_auditevent")
    assert_broken_at(1, "deleted")


def test_an_event_appended_behind_the_services_back_is_found(events):
    insert_behind_the_service(forged_event(sequence=8, prev_hash=events[-1].hash))
    assert_broken_at(8, "beyond the chain head")


def test_an_event_inserted_with_a_forged_sequence_is_found(events):
    renumber_up_from(4)
    insert_behind_the_service(forged_event(sequence=4, prev_hash=events[2].hash))
    # The forged event 4 is well formed; the old event 4, now 5, no longer links to it.
    assert_broken_at(5, "does not link to event 4")


def test_an_event_inserted_before_the_first_is_found(events):
    insert_behind_the_service(forged_event(sequence=0, prev_hash=GENESIS_HASH))
    assert_broken_at(0, "out of order")


def test_an_event_inserted_with_a_random_hash_is_found(events):
    renumber_up_from(2)
    event = forged_event(sequence=2, prev_hash=events[0].hash)
    event.hash = "a" * 64
    insert_behind_the_service(event)
    assert_broken_at(2, "altered")


def test_a_backdated_event_is_found_even_with_a_correct_hash_and_head(events):
    forged = forged_event(
        sequence=8, prev_hash=events[-1].hash, created_at=events[-1].created_at - dt.timedelta(seconds=1)
    )
    insert_behind_the_service(forged)
    ChainHead.objects.update(last_sequence=8, last_hash=forged.hash)
    assert_broken_at(8, "not after the event before it")


def test_an_event_dated_like_the_one_before_is_found(events):
    forged = forged_event(sequence=8, prev_hash=events[-1].hash, created_at=events[-1].created_at)
    insert_behind_the_service(forged)
    ChainHead.objects.update(last_sequence=8, last_hash=forged.hash)
    assert_broken_at(8, "not after")


def test_reordered_events_are_found(events):
    tamper("UPDATE audit_auditevent SET sequence = -3 WHERE sequence = 3")
    tamper("UPDATE audit_auditevent SET sequence = 3 WHERE sequence = 4")
    tamper("UPDATE audit_auditevent SET sequence = 4 WHERE sequence = -3")
    assert_broken_at(3, "does not link to event 2")


def test_a_forged_head_hash_is_found(events):
    ChainHead.objects.update(last_hash="b" * 64)
    assert_broken_at(7, "head's hash")


def test_a_deleted_head_is_found(events):
    ChainHead.objects.all().delete()
    assert_broken_at(None, "head is missing")


def test_a_rewound_head_is_found(events):
    ChainHead.objects.update(last_sequence=5, last_hash=events[4].hash)
    assert_broken_at(6, "beyond the chain head")


def test_verification_streams_in_chunks(events):
    assert verify_chain(chunk_size=2).ok
    tamper("DELETE FROM audit_auditevent WHERE sequence = 6")
    result = verify_chain(chunk_size=2)
    assert (result.ok, result.first_bad_sequence) == (False, 6)


def test_verification_can_start_part_way(events):
    result = verify_chain(from_sequence=5)
    assert (result.ok, result.checked, result.last_sequence) == (True, 3, 7)
    assert "(from sequence 5)" in result.summary


def test_verification_part_way_still_finds_tampering_after_the_start(events):
    tamper("UPDATE audit_auditevent SET action = 'auth.logout' WHERE sequence = 6")
    result = verify_chain(from_sequence=5)
    assert (result.ok, result.first_bad_sequence) == (False, 6)


def test_verification_cannot_start_after_a_missing_event(events):
    result = verify_chain(from_sequence=20)
    assert (result.ok, result.first_bad_sequence) == (False, 19)


def test_a_start_before_1_is_refused(db):
    with pytest.raises(ValueError):
        verify_chain(from_sequence=0)


def test_new_events_after_tampering_do_not_hide_it(events):
    tamper("UPDATE audit_auditevent SET action = 'auth.logout' WHERE sequence = 2")
    record_events(3)
    assert audit_record(action="auth.login.success").sequence == 11
    assert_broken_at(2, "altered")
