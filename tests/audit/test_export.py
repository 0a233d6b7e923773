"""Exporting the audit trail: CSV and JSON lines, filters, streaming, formula injection, who may."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import warnings

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit import export
from audit.export import csv_safe
from audit.formats import EXPORT_FIELDS
from audit.hashing import event_hash
from audit.models import AuditEvent
from audit.selectors import AuditEventFilters, audit_events_export_for
from audit.services import audit_record
from tests.audit.conftest import record_events
from tests.conftest import verified_client

CSV_URL = reverse("audit:export_csv")
JSONL_URL = reverse("audit:export_jsonl")


@pytest.fixture
def auditor(client, carol):
    return verified_client(client, carol)


@pytest.fixture
def mixed_events(alice, bob):
    audit_record(action="auth.login.success", actor=alice, source_ip="192.0.2.10")
    audit_record(action="auth.login.success", actor=bob, source_ip="2001:db8::7")
    audit_record(
        action="access.request.approved",
        actor=bob,
        obj=alice,
        details={"comment": "ok, «urgent»", "nested": {"list": [1, 2]}},
    )
    audit_record(action="auth.login.failure", actor_username="ghost", source_ip="203.0.113.9")
    return list(AuditEvent.objects.order_by("sequence"))


def body(response) -> str:
    return b"".join(response.streaming_content).decode("utf-8")


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body(response))))


def jsonl_rows(response) -> list[dict]:
    return [json.loads(line) for line in body(response).splitlines()]


def test_csv_holds_every_event_oldest_first_with_its_hashes(auditor, mixed_events):
    response = auditor.get(CSV_URL)

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="pamsite-audit-')
    assert response["Content-Disposition"].endswith('.csv"')
    text = body(response)
    assert text.splitlines()[0] == ",".join(EXPORT_FIELDS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(row["sequence"]) for row in rows] == [1, 2, 3, 4]
    approved = rows[2]
    event = mixed_events[2]
    assert approved["time"] == event.created_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert approved["actor"] == "bob"
    assert approved["action"] == "access.request.approved"
    assert (approved["object_type"], approved["object_repr"]) == ("identity.user", "alice")
    assert json.loads(approved["details"]) == {"comment": "ok, «urgent»", "nested": {"list": [1, 2]}}
    assert (approved["prev_hash"], approved["hash"]) == (event.prev_hash, event.hash)
    assert rows[1]["source_ip"] == "2001:db8::7"
    assert rows[3]["actor_id"] == ""


def test_jsonl_rows_can_be_checked_against_the_hash_chain(auditor, mixed_events):
    response = auditor.get(JSONL_URL)

    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    rows = jsonl_rows(response)
    assert [row["sequence"] for row in rows] == [1, 2, 3, 4]
    previous = "0" * 64
    for row in rows:
        assert row["prev_hash"] == previous
        values = {
            **row,
            "created_at": dt.datetime.fromisoformat(row["time"].replace("Z", "+00:00")),
            "actor_username": row["actor"],
        }
        assert event_hash(values) == row["hash"]
        previous = row["hash"]


def test_the_export_follows_the_filters_and_ignores_the_page_cursor(auditor, mixed_events):
    rows = jsonl_rows(auditor.get(JSONL_URL, {"actor": "bob", "action": "auth.", "before": "2"}))
    assert [row["sequence"] for row in rows] == [2]
    rows = csv_rows(auditor.get(CSV_URL, {"action": "auth.login*"}))
    assert [int(row["sequence"]) for row in rows] == [1, 2, 4]


def test_the_export_is_audited_with_its_filters_and_format_and_excludes_itself(auditor, carol, mixed_events):
    rows = jsonl_rows(auditor.get(JSONL_URL, {"actor": "bob"}))
    rows_all = csv_rows(auditor.get(CSV_URL))

    exported = list(AuditEvent.objects.filter(action="audit.exported").order_by("sequence"))
    assert [e.details for e in exported] == [
        {"filters": {"actor": "bob"}, "format": "jsonl"},
        {"filters": {}, "format": "csv"},
    ]
    assert exported[0].actor == carol
    assert len(rows) == 2
    # The second export holds the first export's event, not its own.
    assert [int(row["sequence"]) for row in rows_all] == [1, 2, 3, 4, exported[0].sequence]


def test_cells_a_spreadsheet_would_run_are_escaped(auditor, db):
    hostile = ['=HYPERLINK("http://evil")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
    for value in hostile:
        audit_record(action="auth.login.failure", actor_username=value, object_repr=value)
    audit_record(action="auth.login.failure", actor_username="plain-name", object_repr="a=b")

    rows = csv_rows(auditor.get(CSV_URL, {"action": "auth.login.failure"}))

    assert [row["actor"] for row in rows] == ["'" + value for value in hostile] + ["plain-name"]
    assert [row["object_repr"] for row in rows] == ["'" + value for value in hostile] + ["a=b"]
    # JSON lines are data, not a spreadsheet: kept exactly.
    assert [row["actor"] for row in jsonl_rows(auditor.get(JSONL_URL, {"action": "auth.login.failure"}))][
        :6
    ] == hostile


def test_csv_safe_leaves_numbers_and_ordinary_text_alone():
    assert csv_safe(5) == 5
    assert csv_safe(None) == ""
    assert csv_safe("alice") == "alice"
    assert csv_safe('{"a": 1}') == '{"a": 1}'
    assert csv_safe("-") == "'-"


def test_the_export_is_streamed_in_keyset_batches(auditor, db, monkeypatch):
    record_events(25)
    monkeypatch.setattr(export, "EXPORT_BATCH_SIZE", 10)

    response = auditor.get(JSONL_URL)
    chunks = iter(response.streaming_content)
    with CaptureQueriesContext(connection) as first:
        first_chunk = next(chunks)
    with CaptureQueriesContext(connection) as rest:
        remaining = list(chunks)

    assert len(first_chunk.splitlines()) == 10
    assert [len(chunk.splitlines()) for chunk in remaining] == [10, 5]
    # One query per batch, each bounded by LIMIT and starting after the last sequence sent.
    selects = [
        q["sql"] for q in first.captured_queries + rest.captured_queries if "audit_auditevent" in q["sql"]
    ]
    assert len(selects) == 3
    assert all("LIMIT 10" in sql for sql in selects)
    assert '"sequence" > 10' in selects[1] and '"sequence" > 20' in selects[2]


def test_under_asgi_the_export_streams_without_collecting_the_rows_first(carol, db, monkeypatch):
    record_events(12)
    monkeypatch.setattr(export, "EXPORT_BATCH_SIZE", 5)
    client = AsyncClient()
    client.force_login(carol)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=carol).persistent_id
    session.save()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Django warns when it must collect a sync iterator
        response = async_to_sync(client.get)(CSV_URL)

        async def collect():
            return [chunk async for chunk in response.streaming_content]

        chunks = async_to_sync(collect)()
    assert response.status_code == 200
    assert response.is_async
    assert len(chunks) == 4  # header, then batches of 5, 5 and 2
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert [int(row["sequence"]) for row in rows] == list(range(1, 13))


@pytest.mark.parametrize("url", [CSV_URL, JSONL_URL])
@pytest.mark.parametrize("persona", ["alice", "bob", "pat", "mallory"])
def test_only_auditors_may_export(client, persona, url, request, mixed_events):
    user = request.getfixturevalue(persona)
    response = verified_client(client, user).get(url)
    assert response.status_code == 403
    assert b"ghost" not in response.content
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_the_selector_refuses_a_non_auditor_at_once(alice, db):
    with pytest.raises(PermissionDenied):
        audit_events_export_for(user=alice, filters=AuditEventFilters(), through_sequence=10)


def test_bad_filters_are_refused_and_not_exported(auditor, mixed_events):
    response = auditor.get(CSV_URL, {"action": "AUTH;DROP"})
    assert response.status_code == 400
    assert b"These filters cannot be used: action:" in response.content
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_the_export_must_be_a_get(auditor, mixed_events):
    assert auditor.post(CSV_URL).status_code == 405
    assert auditor.head(CSV_URL).status_code == 405


def test_the_audit_page_links_to_both_exports_with_the_filters(auditor, mixed_events):
    page = auditor.get(reverse("audit:events"), {"actor": "bob", "action": "auth."}).content.decode()
    assert f'href="{CSV_URL}?actor=bob&amp;action=auth."' in page
    assert f'href="{JSONL_URL}?actor=bob&amp;action=auth."' in page
    assert "Export CSV" in page and "Export JSON lines" in page
