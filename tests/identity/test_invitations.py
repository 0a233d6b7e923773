"""Inviting a local user: a one-time link (single use, expiring, stored only as a hash) or a
one-time password; the first password is chosen with Django's validators, then the
authenticator, and nothing else opens before both. A pam-admin's password reset uses the same
mechanism."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.contrib.auth import SESSION_KEY
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from identity.models import Invitation, User
from identity.users import token_hash, user_invite, user_password_reset
from tests.conftest import PASSWORD, make_user, verified_client
from tests.secrets_registry import remember_secret
from tests.totp import key_from_base32, totp_code

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a long new password for ivan 42"


def invite(pat, *, method="link", username="ivan", email="ivan@vendor.example", **kwargs):
    issued = user_invite(
        acting_user=pat,
        username=username,
        first_name="Ivan",
        last_name="Invited",
        email=email,
        roles={"requester"},
        method=method,
        **kwargs,
    )
    if issued.link:
        remember_secret(token_of(issued.link), "an invitation link's token")
    remember_secret(issued.password, "a one-time password")
    return issued


def path_of(link: str) -> str:
    return "/" + link.split("/", 3)[3]


PASSWORD_PAGE = reverse("identity:invitation_password")


def open_link(client, link: str):
    """Open the link as a browser does: it sends the browser on to the password page."""
    response = client.get(path_of(link))
    assert response.status_code == 302 and response["Location"] == PASSWORD_PAGE, response
    return client.get(PASSWORD_PAGE)


def choose(client, password: str, again: str | None = None):
    return client.post(PASSWORD_PAGE, {"new_password1": password, "new_password2": again or password})


def token_of(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[1]


def all_stored_text() -> str:
    """Every value of the tables an invitation touches, as text."""
    rows = [*User.objects.values(), *Invitation.objects.values(), *AuditEvent.objects.values()]
    return repr(rows)


# --- The link ----------------------------------------------------------------------------


def test_an_invited_user_chooses_a_password_with_the_link_then_must_enrol(client, pat):
    issued = invite(pat)
    ivan = User.objects.get(username="ivan")
    assert ivan.source == User.Source.LOCAL and not ivan.has_usable_password() and ivan.must_change_password
    assert set(ivan.groups.values_list("name", flat=True)) == {"requester"}
    token = token_of(issued.link)
    # Only the token's hash is kept, nowhere the token; the audit row says what, never the link.
    assert Invitation.objects.get(user=ivan).token_hash == token_hash(token)
    assert token not in all_stored_text()
    event = AuditEvent.objects.get(action="identity.user.invited")
    assert (
        event.actor == pat and event.details["method"] == "link" and event.details["roles"] == ["requester"]
    )

    page = open_link(client, issued.link)
    assert page.status_code == 200 and b"ivan" in page.content
    assert token.encode() not in page.content
    weak = choose(client, "ivan1234")
    assert weak.status_code == 400
    assert b"This password is too short" in weak.content  # Django's own validator message
    mismatch = choose(client, NEW_PASSWORD, NEW_PASSWORD + "x")
    assert mismatch.status_code == 400 and b"not the same" in mismatch.content
    assert not User.objects.get(pk=ivan.pk).has_usable_password()

    done = choose(client, NEW_PASSWORD)
    assert done.status_code == 302 and done["Location"] == reverse("identity:enrol")
    ivan.refresh_from_db()
    assert ivan.check_password(NEW_PASSWORD) and not ivan.must_change_password
    assert Invitation.objects.get(user=ivan).used_at is not None
    assert AuditEvent.objects.get(action="identity.user.invitation_accepted").actor == ivan
    # Signed in with the password step only: every page leads to the authenticator's set-up.
    for name in ("dashboard", "identity:account", "access:mine"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith(reverse("identity:enrol"))
    enrol = client.get(reverse("identity:enrol"))
    secret = enrol.context["secret"]
    remember_secret(secret.replace(" ", ""), "a TOTP seed")
    confirmed = client.post(reverse("identity:enrol"), {"code": totp_code(key_from_base32(secret))})
    assert confirmed.status_code == 200 and len(confirmed.context["codes"]) == 10
    assert client.get(reverse("dashboard")).status_code == 200


def test_the_link_works_once(client, pat):
    issued = invite(pat)
    other_browser = Client()
    open_link(other_browser, issued.link)
    open_link(client, issued.link)
    choose(client, NEW_PASSWORD)
    again = Client().get(path_of(issued.link))
    assert again.status_code == 410
    assert b"already been used" in again.content and b"tell your pam-admin" in again.content
    # Opened before it was used, in another browser: refused there too.
    assert choose(other_browser, NEW_PASSWORD + "2").status_code == 410
    assert User.objects.get(username="ivan").check_password(NEW_PASSWORD)
    # The password page with no link opened says to open the link first.
    assert b"Open the link" in Client().get(PASSWORD_PAGE).content


def test_a_wrong_expired_or_withdrawn_link_is_refused_with_a_clear_page(client, pat, settings):
    wrong = client.get(reverse("identity:invitation", args=["not-a-real-token-" + "x" * 30]))
    assert wrong.status_code == 404 and b"not valid" in wrong.content

    first = invite(pat)
    second = invite(pat, username="olga", email="olga@vendor.example")
    Invitation.objects.filter(user__username="olga").update(expires_at=timezone.now() - timedelta(minutes=1))
    expired = client.get(path_of(second.link))
    assert expired.status_code == 410 and b"expired at" in expired.content
    # A password reset of ivan withdraws his first link.
    user_password_reset(acting_user=pat, user=User.objects.get(username="ivan"), method="link")
    withdrawn = client.get(path_of(first.link))
    assert withdrawn.status_code == 410 and b"withdrawn" in withdrawn.content


def test_the_lifetime_is_a_setting(pat, settings):
    settings.INVITATION_LIFETIME_HOURS = 2
    issued = invite(pat)
    left = issued.invitation.expires_at - timezone.now()
    assert timedelta(hours=1, minutes=59) < left <= timedelta(hours=2)


def test_a_refused_link_is_not_written_to_the_log(client, pat, caplog):
    """Django logs the path of 4xx answers; the path holds a token (used or not)."""
    issued = invite(pat)
    url = path_of(issued.link)
    with caplog.at_level(logging.DEBUG):
        open_link(client, issued.link)
        choose(client, NEW_PASSWORD)  # signs in with the link's session
        assert Client().get(url).status_code == 410
        assert Client().get(url[:-2] + "x/").status_code == 404
    assert token_of(issued.link)[:-1] not in caplog.text


def test_someone_signed_in_is_told_to_sign_out_before_using_a_link(client, pat):
    issued = invite(pat)
    verified_client(client, pat)
    response = client.get(path_of(issued.link))
    assert response.status_code == 403 and b"Sign out first" in response.content
    assert Invitation.objects.get(user__username="ivan").used_at is None


def test_the_link_can_be_e_mailed(pat, settings):
    with pytest.raises(Exception, match="no e-mail address"):
        invite(pat, email="", email_link=True)
    assert not User.objects.filter(username="ivan").exists()  # nothing half made
    issued = invite(pat, email_link=True)
    # Sent after the commit: the test's transaction never commits, so run the hooks.
    assert issued.emailed_to == "ivan@vendor.example"
    assert AuditEvent.objects.get(action="identity.user.invited").details["emailed"] is True


def test_the_link_is_not_e_mailed_into_a_log(pat, settings):
    """The dev stack's console backend writes e-mails to the log: the link is not sent there."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    with pytest.raises(Exception, match="no mail server"):
        invite(pat, email_link=True)
    assert not User.objects.filter(username="ivan").exists()


