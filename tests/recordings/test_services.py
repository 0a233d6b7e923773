"""Terminating a gateway session from the web: who may, with what reason, and what is recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from access.models import AccessRequest, Account, Grant, Target
from audit.models import AuditEvent
from recordings.models import GatewaySession
from recordings.services import session_terminate

pytestmark = pytest.mark.django_db


def make_grant(user, *, slug: str = "pacs01-root", kind: str = Account.Kind.SSH_CA, port: int = 22) -> Grant:
    """A live grant written straight to the database (no Vault: nothing here checks a credential out)."""
    target, _ = Target.objects.get_or_create(
        name=slug.split("-")[0], defaults={"host": "pacs01.hospital.example", "port": port}
    )
    account = Account.objects.create(target=target, slug=slug, kind=kind, username="root")
    req = AccessRequest.objects.create(
        requester=user,
        account=account,
        reason="DICOM router",
        duration_minutes=60,
        approvals_required=0,
        state=AccessRequest.State.FULFILLED,
    )
    return Grant.objects.create(
        request=req, user=user, account=account, ends_at=timezone.now() + timedelta(hours=1)
    )


def make_session(grant: Grant, **fields) -> GatewaySession:
    """A live gateway session under the grant, as the gateway would open it."""
    fields = {
        "user": grant.user,
        "grant": grant,
        "account": grant.account.slug,
        "client_address": "192.0.2.10",
        "gateway_node": "gw1:1234",
        **fields,
    }
    return GatewaySession.objects.create(**fields)


@pytest.fixture
def live_session(alice):
    return make_session(make_grant(alice))


def terminate_events():
    return list(AuditEvent.objects.filter(action="session.terminate_requested").order_by("sequence"))


def test_an_approver_terminates_a_live_session(bob, live_session):
    """The request is set on the row for the gateway to act on, and audited in the same step."""
    session_terminate(session=live_session, acting_user=bob, reason="  vendor left the building ")
    live_session.refresh_from_db()
    assert live_session.terminate_requested_at is not None
    assert live_session.terminate_requested_by == bob
    assert live_session.terminate_reason == "vendor left the building"
    assert live_session.ended_at is None  # the gateway ends it, not the web
    [event] = terminate_events()
    assert event.actor == bob
    assert event.object_type == "recordings.session" and event.object_id == str(live_session.pk)
    assert event.details == {"account": "pacs01-root", "user": "alice", "reason": "vendor left the building"}


def test_a_pam_admin_terminates_a_live_session(pat, live_session):
    session_terminate(session=live_session, acting_user=pat, reason="maintenance window over")
    live_session.refresh_from_db()
    assert live_session.terminate_requested_by == pat


@pytest.mark.parametrize("persona", ["alice", "carol", "mallory"])
def test_the_session_user_auditors_and_outsiders_are_refused(request, persona, live_session):
    """Alice is the session's own user: she ends it by leaving ssh, not from here."""
    user = request.getfixturevalue(persona)
    with pytest.raises(PermissionDenied):
        session_terminate(session=live_session, acting_user=user, reason="because")
    live_session.refresh_from_db()
    assert live_session.terminate_requested_at is None
    assert terminate_events() == []


@pytest.mark.parametrize("reason", ["", "   "])
def test_a_blank_reason_is_refused(bob, live_session, reason):
    with pytest.raises(ValidationError) as caught:
        session_terminate(session=live_session, acting_user=bob, reason=reason)
    assert "reason" in caught.value.message_dict
    live_session.refresh_from_db()
    assert live_session.terminate_requested_at is None and live_session.terminate_reason == ""
    assert terminate_events() == []


def test_an_over_long_reason_is_refused(bob, live_session):
    with pytest.raises(ValidationError) as caught:
        session_terminate(session=live_session, acting_user=bob, reason="x" * 1001)
    assert "under 1000 characters" in caught.value.message_dict["reason"][0]
    assert terminate_events() == []


def test_an_ended_session_cannot_be_terminated(bob, alice):
    ended = make_session(
        make_grant(alice), ended_at=timezone.now(), end_reason=GatewaySession.EndReason.CLOSED
    )
    with pytest.raises(ValidationError) as caught:
        session_terminate(session=ended, acting_user=bob, reason="too late")
    message = " ".join(caught.value.messages)
    assert "already ended at" in message and "closed by the user or the target" in message
    ended.refresh_from_db()
    assert ended.terminate_requested_at is None
    assert terminate_events() == []


def test_a_stale_copy_of_a_session_that_ended_meanwhile_is_refused(bob, live_session):
    """The check reads the locked row, not the caller's copy: the gateway may just have closed it."""
    GatewaySession.objects.filter(pk=live_session.pk).update(
        ended_at=timezone.now(), end_reason=GatewaySession.EndReason.GRANT_ENDED
    )
    with pytest.raises(ValidationError, match="already ended"):
        session_terminate(session=live_session, acting_user=bob, reason="cut it")


def test_asking_again_keeps_the_first_request_and_audits_the_repeat(bob, pat, live_session):
    """The gateway tells the user who terminated and why: the first request stands."""
    session_terminate(session=live_session, acting_user=bob, reason="first")
    first_at = GatewaySession.objects.get(pk=live_session.pk).terminate_requested_at
    session_terminate(session=live_session, acting_user=pat, reason="second")
    live_session.refresh_from_db()
    assert live_session.terminate_requested_by == bob
    assert live_session.terminate_reason == "first"
    assert live_session.terminate_requested_at == first_at
    first, repeat = terminate_events()
    assert "repeat" not in first.details
    assert repeat.actor == pat
    assert repeat.details["repeat"] is True
    assert repeat.details["reason"] == "second"
    assert repeat.details["first_requested_by"] == "bob"
