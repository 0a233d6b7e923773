"""Forwarding the audit trail to a real syslog receiver: order, framing, formats, outages, TLS, the loop."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from audit.destinations import parse_destination, parse_destinations
from audit.formats import event_document
from audit.forwarding import Forwarder, audit_forward, chain_head_sequence
from audit.hashing import canonical_time, event_hash
from audit.models import AuditEvent, ForwardCursor
from audit.services import audit_record
from audit.tasks import forward_task
from tests.audit.conftest import record_events
from tests.audit.syslog_server import SyslogReceiver
from tests.conftest import verified_client

ROOT = Path(__file__).resolve().parents[2]
AUTHPRIV = 10


def destination(server, fmt: str = "json", *, tls: bool = False, **options):
    scheme = "syslog+tls" if tls else "syslog+tcp"
    return parse_destination(f"{scheme}://127.0.0.1:{server.port}?{urlencode({'format': fmt, **options})}")


def cursor_of(dest) -> int:
    return ForwardCursor.objects.filter(name=dest.name).values_list("last_sequence", flat=True).first() or 0


def refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- what arrives --------------------------------------------------------------------------


def test_json_messages_arrive_in_order_as_rfc5424_with_sequence_and_hash(receiver, db, settings):
    record_events(20, source_ip="192.0.2.7")
    audit_record(
        action="security.alert.host_key_mismatch",
        actor_username="alice",
        details={"target": "pacs01", "message": 'key "differs" ] \\ here'},
    )
    audit_record(action="auth.login.failure", actor_username="ghøst", details={"reason": "bad_password"})
    dest = destination(receiver)
    settings.AUDIT_FORWARD = (dest,)
    settings.AUDIT_FORWARD_BATCH = 7  # several batches
    settings.AUDIT_FORWARD_HOSTNAME = "pam01.hospital.example"

    call_command("audit_forward", "--once")

    messages = receiver.wait_for(22)
    events = list(AuditEvent.objects.order_by("sequence"))
    assert [m.seq for m in messages] == [e.sequence for e in events] == list(range(1, 23))
    for message, event in zip(messages, events, strict=True):
        assert message.version == 1
        assert message.facility == AUTHPRIV
        assert message.timestamp == canonical_time(event.created_at)
        assert message.hostname == "pam01.hospital.example"
        assert (message.app_name, message.procid, message.msgid) == ("pamsite", "-", event.action)
        assert message.sd_id == "pamsite@32473"
        assert message.params == {"seq": str(event.sequence), "hash": event.hash}
        body = json.loads(message.msg)
        assert body == event_document(event)
        # A receiver can check each event against its hash without pamsite.
        when = dt.datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
        values = {**body, "created_at": when, "actor_username": body["actor"]}
        assert event_hash(values) == message.params["hash"]
    assert messages[0].severity == 6  # informational
    assert messages[20].severity == 1  # alert: security.*
    assert messages[21].severity == 5  # notice: a failure
    assert messages[21].msg.isascii()  # non-ASCII escaped in the JSON: no BOM question
    assert receiver.errors == []
    assert cursor_of(dest) == 22


def _split_cef(text: str) -> tuple[list[str], dict[str, str]]:
    """CEF header fields (pipes and backslashes unescaped) and extension key=value pairs."""
    fields, current, i = [], "", 0
    while len(fields) < 7:
        char = text[i]
        if char == "\\":
            current += text[i + 1]
            i += 2
            continue
        if char == "|":
            fields.append(current)
            current = ""
        else:
            current += char
        i += 1
    extension = text[i:]
    equals = [m.start() for m in re.finditer(r"(?<!\\)=", extension)]
    starts = [extension.rfind(" ", 0, pos) + 1 for pos in equals]
    pairs = {}
    for n, (start, pos) in enumerate(zip(starts, equals, strict=True)):
        end = starts[n + 1] - 1 if n + 1 < len(starts) else len(extension)
        raw = extension[pos + 1 : end]
        pairs[extension[start:pos]] = re.sub(
            r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), raw
        )
    return fields, pairs


def test_cef_messages_parse_with_their_escapes(receiver, db, alice):
    event = audit_record(
        action="access.request.created",
        actor=alice,
        source_ip="192.0.2.10",
        object_type="access.accessrequest",
        object_id="7",
        object_repr="root on pacs|01 = prod",
        details={"reason": "a=b\\c\nsecond line | pipe", "ticket": "INC-1"},
    )
    v6 = audit_record(action="auth.lockout", actor_username="bob", source_ip="2001:db8::5")
    audit_forward(destinations=[destination(receiver, "cef")])

    first, second = receiver.wait_for(2)
    fields, ext = _split_cef(first.msg.decode("utf-8"))
    assert fields == [
        "CEF:0",
        "pamsite",
        "pamsite",
        "1.0",
        "access.request.created",
        "Access request created",
        "3",
    ]
    assert ext["rt"] == str(int(event.created_at.timestamp() * 1000))
    assert ext["suser"] == "alice"
    assert ext["suid"] == str(alice.pk)
    assert ext["src"] == "192.0.2.10"
    assert ext["act"] == "access.request.created"
    assert ext["externalId"] == str(event.sequence)
    assert ext["cs1Label"] == "details"
    assert json.loads(ext["cs1"]) == event.details
    assert ext["cs2"] == "access.accessrequest:7"
    assert ext["cs3"] == "root on pacs|01 = prod"
    assert ext["cs4"] == event.hash == first.params["hash"]
    assert "\n" not in first.msg.decode()  # line breaks are escaped

    fields, ext = _split_cef(second.msg.decode("utf-8"))
    assert fields[4:] == ["auth.lockout", "Account or address locked out", "7"]
    assert ext["c6a2"] == "2001:db8::5" and "src" not in ext
    assert second.params["seq"] == str(v6.sequence)


def test_dicom_destinations_get_only_events_dicom_defines_and_the_cursor_passes_the_rest(receiver, db):
    audit_record(action="auth.login.success", actor_username="alice", source_ip="192.0.2.1")
    audit_record(action="access.request.created", actor_username="alice")
    audit_record(action="auth.logout", actor_username="alice", source_ip="192.0.2.1")
    audit_record(action="audit.viewed", actor_username="carol", source_ip="192.0.2.2")
    audit_record(action="identity.ssh_key.added", actor_username="alice")
    dest = destination(receiver, "dicom")

    (result,) = audit_forward(destinations=[dest])

    assert (result.sent, result.skipped, result.cursor, result.backlog) == (3, 2, 5, 0)
    messages = receiver.settle()
    assert [m.seq for m in messages] == [1, 3, 4]
    roots = [ET.fromstring(m.msg) for m in messages]  # noqa: S314  (pamsite's own output, under test)
    codes = [root.find("EventIdentification/EventID").get("csd-code") for root in roots]
    assert codes == ["110114", "110114", "110101"]
    assert [m.msgid for m in messages] == ["auth.login.success", "auth.logout", "audit.viewed"]
    assert cursor_of(dest) == 5


# --- outages -------------------------------------------------------------------------------


def test_receiver_down_fails_cleanly_keeps_the_cursor_and_shows_the_backlog(
    receiver, db, settings, client, pat, caplog
):
    dest = destination(receiver)
    settings.AUDIT_FORWARD = (dest,)
    record_events(5)
    call_command("audit_forward", "--once")
    receiver.wait_for(5)
    receiver.stop()
    record_events(4)

    with caplog.at_level(logging.WARNING, logger="audit.forwarding"), pytest.raises(CommandError) as excinfo:
        call_command("audit_forward", "--once")

    message = str(excinfo.value)
    assert f"cannot connect to syslog+tcp://127.0.0.1:{receiver.port}" in message
    assert "cursor stays at 5, 4 events waiting" in message
    assert "The cursor stays at 5 (4 events waiting); next try in 1 s" in caplog.text
    row = ForwardCursor.objects.get(name=dest.name)
    assert row.last_sequence == 5
    assert "cannot connect" in row.last_error and row.last_error_at is not None
    assert row.failing

    settings.VAULT_ADDR = f"http://127.0.0.1:{refused_port()}"  # the page shows Vault unreachable, quickly
    page = verified_client(client, pat).get(reverse("status")).content.decode()
    head = chain_head_sequence()
    assert "Audit forwarding" in page
    assert dest.name in page
    assert '<span class="badge bad">failing</span>' in page
    assert f'<td class="mono">5 of {head}</td>' in page
    assert f'<td class="mono">{head - 5}</td>' in page
    assert "cannot connect to syslog+tcp://127.0.0.1" in page


def test_receiver_back_catches_up_from_the_cursor_without_loss_or_duplicates(receiver, db, settings):
    settings.AUDIT_FORWARD_BATCH = 4
    dest = destination(receiver)
    record_events(10)
    audit_forward(destinations=[dest])
    receiver.wait_for(10)
    receiver.stop()
    record_events(13)

    (down,) = audit_forward(destinations=[dest])
    assert not down.ok and (down.cursor, down.backlog, down.sent) == (10, 13, 0)

    receiver.start()  # the same port
    (up,) = audit_forward(destinations=[dest])

    assert up.ok and (up.sent, up.cursor, up.backlog) == (13, 23, 0)
    assert [m.seq for m in receiver.settle()] == list(range(1, 24))
    assert ForwardCursor.objects.get(name=dest.name).failing is False


def test_the_loops_kept_connection_is_reopened_when_the_receiver_restarts(receiver, db):
    dest = destination(receiver)
    with Forwarder(destinations=[dest]) as forwarder:
        record_events(3)
        forwarder.run_once()
        receiver.wait_for(3)
        receiver.stop()
        receiver.start()
        record_events(3)
        (result,) = forwarder.run_once()

    assert result.ok and result.cursor == 6
    assert [m.seq for m in receiver.wait_for(6)] == [1, 2, 3, 4, 5, 6]
    assert receiver.connections == 2


def test_a_receiver_that_stops_reading_fails_the_batch_and_the_cursor_stays(db, settings):
    """The cursor moves only once the receiver's host took every byte, not when the write returned."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    dest = parse_destination(f"syslog+tcp://127.0.0.1:{listener.getsockname()[1]}?timeout=0.5")
    audit_record(action="audit.viewed", actor_username="carol", details={"note": "x" * 200_000})
    record_events(3)
    try:
        (result,) = audit_forward(destinations=[dest], batch_size=10)
    finally:
        listener.close()
        for conn, _ in accepted:
            conn.close()

    assert not result.ok
    assert "did not take the messages within 0.5 s" in result.error or "timed out" in result.error
    assert (result.sent, result.cursor) == (0, 0)
    assert cursor_of(dest) == 0


