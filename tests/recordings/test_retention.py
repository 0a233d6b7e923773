"""Retention: old sessions' recording files are deleted unless a legal hold keeps them; live
and unsealed recordings never are. Legal holds: who places and releases them, and the audit.

The retention job does not check signatures, so most sessions here get files and sealed
rows written directly; one test uses the real recorders and Vault end to end.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from recordings.models import GatewaySession, LegalHold, Recording, SessionText
from recordings.recorder import REPLAY_INDEX_SUFFIX
from recordings.retention import legal_hold_place, legal_hold_release, recordings_expire
from recordings.search import session_index, session_text_store
from tests.conftest import make_user, verified_client
from tests.recordings.test_search import found, record_session
from tests.recordings.test_services import make_grant, make_session

pytestmark = pytest.mark.django_db

SEARCH = reverse("sessions:search")
HOLD = reverse("sessions:hold_place")


@pytest.fixture
def root(settings, tmp_path):
    settings.RECORDINGS_ROOT = tmp_path / "recordings"
    settings.RECORDINGS_RETENTION_DAYS = 30
    return settings.RECORDINGS_ROOT


def with_files(session: GatewaySession, root, *, sealed: bool = True) -> GatewaySession:
    """A terminal recording and an exec recording (data + index) on disk, sealed unless told."""
    folder = f"2024/01/01/session-{session.pk}"
    (root / folder).mkdir(parents=True, exist_ok=True)
    for channel, (name, index, kind) in enumerate(
        [("channel-0.cast", "", "terminal"), ("channel-1.bin", "channel-1.idx", "exec")]
    ):
        (root / folder / name).write_bytes(b"x" * (100 + channel))
        if index:
            (root / folder / index).write_text("0.000000 0 101 o\n")
        Recording.objects.create(
            session=session,
            channel=channel,
            kind=kind,
            path=f"{folder}/{name}",
            index_path=f"{folder}/{index}" if index else "",
            size=100 + channel,
            sha256="a" * 64,
            signature="vault:v1:sig",
            finalized_at=timezone.now() if sealed else None,
        )
    session_text_store(session_pk=session.pk, text="dcmsend study")
    return session


def ended_days_ago(grant, days: float, root, **kwargs) -> GatewaySession:
    end = timezone.now() - dt.timedelta(days=days)
    session = make_session(grant, started_at=end - dt.timedelta(hours=1), ended_at=end, end_reason="closed")
    return with_files(session, root, **kwargs)


def files_of(session: GatewaySession, root) -> list:
    paths = []
    for r in session.recordings.all():
        paths += [root / r.path] + ([root / r.index_path] if r.index_path else [])
    return paths


def still_there(session, root) -> bool:
    return (
        all(p.exists() for p in files_of(session, root))
        and not session.recordings.filter(deleted_at__isnull=False).exists()
    )


@pytest.fixture
def grant(alice):
    return make_grant(alice)


# --- The job ------------------------------------------------------------------------------


def test_old_unheld_sessions_lose_their_files_and_keep_their_rows(root, grant):
    old = ended_days_ago(grant, 31, root)
    recent = ended_days_ago(grant, 29, root)
    cast = old.recordings.get(kind="terminal").path
    (root / (cast + REPLAY_INDEX_SUFFIX)).write_text('{"screen": "AE_TITLE=PACS01"}')
    assert recordings_expire() == 1
    assert not (root / (cast + REPLAY_INDEX_SUFFIX)).exists()  # derived text goes too
    assert not any(p.exists() for p in files_of(old, root))
    assert not (root / f"2024/01/01/session-{old.pk}").exists()
    for r in old.recordings.all():
        assert r.deleted_at is not None
        assert r.sha256 == "a" * 64 and r.signature == "vault:v1:sig" and r.size is not None
    assert still_there(recent, root)
    assert recordings_expire() == 0  # nothing left to do


def test_each_deletion_is_one_audit_event_with_paths_and_sizes(root, grant):
    old = ended_days_ago(grant, 40, root)
    (root / old.recordings.get(kind="exec").index_path).unlink()  # already gone: said so
    recordings_expire()
    (event,) = AuditEvent.objects.filter(action="recording.deleted")
    assert event.actor is None
    assert (event.object_type, event.object_id) == ("recordings.session", str(old.pk))
    folder = f"2024/01/01/session-{old.pk}"
    assert event.details["files"] == [
        {"path": f"{folder}/channel-0.cast", "size": 100},
        {"path": f"{folder}/channel-1.bin", "size": 101},
        {"path": f"{folder}/channel-1.idx", "size": None, "missing": True},
    ]
    assert event.details["bytes"] == 201
    assert event.details["retention_days"] == 30
    assert event.details["user"] == "alice" and event.details["account"] == "pacs01-root"


def test_deleted_sessions_are_no_longer_found_by_text_and_not_indexed_again(root, grant, carol, client):
    old = ended_days_ago(grant, 31, root)
    verified_client(client, carol)
    assert found(client, q="dcmsend") == [old.pk]
    recordings_expire()
    assert SessionText.objects.get(session=old).text == ""
    assert found(client, q="dcmsend") == []
    session_index(session=old)
    assert found(client, q="dcmsend") == []


def test_a_hold_on_the_session_keeps_its_files_until_released(root, grant, carol):
    old = ended_days_ago(grant, 31, root)
    other = ended_days_ago(grant, 31, root)
    hold = legal_hold_place(acting_user=carol, session=old, reason="Case 2024-17")
    assert recordings_expire() == 1
    assert still_there(old, root)
    assert not still_there(other, root)
    legal_hold_release(hold=hold, acting_user=carol)
    assert recordings_expire() == 1
    assert not still_there(old, root)


def test_a_hold_on_the_user_keeps_every_session_of_theirs(root, grant, pat):
    dave = make_user("dave", "requester")
    alice_old = ended_days_ago(grant, 100, root)
    dave_old = ended_days_ago(make_grant(dave, slug="pacs02-root"), 100, root)
    legal_hold_place(acting_user=pat, user=grant.user, reason="HR investigation 88")
    assert recordings_expire() == 1
    assert still_there(alice_old, root)
    assert not still_there(dave_old, root)


def test_two_holds_keep_the_files_until_both_are_released(root, grant, carol, pat):
    old = ended_days_ago(grant, 31, root)
    first = legal_hold_place(acting_user=carol, session=old, reason="Case A")
    legal_hold_place(acting_user=pat, user=grant.user, reason="Case B")
    legal_hold_release(hold=first, acting_user=pat)
    assert recordings_expire() == 0
    assert still_there(old, root)


def test_live_sessions_and_unsealed_recordings_are_never_deleted(root, grant):
    live = with_files(make_session(grant, started_at=timezone.now() - dt.timedelta(days=400)), root)
    unsealed = ended_days_ago(grant, 400, root, sealed=False)
    half = ended_days_ago(grant, 400, root)
    half.recordings.filter(kind="exec").update(finalized_at=None)
    assert recordings_expire() == 0
    for session in (live, unsealed, half):
        assert still_there(session, root)


def test_retention_zero_keeps_everything(root, grant, settings):
    settings.RECORDINGS_RETENTION_DAYS = 0
    old = ended_days_ago(grant, 5000, root)
    assert recordings_expire() == 0
    assert still_there(old, root)


def test_the_maintenance_command_expires_old_recordings(root, grant, capsys):
    old = ended_days_ago(grant, 31, root)
    call_command("sessions_maintain")
    assert "expired: 1" in capsys.readouterr().out
    assert not still_there(old, root)


def test_real_recordings_expire_end_to_end(approle_settings, tmp_path, grant, carol, client):
    approle_settings.RECORDINGS_ROOT = tmp_path / "real"
    approle_settings.RECORDINGS_RETENTION_DAYS = 1
    session = record_session(make_session(grant))
    GatewaySession.objects.filter(pk=session.pk).update(ended_at=timezone.now() - dt.timedelta(days=2))
    assert recordings_expire() == 1
    verified_client(client, carol)
    page = client.get(reverse("sessions:detail", args=[session.pk]))
    assert {c.state for c in page.context["checks"]} == {"deleted"}
    assert b"(retention); its sha256 and signature are kept" in page.content
    rec = session.recordings.get(kind="terminal")
    assert client.get(reverse("sessions:download", args=[rec.pk])).status_code == 404


# --- Holds: who, how, audited -------------------------------------------------------------


def test_holds_are_for_auditors_and_pam_admins_only(root, grant, alice, bob):
    old = ended_days_ago(grant, 1, root)
    for user in (alice, bob):
        with pytest.raises(PermissionDenied):
            legal_hold_place(acting_user=user, session=old, reason="x")
    hold = LegalHold.objects.create(session=old, reason="x", created_by=make_user("ann", "auditor"))
    with pytest.raises(PermissionDenied):
        legal_hold_release(hold=hold, acting_user=bob)


def test_a_hold_needs_a_reason(root, grant, carol):
    old = ended_days_ago(grant, 1, root)
    with pytest.raises(ValidationError, match="reason"):
        legal_hold_place(acting_user=carol, session=old, reason="  ")
    with pytest.raises(ValidationError, match="under 1000"):
        legal_hold_place(acting_user=carol, session=old, reason="x" * 1001)


def test_a_hold_is_on_exactly_one_session_or_user(root, grant, carol):
    old = ended_days_ago(grant, 1, root)
    for fields in ({}, {"session": old, "user": grant.user}):
        with pytest.raises(IntegrityError), transaction.atomic():
            LegalHold.objects.create(reason="x", created_by=carol, **fields)


def test_deleted_recordings_cannot_be_held(root, grant, carol):
    old = ended_days_ago(grant, 31, root)
    recordings_expire()
    with pytest.raises(ValidationError, match="already deleted"):
        legal_hold_place(acting_user=carol, session=old, reason="too late")


def test_an_auditor_holds_a_session_from_its_page_audited(root, grant, carol, client):
    session = ended_days_ago(grant, 1, root)
    verified_client(client, carol)
    page = client.get(reverse("sessions:detail", args=[session.pk]))
    assert b"Hold this session" in page.content
    response = client.post(HOLD, {"session": session.pk, "reason": "Case 2024-17", "back": session.pk})
    assert response.status_code == 302 and response["Location"] == reverse(
        "sessions:detail", args=[session.pk]
    )
    hold = LegalHold.objects.get()
    assert (hold.session, hold.user, hold.created_by, hold.reason) == (session, None, carol, "Case 2024-17")
    event = AuditEvent.objects.get(action="recording.legal_hold.placed")
    assert event.actor == carol
    assert event.details == {
        "session": session.pk,
        "user": "alice",
        "account": "pacs01-root",
        "hold": hold.pk,
        "reason": "Case 2024-17",
    }
    page = client.get(reverse("sessions:detail", args=[session.pk]))
    assert b"on legal hold" in page.content and b"Case 2024-17" in page.content

    release = reverse("sessions:hold_release", args=[hold.pk])
    assert client.post(release, {"back": session.pk}).status_code == 302
    hold.refresh_from_db()
    assert hold.released_at is not None and hold.released_by == carol
    event = AuditEvent.objects.get(action="recording.legal_hold.released")
    assert event.details == {
        "session": session.pk,
        "hold": hold.pk,
        "reason": "Case 2024-17",
        "placed_by": "carol",
    }
    client.post(release)
    assert AuditEvent.objects.filter(action="recording.legal_hold.released").count() == 1


def test_a_pam_admin_holds_a_user_from_the_search_page(root, grant, pat, client):
    verified_client(client, pat)
    page = client.get(SEARCH, {"user": "alice"})
    assert b"Hold every session of this user" in page.content
    response = client.post(HOLD, {"username": "alice", "reason": "HR 88"})
    assert response.status_code == 302 and response["Location"] == SEARCH
    hold = LegalHold.objects.get()
    assert (hold.user, hold.session) == (grant.user, None)
    assert AuditEvent.objects.get(action="recording.legal_hold.placed").details == {
        "user": "alice",
        "hold": hold.pk,
        "reason": "HR 88",
    }
    assert b"every session of alice" in client.get(SEARCH).content
    client.post(HOLD, {"username": "nobody", "reason": "x"})
    assert LegalHold.objects.count() == 1


@pytest.mark.parametrize("persona", ["alice", "bob", "mallory"])
def test_others_cannot_hold_or_release_from_the_web(root, grant, carol, client, persona, request):
    session = ended_days_ago(grant, 1, root)
    hold = legal_hold_place(acting_user=carol, session=session, reason="Case 1234")
    verified_client(client, request.getfixturevalue(persona))
    assert client.post(HOLD, {"session": session.pk, "reason": "mine"}).status_code == 403
    assert client.post(HOLD, {"username": "alice", "reason": "mine"}).status_code == 403
    assert client.post(reverse("sessions:hold_release", args=[hold.pk])).status_code == 403
    assert LegalHold.objects.filter(released_at__isnull=True).count() == 1
    if persona != "mallory":
        page = client.get(reverse("sessions:detail", args=[session.pk]))
        assert b"Hold this session" not in page.content and b"Release</button>" not in page.content
        assert b"Case 1234" not in page.content and b"on legal hold" not in page.content
