"""In Chromium: a pam-admin invites a user on the Users page; the invited user opens the link
(or signs in with a one-time password), chooses a password, sets up the authenticator (codes
computed from the key the page shows) and lands on the dashboard. Screenshots of every page
at 1024 px and at a 390 px phone width go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from access.services import user_deactivate
from identity.models import User
from identity.users import user_invite
from tests.conftest import PASSWORD, make_user
from tests.secrets_registry import remember_secret
from tests.totp import key_from_base32, totp_code

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "users"
WIDE = {"width": 1024, "height": 800}
PHONE = {"width": 390, "height": 844}
NEW_PASSWORD = "ivan's own long password 2027"


def shoot(page, name: str) -> None:
    """The page at 1024 px and at 390 px, whole; nothing may stick out sideways."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("1024", WIDE), ("390", PHONE)):
        page.set_viewport_size(size)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"), full_page=True)
        # The page's own content fits the width (the top menu is the base layout's).
        overflow = page.evaluate("(m => m.scrollWidth - m.clientWidth)(document.querySelector('main'))")
        assert overflow <= 1, f"{name} at {label} px: the content is {overflow} px too wide"
    page.set_viewport_size(WIDE)


def sign_in(page, base: str, user, password: str = PASSWORD) -> None:
    page.goto(base + "/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/login/verify/**")
    key = bytes.fromhex(TOTPDevice.objects.get(user=user, confirmed=True).key)
    page.fill("#id_code", totp_code(key))
    page.click("text=Verify")
    page.wait_for_url(base + "/")


def enrol_and_finish(page) -> None:
    page.wait_for_url("**/mfa/enrol/**")
    secret = page.inner_text("#totp-secret")
    remember_secret(secret.replace(" ", ""), "a TOTP seed")
    page.fill("#id_code", totp_code(key_from_base32(secret)))
    page.click("text=Activate")
    assert page.locator("#backup-codes li").count() == 10
    page.click("text=I have saved them")
    assert page.inner_text("h1").startswith("Welcome")


def test_a_pam_admin_invites_a_user_who_sets_a_password_and_enrols(page, browser, live_server, settings):
    settings.PAMSITE_BASE_URL = live_server.url
    base = live_server.url
    pat = make_user("pat", "pam-admin", first_name="Pat", last_name="Admin", email="pat@hospital.example")
    alice = make_user(
        "alice", "requester", first_name="Alice", last_name="Archer", email="alice@hospital.example"
    )
    codes = StaticDevice.objects.create(user=alice, name="backup codes", confirmed=True)
    for n in range(7):
        codes.token_set.create(token=f"code{n:04d}")
    make_user(
        "lena",
        "auditor",
        "approver",
        source=User.Source.LDAP,
        display_name="Lena Lind",
        email="lena@hospital.example",
    )
    victor = make_user(
        "victor", "requester", first_name="Victor", last_name="Vendor", email="victor@vendor.example"
    )
    user_deactivate(user=victor, acting_user=pat, reason="contract ended, INC-4411")
    wendy = user_invite(
        acting_user=pat,
        username="wendy",
        first_name="Wendy",
        last_name="Walker",
        email="wendy@vendor.example",
        roles={"requester"},
        method="password",
    )
    remember_secret(wendy.password, "a one-time password")
    page.set_viewport_size(WIDE)
    sign_in(page, base, pat)

    page.click("nav >> text=Admin")  # the pam-admin pages' menu
    page.click("nav >> text=Users")
    page.wait_for_url("**/users/")
    assert page.locator("#users tbody tr").count() == 5
    text = page.inner_text("#users")
    assert "by pat: contract ended, INC-4411" in text and "invited" in text and "7 backup codes" in text
    shoot(page, "users")
    page.click("#invite-user")
    page.wait_for_url("**/users/invite/")
    page.fill("#id_username", "ivan")
    page.fill("#id_first_name", "Ivan")
    page.fill("#id_last_name", "Petrov")
    page.fill("#id_email", "ivan@vendor.example")
    page.check("input[name=roles][value=requester]")
    shoot(page, "invite")
    page.click("button:text('Invite')")
    link = page.inner_text("#invitation-link").strip()
    remember_secret(link.rstrip("/").rsplit("/", 1)[1], "an invitation link's token")
    assert link.startswith(base + "/invitation/")
    shoot(page, "invited")

    # The invited user, in a browser of her own.
    theirs = browser.new_context(viewport=PHONE)
    phone = theirs.new_page()
    phone.goto(link)
    phone.wait_for_url("**/invitation/password/")
    assert phone.inner_text("#invited-username") == "ivan"
    phone.fill("#id_new_password1", "ivan2024")
    phone.fill("#id_new_password2", "ivan2024")
    phone.click("text=Set my password")
    assert "too short" in phone.inner_text(".errorlist")
    shoot(phone, "invitation-weak-password")
    phone.fill("#id_new_password1", NEW_PASSWORD)
    phone.fill("#id_new_password2", NEW_PASSWORD)
    phone.click("text=Set my password")
    phone.wait_for_url("**/mfa/enrol/**")
    shoot(phone, "invitation-enrol")
    # Nothing else opens before the authenticator is set up.
    phone.goto(base + "/access/")
    phone.wait_for_url("**/mfa/enrol/?next=%2Faccess%2F")
    phone.goto(base + "/mfa/enrol/")  # the same key as before: nothing was enrolled yet
    enrol_and_finish(phone)
    shoot(phone, "invited-dashboard")
    # Her link again, signed in: she is told she is in already.
    phone.goto(link)
    phone.wait_for_url(base + "/")
    assert "used this invitation already" in phone.inner_text(".messages")
    theirs.close()
    # The link worked once: in any other browser it is refused, saying why.
    elsewhere = browser.new_context(viewport=PHONE)
    again = elsewhere.new_page()
    again.goto(link)
    assert "already been used" in again.inner_text("#invitation-refused")
    shoot(again, "invitation-used")
    elsewhere.close()

    # Back on the Users page, the pam-admin sees her enrolled and opens her page.
    page.goto(base + "/users/?q=ivan")
    assert "enrolled" in page.inner_text("#users")
    page.click("#users >> text=ivan")
    page.wait_for_url("**/users/*/")
    shoot(page, "user")


def test_a_one_time_password_leads_to_a_new_password_then_the_authenticator(
    page, browser, live_server, settings
):
    settings.PAMSITE_BASE_URL = live_server.url
    base = live_server.url
    pat = make_user("pat", "pam-admin")
    sign_in(page, base, pat)
    page.goto(base + "/users/invite/")
    page.fill("#id_username", "olga")
    page.check("input[name=roles][value=requester]")
    page.check("input[name=method][value=password]")
    page.click("button:text('Invite')")
    password = page.inner_text("#one-time-password").strip()
    remember_secret(password, "a one-time password")
    shoot(page, "invited-password")

    theirs = browser.new_context(viewport=PHONE)
    phone = theirs.new_page()
    phone.goto(base + "/login/")
    phone.fill("#id_username", "olga")
    phone.fill("#id_password", password)
    phone.click("button[type=submit]")
    phone.wait_for_url("**/account/password/new/**")
    shoot(phone, "first-password")
    phone.goto(base + "/mfa/enrol/")  # cannot be skipped
    phone.wait_for_url("**/account/password/new/**")
    phone.fill("#id_new_password1", "olga's chosen passphrase 7")
    phone.fill("#id_new_password2", "olga's chosen passphrase 7")
    phone.click("text=Set my password")
    enrol_and_finish(phone)
    theirs.close()