def test_failures_back_off_doubling_up_to_the_limit_then_recover(receiver, db, caplog):
    dest = destination(receiver)
    receiver.stop()
    record_events(2)
    now = [1000.0]
    forwarder = Forwarder(destinations=[dest], max_backoff=5, clock=lambda: now[0])
    waits = []
    for _ in range(5):
        (result,) = forwarder.run_once()
        assert not result.ok
        waits.append(forwarder.waiting(dest))
        assert forwarder.run_once() == []  # backing off: not tried
        now[0] += waits[-1]
    assert waits == [1, 2, 4, 5, 5]

    receiver.start()
    with caplog.at_level(logging.INFO, logger="audit.forwarding"):
        (result,) = forwarder.run_once()
    forwarder.close()
    assert result.ok and result.sent == 2 and forwarder.waiting(dest) == 0
    assert "works again after 5 failed attempt(s): 2 events sent, cursor at 2" in caplog.text


def test_a_destination_another_forwarder_holds_is_left_alone_until_its_lease_expires(receiver, db):
    dest = destination(receiver)
    record_events(3)
    ForwardCursor.objects.create(
        name=dest.name,
        lease_owner="other-host:123:abc",
        lease_until=timezone.now() + dt.timedelta(seconds=60),
    )
    (result,) = audit_forward(destinations=[dest])
    assert result.busy and result.sent == 0
    assert receiver.messages == []

    ForwardCursor.objects.filter(name=dest.name).update(lease_until=timezone.now() - dt.timedelta(seconds=1))
    (result,) = audit_forward(destinations=[dest])
    assert result.ok and result.sent == 3
    assert ForwardCursor.objects.get(name=dest.name).lease_owner == ""


