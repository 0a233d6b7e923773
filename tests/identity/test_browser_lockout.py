"""In Chromium: a locked user reads until when; a pam-admin sees the locked username and address
and unlocks them (at 1024 px and on a 390 px phone; screenshots in test-artifacts/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import RequestFactory

from identity import lockout
from tests.conftest import PASSWORD
from tests.totp import totp_code

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SPRAYER = "203.0.113.9"
DESKTOP = {"width": 1024, "height": 768}
PHONE = {"width": 390, "height": 844}


def sign_in(page, live_server, username: str, password: str = PASSWORD) -> None:
    page.goto(live_server.url + "/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


def fits(page) -> bool:
    """Nothing of the page's content reaches past the window: no sideways scrolling to reach a
    button. (The site's top menu is checked with the menu, not here.)"""
    return page.evaluate(
        "[...document.querySelectorAll('main *')].every("
        "e => e.getBoundingClientRect().right <= window.innerWidth + 1)"
    )


def test_a_locked_user_reads_until_when_and_a_pam_admin_unlocks(page, live_server, alice, pat, settings):
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size(DESKTOP)
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        sign_in(page, live_server, "alice", "not her password")
    until = lockout.lockout_for(request=None, username="alice").until_text
    assert "Sign-in temporarily locked" in page.inner_text("h1")
    assert f"locked until {until}" in page.inner_text("main")
    page.screenshot(path=str(ARTIFACTS / "lockout-locked-1024.png"), full_page=True)
    page.set_viewport_size(PHONE)
    assert fits(page)
    page.screenshot(path=str(ARTIFACTS / "lockout-locked-390.png"), full_page=True)

    # Someone sprayed passwords from another address meanwhile.
    for n in range(settings.LOGIN_ADDRESS_FAILURE_LIMIT):
        request = RequestFactory().post("/login/", REMOTE_ADDR=SPRAYER)
        lockout.failure_record(request=request, username=f"user{n}")

    page.set_viewport_size(DESKTOP)
    sign_in(page, live_server, "pat")
    page.wait_for_url("**/login/verify/**")
    from django_otp.plugins.otp_totp.models import TOTPDevice

    page.fill("#id_code", totp_code(TOTPDevice.objects.get(user=pat).bin_key))
    page.click("text=Verify")
    page.goto(live_server.url + "/users/lockouts/")
    rows = page.locator("#lockouts tbody tr")
    assert rows.count() == 2
    table = page.inner_text("#lockouts")
    assert "alice" in table and SPRAYER in table and until in table
    assert f"{settings.LOGIN_ADDRESS_FAILURE_LIMIT} failures" in table
    page.screenshot(path=str(ARTIFACTS / "lockouts-1024.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(ARTIFACTS / "lockouts-390.png"), full_page=True)
    assert fits(page)

    page.click("button[aria-label='Unlock username alice']")
    assert "Unlocked alice" in page.inner_text("ul.messages")
    assert page.locator("#lockouts tbody tr").count() == 1
    page.click(f"button[aria-label='Unlock client address {SPRAYER}']")
    assert "Nothing is locked now." in page.inner_text("#lockouts")
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(ARTIFACTS / "lockouts-unlocked-1024.png"), full_page=True)
    assert lockout.lockout_for(request=None, username="alice") is None
