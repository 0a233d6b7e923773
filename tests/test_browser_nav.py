"""In Chromium: the top menu of a user who holds every role, at 1024 px and on a 390 px phone.

At 1024 px every link, the Admin drop-down, "My account" and "Sign out" are on one row inside
the window, the Admin links inside it once opened; on the phone all of them are behind the
Menu button, inside the window once it is open. Every one reads with WCAG AA contrast (4.5:1)
against what is behind it, works from the keyboard (Enter opens, Escape closes), and the page
one is on is marked. Checked on a list, a form and the replay page too (the menu is the same,
the page below must not push it out). Screenshots: test-artifacts/nav-*.png (docs/nav-1024.png
is nav-1024-dashboard.png, docs/nav-390.png is nav-390-list-open.png).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from common.roles import BREAK_GLASS_GROUP
from recordings.models import GatewaySession
from recordings.recorder import TerminalRecorder
from tests.conftest import make_user, verified_client
from tests.recordings.test_replay import PROMPT, typed
from tests.recordings.test_services import make_grant, make_session

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
WIDE, PHONE = {"width": 1024, "height": 768}, {"width": 390, "height": 844}
MAIN_LINKS = ["Dashboard", "My access", "Approvals", "Sessions", "Live sessions", "Audit trail"]
ADMIN_LINKS = [
    "Users",
    "Sign-in lockouts",
    "Directory sync",
    "Targets",
    "Policies",
    "System status",
    "Configuration",
]

# The contrast ratio of an element's text against the first opaque background behind it
# (WCAG 2.x relative luminance), and whether it is inside the window.
CHECK = """el => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const c = [r, g, b].map(v => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  let node = el, bg = null;
  while (node && node.nodeType === 1) {
    const c = rgb(getComputedStyle(node).backgroundColor);
    if (c.length < 4 || c[3] > 0.9) { bg = c; break; }
    node = node.parentElement;
  }
  bg = bg || [255, 255, 255];
  const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(bg)];
  const box = el.getBoundingClientRect();
  return {
    contrast: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05),
    inside: box.left >= 0 && box.right <= innerWidth && box.top >= 0 && box.width > 0 && box.height > 0,
    top: box.top, bottom: box.bottom, left: box.left, right: box.right,
  };
}"""


@pytest.fixture
def everyone(approle_settings, tmp_path):
    """A user with every role (and break-glass), with a long-ish name, and a recorded session."""
    approle_settings.RECORDINGS_ROOT = tmp_path / "recordings"
    user = make_user("a.mueller-schmidt", "requester", "approver", "auditor", "pam-admin", is_staff=True)
    user.groups.add(Group.objects.get_or_create(name=BREAK_GLASS_GROUP)[0])
    session = make_session(make_grant(user))
    shell = TerminalRecorder(session=session, channel=0, width=100, height=20)
    shell.write(PROMPT)
    typed(shell, b"ls /var/lib/dicom\r")
    shell.write(b"\r\nstudies\r\n" + PROMPT)
    shell.close()
    GatewaySession.objects.filter(pk=session.pk).update(
        ended_at=timezone.now(), end_reason=GatewaySession.EndReason.CLOSED
    )
    return user, session


def _sign_in(page, live_server, user) -> list[str]:
    client = verified_client(Client(), user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}]
    )
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def _readable(page, locator, what: str) -> dict:
    assert locator.is_visible(), f"{what} is not visible"
    seen = locator.evaluate(CHECK)
    assert seen["inside"], f"{what} is outside the window: {seen}"
    assert seen["contrast"] >= 4.5, f"{what}: contrast {seen['contrast']:.1f}:1"
    return seen


def _menu_items(page) -> dict[str, object]:
    bar = page.locator("header.topbar")
    items = {name: bar.locator(".nav-links > li > a", has_text=name).first for name in MAIN_LINKS}
    items["Admin"] = bar.locator(".nav-group summary")
    items["My account"] = bar.get_by_role("link", name="My account")
    items["Sign out"] = bar.get_by_role("button", name="Sign out")
    return items


def _no_overlaps(boxes: dict[str, dict]) -> None:
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = boxes[a], boxes[b]
            apart = (
                x["right"] <= y["left"]
                or y["right"] <= x["left"]
                or x["bottom"] <= y["top"]
                or y["bottom"] <= x["top"]
            )
            assert apart, f"{a} and {b} overlap: {x} {y}"


PAGES = [
    ("dashboard", "/"),
    ("list", "/users/"),
    ("form", "/access/targets/new/"),
    ("replay", None),
]


@pytest.mark.parametrize(("kind", "path"), PAGES, ids=[p[0] for p in PAGES])
def test_at_1024_px_every_menu_link_is_on_one_row_and_readable(page, live_server, everyone, kind, path):
    user, session = everyone
    ARTIFACTS.mkdir(exist_ok=True)
    errors = _sign_in(page, live_server, user)
    page.set_viewport_size(WIDE)
    page.goto(live_server.url + (path or f"/replay/sessions/{session.pk}/"))
    assert not page.locator(".nav-toggle summary").is_visible()  # no Menu button at this width
    boxes = {name: _readable(page, item, name) for name, item in _menu_items(page).items()}
    rows = {round(box["top"]) for box in boxes.values()}
    assert max(rows) - min(rows) <= 8, f"the menu wraps onto more than one row: {boxes}"
    _no_overlaps(boxes)
    # The page's own width never pushes the bar wider than the window.
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDE["width"]

    page.locator(".nav-group summary").click()
    for name in ADMIN_LINKS:
        _readable(page, page.locator(".nav-group ul a", has_text=name).first, f"Admin → {name}")
    page.screenshot(path=str(ARTIFACTS / f"nav-1024-{kind}.png"))
    page.keyboard.press("Escape")  # closes the drop-down, focus back on it
    assert not page.locator(".nav-group ul").is_visible()
    assert page.evaluate("document.activeElement.textContent.trim()") == "Admin"
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors


@pytest.mark.parametrize(("kind", "path"), PAGES, ids=[p[0] for p in PAGES])
def test_on_a_390_px_phone_every_menu_link_is_behind_the_menu_button(page, live_server, everyone, kind, path):
    user, session = everyone
    ARTIFACTS.mkdir(exist_ok=True)
    errors = _sign_in(page, live_server, user)
    page.set_viewport_size(PHONE)
    page.goto(live_server.url + (path or f"/replay/sessions/{session.pk}/"))
    toggle = page.locator(".nav-toggle summary")
    _readable(page, toggle, "the Menu button")
    assert not page.get_by_role("link", name="My account").is_visible()  # folded away
    page.screenshot(path=str(ARTIFACTS / f"nav-390-{kind}-closed.png"))

    toggle.focus()
    page.keyboard.press("Enter")  # from the keyboard
    boxes = {name: _readable(page, item, name) for name, item in _menu_items(page).items()}
    _no_overlaps(boxes)
    page.locator(".nav-group summary").click()
    for name in ADMIN_LINKS:
        _readable(page, page.locator(".nav-group ul a", has_text=name).first, f"Admin → {name}")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(ARTIFACTS / f"nav-390-{kind}-open.png"), full_page=True)
    toggle.focus()
    page.keyboard.press("Escape")
    assert not page.get_by_role("link", name="My account").is_visible()
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors


def test_the_page_one_is_on_is_marked_in_the_menu(page, live_server, everyone):
    user, _session = everyone
    _sign_in(page, live_server, user)
    page.set_viewport_size(WIDE)
    page.goto(live_server.url + "/users/")
    marked = page.locator("header.topbar [aria-current=page]")
    assert marked.count() == 1 and marked.text_content() == "Users"
    # The closed Admin drop-down shows that the page is one of its own.
    assert page.locator(".nav-group summary").evaluate("el => getComputedStyle(el).boxShadow") != "none"
    page.goto(live_server.url + "/sessions/")
    assert page.locator("header.topbar [aria-current=page]").inner_text() == "Sessions"
    assert page.locator(".nav-group summary").evaluate("el => getComputedStyle(el).boxShadow") == "none"


def test_a_user_with_one_role_sees_only_her_links(page, live_server, db):
    alice = make_user("alice", "requester")
    _sign_in(page, live_server, alice)
    page.set_viewport_size(WIDE)
    page.goto(live_server.url + "/")
    links = page.locator("header.topbar nav a").all_inner_texts()
    assert links == ["Dashboard", "My access", "Targets"]
    assert page.locator(".nav-group").count() == 0
