"""Session search: the text indexed from real recordings, free-text matching, filters,
keyset pages, who may search, and the audit of each search.

Recordings are written by the real recorders and sealed with the real OpenBao server
(``approle_settings``), as the gateway does. The word index is PostgreSQL's GIN tsvector
or SQLite's FTS5 table, whichever database the suite runs on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from recordings import search
from recordings.models import GatewaySession, SessionText
from recordings.recorder import EventLog, ExecRecorder, TerminalRecorder
from recordings.search import session_index, session_text_store, sessions_index_pending
from recordings.tasks import index_recent_task, maintain_task
from recordings.terminal import MARKER_LABEL_MAX
from tests.conftest import make_user, verified_client
from tests.fixtures.gateway_process import database_url
from tests.recordings.test_replay import cast_events
from tests.recordings.test_services import make_grant, make_session

pytestmark = pytest.mark.django_db

SEARCH = reverse("sessions:search")
ROOT = Path(__file__).resolve().parents[2]

# What a bash session on a PACS host echoes: a coloured prompt with a window title, a typo
# corrected with backspace, readline redrawing the line.
TERMINAL_OUTPUT = [
    b"\x1b]0;root@pacs01: ~\x07\x1b[01;32mroot@pacs01\x1b[00m:\x1b[01;34m~\x1b[00m# ",
    b"rm -rf /var/pacs/archivx\x08 \x08e",
    b"\r\n",
    b"\x1b[01;32mroot@pacs01\x1b[00m:~# ",
    b"systemctl restart \x1b[1mdcm4chee\x1b[0m\r\n",
    b"Job for dcm4chee.service failed \xe2\x80\x94 see journalctl\r\n",
]
TAR_LIKE = bytes(range(256)) * 64  # binary: most bytes are not text


@pytest.fixture
def root(approle_settings, tmp_path):
    """RECORDINGS_ROOT in a fresh folder, with Vault reachable for sealing."""
    approle_settings.RECORDINGS_ROOT = tmp_path / "recordings"
    return approle_settings.RECORDINGS_ROOT


def record_session(
    session: GatewaySession, *, terminal=TERMINAL_OUTPUT, exec_text=b"", exec_binary=b"", end=True
):
    """Write and seal a session's recordings the way the gateway does; end the session."""
    events = EventLog(session=session)
    term = TerminalRecorder(session=session, channel=0, width=80, height=24, term="xterm")
    for chunk in terminal:
        term.write(chunk)
    term.resize(132, 40)
    term.close()
    events.exec_started(channel=1, command="dcmsend -aec PACS01 archive01:11112 /var/pacs/outgoing/study1")
    runner = ExecRecorder(session=session, channel=1)
    if exec_text:
        runner.write(exec_text)
    if exec_binary:
        runner.write(exec_binary)
    runner.write_stderr(b"I: Association accepted (max send PDV: 16372)\n")
    runner.close()
    events.exit_status(channel=1, status=0)
    events.file_transfer(
        channel=2,
        direction="download",
        path="/var/pacs/archive/2024/CT-0042.dcm",
        size=524288,
        sha256="ab" * 32,
    )
    events.forwarded_connection(
        channel=3, host="pacsdb.hospital.example", port=5432, bytes_in=10, bytes_out=20
    )
    events.close()
    if end:
        session.ended_at = timezone.now()
        session.end_reason = GatewaySession.EndReason.CLOSED
        session.save(update_fields=["ended_at", "end_reason"])
    return session


def ended(grant, *, started_at=None, **fields) -> GatewaySession:
    started_at = started_at or timezone.now() - dt.timedelta(hours=1)
    return make_session(
        grant,
        started_at=started_at,
        ended_at=started_at + dt.timedelta(minutes=5),
        end_reason=fields.pop("end_reason", GatewaySession.EndReason.CLOSED),
        **fields,
    )


def indexed(session: GatewaySession, text: str) -> GatewaySession:
    session_text_store(session_pk=session.pk, text=text)
    return session


def found(client, **params) -> list[int]:
    """The session ids the search page lists, in order."""
    response = client.get(SEARCH, params)
    assert response.status_code == 200, response.content[:500]
    page = response.context["page"]
    assert page is not None, response.context["form"].errors
    return [s.pk for s in page.sessions]


@pytest.fixture
def grant(alice):
    return make_grant(alice)


