"""Replay and live view: command markers in terminal recordings, the paged cast endpoint, the
player's segmented index, the replay and watch pages, who may open them, and their audit rows.

Recordings are written with the real recorders and sealed with the real OpenBao
(``approle_settings``), as in test_recorder.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from recordings import recorder as recorder_module
from recordings import replay
from recordings.models import GatewaySession, Recording
from recordings.recorder import EventLog, ExecRecorder, TerminalRecorder, typed_lines
from recordings.terminal import screen_line
from tests.conftest import make_user, verified_client
from tests.recordings.test_services import make_grant, make_session

pytestmark = pytest.mark.django_db

ASCIINEMA = Path(sys.executable).parent / "asciinema"
PROMPT = b"\x1b[01;32malice@pacs01\x1b[00m:\x1b[01;34m~\x1b[00m$ "


@pytest.fixture
def root(approle_settings, tmp_path):
    """RECORDINGS_ROOT in a fresh folder, with Vault reachable for signing."""
    approle_settings.RECORDINGS_ROOT = tmp_path / "recordings"
    return approle_settings.RECORDINGS_ROOT


@pytest.fixture
def session(alice):
    return make_session(make_grant(alice))


def cast_events(root: Path, recording) -> list[list]:
    lines = (root / recording.path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[1:]]


def typed(rec: TerminalRecorder, text: bytes, *, echo: bool = True) -> None:
    """The user types ``text`` one key at a time; the target echoes each key unless told not to."""
    for key in (text[i : i + 1] for i in range(len(text))):
        rec.input(key)
        if echo and key != b"\r":
            rec.write(key)


# --- Markers --------------------------------------------------------------------------------


def test_enter_adds_a_marker_labelled_with_the_echoed_command_line(root, session):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(PROMPT)
    typed(rec, b"ls -l /var/lib/dicom\r")
    rec.write(b"\r\ntotal 0\r\n" + PROMPT)
    typed(rec, b"exit\r")
    recording = rec.close()

    events = cast_events(root, recording)
    markers = [e for e in events if e[1] == "m"]
    assert [m[2] for m in markers] == ["alice@pacs01:~$ ls -l /var/lib/dicom", "alice@pacs01:~$ exit"]
    assert {e[1] for e in events} == {"o", "m"}  # the keystrokes themselves are not recorded
    times = [e[0] for e in events]
    assert times == sorted(times)
    # The marker comes after the echoed command and before the command's output.
    first = events.index(markers[0])
    assert "total 0" in "".join(e[2] for e in events[first:] if e[1] == "o")


def test_a_password_typed_with_echo_off_is_never_recorded(root, session):
    """Only the screen line goes in the label: the prompt, never what was typed at it."""
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(PROMPT)
    typed(rec, b"sudo -i\r")
    rec.write(b"\r\n[sudo] password for alice: ")
    typed(rec, b"Tr0ub4dor&3-hunter2\r", echo=False)
    rec.write(b"\r\n")
    rec.input(b"\r")  # Enter on an empty line: nothing echoed since the newline
    recording = rec.close()

    raw = (root / recording.path).read_bytes()
    assert b"hunter2" not in raw and b"Tr0ub4dor" not in raw
    labels = [e[2] for e in cast_events(root, recording) if e[1] == "m"]
    assert labels == ["alice@pacs01:~$ sudo -i", "[sudo] password for alice:", ""]


def test_a_marker_label_joins_output_on_both_sides_of_a_flush(root, session):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(b"motd\r\n" + PROMPT + b"dcm")
    rec.flush()  # the gateway's periodic flush happens mid-line
    rec.write(b"query --aet PACS01")
    rec.input(b"\r")
    recording = rec.close()
    labels = [e[2] for e in cast_events(root, recording) if e[1] == "m"]
    assert labels == ["alice@pacs01:~$ dcmquery --aet PACS01"]


def test_keystrokes_without_enter_add_nothing_and_asciinema_still_plays_the_file(root, session):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(b"$ ")
    rec.input(b"echo ")
    rec.input(bytearray(b"hi"))  # the relay may pass a reused buffer
    rec.write(b"echo hi")
    rec.input(memoryview(b"\r"))
    rec.write(b"\r\nhi\r\n")
    recording = rec.close()
    assert [e[2] for e in cast_events(root, recording) if e[1] == "m"] == ["$ echo hi"]
    played = subprocess.run(
        [str(ASCIINEMA), "cat", str(root / recording.path)], capture_output=True, check=True
    )
    assert played.stdout == b"$ echo hi\r\nhi\r\n"


# --- Pasted and piped input: each line waits for its echo ----------------------------------------


def labels_and_screens(root: Path, recording) -> list[tuple[str, str]]:
    """Each marker's label and the output up to its time (what a jump to it shows)."""
    events = cast_events(root, recording)
    return [
        (m[2], "".join(e[2] for e in events if e[1] == "o" and e[0] <= m[0])) for m in events if m[1] == "m"
    ]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("tail", "text", "after_cr", "lines", "rest", "ends_cr"),
    [
        ("", "ls\rpwd\r", False, ["ls", "pwd"], "", True),
        ("", "ls\npwd\nwho", False, ["ls", "pwd"], "who", False),
        ("", "ls\r\npwd\r\n", False, ["ls", "pwd"], "", False),  # CRLF is one Enter
        ("", "\npwd\r", True, ["pwd"], "", True),  # the LF of a CRLF split across two reads
        ("ca", "t /etc/hosts\r", False, ["cat /etc/hosts"], "", True),  # typed across reads
        ("", "lss\x7f -l\x08\x08-a\r", False, ["ls -a"], "", True),  # DEL and backspace
        ("", "rm -rf /\x15echo ok\r", False, ["echo ok"], "", True),  # Ctrl-U kills the line
        ("", "ls /tmp /var\x17/etc\r", False, ["ls /tmp /etc"], "", True),  # Ctrl-W a word
        ("", "ls /et\tpasswd\r", False, ["passwd"], "", True),  # completion: only what follows
        ("", "\x1b[Ahostname\r", False, ["hostname"], "", True),  # history: likewise
        ("", "\x1b[200~one\rtwo\r\x1b[201~\r", False, ["one", "two", ""], "", True),  # bracketed paste
        ("", "  spaced  \r\r", False, ["spaced", ""], "", True),
        ("", "x" * 300 + "\r", False, ["x" * recorder_module.TYPED_TAIL_MAX], "", True),
    ],
)
def test_typed_lines_are_what_each_enter_ends(tail, text, after_cr, lines, rest, ends_cr):
    assert typed_lines(tail, text, after_cr=after_cr) == (lines, rest, ends_cr)


