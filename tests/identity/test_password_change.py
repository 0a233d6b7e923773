"""A local user changes her own password on My account: the current one first (a wrong one
counts like a wrong password at sign-in), Django's validators, her other web sessions end."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from identity.models import LoginFailure, User
from tests.conftest import PASSWORD, make_user, verified_client

pytestmark = pytest.mark.django_db

URL = reverse("identity:password_change")
NEW = "a brand new long password 31"


def change(client, current=PASSWORD, new=NEW, again=None):
    return client.post(URL, {"password": current, "new_password1": new, "new_password2": again or new})


def test_a_wrong_current_password_is_refused_and_counted_like_a_wrong_sign_in(client, alice):
    verified_client(client, alice)
    response = change(client, current="not my password")
    assert response.status_code == 400
    assert b"current password is not right" in response.content
    assert User.objects.get(pk=alice.pk).check_password(PASSWORD)
    assert LoginFailure.objects.filter(username="alice").count() == 1
    event = AuditEvent.objects.get(action="identity.user.password_change_failed")
    assert event.actor == alice and event.details == {"reason": "bad_password"}


def test_wrong_current_passwords_lock_her_out_as_at_sign_in(client, alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    verified_client(client, alice)
    for _ in range(2):
        assert change(client, current="guess").status_code == 400
    locked = change(client, current="guess")
    assert locked.status_code == 429  # the lockout page; she is signed out
    assert client.get(reverse("dashboard"))["Location"].startswith(reverse("identity:login"))


def test_a_weak_password_is_refused_with_djangos_message(client, alice):
    verified_client(client, alice)
    short = change(client, new="alice12")
    assert short.status_code == 400 and b"This password is too short" in short.content
    common = change(client, new="password1234")
    assert common.status_code == 400 and b"This password is too common" in common.content
    mismatch = change(client, again=NEW + "!")
    assert mismatch.status_code == 400 and b"not the same" in mismatch.content
    assert User.objects.get(pk=alice.pk).check_password(PASSWORD)
    assert not AuditEvent.objects.filter(action="identity.user.password_changed").exists()


def test_a_change_ends_her_other_sessions_and_keeps_this_one(client, alice):
    other = verified_client(Client(), alice)
    assert other.get(reverse("dashboard")).status_code == 200
    verified_client(client, alice)
    response = change(client)
    assert response.status_code == 302 and response["Location"] == reverse("identity:account") + "#password"
    assert User.objects.get(pk=alice.pk).check_password(NEW)
    assert client.get(reverse("dashboard")).status_code == 200  # this session stays
    assert other.get(reverse("dashboard"))["Location"].startswith(reverse("identity:login"))
    event = AuditEvent.objects.get(action="identity.user.password_changed")
    assert event.actor == alice and event.details == {"by": "self", "web_sessions_ended": 1}
    assert NEW not in str(event.details) and PASSWORD not in str(event.details)


def test_a_directory_user_is_told_her_password_is_the_directorys(client):
    lena = make_user("lena", "requester", source=User.Source.LDAP)
    verified_client(client, lena)
    page = client.get(reverse("identity:account"))
    assert b"Your password is the directory" in page.content
    assert b'name="new_password1"' not in page.content
    response = change(client)
    assert response.status_code == 400 and b"directory" in response.content
    assert User.objects.get(pk=lena.pk).check_password(PASSWORD)


def test_the_account_page_offers_the_change_to_a_local_user(client, alice):
    verified_client(client, alice)
    page = client.get(reverse("identity:account"))
    assert b'id="password"' in page.content and b'name="new_password1"' in page.content