@pytest.fixture
def auditor_client(client, carol):
    return verified_client(client, carol)


# --- The text ----------------------------------------------------------------------------


def test_the_text_has_commands_output_paths_and_forwards_without_escape_sequences(root, grant):
    session = record_session(
        make_session(grant), exec_text=b"I: Requesting Association\nI: Sending file study1/IM0001\n"
    )
    text = session_index(session=session).text
    assert "root@pacs01:~# rm -rf /var/pacs/archive\n" in text  # the typo fixed as the screen showed it
    assert "systemctl restart dcm4chee" in text
    assert "failed — see journalctl" in text
    assert "\x1b" not in text and "\x07" not in text and "01;32m" not in text
    assert "dcmsend -aec PACS01 archive01:11112 /var/pacs/outgoing/study1" in text
    assert "I: Sending file study1/IM0001" in text and "Association accepted" in text
    assert "download /var/pacs/archive/2024/CT-0042.dcm " + "ab" * 32 in text
    assert "forward pacsdb.hospital.example:5432" in text
    # Commands come first, so the cap cuts output rather than them.
    assert text.index("dcmsend") < text.index("root@pacs01")


def test_each_command_marker_is_a_line_of_the_searchable_output(root, grant):
    """The replay's marker for a command and the session's searchable text read the terminal
    the same way (one model): the label is a line of the output the search indexed, edits
    (erase to the start of the line, cursor moves, backspaces, a CUP) applied alike."""
    session = make_session(grant)
    term = TerminalRecorder(session=session, channel=0, width=80, height=24, term="xterm")
    prompt = b"\x1b[01;32mroot@pacs01\x1b[00m:~# "
    edited = [
        prompt + b"rm -rf /var/pacs/tmp\x1b[9D\x1b[1K",
        prompt + b"systemctl stop pacs\x08\x08\x08\x08\x1b[Kstart pacs",
        prompt + b"ls /var\x1b[3Dxyz\x1b[2C",
        prompt + b"\x1b[5;1Hvi\x1b[5;2Hm",
        prompt + b"echo " + b"x" * 100 + b" \rtail",
    ]
    for line in edited:
        term.write(line)
        term.input(b"\r")
        term.write(b"\r\noutput\r\n")
    recording = term.close()
    labels = [e[2] for e in cast_events(root, recording) if e[1] == "m"]
    extract = search._Extract(commands=[], outputs=[], budget=100_000)
    search._read_cast(root / recording.path, extract)
    assert extract.commands == [label.strip() for label in labels]  # the commands, listed first
    shown = extract.outputs[0].splitlines()
    before_output = [shown[i - 1] for i, line in enumerate(shown) if line == "output"]
    assert len(labels) == len(edited) and all(labels)
    assert [line[:MARKER_LABEL_MAX] for line in before_output] == labels  # a label is cut at 80
    assert before_output[-1].endswith("tail" + "x" * 36)


def test_binary_exec_output_is_skipped_and_text_around_it_kept(root, grant):
    session = record_session(
        make_session(grant), exec_text=b"tar: Removing leading '/'\n", exec_binary=TAR_LIKE
    )
    text = session_index(session=session).text
    assert "tar: Removing leading '/'" in text
    assert "\x00" not in text and "\ufffd" not in text
    assert len(text) < 2000  # 16 KiB of binary left out


def test_the_text_is_capped_and_says_so_keeping_the_commands(root, grant, settings):
    """Flooding the terminal first cannot hide a later command: markers and exec commands
    come before the output in the text, so the cap cuts output."""
    settings.SESSIONS_SEARCH_MAX_CHARS = 10_000
    session = make_session(grant)
    term = TerminalRecorder(session=session, channel=5, width=80, height=24)
    for i in range(0, 5000, 500):
        term.write(b"".join(b"/var/log/pacs/%06d.log\r\n" % n for n in range(i, i + 500)))
    term.write(b"root@pacs01:~# shred -u /var/pacs/keys")
    term.input(b"\r")  # Enter: a marker labelled with the echoed line
    term.write(b"\r\n")
    term.close()
    row = session_index(session=record_session(session))
    assert row.truncated
    assert len(row.text) <= 10_000
    assert "/var/log/pacs/000000.log" in row.text and "/var/log/pacs/004999.log" not in row.text
    assert "dcmsend" in row.text and "shred -u /var/pacs/keys" in row.text