def test_each_pasted_line_is_a_marker_labelled_with_its_echo_after_the_earlier_output(root, session):
    """bash with readline: a paste arrives at once; bash echoes each line after its prompt once
    the command before has run. Each marker comes right after its echo, before its output."""
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(PROMPT)
    rec.input(b"cat ae.conf\rls /var/lib/dicom\rhostname\r")
    rec.write(b"cat ae.conf\r\nAE_TITLE=PACS01\r\n" + PROMPT + b"ls /var/lib/dicom\r\n")
    rec.flush()  # the next echo comes in a later flush
    rec.write(b"studies  tools\r\n" + PROMPT + b"hostname\r\npacs01\r\n" + PROMPT)
    recording = rec.close()
    marks = labels_and_screens(root, recording)
    assert [label for label, _ in marks] == [
        "alice@pacs01:~$ cat ae.conf",
        "alice@pacs01:~$ ls /var/lib/dicom",
        "alice@pacs01:~$ hostname",
    ]
    for (label, shown), output in zip(marks, ["AE_TITLE", "studies", "pacs01\r"], strict=True):
        assert screen_line(shown.rstrip("\r\n").rsplit("\n", 1)[-1].encode()) == label
        assert output not in shown.rsplit(label.split("$ ")[1], 1)[-1]
    events = cast_events(root, recording)
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    assert "".join(e[2] for e in events if e[1] == "o").count("AE_TITLE=PACS01") == 1  # nothing lost


