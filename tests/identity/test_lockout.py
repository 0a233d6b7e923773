"""Sign-in lockouts on the web (identity.lockout): per username, per address only for spraying,
throttled codes never counted, until when, unlocking by a pam-admin; the enrolment's throttle."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from identity import lockout
from identity.models import LoginFailure, LoginLock
from tests.conftest import PASSWORD, make_user, verified_client
from tests.totp import key_from_base32, totp_code

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
SPRAYER = "203.0.113.9"


def device_of(user) -> TOTPDevice:
    return TOTPDevice.objects.get(user=user, confirmed=True)


def wrong_code(user) -> str:
    good = totp_code(device_of(user).bin_key)
    return f"{(int(good) + 500_000) % 1_000_000:06d}"


def right_code(user) -> str:
    return totp_code(device_of(user).bin_key)


def unthrottle(user) -> None:
    """What waiting out django-otp's growing delay would do (the tests do not sleep)."""
    device_of(user).throttle_reset()


def password_step(client, username, password=PASSWORD):
    return client.post(reverse("identity:login"), {"username": username, "password": password})


def code_step(client, code):
    return client.post(reverse("identity:verify"), {"code": code})


def text(response) -> str:
    """The page's text with its line breaks and indents as single spaces."""
    return " ".join(response.content.decode().split())


