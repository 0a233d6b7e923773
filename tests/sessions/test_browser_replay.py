"""In Chromium: an auditor replays a recorded session in asciinema-player and jumps to a command
by its marker; an approver watches a live session and sees new output within ~1-2 s.

The pages run under the site's strict Content-Security-Policy (only ``'wasm-unsafe-eval'``
added for the player's WebAssembly terminal); a CSP violation in the console fails the test.
Screenshots: ``test-artifacts/replay.png`` and ``test-artifacts/watch.png``.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from sessions import replay
from sessions.models import Session
from sessions.recorder import TerminalRecorder
from tests.conftest import verified_client
from tests.sessions.test_replay import PROMPT, typed
from tests.sessions.test_services import make_grant, make_session

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
SCREEN = ".ap-term"


@pytest.fixture
def root(approle_settings, tmp_path):
    approle_settings.RECORDINGS_ROOT = tmp_path / "recordings"
    return approle_settings.RECORDINGS_ROOT


def sign_in(page, live_server, user) -> list[str]:
    """The browser gets a session signed in with both factors; returns the console's errors."""
    client = verified_client(Client(), user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}]
    )
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def screen_text(page) -> str:
    return page.inner_text(SCREEN)


def test_an_auditor_replays_a_session_and_jumps_to_a_command(page, live_server, root, alice, carol):
    ARTIFACTS.mkdir(exist_ok=True)
    session = make_session(make_grant(alice))
    shell = TerminalRecorder(session=session, channel=0, width=100, height=20, term="xterm-256color")
    shell.write(b"Welcome to pacs01\r\n" + PROMPT)
    typed(shell, b"cat /etc/pacs/ae.conf\r")
    time.sleep(0.05)  # the command's output comes after the Enter, as on a real target
    shell.write(b"\r\n\x1b[1mAE_TITLE=PACS01\x1b[0m\r\nPORT=11112\r\n" + PROMPT)
    time.sleep(0.05)
    typed(shell, b"systemctl restart dcm4chee\r")
    time.sleep(0.05)
    shell.write(b"\r\n" + PROMPT)
    shell.close()
    Session.objects.filter(pk=session.pk).update(ended_at=timezone.now(), end_reason=Session.EndReason.CLOSED)

    errors = sign_in(page, live_server, carol)
    page.goto(f"{live_server.url}/replay/sessions/{session.pk}/?autoplay=1")
    page.wait_for_function(
        "s => document.querySelector(s)?.innerText.includes('AE_TITLE=PACS01')", arg=SCREEN, timeout=15_000
    )
    markers = page.locator("ol.markers li")
    assert markers.count() == 2
    assert "alice@pacs01:~$ cat /etc/pacs/ae.conf" in markers.nth(0).inner_text()
    assert "systemctl restart dcm4chee" in markers.nth(1).inner_text()
    page.wait_for_function("s => document.querySelector(s)?.innerText.includes('dcm4chee')", arg=SCREEN)
    page.screenshot(path=str(ARTIFACTS / "replay.png"), full_page=True)

    # The first marker is the moment Enter was pressed: the command is on screen, its output not yet.
    markers.nth(0).locator("button").click()
    page.wait_for_function(
        "s => !document.querySelector(s).innerText.includes('AE_TITLE')", arg=SCREEN, timeout=5_000
    )
    assert "cat /etc/pacs/ae.conf" in screen_text(page)
    page.screenshot(path=str(ARTIFACTS / "replay-marker.png"), full_page=True)
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors


def test_a_jump_into_a_later_segment_shows_the_screen_as_it_was(
    page, live_server, root, alice, carol, monkeypatch
):
    """Small segments, so the last command lies in a segment the player has not loaded: the
    seek loads that segment alone, and the screen is rebuilt from the output before it."""
    monkeypatch.setattr(replay, "SEGMENT_BYTES", 2048)
    session = make_session(make_grant(alice))
    shell = TerminalRecorder(session=session, channel=0, width=100, height=20)
    shell.write(PROMPT)
    for n in range(40):
        typed(shell, f"dcmecho PACS{n:02d}\r".encode())
        time.sleep(0.02)
        shell.write(f"\r\nI: Association accepted by PACS{n:02d}, echo {n} ok\r\n".encode() + PROMPT)
        time.sleep(0.02)
    shell.close()
    Session.objects.filter(pk=session.pk).update(ended_at=timezone.now(), end_reason=Session.EndReason.CLOSED)

    errors = sign_in(page, live_server, carol)
    segments_fetched = []
    page.on("request", lambda r: segments_fetched.append(r.url) if "segment.json" in r.url else None)
    page.goto(f"{live_server.url}/replay/sessions/{session.pk}/")
    page.wait_for_selector(".ap-term")
    markers = page.locator("ol.markers li button")
    assert markers.count() == 40
    before = len(segments_fetched)
    markers.nth(38).click()
    page.wait_for_function(
        "s => document.querySelector(s).innerText.includes('dcmecho PACS38')", arg=SCREEN, timeout=10_000
    )
    screen = screen_text(page)
    # The lines above the command, from the rebuilt screen; nothing after the Enter yet.
    assert "Association accepted by PACS37, echo 37 ok" in screen
    assert "echo 38 ok" not in screen
    # Only the segment the marker is in (and the player's prefetch of the next) was fetched.
    assert 1 <= len(segments_fetched) - before <= 2
    starts = [int(url.split("from=")[1].split("&")[0]) for url in segments_fetched[before:]]
    assert max(starts) > 2 * replay.SEGMENT_BYTES  # past segments never loaded
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors


def test_an_approver_watches_a_live_session_within_two_seconds(page, live_server, root, alice, bob):
    ARTIFACTS.mkdir(exist_ok=True)
    session = make_session(make_grant(alice))
    shell = TerminalRecorder(session=session, channel=0, width=100, height=20)
    try:
        shell.write(b"Welcome to pacs01\r\n" + PROMPT)
        shell.flush()
        errors = sign_in(page, live_server, bob)
        page.goto(f"{live_server.url}/replay/sessions/{session.pk}/watch/")
        assert page.locator("#terminate button.danger").is_visible()  # approvers may cut it
        page.wait_for_function(
            "s => document.querySelector(s)?.innerText.includes('Welcome to pacs01')",
            arg=SCREEN,
            timeout=15_000,
        )

        token = f"LIVE-{secrets.token_hex(4)}"
        typed(shell, f"echo {token}\r".encode())
        shell.write(f"\r\n{token}\r\n".encode() + PROMPT)
        shell.flush()  # the gateway flushes at least every second (FLUSH_INTERVAL)
        written = time.monotonic()
        page.wait_for_function(
            "([s, t]) => document.querySelector(s).innerText.split(t).length > 2",
            arg=[SCREEN, token],
            timeout=5_000,
        )
        seen_after = time.monotonic() - written
        page.screenshot(path=str(ARTIFACTS / "watch.png"), full_page=True)
        assert seen_after < 2.0, f"the live view showed new output after {seen_after:.2f} s"
    finally:
        shell.close()
    Session.objects.filter(pk=session.pk).update(ended_at=timezone.now(), end_reason=Session.EndReason.CLOSED)
    page.wait_for_function(
        "() => document.getElementById('watch-message').innerText.includes('The session has ended')",
        timeout=10_000,
    )
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