def test_lines_the_terminal_echoes_at_once_are_each_a_marker(root, session):
    """A shell without line editing (sh): the terminal echoes the whole paste at once, the
    output of each command comes after all of it."""
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(b"$ ")
    rec.input(b"echo one\necho two\n\nls\n")
    rec.write(b"echo one\r\necho two\r\n\r\nls\r\none\r\n$ two\r\n$ $ tools\r\n$ ")
    recording = rec.close()
    assert [label for label, _ in labels_and_screens(root, recording)] == ["$ echo one", "echo two", "", "ls"]


def test_piped_input_is_marked_where_the_shell_echoes_it_after_its_prompt(root, session):
    """Input sent before the shell started: the terminal echoes it bare at once, then bash
    again after each prompt. The marker is the prompted echo, where the command runs."""
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.input(b"uptime\nexit\n")
    rec.write(b"uptime\r\nexit\r\nWelcome to pacs01\r\n" + PROMPT + b"uptime\r\n 10:00 up 3 days\r\n")
    rec.write(PROMPT + b"exit\r\nlogout\r\n")
    recording = rec.close()
    marks = labels_and_screens(root, recording)
    assert [label for label, _ in marks] == ["alice@pacs01:~$ uptime", "alice@pacs01:~$ exit"]
    assert "Welcome to pacs01" in marks[0][1] and "up 3 days" not in marks[0][1]


def test_a_password_typed_after_a_paste_is_never_recorded(root, session):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(PROMPT)
    rec.input(b"mysql -u root -p pacsdb\r")  # pasted with its Enter
    rec.write(b"mysql -u root -p pacsdb\r\nEnter password: ")
    typed(rec, b"Tr0ub4dor&3-hunter2\r", echo=False)
    rec.write(b"\r\nmysql> ")
    typed(rec, b"quit\r")
    recording = rec.close()
    raw = (root / recording.path).read_bytes()
    assert b"hunter2" not in raw and b"Tr0ub4dor" not in raw
    assert [label for label, _ in labels_and_screens(root, recording)] == [
        "alice@pacs01:~$ mysql -u root -p pacsdb",
        "Enter password:",
        "mysql> quit",
    ]


def test_an_enter_never_echoed_is_given_the_line_shown_when_it_came(root, session, monkeypatch):
    """Given up when a line typed later is echoed, when the output waited through is too
    long, or at the end of the recording: then labelled like a typed Enter."""
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(b"Password: ")
    rec.input(b"s3cret-paste\r")  # echo off, and the program prints no newline after it
    rec.write(b"\r\x1b[K" + PROMPT)
    typed(rec, b"id\r")  # echoed as typed: the target is reading new lines
    rec.write(b"\r\nuid=0(root)\r\n" + PROMPT)
    monkeypatch.setattr(recorder_module, "ECHO_SCAN_MAX", 1000)
    rec.input(b"cat big.log\rdate\r")
    rec.write(b"cat big.log\r\n")
    rec.flush()
    rec.write(b"log line\r\n" * 200)
    rec.flush()
    rec.write(PROMPT + b"date\r\nMon\r\n" + PROMPT)
    rec.input(b"exit\r")  # the session ends before the echo
    recording = rec.close()
    assert b"s3cret" not in (root / recording.path).read_bytes()
    assert [label for label, _ in labels_and_screens(root, recording)] == [
        "Password:",
        "alice@pacs01:~$ id",
        "alice@pacs01:~$ cat big.log",
        "alice@pacs01:~$",  # its echo came after more than ECHO_SCAN_MAX of output
        "alice@pacs01:~$",
    ]


