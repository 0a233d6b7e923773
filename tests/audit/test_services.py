"""audit_record: numbering, chaining, what it takes from the request, and what it refuses."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import IntegrityError, transaction
from django.test import RequestFactory
from django.utils import timezone

from audit.chain import verify_chain
from audit.hashing import GENESIS_HASH, event_hash
from audit.models import AuditEvent, ChainHead
from audit.services import AuditChainError, audit_record
from tests.audit.conftest import tamper


def test_the_first_event_links_to_64_zeros(db):
    event = audit_record(action="auth.login.success")
    assert event.sequence == 1
    assert event.prev_hash == GENESIS_HASH


def test_two_records_in_a_row_get_consecutive_sequences_and_chained_hashes(db):
    first = audit_record(action="auth.login.success", actor_username="alice")
    second = audit_record(action="auth.logout", actor_username="alice")
    assert second.sequence == first.sequence + 1
    assert second.prev_hash == first.hash
    assert second.hash == event_hash(second.hashed_values())
    head = ChainHead.objects.get()
    assert (head.last_sequence, head.last_hash) == (second.sequence, second.hash)


def test_event_times_increase_even_when_the_clock_goes_back(db, monkeypatch, caplog):
    """Times follow the sequence, so a time range is a sequence range; a clock behind is logged."""
    first = audit_record(action="auth.login.success")
    monkeypatch.setattr(timezone, "now", lambda: first.created_at - dt.timedelta(minutes=5))
    with caplog.at_level(logging.WARNING, logger="audit.services"):
        second = audit_record(action="auth.logout")
        third = audit_record(action="auth.logout")
    assert first.created_at < second.created_at < third.created_at
    assert second.created_at - first.created_at == dt.timedelta(microseconds=1)
    assert "300.000 s behind" in caplog.text
    assert verify_chain().ok


def test_the_stored_event_hashes_the_same_when_read_back(db):
    """Whatever the database does to times, addresses and JSON, the hash still matches."""
    event = audit_record(
        action="access.grant.approved",
        source_ip="::ffff:192.0.2.9",
        details={
            "f": 1e20,
            "z": -0.0,
            "small": 1e-7,
            "big": 2**70,
            "text": "é\u2028\x00",
            "list": [(1, "a")],
        },
    )
    stored = AuditEvent.objects.get(sequence=event.sequence)
    assert stored.hash == event.hash
    assert event_hash(stored.hashed_values()) == stored.hash
    assert verify_chain().ok


def test_the_request_gives_the_actor_and_source_address(alice):
    request = RequestFactory().get("/", REMOTE_ADDR="198.51.100.4")
    request.user = alice
    event = audit_record(action="auth.login.success", request=request)
    assert event.actor == alice
    assert event.actor_username == "alice"
    assert event.source_ip == "198.51.100.4"


def test_an_anonymous_request_keeps_the_typed_username_but_no_actor(db):
    request = RequestFactory().post("/login/", REMOTE_ADDR="2001:db8::5")
    request.user = AnonymousUser()
    event = audit_record(action="auth.login.failure", request=request, actor_username="no-such-user")
    assert event.actor is None
    assert event.actor_username == "no-such-user"
    assert event.source_ip == "2001:db8::5"


def test_explicit_actor_and_address_win_over_the_request(alice, bob):
    request = RequestFactory().get("/", REMOTE_ADDR="198.51.100.4")
    request.user = alice
    event = audit_record(action="access.grant.revoked", request=request, actor=bob, source_ip="192.0.2.1")
    assert (event.actor, event.actor_username, event.source_ip) == (bob, "bob", "192.0.2.1")


def test_a_model_instance_fills_the_object_fields(alice, pat):
    event = audit_record(action="identity.mfa.reset", actor=pat, obj=alice)
    assert event.object_type == "identity.user"
    assert event.object_id == str(alice.pk)
    assert event.object_repr == str(alice)


def test_long_and_unstorable_text_is_cut_and_cleaned(db):
    event = audit_record(action="auth.login.failure", actor_username="m\x00" * 200, object_repr="r" * 500)
    assert len(event.actor_username) == 150
    assert "\x00" not in event.actor_username
    assert len(event.object_repr) == 200
    assert verify_chain().ok


@pytest.mark.parametrize(
    "details",
    [
        {"password": "hunter2"},
        {"new_Password": "x"},
        {"client_secret": "x"},
        {"token": "x"},
        {"totp": "123456"},
        {"api_key": "x"},
        {"backup_code": "x"},
        {"outer": {"inner": {"vault_token": "x"}}},
        {"changes": [{"field": "x"}, {"ssh_key": "x"}]},
    ],
)
def test_secret_looking_detail_keys_are_refused(db, details):
    with pytest.raises(ValueError, match="secret"):
        audit_record(action="identity.user.changed", details=details)
    assert not AuditEvent.objects.exists()


def test_the_refusal_does_not_repeat_the_secret(db):
    with pytest.raises(ValueError) as excinfo:
        audit_record(action="identity.user.changed", details={"password": "hunter2-value"})
    assert "hunter2-value" not in str(excinfo.value)


@pytest.mark.parametrize(
    "action", ["", "login", "Auth.Login", "auth..login", "auth.login ", "auth/login", "a." * 60]
)
def test_an_ill_formed_action_is_refused(db, action):
    with pytest.raises(ValueError, match="action"):
        audit_record(action=action)


@pytest.mark.parametrize("details", [{"n": float("nan")}, {1: "x"}, {"o": object()}])
def test_details_that_are_not_json_are_refused(db, details):
    with pytest.raises(ValueError):
        audit_record(action="auth.login.success", details=details)


def test_a_source_address_that_is_not_one_is_refused(db):
    with pytest.raises(ValueError, match="source_ip"):
        audit_record(action="auth.login.success", source_ip="pacs01")


def test_a_rolled_back_event_leaves_no_gap(db):
    audit_record(action="auth.login.success")
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_record(action="access.request.created")
        raise RuntimeError("the caller's work failed")
    assert audit_record(action="auth.logout").sequence == 2
    assert verify_chain().ok


def test_recording_refuses_to_restart_the_chain_when_its_head_was_deleted(events):
    tamper("DELETE FROM audit_chainhead")
    with pytest.raises(AuditChainError), transaction.atomic():
        audit_record(action="auth.login.success")


def test_an_empty_trail_without_a_head_starts_afresh(db):
    ChainHead.objects.all().delete()
    assert audit_record(action="auth.login.success").sequence == 1
    assert ChainHead.objects.get().last_sequence == 1


def test_a_second_event_with_the_same_sequence_cannot_be_stored(events):
    """Belt and braces under the lock: the sequence is the primary key."""
    duplicate = AuditEvent.objects.get(sequence=7)
    duplicate._state.adding = True
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()