def test_the_link_is_e_mailed_once_committed(pat, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        issued = invite(pat, email_link=True)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["ivan@vendor.example"] and issued.link in message.body and "ivan" in message.body


def test_a_taken_username_or_unknown_role_is_refused_and_nothing_is_made(client, pat):
    make_user("Ivan.Smith")
    verified_client(client, pat)
    data = {"username": "ivan.smith", "roles": ["requester"], "method": "link"}
    response = client.post(reverse("identity:user_invite"), data)
    assert response.status_code == 400 and b"is taken" in response.content
    response = client.post(reverse("identity:user_invite"), {**data, "username": "ivan", "roles": ["root"]})
    assert response.status_code == 400
    assert not User.objects.filter(username="ivan").exists()
    assert not AuditEvent.objects.filter(action="identity.user.invited").exists()


def test_the_invite_page_shows_the_link_once(client, pat):
    verified_client(client, pat)
    data = {"username": "ivan", "first_name": "Ivan", "email": "ivan@vendor.example", "roles": ["requester"]}
    response = client.post(reverse("identity:user_invite"), {**data, "method": "link"})
    assert response.status_code == 200
    link = response.context["issued"].link
    remember_secret(token_of(link), "an invitation link's token")
    assert link.encode() in response.content
    # Nowhere to be read again: not on the user's page, not in the list.
    ivan = User.objects.get(username="ivan")
    assert token_of(link).encode() not in client.get(reverse("identity:user", args=[ivan.pk])).content
    assert token_of(link).encode() not in client.get(reverse("identity:users")).content


# --- The one-time password ---------------------------------------------------------------


def test_a_one_time_password_signs_in_once_to_choose_a_new_one_which_cannot_be_skipped(client, pat):
    issued = invite(pat, method="password")
    otp = issued.password
    assert otp and not issued.link
    ivan = User.objects.get(username="ivan")
    assert ivan.check_password(otp) and ivan.must_change_password
    assert otp not in all_stored_text()

    response = client.post(reverse("identity:login"), {"username": "ivan", "password": otp})
    assert response.status_code == 302
    # Every page — the code step and the enrolment included — leads to the new password.
    for name in ("identity:enrol", "identity:verify", "dashboard", "identity:account", "identity:users"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith(
            reverse("identity:password_new")
        ), name
    assert client.post(reverse("identity:enrol"), {"code": "123456"})["Location"].startswith(
        reverse("identity:password_new")
    )
    page = client.get(reverse("identity:password_new"))
    assert page.status_code == 200
    same = client.post(reverse("identity:password_new"), {"new_password1": otp, "new_password2": otp})
    assert same.status_code == 400
    weak = client.post(
        reverse("identity:password_new"), {"new_password1": "12345678", "new_password2": "12345678"}
    )
    assert weak.status_code == 400 and b"entirely numeric" in weak.content

    done = client.post(
        reverse("identity:password_new"), {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert done.status_code == 302 and done["Location"].startswith(reverse("identity:enrol"))
    ivan.refresh_from_db()
    assert (
        not ivan.must_change_password and ivan.check_password(NEW_PASSWORD) and not ivan.check_password(otp)
    )
    assert Invitation.objects.get(user=ivan).used_at is not None
    assert AuditEvent.objects.get(action="identity.user.password_set").actor == ivan
    # Still signed in with the password step; the enrolment is next, as for everyone.
    assert client.get(reverse("dashboard"))["Location"].startswith(reverse("identity:enrol"))


def test_an_expired_one_time_password_cannot_set_a_password(client, pat):
    issued = invite(pat, method="password")
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    client.post(reverse("identity:login"), {"username": "ivan", "password": issued.password})
    response = client.get(reverse("identity:password_new"))
    assert response.status_code == 403 and b"expired at" in response.content
    assert SESSION_KEY not in client.session  # signed out
    assert User.objects.get(username="ivan").must_change_password


# --- A pam-admin's password reset --------------------------------------------------------


def test_a_password_reset_stops_the_old_password_ends_her_sessions_and_keeps_her_authenticator(
    client, pat, alice
):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    hers = verified_client(Client(), alice)
    verified_client(client, pat)
    response = client.post(reverse("identity:user_password_reset", args=[alice.pk]), {"method": "link"})
    assert response.status_code == 200
    link = response.context["issued"].link
    remember_secret(token_of(link), "an invitation link's token")
    alice.refresh_from_db()
    assert not alice.check_password(PASSWORD) and alice.must_change_password
    assert hers.get(reverse("dashboard")).status_code == 302  # her session ended
    assert TOTPDevice.objects.filter(user=alice, confirmed=True).exists()
    event = AuditEvent.objects.get(action="identity.user.password_reset")
    assert event.actor == pat and event.details["web_sessions_ended"] == 1
    # With the link she chooses a new password, then the code step (her authenticator is kept).
    fresh = Client()
    open_link(fresh, link)
    assert choose(fresh, NEW_PASSWORD)["Location"] == reverse("identity:verify")


def test_a_directory_users_password_is_not_reset_here(client, pat):
    lena = make_user("lena", "requester", source=User.Source.LDAP)
    verified_client(client, pat)
    response = client.post(reverse("identity:user_password_reset", args=[lena.pk]), {"method": "link"})
    assert response.status_code == 400 and b"directory" in response.content
    assert not Invitation.objects.exists()


def test_ones_own_password_is_not_reset_here(client, pat):
    verified_client(client, pat)
    response = client.post(reverse("identity:user_password_reset", args=[pat.pk]), {"method": "password"})
    assert response.status_code == 400 and b"My account" in response.content