# --- Index and segments (the player's segmented recording) ---------------------------------------


def write_cast(path: Path, events: list[list], width: int = 80, height: int = 24) -> None:
    with path.open("wb") as f:
        f.write(json.dumps({"version": 2, "width": width, "height": height, "timestamp": 0}).encode() + b"\n")
        for event in events:
            f.write(orjson.dumps(event) + b"\n")


def check_like_the_player(index: dict, segments: list[dict]) -> None:
    """The rules asciinema-player 3.18 checks a segmented recording against (core.js)."""
    assert index["version"] == 1 and index["term"]["cols"] > 0 and index["term"]["rows"] > 0
    starts = [s["start"] for s in index["segments"]]
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert all(start < index["duration"] for start in starts[1:])
    marker_times = [m[0] for m in index["markers"]]
    assert marker_times == sorted(marker_times) and all(t <= index["duration"] for t in marker_times)
    assert all(isinstance(m[1], str) for m in index["markers"])
    for number, segment in enumerate(segments):
        start = starts[number]
        end = starts[number + 1] if number + 1 < len(starts) else index["duration"]
        events = segment["events"]
        assert events and isinstance(segment["snapshot"]["init"], str)
        assert all(len(e) == 3 and isinstance(e[1], str) for e in events)
        times = [e[0] for e in events]
        assert times == sorted(times) and times[0] >= start
        assert all(t < end for t in times) if number + 1 < len(starts) else times[-1] == end
        if number > 0:
            assert times[0] == start
        # Markers come from the index only; in segments they are empty output at their time.
        assert not [e for e in events if e[1] == "m"]


def test_the_index_splits_a_large_recording_into_segments_the_player_accepts(tmp_path):
    events, t = [], 0.0
    for i in range(30000):
        t = round(t + (0 if i % 3 else 0.013), 6)  # many events share a time
        if i % 2500 == 0:
            events.append([t, "m", f"$ command {i}"])
        elif i == 12345:
            events.append([t, "r", "132x43"])
        else:
            events.append([t, "o", f'line {i} "m" "r" \u00e9\x1b[0m ' * 3 + "\r\n"])
    path = tmp_path / "big.cast"
    write_cast(path, events)
    built = replay.build_cast_index(path, segment_bytes=64 * 1024)
    assert len(built.segments) > 20
    assert built.duration == events[-1][0]
    assert built.markers == [(e[0], e[2]) for e in events if e[1] == "m"]
    index = replay.player_index(type("R", (), {"pk": 7})(), built)
    segments = []
    for (offset, _t, cols, rows), entry in zip(built.segments, index["segments"], strict=True):
        query = dict(part.split("=") for part in entry["url"].split("?")[1].split("&"))
        assert int(query["from"]) == offset
        segments.append(
            replay.player_segment(path, start=offset, end=int(query["to"]), cols=int(cols), rows=int(rows))
        )
    check_like_the_player(index, segments)
    assert index["markers"] == [[e[0], e[2]] for e in events if e[1] == "m"]
    # Every event is in exactly one segment, in order; sizes follow the resize.
    played = [[t, "o", ""] if code == "m" else [t, code, data] for t, code, data in events]
    assert [e for s in segments for e in s["events"]] == played
    assert (built.segments[-1][2], built.segments[-1][3]) == (132, 43)
    # A later segment starts from the output before it (the screen as it was).
    assert segments[5]["snapshot"]["init"].endswith(segments[4]["events"][-1][2])


