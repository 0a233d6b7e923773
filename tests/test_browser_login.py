"""In Chromium: a new user signs in, enrols TOTP, reaches the dashboard; wrong and replayed codes fail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, make_user
from tests.totp import key_from_base32, totp_code

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def test_new_user_enrols_and_signs_in(page, live_server):
    ARTIFACTS.mkdir(exist_ok=True)
    make_user("newbie", "requester", totp=False)

    page.goto(live_server.url + "/")
    assert "/login/" in page.url
    page.fill("#id_username", "newbie")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")

    page.wait_for_url("**/mfa/enrol/**")
    assert page.locator(".qr svg").count() == 1
    page.screenshot(path=str(ARTIFACTS / "enrol.png"), full_page=True)
    key = key_from_base32(page.inner_text("#totp-secret"))
    enrol_code = totp_code(key)
    page.fill("#id_code", enrol_code)
    page.click("text=Activate")

    assert page.locator("#backup-codes li").count() == 10
    page.screenshot(path=str(ARTIFACTS / "backup-codes.png"), full_page=True)
    page.click("text=I have saved them")
    assert page.inner_text("h1").startswith("Welcome")

    # Sign out, then in again: a wrong code and the already-used code are refused.
    page.click("text=Sign out")
    page.wait_for_url("**/login/**")
    page.fill("#id_username", "newbie")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/login/verify/**")

    wrong = f"{(int(enrol_code) + 1) % 1_000_000:06d}"
    page.fill("#id_code", wrong)
    page.click("text=Verify")
    assert "That code is not right" in page.inner_text(".errorlist")

    time.sleep(1.1)  # django-otp waits a second after a failure
    page.fill("#id_code", enrol_code)
    page.click("text=Verify")
    assert "already been used" in page.inner_text(".errorlist")
    page.screenshot(path=str(ARTIFACTS / "verify-replayed.png"), full_page=True)

    time.sleep(2.1)
    page.fill("#id_code", totp_code(key, at=time.time() + 30))
    page.click("text=Verify")
    assert page.inner_text("h1").startswith("Welcome")
