"""The gateway as its own process (``manage.py ssh_gateway``), beside the test process that
plays the web app: enforcement through the database only, and recovery after SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
from django.db import connection

from access import services
from sessions.models import Recording, Session
from sessions.recorder import verify_recording
from sessions.services import session_terminate
from tests.conftest import PASSWORD
from tests.fixtures.gateway import RunningGateway
from tests.fixtures.openbao import free_port
from tests.sessions.conftest import grant_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class GatewayProcess:
    """``manage.py ssh_gateway`` in a child process, restartable on the same port and node."""

    def __init__(self, settings, workdir: Path):
        self.workdir = workdir
        self.recordings = workdir / "recordings"
        self.port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "VAULT_ADDR": settings.VAULT_ADDR,
            "VAULT_TOKEN": "",
            "VAULT_ROLE_ID": settings.VAULT_ROLE_ID,
            "VAULT_SECRET_ID": settings.VAULT_SECRET_ID,
            "RECORDINGS_ROOT": str(self.recordings),
            "GATEWAY_HOST_KEY_FILE": str(workdir / "host_key"),
            "GATEWAY_NODE": "gw-test-node",
            "GATEWAY_PUBLIC_HOST": "127.0.0.1",
        }
        self.process: subprocess.Popen | None = None
        self.workers = 1

    def start(self) -> GatewayProcess:
        log = open(self.workdir / "gateway.log", "ab")  # noqa: SIM115  (closed with the process)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "ssh_gateway",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(self.workers),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the gateway did not start:\n" + self.log())
            time.sleep(0.1)

    def log(self) -> str:
        return (self.workdir / "gateway.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


@pytest.fixture
def gateway_process(settings, approle_settings, tmp_path, alice):
    # The child process has the production password hashers, not the tests' fast one.
    alice.password = make_password(PASSWORD, hasher=PBKDF2PasswordHasher())
    alice.save(update_fields=["password"])
    workdir = tmp_path / "gw"
    workdir.mkdir()
    process = GatewayProcess(settings, workdir).start()
    yield process
    process.stop()


def _client(process: GatewayProcess) -> RunningGateway:
    return RunningGateway(host="127.0.0.1", port=process.port, workdir=process.workdir, server=process)


def _live_session(user) -> Session:
    deadline = time.monotonic() + 20
    while True:
        session = Session.objects.filter(user=user, ended_at__isnull=True).first()
        if session is not None and session.recordings.filter(kind=Recording.Kind.TERMINAL).exists():
            return session
        assert time.monotonic() < deadline, "the session did not start"
        time.sleep(0.1)


def _wait_ended(session: Session, timeout: float = 15) -> Session:
    deadline = time.monotonic() + timeout
    while True:
        session.refresh_from_db()
        if session.ended_at is not None:
            return session
        assert time.monotonic() < deadline, "the session was not ended"
        time.sleep(0.1)


def test_terminating_from_the_web_closes_a_session_of_another_process(
    gateway_process, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    client = _client(gateway_process).popen(alice, "alice:pacs01-admin", tty=True)
    client.stdin.write(b"echo ready-$((2+3))\n")
    client.stdin.flush()
    session = _live_session(alice)
    time.sleep(0.5)
    session_terminate(session=session, acting_user=bob, reason="suspicious activity")
    asked = time.monotonic()
    out, _ = client.communicate(timeout=15)
    assert time.monotonic() - asked < 5
    text = out.decode(errors="replace")
    assert "ready-5" in text and "terminated by bob" in text and "suspicious activity" in text
    session = _wait_ended(session)
    assert session.end_reason == Session.EndReason.TERMINATED
    for recording in session.recordings.all():
        assert recording.finalized_at is not None
        assert verify_recording(recording, root=gateway_process.recordings)[0]


def test_an_expiring_grant_cuts_the_session_with_a_message(gateway_process, alice, bob, ssh_account):
    from datetime import timedelta

    from django.utils import timezone

    from access.models import Grant

    grant = grant_for(alice, bob, ssh_account)
    client = _client(gateway_process).popen(alice, "alice:pacs01-admin", tty=True)
    session = _live_session(alice)
    # The grant's time is up (the worker has not swept it yet): the gateway cuts anyway.
    Grant.objects.filter(pk=grant.pk).update(ends_at=timezone.now() + timedelta(seconds=1))
    out, _ = client.communicate(timeout=15)
    assert "expired" in out.decode(errors="replace")
    assert _wait_ended(session).end_reason == Session.EndReason.GRANT_ENDED
    services.grants_expire_due()


def test_a_gateway_killed_with_sigkill_has_its_recordings_sealed_at_the_next_start(
    gateway_process, alice, bob, ssh_account
):
    grant_for(alice, bob, ssh_account)
    client = _client(gateway_process).popen(alice, "alice:pacs01-admin", tty=True)
    client.stdin.write(b"echo before-the-crash-$((40+2))\n")
    client.stdin.flush()
    session = _live_session(alice)
    cast = session.recordings.get(kind=Recording.Kind.TERMINAL)
    path = gateway_process.recordings / cast.path
    deadline = time.monotonic() + 10
    while b"before-the-crash-42" not in path.read_bytes():  # written within a second, unflushed by close
        assert time.monotonic() < deadline, "the output was not written within the flush interval"
        time.sleep(0.2)
    gateway_process.stop(signal.SIGKILL)
    client.wait(timeout=15)
    session.refresh_from_db()
    assert session.ended_at is None  # nobody closed it

    gateway_process.start()  # same host name, new process: the dead one's sessions are recovered
    session = _wait_ended(session)
    assert session.end_reason == Session.EndReason.INTERRUPTED
    for recording in session.recordings.all():
        assert recording.interrupted and recording.finalized_at is not None
        ok, why = verify_recording(recording, root=gateway_process.recordings)
        assert ok, why
    played = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "asciinema"), "cat", str(path)], capture_output=True, check=True
    )
    assert b"before-the-crash-42" in played.stdout


def test_sessions_on_several_worker_processes_are_all_cut_when_the_grant_is_revoked(
    settings, approle_settings, tmp_path, alice, bob, ssh_account
):
    alice.password = make_password(PASSWORD, hasher=PBKDF2PasswordHasher())
    alice.save(update_fields=["password"])
    (tmp_path / "gw").mkdir()
    process = GatewayProcess(settings, tmp_path / "gw")
    process.workers = 2
    process.start()
    try:
        grant = grant_for(alice, bob, ssh_account)
        clients = []
        for number in range(1, 5):
            # One after the other: a code is spent by each login (the helper re-arms it).
            clients.append(_client(process).popen(alice, "alice:pacs01-admin", tty=True))
            deadline = time.monotonic() + 30
            while Session.objects.filter(user=alice, ended_at__isnull=True).count() < number:
                assert time.monotonic() < deadline, "the session did not start:\n" + process.log()
                time.sleep(0.1)
        nodes = set(Session.objects.filter(user=alice).values_list("gateway_node", flat=True))
        assert all(node.startswith("gw-test-node:") for node in nodes)
        services.grant_revoke(grant=grant, acting_user=bob, reason="end of maintenance window")
        revoked = time.monotonic()
        for client in clients:
            out, _ = client.communicate(timeout=15)
            assert b"revoked by bob" in out
        assert time.monotonic() - revoked < 5
    finally:
        process.stop()
    assert not Session.objects.filter(user=alice, ended_at__isnull=True).exists()