def test_past_a_hundred_markers_the_player_gets_none_and_the_page_lists_them(client, carol, session, root):
    """Drawing 1,400 markers on the player's progress bar held its first frame back ~0.8 s."""
    path = root / "2026/01/01/session-x/channel-0.cast"
    path.parent.mkdir(parents=True)
    markers = [[i + 0.5, "m", f"$ command {i}"] for i in range(replay.PLAYER_MARKERS_MAX + 1)]
    markers[0][2] = "$ echo '<img src=x onerror=alert(1)>'"  # the target's echo is not trusted
    write_cast(path, markers)
    recording = Recording.objects.create(
        session=session, channel=0, kind=Recording.Kind.TERMINAL, path="2026/01/01/session-x/channel-0.cast"
    )
    verified_client(client, carol)
    html = client.get(replay_url(session)).content.decode()
    assert html.count('class="link marker"') == replay.PLAYER_MARKERS_MAX + 1
    assert f"$ command {replay.PLAYER_MARKERS_MAX}" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html
    index = client.get(reverse("replay:index", args=[recording.pk])).json()
    assert index["markers"] == [] and index["duration"] == replay.PLAYER_MARKERS_MAX + 0.5


def test_an_empty_recording_is_one_empty_segment(tmp_path):
    path = tmp_path / "empty.cast"
    write_cast(path, [])
    built = replay.build_cast_index(path)
    assert built.duration == 0 and len(built.segments) == 1
    segment = replay.player_segment(path, start=built.header_end, end=built.end, cols=80, rows=24)
    assert segment["events"] == [[0.0, "o", ""]]


def test_a_partial_last_line_is_left_out_until_it_is_whole(tmp_path):
    path = tmp_path / "live.cast"
    write_cast(path, [[0.5, "o", "one\r\n"], [1.0, "o", "two\r\n"]])
    with path.open("ab") as f:
        f.write(b'[1.5, "o", "thr')  # a write the reader caught half-way
    built = replay.build_cast_index(path)
    assert built.duration == 1.0 and built.end == path.stat().st_size - len(b'[1.5, "o", "thr')
    page = replay.read_cast_page(path, start=0, max_bytes=1 << 20)
    assert page.body.count(b"\n") == 2 and page.next == built.end


# --- Pages and endpoints ------------------------------------------------------------------------