def last(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("sequence").last()


def signs_in(client, user) -> bool:
    """Both factors from this client, the way a person does it."""
    response = password_step(client, user.username)
    if response.status_code != 302 or not response["Location"].startswith(reverse("identity:verify")):
        return False
    unthrottle(user)
    # A code works once; a test signs in more often than every 30 s.
    TOTPDevice.objects.filter(user=user).update(last_t=-1)
    return code_step(client, right_code(user)).status_code == 302


def expected_until(moment: datetime, zone: str) -> str:
    """The lock's end as the page must say it: the next whole minute, in the site's zone."""
    whole = moment.replace(second=0, microsecond=0)
    if whole != moment:
        whole += timedelta(minutes=1)
    local = whole.astimezone(ZoneInfo(zone))
    today = datetime.now(ZoneInfo(zone)).date()
    day = "" if local.date() == today else f"{local:%Y-%m-%d} "
    return f"{day}{local:%H:%M} {local.tzname()}"


# --- One user's failures lock only that user -----------------------------------------------


def test_five_wrong_codes_for_one_user_do_not_lock_another_user_on_the_same_address(alice, bob, settings):
    """The incident: one person's wrong codes at a shared address locked a colleague out."""
    alices, bobs = Client(REMOTE_ADDR="127.0.0.1"), Client(REMOTE_ADDR="127.0.0.1")
    assert password_step(alices, "alice").status_code == 302
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        unthrottle(alice)
        response = code_step(alices, wrong_code(alice))
    assert response.status_code == 429
    assert "sign-in as alice is locked until <strong>" in text(response)
    assert lockout.locked_usernames(["alice", "bob"]).keys() == {"alice"}
    # Bob, at the same address, with his right password and code, signs in.
    assert signs_in(bobs, bob)
    assert bobs.get(reverse("dashboard")).status_code == 200
    assert not LoginLock.objects.filter(scope="address", locked_until__isnull=False).exists()


def test_one_users_failures_alone_never_lock_the_address(alice, bob, settings):
    settings.LOGIN_FAILURE_LIMIT = 100
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 5
    settings.LOGIN_ADDRESS_USERNAMES = 2
    client = Client(REMOTE_ADDR=SPRAYER)
    for _ in range(20):
        assert password_step(client, "alice", "wrong password").status_code == 200
    assert LoginFailure.objects.filter(address=SPRAYER).count() == 20
    assert not LoginLock.objects.filter(scope="address", locked_until__isnull=False).exists()
    assert signs_in(Client(REMOTE_ADDR=SPRAYER), bob)


def test_a_username_counts_whatever_its_case(alice, settings):
    for n in range(settings.LOGIN_FAILURE_LIMIT):
        response = password_step(Client(), ["Alice", "ALICE", " alice"][n % 3], "wrong password")
    assert response.status_code == 429
    assert password_step(Client(), "alice").status_code == 429


def test_a_complete_sign_in_forgives_the_users_failures(alice, settings):
    client = Client()
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        password_step(client, "alice", "wrong password")
    assert signs_in(client, alice)
    client.post(reverse("identity:logout"))
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        assert password_step(client, "alice", "wrong password").status_code == 200
    assert signs_in(client, alice)


def test_wrong_passwords_lock_the_username_from_every_address_and_the_page_says_until_when(alice, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        response = password_step(Client(REMOTE_ADDR="192.0.2.10"), "alice", "wrong password")
    assert response.status_code == 429
    lock = LoginLock.objects.get(scope="username", value="alice")
    assert lock.failures == settings.LOGIN_FAILURE_LIMIT
    assert lock.locked_until - lock.locked_at == timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)
    until = expected_until(lock.locked_until, "Europe/Berlin")
    assert until.split()[-1] in {"CET", "CEST"}
    # The right password, from another address, is refused and told until when.
    response = password_step(Client(REMOTE_ADDR="198.51.100.7"), "alice")
    assert response.status_code == 429
    assert f"locked until <strong>{until}</strong>" in text(response)
    assert last("auth.login.failure").details["reason"] == "locked_out"
    event = last("auth.lockout")
    assert event.actor_username == "alice"
    assert event.details["scope"] == "username"
    assert event.details["failures"] == settings.LOGIN_FAILURE_LIMIT
    # Knocking while locked is not counted: the lock does not grow.
    assert lock.failures == LoginLock.objects.get(pk=lock.pk).failures
    assert LoginFailure.objects.filter(username="alice").count() == settings.LOGIN_FAILURE_LIMIT


def test_a_lock_ends_at_its_time(alice, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        password_step(Client(), "alice", "wrong password")
    assert password_step(Client(), "alice").status_code == 429
    # Fifteen minutes later (moved, not waited for):
    LoginLock.objects.filter(value="alice").update(locked_until=timezone.now() - timedelta(seconds=1))
    LoginFailure.objects.update(at=timezone.now() - timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES + 1))
    assert signs_in(Client(), alice)


# --- Throttled codes ------------------------------------------------------------------------


def test_a_throttled_retry_is_not_counted(alice, settings):
    """A wrong code, then retries while the authenticator is throttled (a script, a double
    click): only the wrong code counts, so the owner is not locked and gets in."""
    settings.OTP_TOTP_THROTTLE_FACTOR = 30  # 30 s after a wrong code: the retries come within it
    client = Client()
    password_step(client, "alice")
    assert b"That code is not right" in code_step(client, wrong_code(alice)).content
    for _ in range(settings.LOGIN_FAILURE_LIMIT * 2):
        response = code_step(client, right_code(alice))
        assert response.status_code == 200
        assert re.search(rb"wait \d+ seconds?, then enter the code", response.content)
    assert last("auth.mfa.failure").details == {"reason": "throttled"}
    assert LoginFailure.objects.filter(username="alice").count() == 1
    assert lockout.lockout_for(request=None, username="alice") is None
    unthrottle(alice)  # the second has passed
    assert code_step(client, right_code(alice)).status_code == 302


# --- Spraying -------------------------------------------------------------------------------


def test_password_spraying_from_one_address_locks_the_address_and_says_so(alice, settings):
    sprayer = Client(REMOTE_ADDR=SPRAYER)
    limit = settings.LOGIN_ADDRESS_FAILURE_LIMIT
    for n in range(limit):
        response = password_step(sprayer, f"user{n % 10}", "Winter2026!")
        assert response.status_code == (429 if n == limit - 1 else 200), n
    content = text(response)
    assert f"several different usernames came from your address ({SPRAYER})" in content
    assert "sign-in from this address is locked until <strong>" in content
    event = last("auth.lockout")
    assert event.details["scope"] == "address" and event.details["address"] == SPRAYER
    assert event.details["failures"] == limit and event.details["usernames"] == 10
    assert event.source_ip == SPRAYER
    # Nobody signs in from there now, not even alice with her right password...
    assert password_step(Client(REMOTE_ADDR=SPRAYER), "alice").status_code == 429
    # ...but she does from anywhere else: her username is not locked.
    assert signs_in(Client(REMOTE_ADDR="198.51.100.7"), alice)


def test_too_few_usernames_do_not_lock_the_address(alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 100
    wanted = settings.LOGIN_ADDRESS_USERNAMES
    for n in range(settings.LOGIN_ADDRESS_FAILURE_LIMIT * 2):
        password_step(Client(REMOTE_ADDR=SPRAYER), f"user{n % (wanted - 1)}", "Winter2026!")
    assert signs_in(Client(REMOTE_ADDR=SPRAYER), alice)


def test_without_lockout_by_ip_an_address_is_never_locked(alice, settings):
    settings.LOGIN_LOCKOUT_BY_IP = False
    for n in range(settings.LOGIN_ADDRESS_FAILURE_LIMIT * 2):
        password_step(Client(REMOTE_ADDR=SPRAYER), f"user{n}", "Winter2026!")
    assert not LoginLock.objects.filter(scope="address").exists()
    assert signs_in(Client(REMOTE_ADDR=SPRAYER), alice)


# --- Enrolment ------------------------------------------------------------------------------


def test_a_right_enrolment_code_inside_the_throttle_second_is_answered_as_throttled(db, settings):
    """Was: "That code is not right… check the phone's clock", audited wrong_code."""
    settings.OTP_TOTP_THROTTLE_FACTOR = 30  # the right code surely comes within the throttle
    newbie = make_user("newbie", "requester", totp=False)
    client = Client()
    password_step(client, "newbie")
    page = client.get(reverse("identity:enrol")).content
    key = key_from_base32(re.search(rb'id="totp-secret">([A-Z2-7 ]+)<', page).group(1).decode())
    good = totp_code(key)
    response = client.post(reverse("identity:enrol"), {"code": f"{(int(good) + 7) % 1_000_000:06d}"})
    assert b"That code is not right" in response.content
    response = client.post(reverse("identity:enrol"), {"code": good})
    assert response.status_code == 200
    content = response.content.decode()
    assert "check that the phone sets its clock" not in content
    assert re.search(r"wait \d+ seconds?, then enter the code", content)
    failures = AuditEvent.objects.filter(action="mfa.enrol.failure").order_by("sequence")
    assert [e.details["reason"] for e in failures] == [
        "wrong_code",
        "throttled",
    ]
    assert not TOTPDevice.objects.get(user=newbie).confirmed
    TOTPDevice.objects.get(user=newbie).throttle_reset()  # the second has passed
    response = client.post(reverse("identity:enrol"), {"code": totp_code(key)})
    assert TOTPDevice.objects.get(user=newbie).confirmed


# --- Signed in already ----------------------------------------------------------------------


def test_a_user_who_locks_herself_with_fresh_codes_is_signed_out(alice, settings):
    from identity.services import MFAError, mfa_check_fresh_code

    client = verified_client(Client(), alice)
    request = client.get(reverse("dashboard")).wsgi_request
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        unthrottle(alice)
        with pytest.raises(MFAError) as caught:
            mfa_check_fresh_code(request=request, user=alice, purpose="reveal", code=wrong_code(alice))
    assert caught.value.reason == "locked_out"
    assert not request.user.is_authenticated


# --- The pam-admin's page -------------------------------------------------------------------


def lock_alice_and_an_address(settings) -> None:
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        password_step(Client(REMOTE_ADDR="192.0.2.10"), "alice", "wrong password")
    for n in range(settings.LOGIN_ADDRESS_FAILURE_LIMIT):
        password_step(Client(REMOTE_ADDR=SPRAYER), f"user{n}", "Winter2026!")


def test_the_lockouts_page_lists_what_is_locked_until_when(pat, alice, settings):
    settings.TIME_ZONE = "America/New_York"
    lock_alice_and_an_address(settings)
    admin = verified_client(Client(), pat)
    response = admin.get(reverse("identity:lockouts"))
    assert response.status_code == 200
    content = response.content.decode()
    for row in LoginLock.objects.filter(locked_until__gt=timezone.now()):
        assert f'<span class="mono">{row.value}</span>' in content
        assert expected_until(row.locked_until, "America/New_York") in content
    assert f"{settings.LOGIN_FAILURE_LIMIT} failures" in content
    limit = settings.LOGIN_ADDRESS_FAILURE_LIMIT
    assert f"{limit} failures for {limit} usernames" in content
    assert content.count('name="csrfmiddlewaretoken"') >= 2


def test_a_pam_admin_unlocks_a_user_and_an_address_audited(pat, alice, settings):
    lock_alice_and_an_address(settings)
    admin = verified_client(Client(), pat)
    response = admin.post(reverse("identity:lockout_release"), {"scope": "username", "value": "alice"})
    assert response.status_code == 302
    assert signs_in(Client(REMOTE_ADDR="192.0.2.10"), alice)
    event = last("auth.lockout.released")
    assert event.actor == pat and event.object_id == str(alice.pk)
    assert event.details["scope"] == "username" and event.details["username"] == "alice"
    assert event.details["failures"] == settings.LOGIN_FAILURE_LIMIT

    assert password_step(Client(REMOTE_ADDR=SPRAYER), "alice").status_code == 429
    response = admin.post(reverse("identity:lockout_release"), {"scope": "address", "value": SPRAYER})
    assert response.status_code == 302
    event = last("auth.lockout.released")
    assert event.actor == pat and event.details == {
        "scope": "address",
        "address": SPRAYER,
        "was_until": event.details["was_until"],
        "failures": settings.LOGIN_ADDRESS_FAILURE_LIMIT,
    }
    assert signs_in(Client(REMOTE_ADDR=SPRAYER), alice)
    # The count starts again: one more failure from there does not lock it again.
    assert password_step(Client(REMOTE_ADDR=SPRAYER), "user99", "Winter2026!").status_code == 200
    assert signs_in(Client(REMOTE_ADDR=SPRAYER), alice)
    assert "Nothing is locked now." in admin.get(reverse("identity:lockouts")).content.decode()


def test_unlocking_what_is_not_locked_says_so_and_records_nothing(pat):
    admin = verified_client(Client(), pat)
    response = admin.post(
        reverse("identity:lockout_release"), {"scope": "username", "value": "nobody"}, follow=True
    )
    assert "The username nobody is not locked (any more): nothing to unlock." in response.content.decode()
    response = admin.post(
        reverse("identity:lockout_release"), {"scope": "address", "value": "not-an-address"}, follow=True
    )
    assert "is not an IP address" in response.content.decode()
    assert not AuditEvent.objects.filter(action="auth.lockout.released").exists()


@pytest.mark.parametrize("persona", ["alice", "bob", "carol"])
def test_only_pam_admins_see_and_unlock_lockouts(request, persona, settings):
    user = request.getfixturevalue(persona)
    lock_alice_and_an_address(settings)
    client = verified_client(Client(), user)
    assert client.get(reverse("identity:lockouts")).status_code == 403
    response = client.post(reverse("identity:lockout_release"), {"scope": "address", "value": SPRAYER})
    assert response.status_code == 403
    assert LoginLock.objects.filter(value=SPRAYER, locked_until__gt=timezone.now()).exists()
    assert not AuditEvent.objects.filter(action="auth.lockout.released").exists()


def test_locked_usernames_answers_for_the_names_given(alice, bob, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        password_step(Client(), "alice", "wrong password")
    locked = lockout.locked_usernames(["Alice", "bob", "nobody"])
    assert list(locked) == ["Alice"]
    assert locked["Alice"] == LoginLock.objects.get(value="alice").locked_until
    assert lockout.locked_usernames([]) == {}


# --- Pure logic and settings ----------------------------------------------------------------


def test_until_is_rounded_up_to_the_minute_in_the_site_zone(settings):
    settings.TIME_ZONE = "Asia/Kolkata"
    moment = datetime(2030, 1, 2, 8, 30, 1, tzinfo=ZoneInfo("UTC"))
    assert lockout.local_time_text(moment) == "2030-01-02 14:01 IST"


def _check(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PAMSITE_MODE", "SECRET_KEY"}}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_address_settings_that_would_lock_for_one_user_are_refused(tmp_path):
    result = _check({"PAMSITE_VAR_DIR": str(tmp_path), "LOGIN_ADDRESS_USERNAMES": "1"})
    assert result.returncode != 0 and "LOGIN_ADDRESS_USERNAMES must be at least 2" in result.stderr
    result = _check(
        {"PAMSITE_VAR_DIR": str(tmp_path), "LOGIN_ADDRESS_USERNAMES": "8", "LOGIN_ADDRESS_FAILURE_LIMIT": "6"}
    )
    assert result.returncode != 0 and "cannot be more than LOGIN_ADDRESS_FAILURE_LIMIT (6)" in result.stderr


# --- Several processes at once --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_failures_counted_at_once_by_many_workers_lock_exactly_at_the_limit(alice, settings):
    """Web and gateway processes count in one database: ten failures at the same moment, from
    ten connections, are counted one after another; the lock comes at the limit, once."""
    import threading

    from django.db import connection
    from django.test import RequestFactory

    limit = settings.LOGIN_FAILURE_LIMIT
    start = threading.Barrier(10)
    results = []

    def fail(n: int) -> None:
        try:
            request = RequestFactory().post("/login/", REMOTE_ADDR=f"192.0.2.{n + 1}")
            start.wait()
            results.append(lockout.failure_record(request=request, username="alice"))
        finally:
            connection.close()

    workers = [threading.Thread(target=fail, args=(n,)) for n in range(10)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(results) == 10
    assert LoginFailure.objects.filter(username="alice").count() == limit
    assert AuditEvent.objects.filter(action="auth.lockout").count() == 1
    assert LoginLock.objects.get(scope="username", value="alice").failures == limit
    assert sum(1 for lock in results if lock is not None) == 10 - limit + 1


def test_an_unlock_goes_back_to_a_local_page_only(pat, alice, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        password_step(Client(), "alice", "wrong password")
    admin = verified_client(Client(), pat)
    url = reverse("identity:lockout_release")
    back = reverse("identity:users") + "?page=2"
    response = admin.post(url, {"scope": "username", "value": "alice", "next": back})
    assert response["Location"] == back
    response = admin.post(url, {"scope": "username", "value": "alice", "next": "https://evil.example/"})
    assert response["Location"] == reverse("identity:lockouts")
