"""Bad query parameters on every list, filter and export page: never a 500.

Hypothesis sends each page's own parameters (and unknown ones) with malformed and
out-of-range dates, a range that ends before it starts, negative, huge and non-numeric
pages and cursors, unknown choices, huge strings, NUL and other control characters. The
answer is the page with its form's errors shown, or the page as if the parameter were not
there (a sensible default); an export answers 400 with a message saying which filter is
wrong. Nothing secret is ever in the answer.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from audit.services import audit_record
from recordings.models import GatewaySession
from tests.badinput.helpers import BADINPUT, FEW, NUMBERS, assert_clear_answer, body_of, hostile, rolled_back

pytestmark = pytest.mark.django_db

DATES = st.one_of(
    st.sampled_from(
        [
            "2025-01-31T09:30",
            "2025-01-31",
            "2025-02-30T10:00",
            "2025-13-01",
            "0001-01-01T00:00",
            "9999-12-31T23:59",
            "1969-12-31T23:59",
            "10000-01-01",
            "2025-01-31T25:61",
            "31/01/2025",
            "yesterday",
            "2025-01-31T09:30:00.999999999",
            "2025-01-31T09:30+02:00",
            "-2025-01-01",
        ]
    ),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M")),
)
PAGES = st.one_of(NUMBERS, st.sampled_from(["-1", str(10**20), "abc", "last", "1.5", "", "0"]))


def params(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict]:
    """A query: some of the page's own parameters, maybe an unknown one, each maybe repeated."""
    unknown = {"utm_source": hostile(), "o": hostile("1", "-2"), "format": hostile("json")}
    everything = {**fields, **unknown}

    def one(strategy):
        return st.one_of(strategy, st.lists(strategy, min_size=2, max_size=2))

    return st.dictionaries(
        st.sampled_from(sorted(everything)), st.just(None), max_size=len(everything)
    ).flatmap(lambda keys: st.fixed_dictionaries({k: one(everything[k]) for k in keys}))


@pytest.fixture
def history(db, alice, bob):
    """A few audit events and sessions, so the pages have rows to show and page through."""
    for i in range(5):
        audit_record(action="auth.login.success", actor=alice, details={"n": i})
    now = timezone.now()
    for i in range(3):
        GatewaySession.objects.create(
            user=alice,
            account="pacs01-root",
            client_address="192.0.2.7",
            started_at=now - timedelta(hours=i + 1),
            ended_at=now - timedelta(hours=i) if i else None,
            end_reason="closed" if i else "",
        )


AUDIT_FIELDS = {
    "actor": hostile("alice", "bob"),
    "action": hostile("auth.login.success", "auth.", "auth.login*", "auth.*.x"),
    "since": st.one_of(DATES, hostile()),
    "until": st.one_of(DATES, hostile()),
    "before": st.one_of(PAGES, hostile("3")),
    "after": st.one_of(PAGES, hostile("1")),
}


@BADINPUT
@given(params(AUDIT_FIELDS))
def test_audit_trail_answers_any_query_with_the_page_or_its_errors(carol_client, history, query):
    with rolled_back():
        response = carol_client.get(reverse("audit:events"), query)
        assert_clear_answer(response, allowed=(200,))
        form = response.context["form"]
        assert form.is_valid() == (response.context["page"] is not None)


@BADINPUT
@given(params(AUDIT_FIELDS), st.sampled_from(["audit:export_csv", "audit:export_jsonl"]))
def test_audit_exports_answer_any_query_with_the_file_or_a_400_that_says_why(
    carol_client, history, query, name
):
    with rolled_back():
        response = carol_client.get(reverse(name), query)
        body = assert_clear_answer(response, allowed=(200, 400), need_reason=False)
        if response.status_code == 400:
            assert body.startswith("These filters cannot be used: ")
            assert response["Content-Type"].startswith("text/plain")
        else:
            assert response["Content-Disposition"].startswith("attachment;")


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"since": "2025-02-01T00:00", "until": "2025-01-01T00:00"}, "must be after its start"),
        ({"since": "2025-01-01T00:00", "until": "2025-01-01T00:00"}, "must be after its start"),
        ({"since": "2025-02-30T10:00"}, "Enter a valid date/time"),
        ({"since": "0001-01-01T00:00"}, "between the years"),
        ({"until": "9999-12-31T23:59"}, "between the years"),
        ({"before": "-1"}, "greater than or equal to 1"),
        ({"before": str(10**20)}, "less than or equal to"),
        ({"after": "abc"}, "whole number"),
        ({"before": "3", "after": "1"}, "either before or after"),
        ({"action": "AUTH.LOGIN"}, "lower-case letters"),
        ({"action": "auth.*.x"}, "may only end a prefix"),
        ({"actor": "a" * 151}, "at most 150"),
        ({"actor": "al\x00ice"}, "Null characters"),
    ],
)
def test_bad_audit_filters_are_named_on_the_page_and_in_the_export(carol_client, history, query, says):
    page = carol_client.get(reverse("audit:events"), query)
    assert page.status_code == 200 and page.context["page"] is None
    assert says in body_of(page)
    export = carol_client.get(reverse("audit:export_csv"), query)
    assert export.status_code == 400
    assert says in body_of(export)