@pytest.fixture
def recorded(root, session):
    """A finished session: a shell with two commands, a non-pty command with output, a binary
    download, an upload and a forward, all in events.jsonl."""
    events = EventLog(session=session)
    shell = TerminalRecorder(session=session, channel=0, width=100, height=30, term="xterm")
    shell.write(PROMPT)
    typed(shell, b"cat /etc/pacs/ae.conf\r")
    shell.write(b"\r\nAE_TITLE=PACS01 <b>bold</b>\r\n" + PROMPT)
    typed(shell, b"exit\r")
    shell.write(b"\r\nlogout\r\n")
    events.exec_started(channel=1, command="dcmdump /tmp/<x>.dcm")
    text = ExecRecorder(session=session, channel=1)
    text.write(b"(0010,0010) PN [DOE^JOHN] <script>alert(1)</script>\n")
    text.write_stderr(b"W: missing meta header\n")
    events.exit_status(channel=1, status=0)
    events.exec_started(channel=2, command="tar cz /etc/pacs")
    binary = ExecRecorder(session=session, channel=2)
    binary.write(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    events.exit_status(channel=2, status=2)
    events.exit_status(channel=0, status=0)
    events.file_transfer(channel=3, direction="upload", path="/tmp/patch.sh", size=1234, sha256="ab" * 32)
    events.file_transfer(
        channel=3,
        direction="download",
        path="/var/log/big",
        size=99,
        sha256="",
        complete=False,
        note="never closed",
    )
    events.forwarded_connection(channel=4, host="127.0.0.1", port=5432, bytes_in=2048, bytes_out=4096)
    events.note("refused", what="agent forwarding")
    recordings = {
        "events": events,
        "shell": shell,
        "text": text,
        "binary": binary,
    }
    sealed = {name: rec.close() for name, rec in recordings.items()}
    session.ended_at = timezone.now()
    session.end_reason = GatewaySession.EndReason.CLOSED
    session.save()
    return sealed


def replay_url(session) -> str:
    return reverse("replay:session", args=[session.pk])


def cast_url(recording, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return reverse("replay:cast", args=[recording.pk]) + (f"?{query}" if query else "")


def test_an_auditor_replays_a_session_with_its_commands_transfers_and_output(
    client, carol, session, recorded
):
    verified_client(client, carol)
    response = client.get(replay_url(session))
    assert response.status_code == 200
    html = response.content.decode()
    assert reverse("replay:index", args=[recorded["shell"].pk]) in html
    assert "dcmdump /tmp/&lt;x&gt;.dcm" in html and "tar cz /etc/pacs" in html
    assert '<span class="badge bad">2</span>' in html  # tar's exit status
    assert "/tmp/patch.sh" in html and "ab" * 32 in html and "never closed" in html
    assert "127.0.0.1:5432" in html and "agent forwarding" in html
    # Non-pty output as text, escaped; binary output as a note.
    assert "(0010,0010) PN [DOE^JOHN] &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<span class="stderr">W: missing meta header\n</span>' in html
    assert f"Binary, {4 + 1024} bytes" in html
    assert "<script>alert" not in html
    # The commands typed in the shell, listed beside its player.
    assert "alice@pacs01:~$ cat /etc/pacs/ae.conf" in html and "alice@pacs01:~$ exit" in html
    # The player needs WebAssembly; that page alone may compile it.
    assert "'wasm-unsafe-eval'" in response["Content-Security-Policy"]
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]

    event = AuditEvent.objects.get(action="recording.viewed")
    assert event.actor == carol and event.object_id == str(session.pk) and event.details["page"] == "replay"
    assert set(event.details["recordings"]) == {r.pk for r in recorded.values()}


def test_other_pages_keep_the_strict_policy(client, carol, session, recorded):
    verified_client(client, carol)
    response = client.get(reverse("sessions:live"))
    assert response.status_code == 200
    assert "wasm-unsafe-eval" not in response["Content-Security-Policy"]


def test_the_player_index_lists_the_commands_as_markers(client, carol, session, recorded):
    verified_client(client, carol)
    client.get(replay_url(session))
    index = client.get(reverse("replay:index", args=[recorded["shell"].pk])).json()
    assert [label for _, label in index["markers"]] == [
        "alice@pacs01:~$ cat /etc/pacs/ae.conf",
        "alice@pacs01:~$ exit",
    ]
    assert index["term"] == {"cols": 100, "rows": 30}
    segment = client.get(index["segments"][0]["url"]).json()
    assert "AE_TITLE=PACS01" in "".join(e[2] for e in segment["events"] if e[1] == "o")
    check_like_the_player(index, [segment])


def test_the_index_is_cached_beside_a_sealed_recording_and_a_stale_cache_is_ignored(
    client, carol, session, recorded, root
):
    verified_client(client, carol)
    client.get(replay_url(session))
    url = reverse("replay:index", args=[recorded["shell"].pk])
    first = client.get(url).json()
    cache = root / (recorded["shell"].path + replay.INDEX_SUFFIX)
    data = json.loads(cache.read_text())
    assert data["sha256"] == recorded["shell"].sha256
    data["index"]["markers"] = [[0.0, "forged"]]
    data["sha256"] = "0" * 64  # not this recording's
    cache.write_text(json.dumps(data))
    assert client.get(url).json() == first


def test_the_session_user_may_replay_her_own_session(client, alice, session, recorded):
    verified_client(client, alice)
    assert client.get(replay_url(session)).status_code == 200
    assert client.get(cast_url(recorded["shell"])).status_code == 200


def test_a_requester_cannot_replay_another_users_session(client, session, recorded):
    dave = make_user("dave", "requester")
    verified_client(client, dave)
    assert client.get(replay_url(session)).status_code == 404
    assert client.get(cast_url(recorded["shell"])).status_code == 404
    assert not AuditEvent.objects.filter(action="recording.viewed").exists()


def test_mallory_gets_404_everywhere(client, mallory, session, recorded):
    verified_client(client, mallory)
    shell = recorded["shell"].pk
    for url in (
        replay_url(session),
        reverse("replay:watch", args=[session.pk]),
        reverse("replay:watch-status", args=[session.pk]),
        reverse("replay:cast", args=[shell]),
        reverse("replay:index", args=[shell]),
        reverse("replay:segment", args=[shell]) + "?from=0&to=0&cols=80&rows=24",
    ):
        assert client.get(url).status_code == 404, url


def test_the_data_endpoints_need_the_audited_page_first(client, carol, session, recorded):
    verified_client(client, carol)
    shell = recorded["shell"].pk
    assert client.get(cast_url(recorded["shell"])).status_code == 403
    assert client.get(reverse("replay:index", args=[shell])).status_code == 403
    assert client.get(reverse("replay:watch-status", args=[session.pk])).status_code == 403
    client.get(replay_url(session))
    assert client.get(cast_url(recorded["shell"])).status_code == 200


def test_the_cast_endpoint_pages_whole_lines_after_the_header(client, carol, session, recorded, root):
    verified_client(client, carol)
    client.get(replay_url(session))
    raw = (root / recorded["shell"].path).read_bytes()
    header = raw[: raw.index(b"\n") + 1]
    pages, offset = [], 0
    while True:
        response = client.get(cast_url(recorded["shell"], **{"from": offset, "max": 40}))
        assert response.status_code == 200 and response["Content-Type"] == "application/x-asciicast"
        body = response.content
        assert body.startswith(header) and body.endswith(b"\n")
        lines = body[len(header) :]
        for line in lines.splitlines():
            assert len(json.loads(line)) == 3
        assert int(response["X-Cast-Start"]) == (offset or len(header))
        assert int(response["X-Cast-Size"]) == len(raw)
        pages.append(lines)
        offset = int(response["X-Cast-Next"])
        if response["X-Cast-Complete"] == "1":
            break
        assert len(pages) < 100
    assert len(pages) > 2  # max=40 cuts after the first whole line past 40 bytes
    assert header + b"".join(pages) == raw


def test_a_cast_offset_inside_a_line_starts_at_the_next_line(client, carol, session, recorded, root):
    verified_client(client, carol)
    client.get(replay_url(session))
    raw = (root / recorded["shell"].path).read_bytes()
    second = raw.index(b"\n") + 1
    third = raw.index(b"\n", second) + 1
    response = client.get(cast_url(recorded["shell"], **{"from": second + 3}))
    assert int(response["X-Cast-Start"]) == third
    assert response.content[second:] == raw[third:]


@pytest.mark.parametrize("offset", ["end", "past"])
def test_a_cast_offset_at_or_after_the_end_gives_the_header_only(
    client, carol, session, recorded, root, offset
):
    verified_client(client, carol)
    client.get(replay_url(session))
    raw = (root / recorded["shell"].path).read_bytes()
    start = len(raw) if offset == "end" else len(raw) + 10_000
    response = client.get(cast_url(recorded["shell"], **{"from": start}))
    assert response.status_code == 200
    assert response.content == raw[: raw.index(b"\n") + 1]
    assert response["X-Cast-Next"] == str(len(raw)) and response["X-Cast-Complete"] == "1"


@pytest.mark.parametrize(
    "query",
    ["from=-1", "from=abc", "from=1e3", "from=1.5", "max=0", "max=-5", "max=lots", "from=" + "9" * 30],
)
def test_bad_cast_parameters_are_a_400(client, carol, session, recorded, query):
    verified_client(client, carol)
    client.get(replay_url(session))
    response = client.get(reverse("replay:cast", args=[recorded["shell"].pk]) + "?" + query)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        "to=100&cols=80&rows=24",  # no from
        "from=1&to=100&cols=80&rows=24",  # inside the header, not a line start
        "from={h}&to=999999999&cols=80&rows=24",  # past the end
        "from={h}&to={h}&cols=0&rows=24",
        "from={h}&to={h}&cols=80&rows=99999",
        "from={h}&to={h1}&cols=80&rows=24",  # to inside a line
    ],
)
def test_bad_segment_parameters_are_a_400(client, carol, session, recorded, root, query):
    verified_client(client, carol)
    client.get(replay_url(session))
    raw = (root / recorded["shell"].path).read_bytes()
    header_end = raw.index(b"\n") + 1
    query = query.format(h=header_end, h1=header_end + 3)
    response = client.get(reverse("replay:segment", args=[recorded["shell"].pk]) + "?" + query)
    assert response.status_code == 400


