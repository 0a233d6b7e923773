"""The auditor's page: who may see it, filters, keyset pages, bad input, and the verify button."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_record
from tests.audit.conftest import record_events, tamper
from tests.conftest import verified_client

URL = reverse("audit:events")
VERIFY_URL = reverse("audit:verify")


def shown_sequences(response) -> list[int]:
    return [event.sequence for event in response.context["page"].events]


@pytest.fixture
def auditor(client, carol):
    return verified_client(client, carol)


@pytest.fixture
def mixed_events(alice, bob):
    """Logins by alice and bob, an approval by bob, and a failed login for a username that does not exist."""
    audit_record(action="auth.login.success", actor=alice, source_ip="192.0.2.10")
    audit_record(action="auth.login.success", actor=bob)
    audit_record(action="access.request.approved", actor=bob, obj=alice, details={"comment": "ok"})
    audit_record(action="auth.login.failure", actor_username="ghost", source_ip="203.0.113.9")
    return list(AuditEvent.objects.order_by("sequence"))


def test_an_auditor_sees_the_events_newest_first(auditor, mixed_events):
    response = auditor.get(URL)
    assert response.status_code == 200
    assert shown_sequences(response) == [4, 3, 2, 1]
    content = response.content.decode()
    assert "access.request.approved" in content
    assert "ghost" in content
    assert "203.0.113.9" in content


@pytest.mark.parametrize("persona", ["alice", "bob", "pat", "mallory"])
def test_everyone_but_auditors_is_refused(client, persona, request, mixed_events):
    user = request.getfixturevalue(persona)
    response = verified_client(client, user).get(URL)
    assert response.status_code == 403
    assert b"ghost" not in response.content


@pytest.mark.parametrize("persona", ["alice", "pat"])
def test_everyone_but_auditors_is_refused_even_with_bad_filters(db, client, persona, request):
    user = request.getfixturevalue(persona)
    assert verified_client(client, user).get(URL, {"before": "x"}).status_code == 403


def test_a_signed_out_visitor_is_sent_to_log_in(client, mixed_events):
    response = client.get(URL)
    assert response.status_code == 302
    assert response.url.startswith(reverse("identity:login"))


def test_the_actor_filter_is_exact(auditor, mixed_events):
    assert shown_sequences(auditor.get(URL, {"actor": "bob"})) == [3, 2]
    assert shown_sequences(auditor.get(URL, {"actor": "bo"})) == []
    assert shown_sequences(auditor.get(URL, {"actor": "ghost"})) == [4]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("auth.login.success", [2, 1]),
        ("auth.", [4, 2, 1]),
        ("auth.login*", [4, 2, 1]),
        ("access.", [3]),
        ("auth", []),  # neither exact nor a prefix
    ],
)
def test_the_action_filter_is_exact_or_a_prefix(auditor, mixed_events, action, expected):
    assert shown_sequences(auditor.get(URL, {"action": action})) == expected


def test_the_time_range_includes_its_start_and_excludes_its_end(auditor, db):
    times = [timezone.now() - dt.timedelta(hours=h) for h in (3, 2, 1)]
    for when in times:
        event = audit_record(action="auth.login.success", actor_username="alice")
        # Backdate through the attacker's door: the page filters on stored times.
        tamper("UPDATE audit_auditevent SET created_at = %s WHERE sequence = %s", [when, event.sequence])
    fmt = "%Y-%m-%dT%H:%M:%S.%f"
    local = [timezone.localtime(t) for t in times]
    response = auditor.get(URL, {"since": local[0].strftime(fmt), "until": local[2].strftime(fmt)})
    assert shown_sequences(response) == [2, 1]
    response = auditor.get(URL, {"since": local[1].strftime(fmt), "action": "auth."})
    assert shown_sequences(response) == [3, 2]


def test_filters_combine(auditor, mixed_events):
    since = timezone.localtime(mixed_events[0].created_at - dt.timedelta(minutes=1)).strftime(
        "%Y-%m-%dT%H:%M"
    )
    assert shown_sequences(auditor.get(URL, {"actor": "bob", "action": "auth.", "since": since})) == [2]


def follow(client, response, rel: str):
    match = re.search(rf'href="\?([^"]*)" rel="{rel}"', response.content.decode())
    return client.get(URL + "?" + match.group(1).replace("&amp;", "&")) if match else None


def test_keyset_pages_go_through_every_event_once_each_way(auditor, db, settings):
    settings.AUDIT_PAGE_SIZE = 10
    record_events(25)
    expected = list(range(25, 0, -1))

    seen, pages = [], []
    response = auditor.get(URL)
    while response is not None:
        pages.append(shown_sequences(response))
        seen.extend(pages[-1])
        response = follow(auditor, response, "next")
    # The page views themselves were recorded after the first page was read: not on it.
    assert seen == expected
    assert [len(p) for p in pages] == [10, 10, 5]

    back = []
    response = auditor.get(URL, {"before": 6})
    while response is not None:
        back = shown_sequences(response) + back
        response = follow(auditor, response, "prev")
    # Going back up reaches the page views recorded meanwhile too, each once.
    assert back == list(range(max(back), 0, -1))
    assert len(back) == len(set(back))


def test_pages_keep_the_filters(auditor, db, settings):
    settings.AUDIT_PAGE_SIZE = 10
    record_events(12, actor_username="alice")
    record_events(12, actor_username="bob")
    first = auditor.get(URL, {"actor": "alice"})
    second = follow(auditor, first, "next")
    assert shown_sequences(first) == list(range(12, 2, -1))
    assert shown_sequences(second) == [2, 1]


def test_a_page_does_not_count_the_table(auditor, db, settings):
    settings.AUDIT_PAGE_SIZE = 10
    record_events(30)
    with CaptureQueriesContext(connection) as queries:
        response = auditor.get(URL, {"before": 20, "action": "auth."})
    assert shown_sequences(response) == list(range(19, 9, -1))
    assert not [q for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]


@pytest.mark.parametrize(
    "query",
    [
        {"before": "abc"},
        {"after": "1.5"},
        {"before": "-3"},
        {"before": str(2**70)},
        {"before": "5", "after": "2"},
        {"since": "yesterday"},
        {"until": "2025-13-45T99:99"},
        {"since": "0001-01-01T00:00"},
        {"since": "2025-02-01T00:00", "until": "2025-01-01T00:00"},
        {"actor": "a" * 151},
        {"action": "x" * 101},
        {"action": "auth.%"},
        {"action": "a*b"},
        {"actor": "nul\x00byte"},
    ],
)
def test_bad_filters_give_an_error_message_not_a_500(auditor, query):
    response = auditor.get(URL, query)
    assert response.status_code == 200
    assert response.context["form"].errors
    assert response.context["page"] is None
    assert b"These filters cannot be used" in response.content


def test_each_page_view_is_recorded_with_its_filters(auditor, carol, mixed_events):
    auditor.get(URL, {"actor": "bob", "action": "auth."})
    event = AuditEvent.objects.order_by("-sequence").first()
    assert event.action == "audit.viewed"
    assert event.actor == carol
    assert event.details == {"filters": {"actor": "bob", "action": "auth."}, "events_shown": 1}


def test_a_page_with_bad_filters_shows_and_records_nothing(auditor, mixed_events):
    auditor.get(URL, {"before": "abc"})
    assert not AuditEvent.objects.filter(action="audit.viewed").exists()


def test_the_verify_button_reports_an_intact_chain(auditor, carol, mixed_events):
    response = auditor.post(VERIFY_URL, follow=True)
    assert response.status_code == 200
    assert b"Audit trail intact: 4 events, last sequence 4" in response.content
    verified = AuditEvent.objects.get(action="audit.verified")
    assert verified.actor == carol
    assert verified.details["ok"] is True


def test_the_verify_button_reports_the_first_bad_event(auditor, mixed_events):
    tamper("UPDATE audit_auditevent SET actor_username = 'nobody' WHERE sequence = 2")
    response = auditor.post(VERIFY_URL, follow=True)
    assert b"Audit trail broken at sequence 2" in response.content
    assert AuditEvent.objects.get(action="audit.verified").details["first_bad_sequence"] == 2


def test_verifying_needs_a_post_with_a_csrf_token(carol, mixed_events):
    client = verified_client(Client(enforce_csrf_checks=True), carol)
    assert client.get(VERIFY_URL).status_code == 405
    assert client.post(VERIFY_URL).status_code == 403
    assert not AuditEvent.objects.filter(action="audit.verified").exists()


@pytest.mark.parametrize("persona", ["alice", "bob", "pat", "mallory"])
def test_only_auditors_may_verify(client, persona, request, mixed_events):
    user = request.getfixturevalue(persona)
    assert verified_client(client, user).post(VERIFY_URL).status_code == 403
    assert not AuditEvent.objects.filter(action="audit.verified").exists()


def test_the_page_has_no_inline_script_or_style(auditor, mixed_events):
    content = auditor.get(URL).content.decode()
    assert not re.findall(r"<script(?![^>]*\bsrc=)", content)  # script files (src=) are allowed
    assert "style=" not in content
    assert "<style" not in content
