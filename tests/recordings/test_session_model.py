"""GatewaySession and Recording rows: constraints, and the read-only configuration pages."""

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse

from recordings.models import GatewaySession, Recording
from tests.conftest import verified_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def session(alice):
    return GatewaySession.objects.create(user=alice, account="pacs01-root", client_address="192.0.2.10")


def test_a_channel_has_one_recording_and_a_session_one_events_file(session):
    Recording.objects.create(
        session=session, channel=0, kind=Recording.Kind.TERMINAL, path="a/channel-0.cast"
    )
    Recording.objects.create(session=session, kind=Recording.Kind.EVENTS, path="a/events.jsonl")
    with pytest.raises(IntegrityError), transaction.atomic():
        Recording.objects.create(session=session, channel=0, kind=Recording.Kind.EXEC, path="a/channel-0.bin")
    with pytest.raises(IntegrityError), transaction.atomic():
        Recording.objects.create(session=session, kind=Recording.Kind.EVENTS, path="a/events2.jsonl")


def test_a_new_session_is_live_until_it_ends(session):
    assert session.is_live
    assert str(session) == f"session {session.pk}: alice on pacs01-root"


def test_pam_admin_sees_sessions_and_recordings_read_only(client, pat, session):
    recording = Recording.objects.create(
        session=session, channel=0, kind=Recording.Kind.TERMINAL, path="a/channel-0.cast"
    )
    verified_client(client, pat)
    assert client.get(reverse("admin:recordings_gatewaysession_changelist")).status_code == 200
    page = client.get(reverse("admin:recordings_gatewaysession_change", args=[session.pk]))
    assert page.status_code == 200 and b"a/channel-0.cast" in page.content
    assert client.get(reverse("admin:recordings_recording_change", args=[recording.pk])).status_code == 200
    assert client.get(reverse("admin:recordings_gatewaysession_add")).status_code == 403
    assert (
        client.post(reverse("admin:recordings_gatewaysession_delete", args=[session.pk])).status_code == 403
    )


def test_other_roles_cannot_open_the_session_pages(client, carol, session):
    verified_client(client, carol)
    assert client.get(reverse("admin:recordings_gatewaysession_changelist")).status_code == 403
