"""The target's sshd killed under a live gateway session (a PACS host crashing)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from access import services
from access.models import Account
from audit.models import AuditEvent
from recordings.models import GatewaySession, Recording
from recordings.recorder import verify_recording
from tests.fixtures.gateway import live_session
from tests.fixtures.pacs import grant_for, policy_for, target_on
from tests.fixtures.sshd import SshdTarget
from vault import sources

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc), children after their parents."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue.extend(parents.get(current, []))
    return found


@pytest.fixture
def own_sshd(sshd_target, tmp_path):
    """An sshd of this test's own (the suite's one must live on), trusting the same Vault CA."""
    target = SshdTarget(tmp_path / "sshd", ca_public_key=sshd_target.ca_public_key).start()
    yield target
    target.stop()
    target.remove_users()


def test_the_targets_sshd_killed_mid_session_ends_it_with_a_message_and_sealed_recordings(
    own_sshd, gateway, alice, bob, approle_settings, settings
):
    """Every process of the target's sshd is killed (SIGKILL) while alice works in a shell:
    she is told the connection to the target was lost, the session ends as an error with
    that message, and its recordings are sealed, verify, and play."""
    user = own_sshd.create_user()
    target = target_on(own_sshd, name="pacs02")
    account = Account.objects.create(
        target=target, slug="pacs02-admin", kind=Account.Kind.SSH_CA, username=user.name
    )
    sources.configure_ssh_role(account=services.account_ref(account))
    policy_for(account)
    grant_for(alice, bob, account)

    client = gateway.popen(alice, "alice:pacs02-admin", tty=True)
    client.stdin.write(b"echo working-$((6*7))\n")
    client.stdin.flush()
    session = live_session(alice)
    cast = settings.RECORDINGS_ROOT / session.recordings.get(kind=Recording.Kind.TERMINAL).path
    deadline = time.monotonic() + 10
    while b"working-42" not in cast.read_bytes():
        assert time.monotonic() < deadline, "the output was not recorded"
        time.sleep(0.1)

    for pid in _descendants(own_sshd.process.pid):  # the listener and each session's processes
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    own_sshd.process.wait(timeout=10)
    killed = time.monotonic()
    out, _ = client.communicate(timeout=20)
    text = out.decode(errors="replace")
    assert "working-42" in text
    assert "pamsite: The connection to target pacs02" in text and "was lost" in text, text[-500:]
    assert time.monotonic() - killed < 8  # not left hanging on a target that is gone

    deadline = time.monotonic() + 15
    while session.ended_at is None:
        assert time.monotonic() < deadline, "the session was not ended"
        time.sleep(0.1)
        session.refresh_from_db()
    assert session.end_reason == GatewaySession.EndReason.ERROR
    assert "connection to target pacs02" in session.end_message and "was lost" in session.end_message
    ended = AuditEvent.objects.get(action="gateway.session.ended", object_id=str(session.pk))
    assert (
        ended.details["reason"] == GatewaySession.EndReason.ERROR and "was lost" in ended.details["message"]
    )
    for recording in session.recordings.all():
        ok, why = verify_recording(recording, root=settings.RECORDINGS_ROOT)
        assert ok, why
    played = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "asciinema"), "cat", str(cast)], capture_output=True, check=True
    )
    assert b"working-42" in played.stdout and b"was lost" in played.stdout
