"""GatewaySession pages: the live list, one session, terminate; and the sessions on the grant page."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from access.models import Account
from audit.models import AuditEvent
from recordings.models import GatewaySession, Recording
from tests.conftest import make_user, verified_client
from tests.recordings.test_services import make_grant, make_session

pytestmark = pytest.mark.django_db

LIVE = reverse("sessions:live")


def detail_url(session: GatewaySession) -> str:
    return reverse("sessions:detail", args=[session.pk])


def terminate_url(session: GatewaySession) -> str:
    return reverse("sessions:terminate", args=[session.pk])


@pytest.fixture
def grant(alice):
    return make_grant(alice)


@pytest.fixture
def live_session(grant):
    return make_session(grant)


@pytest.fixture
def ended_session(grant):
    return make_session(
        grant,
        client_address="192.0.2.99",
        ended_at=timezone.now(),
        end_reason=GatewaySession.EndReason.REVOKED,
        end_message="Your grant for pacs01-root was revoked by bob.",
    )


@pytest.fixture
def dave_session(db):
    """Another requester's live session."""
    dave = make_user("dave", "requester")
    return make_session(make_grant(dave, slug="pacs02-root"), client_address="198.51.100.7")


def test_an_approver_terminates_from_the_live_page(client, bob, live_session):
    verified_client(client, bob)
    page = client.get(LIVE)
    assert terminate_url(live_session).encode() in page.content
    response = client.post(
        terminate_url(live_session), {"reason": "vendor done", "back": "live"}, follow=True
    )
    assert response.redirect_chain == [(LIVE, 302)]
    assert b"Termination requested: the gateway closes the session within a few seconds." in response.content
    live_session.refresh_from_db()
    assert live_session.terminate_requested_by == bob and live_session.terminate_reason == "vendor done"
    event = AuditEvent.objects.get(action="session.terminate_requested")
    assert event.actor == bob and event.source_ip == "127.0.0.1"


def test_terminate_from_the_detail_page_goes_back_there(client, pat, live_session):
    verified_client(client, pat)
    response = client.post(terminate_url(live_session), {"reason": "maintenance", "back": "detail"})
    assert response["Location"] == detail_url(live_session)
    live_session.refresh_from_db()
    assert live_session.terminate_requested_by == pat


@pytest.mark.parametrize("persona", ["alice", "carol"])
def test_the_session_user_and_auditors_cannot_terminate(client, request, persona, live_session):
    """Alice owns the session and carol may read it: both are refused with 403, nothing is set."""
    verified_client(client, request.getfixturevalue(persona))
    assert client.get(detail_url(live_session)).status_code == 200
    response = client.post(terminate_url(live_session), {"reason": "because"})
    assert response.status_code == 403
    live_session.refresh_from_db()
    assert live_session.terminate_requested_at is None
    assert not AuditEvent.objects.filter(action="session.terminate_requested").exists()


def test_the_terminate_form_is_shown_only_to_those_who_may_terminate(client, bob, carol, live_session):
    verified_client(client, carol)
    assert terminate_url(live_session).encode() not in client.get(LIVE).content
    assert terminate_url(live_session).encode() not in client.get(detail_url(live_session)).content
    verified_client(client, bob)
    assert terminate_url(live_session).encode() in client.get(detail_url(live_session)).content


def test_terminate_is_post_only(client, bob, live_session):
    verified_client(client, bob)
    assert client.get(terminate_url(live_session)).status_code == 405


def test_an_outsider_gets_404_for_a_session(client, mallory, live_session):
    verified_client(client, mallory)
    assert client.get(detail_url(live_session)).status_code == 404
    assert client.post(terminate_url(live_session), {"reason": "x"}).status_code == 404
    assert client.get(reverse("sessions:detail", args=[999999])).status_code == 404


def test_a_requester_sees_her_own_session_but_not_another_s(client, alice, live_session, dave_session):
    verified_client(client, alice)
    page = client.get(detail_url(live_session))
    assert page.status_code == 200
    assert b"192.0.2.10" in page.content and b"pacs01-root" in page.content
    assert client.get(detail_url(dave_session)).status_code == 404


def test_a_blank_reason_is_shown_as_an_error_and_nothing_is_set(client, bob, live_session):
    verified_client(client, bob)
    response = client.post(terminate_url(live_session), {"reason": "   "}, follow=True)
    assert response.redirect_chain == [(detail_url(live_session), 302)]
    assert b"Not terminated: Give the reason for terminating" in response.content
    live_session.refresh_from_db()
    assert live_session.terminate_requested_at is None


def test_an_ended_session_gets_a_clear_error(client, bob, ended_session):
    verified_client(client, bob)
    response = client.post(terminate_url(ended_session), {"reason": "too late"}, follow=True)
    assert b"This session already ended at" in response.content
    assert b"the grant was revoked" in response.content
    ended_session.refresh_from_db()
    assert ended_session.terminate_requested_at is None


