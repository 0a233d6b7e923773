"""GatewaySession recordings: formats, flushing, refusal when they cannot be written, sealing.

Signing uses the real OpenBao server with pamsite's AppRole (``approle_settings``), and
terminal recordings are played with the real ``asciinema cat`` (asciinema 2.x, in the venv).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from recordings import recorder as recorder_module
from recordings.models import GatewaySession, Recording
from recordings.recorder import (
    EventLog,
    ExecRecorder,
    RecordingError,
    TerminalRecorder,
    finalize_interrupted,
    flush_due,
    seal_leftovers,
    verify_recording,
)
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.django_db

ASCIINEMA = Path(sys.executable).parent / "asciinema"


@pytest.fixture
def root(approle_settings, tmp_path):
    """RECORDINGS_ROOT in a fresh folder, with Vault reachable for signing."""
    approle_settings.RECORDINGS_ROOT = tmp_path / "recordings"
    return approle_settings.RECORDINGS_ROOT


@pytest.fixture
def session(alice):
    return GatewaySession.objects.create(
        user=alice, account="pacs01-root", client_address="192.0.2.10", gateway_node="gw1"
    )


def read_index(path: Path) -> list[tuple[float, int, int, str]]:
    rows = []
    for line in path.read_text().splitlines():
        t, offset, length, stream = line.split()
        rows.append((float(t), int(offset), int(length), stream))
    return rows


def test_terminal_recording_is_asciicast_v2_that_asciinema_plays(root, session, tmp_path):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24, term="xterm-256color", title="t")
    rec.write(b"caf\xc3")  # "é" split across two reads
    rec.write(bytearray(b"\xa9 \x1b[31mred\x1b[0m\r\n"))
    rec.write(b"bad \xff\xfe bytes\r\n")
    rec.resize(120, 40)
    rec.write(b"euro \xe2\x82")
    rec.write(b"\xac done\r\n")
    recording = rec.close()

    path = root / recording.path
    assert recording.path.endswith(f"session-{session.pk}/channel-0.cast")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    header, events = lines[0], lines[1:]
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (80, 24)
    assert header["env"] == {"TERM": "xterm-256color"}
    assert isinstance(header["timestamp"], int)
    times = [e[0] for e in events]
    assert times == sorted(times)
    resizes = [i for i, e in enumerate(events) if e[1] == "r"]
    assert len(resizes) == 1 and events[resizes[0]][2] == "120x40"
    before = "".join(e[2] for e in events[: resizes[0]])
    assert before.endswith("bytes\r\n") and "euro" not in before
    text = "".join(e[2] for e in events if e[1] == "o")
    assert text == "café \x1b[31mred\x1b[0m\r\nbad \ufffd\ufffd bytes\r\neuro € done\r\n"
    assert "\\u001b[31m" in path.read_text(encoding="utf-8")  # escapes kept, JSON-escaped

    played = subprocess.run(
        [str(ASCIINEMA), "cat", str(path)],
        capture_output=True,
        check=True,
        timeout=30,
        env={"HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"},
    )
    out = played.stdout.decode("utf-8")
    assert "café \x1b[31mred\x1b[0m" in out
    assert "euro € done" in out


def test_exec_recording_keeps_binary_output_exactly_with_a_consistent_index(root, session):
    every_byte = bytes(range(256))
    noise = os.urandom(1024 * 1024)
    rec = ExecRecorder(session=session, channel=3)
    stdout, written = bytearray(), bytearray()
    rec.write(every_byte)
    stdout += every_byte
    written += every_byte
    rec.write_stderr(b"tar: warning\n")
    written += b"tar: warning\n"
    step = 1
    pos = 0
    while pos < len(noise):
        chunk = noise[pos : pos + step]
        rec.write(memoryview(chunk))
        stdout += chunk
        written += chunk
        pos += step
        step = step * 3 % 40000 + 1
    recording = rec.close()

    data = (root / recording.path).read_bytes()
    assert data == bytes(written)
    assert recording.size == len(written)  # no escaping: exactly the output's size
    index = read_index(root / recording.index_path)
    assert index[0][1] == 0
    for (t1, off1, len1, _), (t2, off2, _, _) in itertools.pairwise(index):
        assert off2 == off1 + len1
        assert t2 >= t1
    assert index[-1][1] + index[-1][2] == len(data)
    assert b"".join(data[o : o + n] for _, o, n, s in index if s == "o") == bytes(stdout)
    assert b"".join(data[o : o + n] for _, o, n, s in index if s == "e") == b"tar: warning\n"
    assert (root / recording.index_path).stat().st_size < 0.01 * len(data)


def test_output_reaches_disk_within_a_second_without_calling_flush(root, session):
    rec = ExecRecorder(session=session, channel=1)
    path = root / rec.recording.path
    rec.write(b"first")
    assert path.read_bytes() == b""  # buffered: write() did no I/O
    time.sleep(1.1)
    rec.write(b"second")  # due: queued for the writer thread, on disk at once
    wait_for(lambda: path.read_bytes().startswith(b"first"), "the flush on disk", timeout=0.5)
    rec.close()


def test_flush_due_writes_out_a_quiet_channel(root, session):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    path = root / rec.recording.path
    rec.write(b"last words")
    assert flush_due() == 0  # not due yet
    time.sleep(1.1)
    assert flush_due() == 1
    wait_for(lambda: "last words" in path.read_text(), "the flush on disk", timeout=0.5)
    rec.close()


def test_a_large_burst_is_written_before_the_second_is_up(root, session):
    rec = ExecRecorder(session=session, channel=1)
    rec.write(b"x" * (recorder_module.MAX_BUFFER + 1))
    path = root / rec.recording.path
    wait_for(lambda: path.stat().st_size == recorder_module.MAX_BUFFER + 1, "the flush on disk", timeout=0.5)
    rec.close()


def test_an_unwritable_recordings_root_refuses_at_open(root, session, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    for recorder_class, kwargs in (
        (TerminalRecorder, {"channel": 0, "width": 80, "height": 24}),
        (ExecRecorder, {"channel": 0}),
        (EventLog, {}),
    ):
        with pytest.raises(RecordingError, match="RECORDINGS_ROOT"):
            recorder_class(session=session, root=blocker / "recordings", **kwargs)
    assert not Recording.objects.exists()


def test_a_nearly_full_disk_refuses_at_open(root, session, monkeypatch):
    class Usage:
        free = 1024

    monkeypatch.setattr(recorder_module.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(RecordingError, match="free"):
        ExecRecorder(session=session, channel=0)
    assert not Recording.objects.exists()


def test_the_same_channel_cannot_be_recorded_over(root, session):
    first = ExecRecorder(session=session, channel=2)
    with pytest.raises(RecordingError, match="exists"):
        ExecRecorder(session=session, channel=2)
    first.close()


def test_a_write_error_mid_session_raises_and_keeps_raising(root, session):
    rec = ExecRecorder(session=session, channel=1)
    rec.write(b"before the disk filled\n")
    rec.flush()
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, rec._fd)  # the disk is now full for this file
    os.close(full)
    rec.write(b"y" * recorder_module.MAX_BUFFER)  # queued; the writer thread finds the disk full
    with pytest.raises(RecordingError, match="No space"):
        rec.flush()
    with pytest.raises(RecordingError):
        rec.write(b"more")
    with pytest.raises(RecordingError):
        rec.close()
    recording = Recording.objects.get(pk=rec.recording.pk)
    assert recording.interrupted
    assert recording.finalized_at is not None
    assert verify_recording(recording)[0]


def test_a_write_failure_found_while_the_channel_is_quiet_ends_it_once(root, session):
    rec = ExecRecorder(session=session, channel=1)
    failures = []
    rec.on_failure = failures.append
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, rec._fd)
    os.close(full)
    rec.write(b"z" * recorder_module.MAX_BUFFER)  # the last output before the channel goes quiet
    wait_for(lambda: rec._failed, "the writer thread to find the disk full", timeout=5)
    flush_due()
    flush_due()
    assert len(failures) == 1 and "No space" in failures[0]
    with pytest.raises(RecordingError):
        rec.close()


def test_a_slow_disk_does_not_stall_the_relay_and_keeps_the_order(root, session):
    """write() returns while the file cannot take more (a pipe nobody reads stands in for a
    stalled disk); the writer thread catches up, in order, once it can."""
    rec = ExecRecorder(session=session, channel=1)
    the_file = os.dup(rec._fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, rec._fd)
    os.close(write_end)
    chunks = [bytes([65 + i % 26]) * recorder_module.MAX_BUFFER for i in range(8)]  # 512 KiB > a pipe
    relay = threading.Thread(target=lambda: [rec.write(chunk) for chunk in chunks], daemon=True)
    relay.start()  # each write flushes: queued, never waited on
    relay.join(5)
    stalled = relay.is_alive()
    got = bytearray()
    while len(got) < sum(map(len, chunks)):
        got += os.read(read_end, 1 << 20)
    rec.flush()
    os.close(read_end)
    assert not stalled, "write() waited on the file"
    assert bytes(got) == b"".join(chunks)
    os.dup2(the_file, rec._fd)  # the file again, for close()'s fsync
    os.close(the_file)
    rec.close()


def test_flushes_wait_for_room_when_the_writer_is_behind(root, session, monkeypatch):
    monkeypatch.setattr(recorder_module, "WRITER_QUEUE_MAX", 0)  # every flush waits for the last
    rec = ExecRecorder(session=session, channel=1)
    data = os.urandom(20 * recorder_module.MAX_BUFFER)
    for start in range(0, len(data), 1000):
        rec.write(data[start : start + 1000])
    recording = rec.close()
    assert (root / recording.path).read_bytes() == data
    assert verify_recording(recording)[0]


def test_close_stores_the_sha256_and_a_signature_that_verifies(root, session):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(b"ls -l /pacs\r\n")
    rec.close()
    assert rec.close() is rec.recording  # a second close does nothing
    recording = Recording.objects.get(pk=rec.recording.pk)
    data = (root / recording.path).read_bytes()
    assert recording.sha256 == hashlib.sha256(data).hexdigest()
    assert recording.size == len(data)
    assert recording.signature.startswith("vault:v")
    assert recording.finalized_at is not None and not recording.interrupted
    ok, message = verify_recording(recording)
    assert ok, message


def test_changing_one_byte_is_reported_as_tampered(root, session):
    rec = ExecRecorder(session=session, channel=0)
    rec.write(os.urandom(4096))
    recording = rec.close()
    path = root / recording.path
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))
    ok, message = verify_recording(recording)
    assert not ok and "tampered" in message

    # Updating the row's sha256 to match does not help: the signature covers it.
    recording.sha256 = hashlib.sha256(bytes(data)).hexdigest()
    ok, message = verify_recording(recording)
    assert not ok and "tampered" in message and "signature" in message


def test_a_changed_timing_index_is_reported_as_tampered(root, session):
    rec = ExecRecorder(session=session, channel=0)
    rec.write(b"abc")
    recording = rec.close()
    (root / recording.index_path).write_text("0.000000 0 3 e\n")
    ok, message = verify_recording(recording)
    assert not ok and "tampered" in message


def test_a_missing_file_does_not_verify(root, session):
    rec = EventLog(session=session)
    recording = rec.close()
    (root / recording.path).unlink()
    ok, message = verify_recording(recording)
    assert not ok and "missing" in message


def test_event_log_holds_commands_exit_codes_transfers_and_forwards(root, session):
    log = EventLog(session=session)
    log.exec_started(channel=1, command="tar cf - /var/lib/pacs")
    log.exit_status(channel=1, status=2)
    log.file_transfer(channel=2, direction="download", path="/tmp/a.dcm", size=10, sha256="ab" * 32)
    log.forwarded_connection(channel=3, host="127.0.0.1", port=5432, bytes_in=5, bytes_out=7)
    with pytest.raises(ValueError):
        log.file_transfer(channel=2, direction="sideways", path="x", size=0, sha256="")
    recording = log.close()
    lines = [json.loads(line) for line in (root / recording.path).read_text().splitlines()]
    assert lines[0] == {
        "format": "pamsite-events",
        "version": 1,
        "session": session.pk,
        "timestamp": lines[0]["timestamp"],
    }
    assert [line["event"] for line in lines[1:]] == ["exec", "exit", "file-transfer", "forward"]
    assert lines[1]["command"] == "tar cf - /var/lib/pacs"
    assert lines[2]["status"] == 2
    assert lines[3]["direction"] == "download" and lines[3]["sha256"] == "ab" * 32
    assert lines[4]["port"] == 5432
    assert all(isinstance(line["t"], float) for line in lines[1:])
    assert recording.channel is None and recording.kind == Recording.Kind.EVENTS


def test_finalize_interrupted_seals_what_a_killed_gateway_left(root, session, alice):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(b"rm -rf /pacs/cache\r\n")
    rec.flush()
    rec._close_fds()  # the gateway was killed: no close(), no signature
    other = GatewaySession.objects.create(user=alice, account="pacs01-root", gateway_node="gw2")
    live_elsewhere = ExecRecorder(session=other, channel=0)

    assert finalize_interrupted(gateway_node="gw1") == 1

    recording = Recording.objects.get(pk=rec.recording.pk)
    assert recording.interrupted and recording.finalized_at is not None
    assert recording.sha256 == hashlib.sha256((root / recording.path).read_bytes()).hexdigest()
    ok, message = verify_recording(recording)
    assert ok and "interrupted" in message
    session.refresh_from_db()
    assert session.end_reason == GatewaySession.EndReason.INTERRUPTED
    assert session.ended_at is not None
    assert Recording.objects.get(pk=live_elsewhere.recording.pk).finalized_at is None
    assert finalize_interrupted(gateway_node="gw1") == 0
    live_elsewhere.close()


def test_the_worker_seals_what_an_ended_sessions_gateway_could_not(root, session, alice):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(b"dcmdump /pacs/study/1.dcm\r\n")
    rec.flush()
    rec._close_fds()  # sealing failed: the session ended, the recording has no signature
    session.end_reason, session.ended_at = GatewaySession.EndReason.CLOSED, timezone.now()
    session.save()

    assert seal_leftovers() == 0  # just ended: its gateway may still be sealing
    GatewaySession.objects.filter(pk=session.pk).update(ended_at=timezone.now() - timedelta(minutes=5))
    assert seal_leftovers() == 1

    recording = Recording.objects.get(pk=rec.recording.pk)
    assert recording.finalized_at is not None and recording.interrupted
    assert verify_recording(recording)[0]
    session.refresh_from_db()
    assert session.end_reason == GatewaySession.EndReason.CLOSED  # the real reason is kept
    assert seal_leftovers() == 0


def test_file_names_come_from_ids_only(root, alice):
    session = GatewaySession.objects.create(user=alice, account="../../etc", gateway_node="gw1")
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24, title="../../x")
    assert ".." not in rec.recording.path
    assert (root / rec.recording.path).resolve().is_relative_to(root.resolve())
    rec.close()


def test_a_character_split_across_flushes_stays_whole_and_pauses_keep_their_timing(root, session):
    rec = TerminalRecorder(session=session, channel=0, width=80, height=24)
    rec.write(b"\xe2\x82")
    rec.flush()
    time.sleep(0.05)
    rec.write(b"\xac")
    rec.flush()
    time.sleep(0.05)
    rec.write(b"!\xe2")  # a truncated character at the very end
    recording = rec.close()
    events = [json.loads(line) for line in (root / recording.path).read_text().splitlines()[1:]]
    assert [e[2] for e in events] == ["€", "!", "\ufffd"]
    assert events[1][0] - events[0][0] >= 0.04


def test_a_recorder_that_fails_to_open_leaves_no_file_behind(root, session, monkeypatch):
    created = []
    real_create = recorder_module._create

    def index_fails(base, relative):
        if relative.endswith(".idx"):
            raise RecordingError("no index for you")
        created.append(base / relative)
        return real_create(base, relative)

    monkeypatch.setattr(recorder_module, "_create", index_fails)
    with pytest.raises(RecordingError, match="no index"):
        ExecRecorder(session=session, channel=0)
    assert created and not any(path.exists() for path in created)
    assert not Recording.objects.exists()
