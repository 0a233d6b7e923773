"""Login with password then TOTP, lockouts, replay, backup codes, logout."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from tests.conftest import PASSWORD, make_user
from tests.totp import totp_code

pytestmark = pytest.mark.django_db


def password_step(client, username, password=PASSWORD, next_url=""):
    data = {"username": username, "password": password}
    if next_url:
        data["next"] = next_url
    return client.post(reverse("identity:login"), data)


def device_of(user) -> TOTPDevice:
    return TOTPDevice.objects.get(user=user, confirmed=True)


def actions(**filters) -> list[str]:
    return list(AuditEvent.objects.filter(**filters).order_by("sequence").values_list("action", flat=True))


def test_password_then_totp_reaches_dashboard(client, alice):
    response = password_step(client, "alice")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("identity:verify"))
    # With only the password, every other page sends the user back to the code step.
    assert client.get(reverse("dashboard"))["Location"].startswith(reverse("identity:verify"))

    response = client.post(reverse("identity:verify"), {"code": totp_code(device_of(alice).bin_key)})
    assert response.status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200
    assert actions(actor=alice) == ["auth.login.password_ok", "auth.login.success"]


def test_wrong_password_is_refused_with_a_clear_message_and_audited(client, alice):
    response = password_step(client, "alice", "not the password")
    assert response.status_code == 200
    assert b"username or password is not right" in response.content
    event = AuditEvent.objects.get(action="auth.login.failure")
    assert event.actor_username == "alice"
    assert event.details["reason"] == "bad_password"
    assert "not the password" not in str(event.details)


def test_unknown_user_failure_records_the_reason(client, db):
    password_step(client, "nobody-here", "whatever")
    event = AuditEvent.objects.get(action="auth.login.failure")
    assert event.details["reason"] == "unknown_user"
    assert event.actor is None


def test_inactive_user_cannot_log_in(client, alice):
    alice.is_active = False
    alice.save()
    response = password_step(client, "alice")
    assert response.status_code == 200
    assert AuditEvent.objects.get(action="auth.login.failure").details["reason"] == "inactive"


def test_wrong_code_is_refused_and_audited(client, alice):
    password_step(client, "alice")
    good = totp_code(device_of(alice).bin_key)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    response = client.post(reverse("identity:verify"), {"code": wrong})
    assert response.status_code == 200
    assert b"That code is not right" in response.content
    assert client.get(reverse("dashboard")).status_code == 302
    assert AuditEvent.objects.get(action="auth.mfa.failure").details["reason"] == "wrong_code"


def test_a_code_cannot_be_used_twice(client, alice):
    code = totp_code(device_of(alice).bin_key)
    password_step(client, "alice")
    assert client.post(reverse("identity:verify"), {"code": code}).status_code == 302
    client.post(reverse("identity:logout"))

    password_step(client, "alice")
    response = client.post(reverse("identity:verify"), {"code": code})
    assert response.status_code == 200
    assert b"already been used" in response.content
    assert AuditEvent.objects.filter(action="auth.mfa.failure").last().details["reason"] == "replayed"
    # The next code (tolerance of one step) still works.
    next_code = totp_code(device_of(alice).bin_key, at=time.time() + 30)
    time.sleep(1.1)  # django-otp's throttle after one failure is one second
    assert client.post(reverse("identity:verify"), {"code": next_code}).status_code == 302


def test_repeated_wrong_codes_lock_the_account(client, alice, settings):
    password_step(client, "alice")
    device = device_of(alice)
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        device.refresh_from_db()
        device.throttle_reset()  # skip django-otp's growing delay: it is the lockout we test
        response = client.post(reverse("identity:verify"), {"code": "000000"})
    assert response.status_code == 429
    assert b"temporarily locked" in response.content
    assert "auth.lockout" in actions()
    # Locked: even the right password and a right code do not get in now.
    client.logout()
    response = password_step(client, "alice")
    assert response.status_code == 429
    assert client.get(reverse("dashboard")).status_code == 302


def test_repeated_wrong_passwords_lock_the_account(client, alice, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        response = password_step(client, "alice", "wrong password")
    assert response.status_code == 429
    response = password_step(client, "alice")
    assert response.status_code == 429
    assert b"temporarily locked" in response.content
    assert AuditEvent.objects.filter(action="auth.login.failure", details__reason="locked_out").exists()


def test_backup_code_works_once(client, alice):
    from identity.services import _new_backup_codes

    codes = _new_backup_codes(alice)
    assert len(codes) == 10
    password_step(client, "alice")
    response = client.post(reverse("identity:verify"), {"code": codes[0]})
    assert response.status_code == 302
    assert StaticToken.objects.filter(device__user=alice).count() == 9
    event = AuditEvent.objects.get(action="auth.login.success")
    assert event.details == {"method": "backup_code", "backups_left": 9}
    client.post(reverse("identity:logout"))

    password_step(client, "alice")
    response = client.post(reverse("identity:verify"), {"code": codes[0]})
    assert response.status_code == 200
    assert b"That code is not right" in response.content


def test_session_key_changes_at_password_and_at_code(client, alice):
    client.get(reverse("identity:login"))
    password_step(client, "alice")
    after_password = client.session.session_key
    client.post(reverse("identity:verify"), {"code": totp_code(device_of(alice).bin_key)})
    after_code = client.session.session_key
    assert after_password and after_code and after_password != after_code


def test_next_goes_to_a_local_page_only(client, alice):
    password_step(client, "alice", next_url="https://evil.example/phish")
    response = client.post(
        reverse("identity:verify"),
        {"code": totp_code(device_of(alice).bin_key), "next": "https://evil.example/phish"},
    )
    assert response["Location"] == reverse("dashboard")


def test_next_local_page_is_honoured(client, carol):
    password_step(client, "carol")
    response = client.post(
        reverse("identity:verify"), {"code": totp_code(device_of(carol).bin_key), "next": "/audit/"}
    )
    assert response["Location"] == "/audit/"


def test_logout_needs_post_and_is_audited(client, alice):
    from tests.conftest import verified_client

    verified_client(client, alice)
    assert client.get(reverse("identity:logout")).status_code == 200
    assert client.get(reverse("dashboard")).status_code == 200  # a GET does not sign out
    client.post(reverse("identity:logout"))
    assert client.get(reverse("dashboard")).status_code == 302
    assert actions(actor=alice) == ["auth.logout"]


def test_idle_session_expires(client, alice, settings):
    from tests.conftest import verified_client

    assert settings.SESSION_COOKIE_AGE == settings.SESSION_IDLE_TIMEOUT_MINUTES * 60 == 15 * 60
    assert settings.SESSION_SAVE_EVERY_REQUEST
    verified_client(client, alice)
    session = client.session
    session.set_expiry(-1)  # as if the idle time had passed
    session.save()
    assert client.get(reverse("dashboard")).status_code == 302


def test_every_request_pushes_idle_expiry_forward(client, alice):
    from django.contrib.sessions.models import Session

    from tests.conftest import verified_client

    verified_client(client, alice)
    client.get(reverse("dashboard"))
    first = Session.objects.get(session_key=client.session.session_key).expire_date
    time.sleep(1.1)
    client.get(reverse("dashboard"))
    second = Session.objects.get(session_key=client.session.session_key).expire_date
    assert second > first


def test_deactivated_user_loses_an_open_session(client, alice):
    from tests.conftest import verified_client

    verified_client(client, alice)
    alice.is_active = False
    alice.save()
    assert client.get(reverse("dashboard")).status_code == 302


def test_no_password_or_code_in_the_audit_trail(client, alice):
    code = totp_code(device_of(alice).bin_key)
    password_step(client, "alice", "Wrong-Password-123")
    password_step(client, "alice")
    client.post(reverse("identity:verify"), {"code": code})
    dump = " ".join(str((e.details, e.object_repr, e.actor_username)) for e in AuditEvent.objects.all())
    for secret in (PASSWORD, "Wrong-Password-123", code, device_of(alice).key):
        assert secret not in dump


def test_make_user_helper_without_totp_goes_to_enrolment(client, db):
    make_user("newbie", "requester", totp=False)
    response = password_step(client, "newbie")
    assert response["Location"].startswith(reverse("identity:enrol"))
