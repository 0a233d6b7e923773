"""In Chromium: an auditor finds a session by a command it contains, sees it intact, replays it
in asciinema-player and jumps to the command by its marker; a tampered recording shows as
tampered; a requester gets 403 on every auditor page; an approver watches a live session and
sees new output within ~1-2 s.

The pages run under the site's strict Content-Security-Policy (only ``'wasm-unsafe-eval'``
added for the player's WebAssembly terminal); a CSP violation in the console fails the test.
Screenshots: ``test-artifacts/`` (replay, search-and-replay, tampered, watch).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from recordings import replay
from recordings.models import GatewaySession
from recordings.recorder import TerminalRecorder
from tests.conftest import make_user, verified_client
from tests.recordings.test_replay import PROMPT, typed
from tests.recordings.test_services import make_grant, make_session

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
    GatewaySession.objects.filter(pk=session.pk).update(
        ended_at=timezone.now(), end_reason=GatewaySession.EndReason.CLOSED
    )

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
    GatewaySession.objects.filter(pk=session.pk).update(
        ended_at=timezone.now(), end_reason=GatewaySession.EndReason.CLOSED
    )

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
    GatewaySession.objects.filter(pk=session.pk).update(
        ended_at=timezone.now(), end_reason=GatewaySession.EndReason.CLOSED
    )
    page.wait_for_function(
        "() => document.getElementById('watch-message').innerText.includes('The session has ended')",
        timeout=10_000,
    )
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors


def _recorded_session(alice, *commands: tuple[bytes, bytes], slug: str = "pacs01-root") -> GatewaySession:
    """An ended session whose terminal recording holds each command typed and its output."""
    session = make_session(make_grant(alice, slug=slug))
    shell = TerminalRecorder(session=session, channel=0, width=100, height=20)
    shell.write(PROMPT)
    for command, output in commands:
        typed(shell, command + b"\r")
        time.sleep(0.02)
        shell.write(b"\r\n" + output + b"\r\n" + PROMPT)
        time.sleep(0.02)
    shell.close()
    GatewaySession.objects.filter(pk=session.pk).update(
        ended_at=timezone.now(), end_reason=GatewaySession.EndReason.CLOSED
    )
    session.refresh_from_db()
    return session


def test_an_auditor_finds_a_session_by_a_command_and_replays_it(page, live_server, root, alice, carol):
    """The whole auditor's path in the browser: search by a command, open the session, see it
    intact, replay it, and the command is on the player's screen."""
    from recordings.search import session_index

    ARTIFACTS.mkdir(exist_ok=True)
    word = "purge" + secrets.token_hex(4)
    other = _recorded_session(alice, (b"ls /var/pacs", b"archive  cache"))
    wanted = _recorded_session(
        alice, (f"dcm-{word} --study 1.2.840.1".encode(), b"3 studies purged"), slug="pacs01-admin"
    )
    session_index(session=other)
    session_index(session=wanted)

    errors = sign_in(page, live_server, carol)
    page.goto(f"{live_server.url}/sessions/")
    page.fill("input[name=q]", word)
    page.click("form.filters button[type=submit]")
    links = page.locator("#results a.session-link")
    assert links.count() == 1
    assert links.first.inner_text() == str(wanted.pk)
    links.first.click()
    page.wait_for_url(f"**/sessions/{wanted.pk}/")
    assert page.locator("td.integrity[data-state=intact]").count() == wanted.recordings.count()
    page.click("a.button:has-text('Replay')")
    page.wait_for_url(f"**/replay/sessions/{wanted.pk}/")
    page.wait_for_selector(SCREEN)
    markers = page.locator("ol.markers li")
    assert markers.count() == 1 and word in markers.first.inner_text()
    markers.first.locator("button").click()
    page.wait_for_function(
        "([s, w]) => document.querySelector(s).innerText.includes(w)", arg=[SCREEN, word], timeout=10_000
    )
    page.screenshot(path=str(ARTIFACTS / "search-and-replay.png"), full_page=True)
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors


def test_a_tampered_recording_shows_as_tampered_in_the_browser(page, live_server, root, alice, carol):
    session = _recorded_session(alice, (b"cat /etc/pacs/ae.conf", b"AE_TITLE=PACS01"))
    cast = session.recordings.get(kind="terminal")
    path = Path(settings.RECORDINGS_ROOT) / cast.path
    data = bytearray(path.read_bytes())
    data[data.index(b"PACS01")] = ord("X")  # one byte of the output changed after the fact
    path.write_bytes(bytes(data))

    sign_in(page, live_server, carol)
    page.goto(f"{live_server.url}/sessions/{session.pk}/")
    cell = page.locator(f"#recording-{cast.pk} td.integrity")
    assert cell.get_attribute("data-state") == "tampered"
    assert "TAMPERED" in cell.inner_text()
    page.screenshot(path=str(ARTIFACTS / "tampered.png"), full_page=True)


def test_a_requester_gets_403_on_every_auditor_page(page, live_server, root, alice, carol):
    """Alice holds grants and has sessions of her own, yet none of the auditor's pages open for her."""
    from django.urls import reverse

    theirs = _recorded_session(make_user("dave", "requester"), (b"id", b"uid=0(root)"), slug="pacs02-root")
    recording = theirs.recordings.get(kind="terminal")
    pages = [
        reverse("sessions:search"),
        reverse("audit:events"),
        reverse("audit:export_csv"),
        reverse("audit:export_jsonl"),
        reverse("sessions:download", args=[recording.pk]),
        reverse("replay:session", args=[theirs.pk]),
        reverse("replay:watch", args=[theirs.pk]),
        reverse("replay:cast", args=[recording.pk]),
    ]
    sign_in(page, live_server, alice)
    for url in pages:
        response = page.goto(live_server.url + url)
        assert response.status in (403, 404), f"{url} answered {response.status} to a requester"
        assert "AE_TITLE" not in page.content() and "uid=0(root)" not in page.content()
        if response.status == 403:
            assert "Not allowed" in page.inner_text("h1"), url


@pytest.mark.slow
def test_pasted_commands_are_each_listed_and_a_marker_jumps_to_its_command(
    page, live_server, gateway, alice, bob, carol, ssh_account
):
    """Five commands pasted at once into bash through the gateway: the replay lists each, and a
    jump to one shows it echoed after the output of the one before, not yet its own output."""
    from tests.fixtures.gateway import ended_session
    from tests.fixtures.pacs import grant_for
    from tests.recordings.test_replay_pasted import PASTED, PROMPT, _shell, _until

    ARTIFACTS.mkdir(exist_ok=True)
    grant_for(alice, bob, ssh_account)
    transport, channel = _shell(gateway, alice)
    try:
        channel.sendall("".join(f"{command}\r" for command in PASTED).encode())
        _until(channel, b"fourth-4\r\n")
        channel.sendall(b"exit\r")
        while channel.recv(65536):
            pass
    finally:
        transport.close()
    session = ended_session(alice)

    errors = sign_in(page, live_server, carol)
    page.goto(f"{live_server.url}/replay/sessions/{session.pk}/")
    page.wait_for_selector(SCREEN)
    markers = page.locator("ol.markers li")
    assert markers.count() == len(PASTED) + 2  # and the PS1 line before, exit after
    for number, command in enumerate(PASTED, start=1):
        assert f"{PROMPT} {command}" in markers.nth(number).inner_text()
    markers.nth(4).locator("button").click()  # printf '%s\n' second-$((6*7)) third
    page.wait_for_function(
        "s => document.querySelector(s).innerText.includes('second-$((6*7))')", arg=SCREEN, timeout=10_000
    )
    screen = screen_text(page)
    assert "/tmp" in screen.split("second-$((6*7))")[0]  # the output of cd /tmp && pwd, before it
    assert "second-42" not in screen and "fourth" not in screen
    page.screenshot(path=str(ARTIFACTS / "replay-pasted.png"), full_page=True)
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