def test_a_missing_recording_file_is_a_404_not_a_500(client, carol, session, recorded, root):
    verified_client(client, carol)
    client.get(replay_url(session))
    (root / recorded["shell"].path).unlink()
    assert client.get(cast_url(recorded["shell"])).status_code == 404
    assert client.get(reverse("replay:index", args=[recorded["shell"].pk])).status_code == 404


# --- Watching a live session --------------------------------------------------------------------


@pytest.fixture
def live(root, session):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(PROMPT)
    rec.flush()
    yield rec
    rec.close()


def watch_url(session) -> str:
    return reverse("replay:watch", args=[session.pk])


def test_an_auditor_watches_a_live_session_without_the_terminate_form(client, carol, session, live):
    verified_client(client, carol)
    response = client.get(watch_url(session))
    assert response.status_code == 200
    assert reverse("sessions:terminate", args=[session.pk]) not in response.content.decode()
    assert "'wasm-unsafe-eval'" in response["Content-Security-Policy"]
    event = AuditEvent.objects.get(action="recording.watched")
    assert event.actor == carol and event.details["recordings"] == [live.recording.pk]

    status = client.get(reverse("replay:watch-status", args=[session.pk])).json()
    assert status["live"] is True
    assert status["recordings"] == [
        {
            "id": live.recording.pk,
            "channel": 0,
            "cast": reverse("replay:cast", args=[live.recording.pk]),
            "finalized": False,
        }
    ]
    # Tailing: what the gateway flushes next is the next page.
    first = client.get(status["recordings"][0]["cast"])
    assert first["X-Cast-Complete"] == "0"
    live.write(b"top\r\n")
    live.flush()
    more = client.get(status["recordings"][0]["cast"] + "?from=" + first["X-Cast-Next"])
    lines = more.content.splitlines()[1:]
    assert [json.loads(line)[2] for line in lines] == ["top\r\n"]


@pytest.mark.parametrize("persona", ["bob", "pat"])
def test_approvers_and_pam_admins_get_the_terminate_form(client, request, persona, session, live):
    verified_client(client, request.getfixturevalue(persona))
    html = client.get(watch_url(session)).content.decode()
    assert f'action="{reverse("sessions:terminate", args=[session.pk])}"' in html
    assert 'name="reason"' in html


def test_the_session_user_may_not_watch_herself_and_others_get_404(client, alice, session, live):
    verified_client(client, alice)
    assert client.get(watch_url(session)).status_code == 403
    dave = make_user("dave", "requester")
    verified_client(client, dave)
    assert client.get(watch_url(session)).status_code == 404
    assert not AuditEvent.objects.filter(action="recording.watched").exists()


def test_watching_an_ended_session_points_to_the_replay_without_an_audit_row(
    client, carol, session, recorded
):
    verified_client(client, carol)
    response = client.get(watch_url(session))
    assert response.status_code == 200
    assert replay_url(session) in response.content.decode()
    assert not AuditEvent.objects.filter(action="recording.watched").exists()