def test_nothing_pending_writes_nothing(receiver, db, django_assert_num_queries):
    dest = destination(receiver)
    record_events(2)
    audit_forward(destinations=[dest])
    with django_assert_num_queries(2):  # the head and the cursor, no lease taken
        (result,) = audit_forward(destinations=[dest])
    assert result.ok and result.sent == 0 and result.backlog == 0


def test_the_celery_task_forwards_through_the_same_service(receiver, db, settings):
    settings.AUDIT_FORWARD = (destination(receiver),)
    record_events(4)
    outcome = forward_task()
    assert outcome == {settings.AUDIT_FORWARD[0].name: {"sent": 4, "backlog": 0, "error": ""}}
    assert [m.seq for m in receiver.wait_for(4)] == [1, 2, 3, 4]


def test_the_command_names_a_destination_and_refuses_an_unknown_one(receiver, db, settings, capsys):
    settings.AUDIT_FORWARD = parse_destinations(
        f"syslog+tcp://127.0.0.1:{receiver.port}?name=siem,syslog+tcp://127.0.0.1:{refused_port()}?name=down"
    )
    record_events(2)
    call_command("audit_forward", "--destination", "siem")
    assert "siem: 2 sent, cursor 2, backlog 0" in capsys.readouterr().out
    with pytest.raises(CommandError, match=r"No destination named 'nope'.*siem, down"):
        call_command("audit_forward", "--destination", "nope")


def test_with_nothing_configured_the_command_says_so(db, settings, capsys):
    settings.AUDIT_FORWARD = ()
    call_command("audit_forward")
    assert "AUDIT_FORWARD is empty" in capsys.readouterr().out


