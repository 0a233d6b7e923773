"""The Django admin shows audit events read-only, even to a superuser."""

from __future__ import annotations

import pytest
from django.urls import reverse

from audit.services import audit_record
from tests.conftest import make_user, verified_client


@pytest.fixture
def admin_client(client, db):
    root = make_user("root", "pam-admin", is_staff=True, is_superuser=True)
    return verified_client(client, root)


def test_the_admin_lists_and_shows_events(admin_client):
    event = audit_record(action="auth.login.success", actor_username="alice")
    assert admin_client.get(reverse("admin:audit_auditevent_changelist")).status_code == 200
    response = admin_client.get(reverse("admin:audit_auditevent_change", args=[event.pk]))
    assert response.status_code == 200
    assert b'name="_save"' not in response.content


def test_the_admin_cannot_add_change_or_delete_events(admin_client):
    event = audit_record(action="auth.login.success", actor_username="alice")
    assert admin_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    change = reverse("admin:audit_auditevent_change", args=[event.pk])
    assert admin_client.post(change, {"action": "auth.logout"}).status_code == 403
    delete = reverse("admin:audit_auditevent_delete", args=[event.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.action == "auth.login.success"