def test_a_second_request_says_who_asked_first(client, bob, pat, live_session):
    verified_client(client, bob)
    client.post(terminate_url(live_session), {"reason": "first"})
    verified_client(client, pat)
    response = client.post(terminate_url(live_session), {"reason": "second"}, follow=True)
    assert b"Termination was already requested by bob" in response.content
    live_session.refresh_from_db()
    assert live_session.terminate_requested_by == bob


def test_the_live_page_lists_live_sessions_only(client, carol, live_session, ended_session, dave_session):
    verified_client(client, carol)
    page = client.get(LIVE)
    assert page.status_code == 200
    shown = [s.pk for s, _ in page.context["rows"]]
    assert sorted(shown) == sorted([live_session.pk, dave_session.pk])
    content = page.content.decode()
    assert "192.0.2.10" in content and "198.51.100.7" in content
    assert "192.0.2.99" not in content
    assert "gw1:1234" in content and "pacs01" in content
    assert live_session.grant.get_absolute_url() in content


def test_a_requester_sees_only_her_own_live_sessions(client, alice, live_session, dave_session):
    verified_client(client, alice)
    page = client.get(LIVE)
    assert [s.pk for s, _ in page.context["rows"]] == [live_session.pk]
    assert b"198.51.100.7" not in page.content


def test_the_nav_link_is_for_approvers_auditors_and_pam_admins(client, alice, bob, carol, pat):
    for user in (bob, carol, pat):
        verified_client(client, user)
        assert f'href="{LIVE}"'.encode() in client.get(reverse("dashboard")).content, user
    verified_client(client, alice)
    assert f'href="{LIVE}"'.encode() not in client.get(reverse("dashboard")).content


def test_the_detail_page_shows_how_it_ended_and_its_recordings(client, carol, ended_session):
    Recording.objects.create(
        session=ended_session,
        channel=0,
        kind=Recording.Kind.TERMINAL,
        path=f"{ended_session.pk}/channel-0.cast",
        size=2048,
        sha256="ab" * 32,
        signature="vault:v1:sig",
        finalized_at=timezone.now(),
    )
    Recording.objects.create(
        session=ended_session,
        kind=Recording.Kind.EVENTS,
        path=f"{ended_session.pk}/events.jsonl",
        size=10,
        finalized_at=timezone.now(),
        interrupted=True,
    )
    verified_client(client, carol)
    page = client.get(detail_url(ended_session))
    content = page.content.decode()
    assert "The grant was revoked" in content
    assert "Your grant for pacs01-root was revoked by bob." in content
    assert "Terminal (asciicast v2)" in content and "2.0\xa0KB" in content and "ab" * 32 in content
    assert "session events" in content and "interrupted" in content
    assert [r.kind for r in page.context["recordings"]] == ["events", "terminal"]


def test_the_pages_have_no_inline_script_or_style(client, bob, live_session):
    """The site's CSP forbids them."""
    verified_client(client, bob)
    for url in (LIVE, detail_url(live_session), live_session.grant.get_absolute_url()):
        content = client.get(url).content.decode().lower()
        inline = re.findall(r"<script(?![^>]*\bsrc=)", content)  # script files (src=) are allowed
        assert not inline and "style=" not in content and "<style" not in content, url


def test_the_grant_page_lists_its_sessions_and_the_holder_s_ssh_command(
    client, alice, grant, live_session, ended_session, settings
):
    settings.GATEWAY_PUBLIC_HOST = "pam-gw.hospital.example"
    settings.GATEWAY_PUBLIC_PORT = 2022
    verified_client(client, alice)
    page = client.get(grant.get_absolute_url())
    content = page.content.decode()
    assert "Gateway sessions" in content
    assert detail_url(live_session) in content and detail_url(ended_session) in content
    assert "The grant was revoked" in content  # the ended one's end reason
    assert "ssh -p 2022 alice:pacs01-root@pam-gw.hospital.example" in content
    assert " -L " not in content


def test_the_ssh_command_is_for_the_holder_only(client, bob, grant, live_session):
    verified_client(client, bob)
    content = client.get(grant.get_absolute_url()).content.decode()
    assert detail_url(live_session) in content
    assert "ssh -p" not in content


def test_the_ssh_command_is_gone_once_the_grant_has_ended(client, alice, grant):
    grant.state = grant.State.REVOKED
    grant.ended_at = timezone.now()
    grant.save()
    verified_client(client, alice)
    content = client.get(grant.get_absolute_url()).content.decode()
    assert "ssh -p" not in content
    assert "No session through the gateway under this grant." in content


def test_a_database_grant_shows_a_port_forward(client, alice, settings):
    settings.GATEWAY_PUBLIC_HOST = "pam-gw.hospital.example"
    settings.GATEWAY_PUBLIC_PORT = 2222
    grant = make_grant(alice, slug="pacsdb01-admin", kind=Account.Kind.DATABASE, port=5433)
    verified_client(client, alice)
    content = client.get(grant.get_absolute_url()).content.decode()
    assert (
        "ssh -p 2222 -N -L 15432:pacs01.hospital.example:5433 alice:pacsdb01-admin@pam-gw.hospital.example"
        in content
    )