SEARCH_FIELDS = {
    "q": hostile(
        "rm",
        "dcm*",
        '"rm -rf /var/pacs"',
        "/var/pacs/archive",
        "pacs01:104",
        '"',
        "*",
        "NEAR(",
        "a OR b",
        "col:x",
        "^x",
        "-x",
        "x AND",
        '"unterminated',
    ),
    "user": hostile("alice"),
    "target": hostile("pacs01"),
    "account": hostile("pacs01-root"),
    "grant": st.one_of(PAGES, hostile("1")),
    "since": st.one_of(DATES, hostile()),
    "until": st.one_of(DATES, hostile()),
    "end_reason": hostile("", "live", "closed", "terminated", "bogus"),
    "before": st.one_of(PAGES, hostile()),
    "after": st.one_of(PAGES, hostile()),
}


@BADINPUT
@given(params(SEARCH_FIELDS))
def test_session_search_answers_any_query_with_the_page_or_its_errors(bob_client, history, query):
    with rolled_back():
        response = bob_client.get(reverse("sessions:search"), query)
        assert_clear_answer(response, allowed=(200,))
        form = response.context["form"]
        assert form.is_valid() == (response.context["page"] is not None)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"since": "2025-02-01T00:00", "until": "2025-01-01T00:00"}, "must be after its start"),
        ({"grant": "-1"}, "greater than or equal to 1"),
        ({"grant": str(10**20)}, "less than or equal to"),
        ({"end_reason": "bogus"}, "not one of the available choices"),
        ({"q": "   "}, ""),  # blank: no filter, the newest sessions
        ({"q": '""'}, "Type a word or some text"),
        ({"q": "x" * 501}, "at most 500"),
        ({"before": "1", "after": "1"}, "either before or after"),
    ],
)
def test_bad_session_filters_are_named_on_the_page(bob_client, history, query, says):
    response = bob_client.get(reverse("sessions:search"), query)
    assert response.status_code == 200
    assert says in body_of(response)
    assert_clear_answer(response, allowed=(200,))


LISTS = [
    ("access:mine", "alice_client", {}),
    ("access:approvals", "bob_client", {}),
    ("access:targets", "pat_client", {}),
    ("access:request_new", "alice_client", {"account": hostile("pacs01-ssh-ca")}),
    ("sessions:live", "bob_client", {}),
    ("identity:users", "pat_client", {"page": PAGES}),
    ("identity:directory", "pat_client", {}),
    ("identity:account", "alice_client", {}),
    ("status", "pat_client", {}),
    ("dashboard", "carol_client", {}),
]


@FEW
@given(st.data())
@pytest.mark.parametrize(("name", "persona", "fields"), LISTS, ids=[n for n, _, _ in LISTS])
def test_other_pages_ignore_or_default_any_query(
    request, history, ticket_policy, no_vault, name, persona, fields, data
):
    client = request.getfixturevalue(persona)
    query = data.draw(params(fields))
    with rolled_back():
        response = client.get(reverse(name), query)
        assert_clear_answer(response, allowed=(200,), need_reason=False)


@pytest.mark.parametrize("page", ["-1", str(10**20), "abc", "", "0", "1.5", "\x00", "9" * 5000])
def test_the_user_list_shows_a_sensible_page_for_any_page_number(pat_client, history, page):
    response = pat_client.get(reverse("identity:users"), {"page": page})
    assert response.status_code == 200
    assert response.context["page"].number >= 1


RAW_QUERIES = [
    "since=%ff%fe&until=%c0%80",
    "actor=%00&action=%00",
    "before=%2d1",
    "actor=%",
    "actor=%zz",
    "=&==&&&",
    "actor=" + "%e2%82" * 100,
    "since=2025-01-01T00%3A00&since=2025-02-01T00%3A00",
]


@pytest.mark.parametrize("raw", RAW_QUERIES)
@pytest.mark.parametrize("name", ["audit:events", "audit:export_jsonl", "sessions:search"])
def test_raw_undecodable_query_strings_are_answered(carol_client, history, raw, name):
    response = carol_client.get(reverse(name) + "?" + raw)
    assert_clear_answer(response, allowed=(200, 400), need_reason=False)


ADMIN_LISTS = [
    "admin:access_target_changelist",
    "admin:access_account_changelist",
    "admin:access_accesspolicy_changelist",
    "admin:identity_user_changelist",
    "admin:identity_directorysyncrun_changelist",
    "admin:recordings_gatewaysession_changelist",
]


@FEW
@given(
    st.sampled_from(ADMIN_LISTS),
    params(
        {
            "q": hostile("pacs", "alice"),
            "p": PAGES,
            "o": hostile("1", "-1", "1.2", "99"),
            "kind__exact": hostile("pacs", "ssh-ca"),
            "is_active__exact": hostile("1", "0"),
            "source__exact": hostile("ldap"),
            "all": hostile(""),
        }
    ),
)
def test_configuration_lists_answer_any_query(pat_client, history, target, name, query):
    with rolled_back():
        response = pat_client.get(reverse(name), query)
        # The admin sends unknown filters back to the list with ?e=1 (a redirect).
        assert_clear_answer(response, allowed=(200, 302), need_reason=False)
