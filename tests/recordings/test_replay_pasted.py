"""Commands pasted or piped into a shell, through the real gateway to the real sshd's bash, are
each listed on the replay page, labelled with the line the target echoed, and each marker
jumps to where its command is on the screen (its output not yet). A password typed with echo
off stays out of the recording and out of the list.

Pasted input reaches the gateway as one read holding several lines, before the target has
echoed any of them; piped input (``printf ... | ssh -tt``) even before the shell has started
(the terminal echoes it once at once, then bash again after its prompt).
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from recordings.models import Recording
from recordings.terminal import screen_line
from tests.conftest import verified_client
from tests.fixtures.gateway import ended_session
from tests.fixtures.pacs import grant_for
from tests.gateway.test_gateway import _paramiko_login

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PROMPT = "PACSPROMPT>"
# Each command's output differs from its echo, so a marker placed after the output shows.
PASTED = [
    "echo first-$((40+2))",
    "hostname",
    "cd /tmp && pwd",
    "printf '%s\\n' second-$((6*7)) third",
    "echo fourth-$((2*2))",
]


def _until(channel, wanted: bytes, *, at_end: bool = False) -> bytes:
    """Read until ``wanted`` was output (``at_end``: is the last output, as a prompt waiting)."""
    seen = b""
    while not (seen.endswith(wanted) if at_end else wanted in seen):
        seen += channel.recv(65536)  # the channel's timeout fails the test if it never comes
    return seen


def _shell(gateway, alice):
    """Alice's shell through the gateway, its prompt set to PROMPT and shown."""
    transport = _paramiko_login(gateway, alice, "alice:pacs01-admin")
    channel = transport.open_session()
    channel.settimeout(15)
    channel.get_pty("xterm", 100, 30)
    channel.invoke_shell()
    channel.sendall(f"PS1='{PROMPT} '\r".encode())
    _until(channel, f"{PROMPT} ".encode(), at_end=True)
    time.sleep(0.3)  # the next read is a paste, not typing
    return transport, channel


def _replayed_commands(auditor, session) -> list[str]:
    """The "Commands typed" list of the session's replay page, as an auditor sees it."""
    client = verified_client(Client(), auditor)
    page = client.get(reverse("replay:session", args=[session.pk]))
    assert page.status_code == 200
    listed = re.search(r'<ol class="markers">(.*?)</ol>', page.content.decode(), re.S)
    assert listed, "no Commands typed list"
    return [
        html.unescape(label)
        for label in re.findall(r'</span> <span class="mono">(.*?)</span></button>', listed.group(1))
    ]


def _cast(session) -> tuple[bytes, list[list]]:
    recording = session.recordings.get(kind=Recording.Kind.TERMINAL)
    raw = (Path(settings.RECORDINGS_ROOT) / recording.path).read_bytes()
    return raw, [json.loads(line) for line in raw.decode().splitlines()[1:]]


def _screen_at(events: list[list], t: float) -> str:
    """Everything output up to time ``t``: what a jump to ``t`` shows (the player plays events at
    or before the time it seeks to)."""
    return "".join(e[2] for e in events if e[1] == "o" and e[0] <= t)


def _check_jumps(events: list[list], commands: list[str]) -> None:
    """Each command's marker: its echoed line is the last line on the screen there."""
    markers = {e[2]: e[0] for e in events if e[1] == "m"}
    for command in commands:
        label = f"{PROMPT} {command}"
        shown = _screen_at(events, markers[label])
        last_line = shown.rstrip("\r\n").rsplit("\n", 1)[-1]
        assert screen_line(last_line.encode(), limit=None) == label, (command, shown[-300:])