def test_a_live_session_is_not_indexed(root, grant):
    session = record_session(make_session(grant), end=False)
    with pytest.raises(ValueError, match="live"):
        session_index(session=session)


def test_indexing_again_replaces_the_text(grant, auditor_client):
    session = indexed(ended(grant), "dcmsend one")
    indexed(session, "movescu two")
    assert found(auditor_client, q="movescu") == [session.pk]
    assert found(auditor_client, q="dcmsend") == []


def test_the_periodic_job_indexes_ended_sessions_it_missed_once(root, grant, alice):
    first = record_session(make_session(grant))
    live = make_session(grant)
    refused = GatewaySession.objects.create(
        user=alice, account="nope", ended_at=timezone.now(), end_reason=GatewaySession.EndReason.REFUSED
    )
    assert sessions_index_pending() == 2
    assert set(SessionText.objects.values_list("session_id", flat=True)) == {first.pk, refused.pk}
    assert SessionText.objects.get(session=refused).text == ""
    assert sessions_index_pending() == 0
    assert not SessionText.objects.filter(session=live).exists()


def test_the_quick_step_indexes_the_sessions_that_ended_lately_and_leaves_older_ones(root, grant):
    """The worker's step every SESSIONS_INDEX_SECONDS: sessions ended within the last hour; one
    ended long ago (the worker was down) waits for the upkeep pass, which indexes it too."""
    recent = record_session(make_session(grant))
    old = record_session(make_session(grant))
    GatewaySession.objects.filter(pk=old.pk).update(ended_at=timezone.now() - dt.timedelta(hours=2))
    assert search.sessions_index_recent() == 1
    assert list(SessionText.objects.values_list("session_id", flat=True)) == [recent.pk]
    assert "rm -rf /var/pacs/archive" in SessionText.objects.get(session=recent).text
    assert search.sessions_index_recent() == 0
    assert index_recent_task() == 0
    assert maintain_task()["indexed"] == 1
    assert SessionText.objects.filter(session=old).exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_loop_makes_an_ended_session_searchable_within_seconds(
    root, grant, tmp_path, approle_settings
):
    """``sessions_maintain --loop`` (the embedded worker) with SESSIONS_INDEX_SECONDS=1 and the
    upkeep pass an hour away: a session that ends while it runs is indexed by its quick step."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "VAULT_ADDR": approle_settings.VAULT_ADDR,
        "VAULT_TOKEN": "",
        "VAULT_ROLE_ID": approle_settings.VAULT_ROLE_ID,
        "VAULT_SECRET_ID": approle_settings.VAULT_SECRET_ID,
        "RECORDINGS_ROOT": str(root),
        "SESSIONS_INDEX_SECONDS": "1",
        "SESSIONS_MAINTAIN_SECONDS": "3600",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "sessions_maintain", "--loop"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(2)  # past the first (full) pass
        assert worker.poll() is None, log.read_text()
        session = record_session(make_session(grant))
        ended = time.monotonic()
        while not SessionText.objects.filter(session=session).exists():
            assert time.monotonic() - ended < 15, "not indexed:\n" + log.read_text()
            time.sleep(0.1)
        assert "systemctl restart dcm4chee" in SessionText.objects.get(session=session).text
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_text_indexed_before_its_recordings_were_sealed_is_indexed_again(root, grant):
    session = make_session(grant)
    term = TerminalRecorder(session=session, channel=0, width=80, height=24)
    term.write(b"$ movescu -aec ARCHIVE\r\n")
    term.flush()
    GatewaySession.objects.filter(pk=session.pk).update(ended_at=timezone.now())
    assert session_index(session=session).partial
    assert sessions_index_pending() == 0  # still being written: nothing to gain yet
    term.write(b"$ storescu -aec ARCHIVE\r\n")
    term.close()
    assert sessions_index_pending() == 1
    row = SessionText.objects.get(session=session)
    assert not row.partial and "storescu" in row.text


def test_the_maintenance_command_indexes_pending_sessions(root, grant, capsys):
    record_session(make_session(grant))
    call_command("sessions_maintain")
    assert "indexed: 1" in capsys.readouterr().out


# --- Free text ---------------------------------------------------------------------------


def test_search_finds_a_session_by_a_command_that_appeared_in_it(root, grant, auditor_client):
    hit = record_session(make_session(grant))
    session_index(session=hit)
    miss = indexed(ended(grant), "root@pacs01:~# ls -l /var/pacs\nformat disk? no\n")
    for q in (
        "dcmsend",
        "DCMSEND",
        "rm",
        "dcm*",
        "/var/pacs/archive",
        "/var/pacs/arch",
        '"rm -rf /var/pacs/archive"',
        "rm /var/pacs/archive",
        "pacsdb.hospital.example:5432",
        "archive01:11112",
        "CT-0042.dcm",
        "ab" * 32,
    ):
        assert found(auditor_client, q=q) == [hit.pk], q
    assert found(auditor_client, q="/var/pacs") == [hit.pk, miss.pk]
    assert found(auditor_client, q="rmdir") == []  # a word is a whole word
    assert found(auditor_client, q="dcmsend movescu") == []  # every term must appear
    assert found(auditor_client, q='"rm -rf /var/pacs/old"') == []


def test_rm_is_a_word_not_a_substring(grant, auditor_client):
    rm = indexed(ended(grant), "# rm /tmp/x")
    indexed(ended(grant), "format permission term")
    assert found(auditor_client, q="rm") == [rm.pk]


def test_words_that_did_not_fit_the_word_index_are_still_found(grant, auditor_client, monkeypatch):
    monkeypatch.setattr(search, "WORDS_MAX_BYTES", 2000)
    flood = " ".join(f"/srv/pacs/file{n:05d}" for n in range(2000))
    session = indexed(ended(grant), f"find /srv/pacs\n{flood}\nshred -u /var/pacs/key.pem\n")
    row = SessionText.objects.get(session=session)
    assert not row.all_words_indexed
    assert found(auditor_client, q="shred") == [session.pk]
    assert found(auditor_client, q="shr*") == [session.pk]
    assert found(auditor_client, q="/var/pacs/key.pem") == [session.pk]
    assert found(auditor_client, q="shredder") == []


def test_a_word_in_many_sessions_is_found_the_same_way(grant, auditor_client, monkeypatch, settings):
    """SQLite looks a common word up differently (past FTS_SELECTIVE_MAX matches): same results."""
    monkeypatch.setattr(search, "FTS_SELECTIVE_MAX", 2)
    settings.SESSIONS_PAGE_SIZE = 10
    start = timezone.now() - dt.timedelta(days=1)
    hits = [indexed(ended(grant, started_at=start + dt.timedelta(minutes=n)), "dcmsend x") for n in range(12)]
    indexed(ended(grant), "movescu")
    newest_first = [s.pk for s in reversed(hits)]
    assert found(auditor_client, q="dcmsend") == newest_first[:10]
    assert found(auditor_client, q="dcmsend", before=newest_first[9]) == newest_first[10:]
    assert found(auditor_client, q="dcmsend", user="alice", account="pacs01-root") == newest_first[:10]


def test_live_and_unindexed_sessions_are_not_found_by_text(grant, auditor_client):
    make_session(grant)
    ended(grant)
    assert found(auditor_client, q="root") == []
    assert len(found(auditor_client)) == 2


def test_a_query_with_nothing_to_look_for_is_a_form_error(auditor_client):
    response = auditor_client.get(SEARCH, {"q": "*"})
    assert response.context["page"] is None
    assert b"Type a word or some text" in response.content


# --- Filters and pages -------------------------------------------------------------------


def test_filters_combine(carol, auditor_client):
    dave = make_user("dave", "requester")
    erin = make_user("erin", "requester")
    g1 = make_grant(dave, slug="pacs01-root")
    g2 = make_grant(dave, slug="vna01-admin")
    g3 = make_grant(erin, slug="pacs01-svc")
    day = timezone.now().replace(microsecond=0) - dt.timedelta(days=10)
    a = indexed(ended(g1, started_at=day), "dcmsend study")
    b = indexed(ended(g1, started_at=day + dt.timedelta(days=2), end_reason="revoked"), "dcmsend study")
    c = indexed(ended(g2, started_at=day + dt.timedelta(days=1)), "dcmsend study")
    d = indexed(ended(g3, started_at=day + dt.timedelta(days=3)), "ls")
    live = make_session(g3)
    fmt = "%Y-%m-%dT%H:%M"
    local = timezone.localtime

    assert found(auditor_client) == [live.pk, d.pk, b.pk, c.pk, a.pk]
    assert found(auditor_client, user="dave") == [b.pk, c.pk, a.pk]
    assert found(auditor_client, user="dave", account="pacs01-root") == [b.pk, a.pk]
    assert found(auditor_client, target="vna01") == [c.pk]
    assert found(auditor_client, target="pacs01") == [live.pk, d.pk, b.pk, a.pk]
    assert found(auditor_client, grant=g1.pk, end_reason="revoked") == [b.pk]
    assert found(auditor_client, end_reason="live") == [live.pk]
    since = local(day + dt.timedelta(days=1)).strftime(fmt)
    until = local(day + dt.timedelta(days=3)).strftime(fmt)
    assert found(auditor_client, since=since, until=until) == [b.pk, c.pk]
    assert found(
        auditor_client, since=since, until=until, q="dcmsend", user="dave", account="vna01-admin"
    ) == [c.pk]
    assert found(auditor_client, user="nobody") == []


def test_pages_are_keyset_newest_first_without_counting(grant, auditor_client, settings):
    settings.SESSIONS_PAGE_SIZE = 10
    start = timezone.now() - dt.timedelta(days=1)
    sessions = [
        indexed(ended(grant, started_at=start + dt.timedelta(minutes=n)), f"dcmsend n{n}") for n in range(25)
    ]
    # Two sessions started at the same moment are still ordered, by id.
    same = indexed(ended(grant, started_at=start + dt.timedelta(minutes=7)), "dcmsend twin")
    expected = [s.pk for s in sorted([*sessions, same], key=lambda s: (s.started_at, s.pk), reverse=True)]

    seen, params = [], {"q": "dcmsend"}
    while True:
        with CaptureQueriesContext(connection) as queries:
            response = auditor_client.get(SEARCH, params)
        assert not any("COUNT(" in q["sql"].upper() for q in queries.captured_queries)
        page = response.context["page"]
        seen += [s.pk for s in page.sessions]
        if page.older_cursor is None:
            break
        assert f"before={page.older_cursor}".encode() in response.content
        params = {"q": "dcmsend", "before": page.older_cursor}
    assert seen == expected

    page2 = auditor_client.get(SEARCH, {"q": "dcmsend", "before": expected[9]}).context["page"]
    assert [s.pk for s in page2.sessions] == expected[10:20]
    back = auditor_client.get(SEARCH, {"q": "dcmsend", "after": page2.newer_cursor}).context["page"]
    assert [s.pk for s in back.sessions] == expected[:10]
    assert back.newer_cursor is None and back.older_cursor == expected[9]


# --- Who may search, and the audit ---------------------------------------------------------


@pytest.mark.parametrize("persona", ["alice", "mallory"])
def test_requesters_and_outsiders_may_not_search(client, persona, request):
    verified_client(client, request.getfixturevalue(persona))
    assert client.get(SEARCH).status_code == 403
    assert client.get(SEARCH, {"q": "rm"}).status_code == 403
    assert not AuditEvent.objects.filter(action="sessions.searched").exists()


@pytest.mark.parametrize("persona", ["bob", "carol", "pat"])
def test_approvers_auditors_and_pam_admins_may_search(client, persona, request):
    verified_client(client, request.getfixturevalue(persona))
    response = client.get(SEARCH)
    assert response.status_code == 200
    assert f'href="{SEARCH}"'.encode() in response.content  # the nav link


def test_the_nav_link_is_not_shown_to_a_requester(client, alice):
    verified_client(client, alice)
    assert f'href="{SEARCH}"'.encode() not in client.get(reverse("dashboard")).content


def test_each_search_is_audited_with_its_filters(grant, carol, auditor_client):
    session = indexed(ended(grant), "dcmsend")
    found(auditor_client, q="dcmsend", user="alice", end_reason="closed")
    event = AuditEvent.objects.filter(action="sessions.searched").latest("sequence")
    assert event.actor == carol
    assert event.details == {
        "filters": {"q": "dcmsend", "user": "alice", "end_reason": "closed"},
        "sessions_shown": 1,
    }
    assert json.dumps(event.details)  # plain JSON
    assert session.pk


def test_the_results_link_to_the_session_pages(grant, auditor_client):
    session = indexed(ended(grant), "dcmsend")
    content = auditor_client.get(SEARCH, {"q": "dcmsend"}).content
    assert reverse("sessions:detail", args=[session.pk]).encode() in content
