"""The audit trail has no page in the Django admin, not even for a superuser: it is read on the
auditors' pages, where every reading is recorded."""

from __future__ import annotations

import pytest
from django.contrib import admin

from audit.models import AuditEvent
from audit.services import audit_record
from tests.conftest import make_user, verified_client


@pytest.fixture
def admin_client(client, db):
    root = make_user("root", "pam-admin", is_staff=True, is_superuser=True)
    return verified_client(client, root)


def test_the_audit_trail_is_not_registered_in_the_admin():
    assert not admin.site.is_registered(AuditEvent)


def test_a_superuser_cannot_read_or_change_events_through_the_admin(admin_client):
    event = audit_record(action="auth.login.success", actor_username="alice")
    for url in (
        "/admin/audit/auditevent/",
        f"/admin/audit/auditevent/{event.pk}/change/",
        f"/admin/audit/auditevent/{event.pk}/delete/",
    ):
        assert admin_client.get(url).status_code == 404, url
    assert (
        admin_client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 404
    )
    event.refresh_from_db()
    assert event.action == "auth.login.success"