@pytest.mark.parametrize("bracketed", [False, True], ids=["plain-paste", "bracketed-paste"])
def test_each_pasted_line_is_listed_and_its_marker_jumps_to_it(
    gateway, alice, bob, carol, ssh_account, bracketed
):
    """Five lines pasted at once: five commands in the list, each the line bash echoed, in order.
    A terminal with bracketed paste wraps them in ESC[200~ ... ESC[201~ and bash runs them at
    the next Enter."""
    grant_for(alice, bob, ssh_account)
    transport, channel = _shell(gateway, alice)
    try:
        paste = "".join(f"{command}\r" for command in PASTED).encode()
        if bracketed:
            paste = b"\x1b[200~" + paste + b"\x1b[201~\r"
        channel.sendall(paste)
        _until(channel, b"fourth-4\r\n")
        channel.sendall(b"exit\r")
        while channel.recv(65536):
            pass
    finally:
        transport.close()
    session = ended_session(alice)

    listed = _replayed_commands(carol, session)
    assert listed[0].endswith(f"PS1='{PROMPT} '")
    listed = listed[1:]
    expected = [f"{PROMPT} {command}" for command in PASTED]
    if bracketed:
        # bash shows the pasted block, its prompt before the first line only, and runs it at
        # the Enter after it, echoed as an empty line.
        expected = [expected[0], *PASTED[1:], "(nothing echoed)", f"{PROMPT} exit"]
    else:
        expected.append(f"{PROMPT} exit")
    assert listed == expected
    _raw, events = _cast(session)
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    if not bracketed:
        _check_jumps(events, PASTED)
        # A jump shows the output of the commands before, not yet that of the one jumped to.
        at = {e[2]: e[0] for e in events if e[1] == "m"}
        assert "first-42" not in _screen_at(events, at[expected[0]])
        assert "first-42" in _screen_at(events, at[expected[1]])
        assert "second-42" not in _screen_at(events, at[expected[3]])


def test_each_piped_line_is_listed_where_bash_ran_it(gateway, alice, bob, carol, ssh_account):
    """``printf 'cmd1\\ncmd2\\n' | ssh -tt``: the input arrives before bash has started. The
    terminal echoes it at once, bash again after each prompt: the marker is that second line."""
    grant_for(alice, bob, ssh_account)
    script = f"PS1='{PROMPT} '\n" + "".join(f"{command}\n" for command in PASTED) + "exit\n"
    result = gateway.ssh(alice, "alice:pacs01-admin", tty=True, input=script.encode())
    assert b"fourth-4" in result.stdout, result.stderr
    session = ended_session(alice)

    listed = _replayed_commands(carol, session)
    assert len(listed) == len(PASTED) + 2
    assert listed[0].endswith(f"PS1='{PROMPT} '")
    assert listed[1:] == [f"{PROMPT} {command}" for command in [*PASTED, "exit"]]
    _raw, events = _cast(session)
    _check_jumps(events, PASTED)


def test_a_password_typed_with_echo_off_after_a_paste_stays_out_of_the_recording(
    gateway, alice, bob, carol, ssh_account
):
    grant_for(alice, bob, ssh_account)
    password = "Vendor-Secret-8731"
    transport, channel = _shell(gateway, alice)
    try:
        # One line sent with its Enter (pasted): the rest of a paste would be read as the password.
        channel.sendall(b"read -rs -p 'Vendor password: ' pw; echo; echo got-${#pw}\r")
        _until(channel, b"Vendor password: ", at_end=True)
        for key in password:  # typed key by key, nothing echoed
            channel.sendall(key.encode())
            time.sleep(0.01)
        channel.sendall(b"\r")
        _until(channel, f"got-{len(password)}\r\n".encode())
        channel.sendall(b"exit\r")
        while channel.recv(65536):
            pass
    finally:
        transport.close()
    session = ended_session(alice)

    raw, _events = _cast(session)
    assert password.encode() not in raw
    listed = _replayed_commands(carol, session)
    assert listed[0].endswith(f"PS1='{PROMPT} '")
    listed = listed[1:]
    assert password not in "".join(listed)
    assert listed == [
        f"{PROMPT} read -rs -p 'Vendor password: ' pw; echo; echo got-${{#pw}}",
        "Vendor password:",
        f"{PROMPT} exit",
    ]
