"""In Chromium, a pam-admin's first day: she invites a vendor engineer on the Users page, sets up
a PACS host (the test sshd) and its accounts on the new pages, pins its host key after seeing
the fingerprint, sets the accounts up in Vault, runs Test connection (a password changed on the
target fails in words, a certificate login works) and makes a policy. The invited engineer then
opens her link on her phone, chooses a password, sets up her authenticator, sees the ticket rule
on the request form before any error, has a reason pasted far over the limit refused with its
length (not cut), and sends her request. Screenshots at 1024 and 390 px wide go to
test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from access.models import AccessPolicy, AccessRequest, Account, Target
from tests.conftest import verified_client
from tests.identity.test_browser_users import NEW_PASSWORD, enrol_and_finish
from tests.secrets_registry import remember_secret

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
WIDTHS = {"wide": 1024, "phone": 390}


def sign_in(page, live_server, user) -> list[str]:
    client = verified_client(Client(), user)
    page.context.clear_cookies()
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
          "url": live_server.url}]
    )  # fmt: skip
    errors: list[str] = []
    # CSP violations and script errors; a resource that fails to load is named by its response.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None
        ),
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    return errors


def shoot(page, name: str) -> None:
    """A full-page screenshot at each width; the page's content must fit a phone's width."""
    for label, width in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"), full_page=True)
        overflow = page.evaluate(
            "Math.max(...[...document.querySelectorAll('main *')].map(e => e.getBoundingClientRect().right))"
            " - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} at {width} px: the content is {overflow:.0f} px wider than the screen"
    page.set_viewport_size({"width": WIDTHS["wide"], "height": 900})


def test_a_pam_admin_invites_an_engineer_sets_up_a_target_and_a_policy_and_the_engineer_requests(
    page, browser, live_server, approle_settings, sshd_target, pat
):
    ARTIFACTS.mkdir(exist_ok=True)
    approle_settings.PAMSITE_BASE_URL = live_server.url  # the invitation link's address
    root_user, svc_user = sshd_target.create_user(), sshd_target.create_user()
    errors = sign_in(page, live_server, pat)
    page.set_viewport_size({"width": WIDTHS["wide"], "height": 900})

    # She invites the vendor engineer who will need the PACS host.
    page.goto(live_server.url + "/users/invite/")
    page.fill("#id_username", "ivan")
    page.fill("#id_first_name", "Ivan")
    page.fill("#id_last_name", "Petrov")
    page.fill("#id_email", "ivan@vendor.example")
    page.check("input[name=roles][value=requester]")
    page.click("button:text('Invite')")
    link = page.inner_text("#invitation-link").strip()
    remember_secret(link.rstrip("/").rsplit("/", 1)[1], "an invitation link's token")

    page.goto(live_server.url + "/access/targets/")
    page.click("text=Add a target")
    page.click("a.button:text-is('PACS')")
    page.fill("#id_name", "pacs01")
    page.fill("#id_host", sshd_target.host)
    page.fill("#id_port", "70000")
    page.fill("#id_tags", "radiology, night-shift")
    page.fill("#id_forward_ports", "104, dicom")
    page.click("text=Add the target")
    assert "'dicom' is not a TCP port" in page.inner_text("main")
    assert page.input_value("#id_tags") == "radiology, night-shift"  # nothing typed is lost
    shoot(page, "target-form-error")
    page.fill("#id_port", str(sshd_target.port))
    page.fill("#id_forward_ports", "104")
    page.click("text=Add the target")

    # Its first account: an ssh-ca login.
    page.click("a.button:has-text('SSH certificate')")
    page.fill("#id_slug", "pacs01-root")
    page.fill("#id_username", root_user.name)
    page.click("text=Add the account")
    assert "1. Pin the host key of pacs01" in page.inner_text("main")
    shoot(page, "account-setup-start")

    page.click("text=Fetch and check the host key")
    fingerprint = page.inner_text("#fingerprint")
    shoot(page, "host-key")
    page.click("text=The fingerprint matches: pin it")
    assert fingerprint in page.inner_text(".step.done")
    page.click("a.button:has-text('Set it up in Vault')")
    page.click("text=Create or update the SSH role")
    page.click("button:text-is('Test connection')")
    assert "certificate signed by Vault" in page.inner_text("#test-message")
    shoot(page, "account-setup-done")

    # A static account: stored in Vault, then its password changed on the host behind pamsite's back.
    target = Target.objects.get(name="pacs01")
    page.goto(f"{live_server.url}/access/targets/{target.pk}/accounts/new/?kind=static")
    page.fill("#id_slug", "pacs01-svc")
    page.fill("#id_username", svc_user.name)
    page.fill("#id_description", "DICOM router service account")
    page.click("text=Add the account")
    page.click("a.button:has-text('Set it up in Vault')")
    page.fill("#id_current_password", svc_user.password)
    page.click("text=Save in Vault")
    page.click("button:text-is('Test connection')")
    assert "Logged in" in page.inner_text("#test-message")
    sshd_target.set_password(svc_user.name, "changed-on-the-host-by-hand-9")
    page.click("button:text-is('Test connection')")
    message = page.inner_text("#test-message")
    assert message.startswith("Password refused: the password Vault holds for"), message
    assert svc_user.password not in page.content()
    shoot(page, "account-test-failed")

    page.goto(live_server.url + "/access/targets/")
    lines = page.inner_text(".accounts")
    assert "✓ pinned" in lines and "✓ in Vault" in lines and "✗ test failed" in lines
    shoot(page, "targets")

    # A policy for the requesters.
    page.click("main >> text=Policies")  # not the one in the Admin menu
    page.click("text=Add a policy")
    page.fill("#id_name", "PACS administrators")
    page.check("label:has-text('requester') input")
    page.check("label:has-text('pacs01-root') input")
    page.fill("#id_ticket_pattern", "^INC-\\d{3,8}$")
    page.fill("#id_ticket_example", "CHG-1")
    page.click("text=Add the policy")
    assert "does not match the pattern" in page.inner_text("main")
    shoot(page, "policy-form-error")
    page.fill("#id_ticket_example", "INC-12345")
    page.click("text=Add the policy")
    assert "PACS administrators" in page.inner_text("main")
    shoot(page, "policies")
    deactivate = page.locator("section.policy button:text-is('Deactivate')")
    assert deactivate.evaluate("b => getComputedStyle(b).color") != "rgb(255, 255, 255)"  # not white on white
    assert AccessPolicy.objects.get().accounts.get().slug == "pacs01-root"
    assert not errors, errors

    # The invited engineer, on her phone: a password of her own, her authenticator, then the
    # request form shows the rule before any error; a pasted 24,000-character reason is refused, kept.
    phone = browser.new_context(viewport={"width": WIDTHS["phone"], "height": 900}).new_page()
    phone.goto(link)
    phone.wait_for_url("**/invitation/password/")
    phone.fill("#id_new_password1", NEW_PASSWORD)
    phone.fill("#id_new_password2", NEW_PASSWORD)
    phone.click("text=Set my password")
    enrol_and_finish(phone)
    phone.goto(live_server.url + "/access/request/")
    assert phone.inner_text("#ticket-rule") == "Ticket required, like INC-12345."
    reason = ("The DICOM router on pacs01 stopped forwarding studies to the VNA. " * 400)[:24000]
    phone.fill("#id_ticket", "INC-4711")
    phone.fill("#id_reason", reason)
    phone.click("text=Send request")
    assert "at most 2,000 characters, and this has 24,000" in phone.inner_text(".errorlist")
    assert len(phone.input_value("#id_reason")) == 24000
    assert not AccessRequest.objects.exists()
    shoot(phone, "request-reason-too-long")
    phone.fill("#id_reason", "The DICOM router on pacs01 stopped forwarding studies to the VNA.")
    phone.click("text=Send request")
    phone.wait_for_url("**/access/requests/*/")
    shoot(phone, "request-sent")
    sent = AccessRequest.objects.get()
    assert sent.requester.username == "ivan" and sent.account.slug == "pacs01-root"
    assert sent.state == AccessRequest.State.PENDING and sent.ticket == "INC-4711"
    phone.context.close()
    assert Account.objects.filter(last_test_ok=True).count() == 1