# --- TLS -----------------------------------------------------------------------------------


def test_tls_delivers_to_a_receiver_whose_certificate_the_ca_signed(tls_receiver, tls_files, db):
    dest = destination(tls_receiver, "cef", tls=True, ca=str(tls_files.ca))
    record_events(6)
    (result,) = audit_forward(destinations=[dest])
    assert result.ok and result.cursor == 6
    assert [m.seq for m in tls_receiver.wait_for(6)] == list(range(1, 7))
    assert tls_receiver.messages[0].msg.startswith(b"CEF:0|pamsite|")


def test_tls_with_the_wrong_ca_is_refused_and_nothing_is_sent(tls_receiver, tls_files, db):
    dest = destination(tls_receiver, tls=True, ca=str(tls_files.other_ca))
    record_events(3)
    (result,) = audit_forward(destinations=[dest])
    assert not result.ok
    assert "certificate is not trusted" in result.error
    assert "certificate verify failed" in result.error or "unable to get local issuer" in result.error
    time.sleep(0.2)
    assert tls_receiver.messages == []
    assert cursor_of(dest) == 0
    assert ForwardCursor.objects.get(name=dest.name).failing


def test_tls_without_a_ca_uses_the_system_trust_store_and_refuses_a_private_ca(tls_receiver, db):
    record_events(1)
    (result,) = audit_forward(destinations=[destination(tls_receiver, tls=True)])
    assert "certificate is not trusted" in result.error
    assert tls_receiver.messages == []


def test_tls_checks_the_host_name(tls_files, db):
    server = SyslogReceiver(tls=tls_files.server_context(wrong_name=True)).start()
    try:
        record_events(1)
        (result,) = audit_forward(destinations=[destination(server, tls=True, ca=str(tls_files.ca))])
        assert "certificate is not trusted" in result.error
        assert "mismatch" in result.error
        assert server.messages == []
    finally:
        server.stop()


# --- the forwarder process ----------------------------------------------------------------


def _database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    host, port = s["HOST"] or "127.0.0.1", s["PORT"] or 5432
    return f"postgres://{s['USER']}:{s['PASSWORD'] or 'x'}@{host}:{port}/{s['NAME']}"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_loop_forwards_rides_out_an_outage_and_stops_on_sigterm(receiver, tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "pamsite.settings",
        "DATABASE_URL": _database_url(),
        "AUDIT_FORWARD": f"syslog+tcp://127.0.0.1:{receiver.port}?format=json&name=siem",
        "AUDIT_FORWARD_INTERVAL": "1",
        "AUDIT_FORWARD_MAX_BACKOFF": "1",
        "LOG_LEVEL": "info",
    }
    log = tmp_path / "forwarder.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "audit_forward", "--loop"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        record_events(5)
        receiver.wait_for(5, timeout=20)
        receiver.stop()
        record_events(5)
        deadline = time.monotonic() + 20
        while "failed: cannot connect" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "The cursor stays at 5 (5 events waiting)" in log.read_text()
        receiver.start()
        assert [m.seq for m in receiver.wait_for(10, timeout=20)] == list(range(1, 11))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "Audit forwarder started: siem" in text
    assert "works again" in text
    assert "Audit forwarder stopped." in text
    assert [m.seq for m in receiver.settle()] == list(range(1, 11))


def test_the_status_page_says_when_forwarding_is_not_configured(client, pat, settings):
    settings.AUDIT_FORWARD = ()
    settings.VAULT_ADDR = f"http://127.0.0.1:{refused_port()}"
    page = verified_client(client, pat).get(reverse("status")).content.decode()
    assert "Not configured: set <code>AUDIT_FORWARD</code>" in page


def test_an_up_to_date_destination_shows_no_backlog(receiver, db, settings, client, pat):
    dest = destination(receiver, "cef")
    settings.AUDIT_FORWARD = (dest,)
    settings.VAULT_ADDR = f"http://127.0.0.1:{refused_port()}"
    user_client = verified_client(client, pat)  # recorded events, if any, come before the forwarding
    record_events(3)
    audit_forward()
    page = user_client.get(reverse("status")).content.decode()
    assert '<span class="badge ok">up to date</span>' in page
    assert f'<td class="mono">{chain_head_sequence()} of {chain_head_sequence()}</td>' in page


@pytest.mark.slow
def test_the_loop_with_nothing_configured_idles_until_stopped(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "pamsite.settings",
        "AUDIT_FORWARD": "",
        "LOG_LEVEL": "info",
    }
    log = tmp_path / "forwarder.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "audit_forward", "--loop"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while "nothing to do" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        assert process.poll() is None  # a process manager (make run) must not see it exit
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "AUDIT_FORWARD is empty: the audit forwarder has nothing to do." in log.read_text()
