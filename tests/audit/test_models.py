"""Audit events are append-only, in the ORM and in the database."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from audit.hashing import GENESIS_HASH
from audit.models import AppendOnlyError, AuditEvent
from audit.services import audit_record


def test_saving_an_existing_event_is_refused(events):
    event = AuditEvent.objects.get(sequence=3)
    event.action = "auth.login.failure"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.save(update_fields=["action"])
    assert AuditEvent.objects.get(sequence=3).action == "auth.login.success"


def test_deleting_an_event_is_refused(events):
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.get(sequence=3).delete()
    assert AuditEvent.objects.filter(sequence=3).exists()


def test_bulk_update_and_delete_are_refused(events):
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.update(action="x.y")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(sequence__gt=2).update(action="x.y")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.count() == 7


def test_an_event_not_chained_by_audit_record_is_refused(db):
    with pytest.raises(AppendOnlyError, match="audit_record"):
        AuditEvent.objects.create(
            sequence=1,
            created_at=timezone.now(),
            action="auth.login.success",
            prev_hash=GENESIS_HASH,
            hash="f" * 64,
        )
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_auditevent SET action = 'auth.login.failure' WHERE sequence = 3",
        "UPDATE audit_auditevent SET details = '{}'",
        "DELETE FROM audit_auditevent WHERE sequence = 7",
        "DELETE FROM audit_auditevent",
    ],
)
def test_the_database_refuses_updates_and_deletes(events, sql):
    with (
        pytest.raises(IntegrityError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)
    assert AuditEvent.objects.count() == 7
    assert AuditEvent.objects.get(sequence=3).action == "auth.login.success"


def test_the_database_still_accepts_new_events(events):
    assert audit_record(action="auth.logout").sequence == 8


def test_a_user_with_events_cannot_be_deleted(alice):
    audit_record(action="auth.login.success", actor=alice)
    with pytest.raises((ProtectedError, DatabaseError)), transaction.atomic():
        alice.delete()


def test_details_display_as_sorted_json(db):
    event = audit_record(action="auth.login.success", details={"b": 1, "a": "é"})
    assert event.details_json == '{"a": "é", "b": 1}'
    assert str(event) == "#1 auth.login.success by system"
