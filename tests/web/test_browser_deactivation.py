"""In Chromium: a pam-admin deactivates alice while she is connected through the gateway, on the
Users page and with the Configuration pages' "Active" box; either way her live SSH session
(the real OpenSSH client, through the gateway, to a real sshd) is cut within 5 s and her
terminal says why. Screenshots at 1024 and 390 px go to test-artifacts/users/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from access.models import Grant
from tests.conftest import verified_client
from tests.fixtures.pacs import grant_for
from tests.web.test_deactivation import CUT_WITHIN, _connected

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "users"


def _as(page, live_server, user) -> None:
    """The browser signed in as ``user`` with both factors (the sign-in pages have tests of their own)."""
    client = verified_client(Client(), user)
    page.context.clear_cookies()
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
          "url": live_server.url}]
    )  # fmt: skip


def _shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in (1024, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1024, "height": 900})


def _cut_within_limit(ssh, since: float) -> str:
    out, err = ssh.communicate(timeout=20)
    elapsed = time.monotonic() - since
    assert elapsed < CUT_WITHIN, f"the session was cut after {elapsed:.1f} s"
    return (out + err).decode(errors="replace")


def test_deactivating_on_the_users_page_cuts_her_live_session(
    page, live_server, gateway, alice, bob, pat, ssh_account
):
    grant = grant_for(alice, bob, ssh_account)
    ssh = _connected(gateway, alice, "alice:pacs01-admin")
    _as(page, live_server, pat)
    page.set_viewport_size({"width": 1024, "height": 900})
    page.goto(f"{live_server.url}/users/{alice.pk}/")
    assert "1 live gateway session" in page.inner_text("#user-summary")
    page.fill("#id_deactivate-reason", "contract ended, INC-7")
    page.click("button:text('Deactivate alice')")
    clicked = time.monotonic()
    page.wait_for_selector("#user-state .badge.bad")
    text = _cut_within_limit(ssh, clicked)
    assert "Your pamsite account was deactivated: by pat: contract ended, INC-7." in text
    assert "by pat: contract ended, INC-7" in page.inner_text("#user-state")
    assert "alice is deactivated: 1 live grant revoked; 1 gateway session being cut" in page.inner_text(
        ".messages"
    )
    _shoot(page, "deactivated")
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED


def test_unticking_active_in_the_configuration_pages_cuts_her_live_session(
    page, live_server, gateway, alice, bob, pat, ssh_account
):
    grant = grant_for(alice, bob, ssh_account)
    ssh = _connected(gateway, alice, "alice:pacs01-admin")
    _as(page, live_server, pat)
    page.set_viewport_size({"width": 1024, "height": 900})
    page.goto(f"{live_server.url}/admin/identity/user/{alice.pk}/change/")
    page.uncheck("#id_is_active")
    page.click("input[name=_save]")
    assert "Give the reason" in page.inner_text("#content")  # nothing changed without one
    assert ssh.poll() is None
    page.uncheck("#id_is_active")
    page.fill("#id_status_reason", "vendor engineer left the company")
    page.click("input[name=_save]")
    clicked = time.monotonic()
    page.wait_for_url("**/admin/identity/user/")
    text = _cut_within_limit(ssh, clicked)
    assert "Your pamsite account was deactivated: by pat: vendor engineer left the company." in text
    _shoot(page, "deactivated-in-configuration")
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED
