"""The recordings volume fills up under live sessions (a small tmpfs as RECORDINGS_ROOT)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from audit.chain import verify_chain
from recordings.models import GatewaySession, Recording
from recordings.recorder import MIN_FREE_BYTES, verify_recording
from tests.fixtures.gateway import live_session
from tests.fixtures.pacs import grant_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VOLUME_MIB = MIN_FREE_BYTES // (1024 * 1024) + 16  # room for a session to start, then fill


@pytest.fixture
def recordings_volume(tmp_path):
    """A tmpfs of VOLUME_MIB MiB where the ``gateway`` fixture puts its recordings.

    Requested before ``gateway``, so it is unmounted after the gateway has stopped.
    """
    volume = tmp_path / "recordings"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_MIB}m,mode=0750", "tmpfs", str(volume)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(
            f"Cannot mount a tmpfs for the recordings volume ({mounted.stderr.strip()}): this test "
            "needs root with CAP_SYS_ADMIN (mount -t tmpfs)."
        )
    try:
        yield volume
    finally:
        if subprocess.run(["umount", str(volume)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(volume)], check=True)


def _drain(stream, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := stream.read1(65536):
            into.extend(chunk)

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    return reader


def _ended(session: GatewaySession) -> GatewaySession:
    deadline = time.monotonic() + 15
    while True:
        session.refresh_from_db()
        if session.ended_at is not None:
            return session
        assert time.monotonic() < deadline, "the session was not ended"
        time.sleep(0.1)


def test_a_full_recordings_volume_ends_live_sessions_refuses_new_ones_and_corrupts_nothing(
    recordings_volume, gateway, alice, bob, ssh_account, settings
):
    """An exec fills the volume: it is ended with the reason; an open shell is ended as soon
    as it writes; a new session is refused ("recordings volume is full"). Every file cut
    short ends at a whole record, and once there is room again all verify and play."""
    assert recordings_volume == settings.RECORDINGS_ROOT
    grant_for(alice, bob, ssh_account)
    login = "alice:pacs01-admin"

    # A shell, open before the volume fills.
    shell = gateway.popen(alice, login, tty=True)
    shell_out = bytearray()
    reader = _drain(shell.stdout, shell_out)
    shell.stdin.write(b"echo shell-$((3*3))\n")
    shell.stdin.flush()
    shell_session = live_session(alice)
    deadline = time.monotonic() + 10
    while b"shell-9" not in shell_out:
        assert time.monotonic() < deadline, "the shell did not answer"
        time.sleep(0.1)

    # An exec that writes more than the volume holds.
    filler = gateway.ssh(alice, login, f"head -c {2 * VOLUME_MIB * 1024 * 1024} /dev/urandom", timeout=120)
    assert filler.returncode != 0
    said = filler.stderr.decode(errors="replace")
    assert "The session recording failed" in said and "recordings volume is full" in said, said
    assert 0 < len(filler.stdout) < 2 * VOLUME_MIB * 1024 * 1024
    exec_session = GatewaySession.objects.filter(user=alice).exclude(pk=shell_session.pk).get()
    exec_session = _ended(exec_session)
    assert exec_session.end_reason == GatewaySession.EndReason.ERROR
    assert "recordings volume is full" in exec_session.end_message
    assert shutil.disk_usage(recordings_volume).free < MIN_FREE_BYTES

    # The open shell is ended the moment its output cannot be recorded.
    shell.stdin.write(b"head -c 3000000 /dev/urandom | base64; echo never-shown\n")
    shell.stdin.flush()
    shell.wait(timeout=30)
    reader.join(timeout=10)
    text = shell_out.decode(errors="replace")
    assert "The session recording failed" in text and "recordings volume is full" in text
    assert _ended(shell_session).end_reason == GatewaySession.EndReason.ERROR

    # A new session is refused, saying why.
    refused = gateway.ssh(alice, login, "echo never")
    said = refused.stdout.decode(errors="replace") + refused.stderr.decode(errors="replace")
    assert refused.returncode != 0
    assert "cannot be recorded" in said and "recordings volume is full" in said, said
    refusal = GatewaySession.objects.filter(user=alice).order_by("-pk").first()
    assert (
        refusal.end_reason == GatewaySession.EndReason.ERROR
        and "recordings volume is full" in refusal.end_message
    )

    # Room again (the volume grown): sessions work, and everything written verifies.
    subprocess.run(["mount", "-o", f"remount,size={4 * VOLUME_MIB}m", str(recordings_volume)], check=True)
    again = gateway.ssh(alice, login, "echo room-again")
    assert again.returncode == 0 and b"room-again" in again.stdout, again.stderr
    assert _ended(GatewaySession.objects.filter(user=alice).order_by("-pk").first()).end_reason == "closed"
    recordings = Recording.objects.filter(session__user=alice)
    assert recordings.filter(finalized_at__isnull=True).count() == 0
    for recording in recordings:
        ok, why = verify_recording(recording, root=recordings_volume)
        assert ok, why
        if recording.session_id in (exec_session.pk, shell_session.pk) and recording.kind != "events":
            assert recording.interrupted, recording.path
    # Cut short at a whole record: the exec output is exactly what its index describes...
    output = recordings.get(session=exec_session, kind=Recording.Kind.EXEC)
    index = (recordings_volume / output.index_path).read_text().splitlines()
    _, offset, length, _ = index[-1].split()
    assert int(offset) + int(length) == (recordings_volume / output.path).stat().st_size == output.size
    # ...and the shell's asciicast plays to its end, the message included.
    cast = recordings.get(session=shell_session, kind=Recording.Kind.TERMINAL)
    played = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "asciinema"), "cat", str(recordings_volume / cast.path)],
        capture_output=True,
        check=True,
    )
    assert b"shell-9" in played.stdout
    for line in (recordings_volume / cast.path).read_bytes().splitlines():
        assert line.startswith((b"{", b"[")) and line.endswith((b"}", b"]")), line[-80:]
    assert verify_chain().ok
