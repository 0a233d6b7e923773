"""PostgreSQL drops pamsite's connections (a failover, a restart, an administrator's
pg_terminate_backend) while the gateway relays a session and the web serves pages.

The gateway and the web app run as in production, each its own process (``manage.py
ssh_gateway``, daphne), with persistent database connections (DATABASE_CONN_MAX_AGE), so
a dropped connection is met at its next use. The fault is PostgreSQL's: on a SQLite run the
test runs itself again in a child pytest on a PostgreSQL database of its own (the machine
always has one on 127.0.0.1:5432), so it is never skipped and always tests the real thing.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from access.models import Grant
from audit.chain import verify_chain
from audit.models import AuditEvent
from recordings.models import GatewaySession, Recording
from recordings.recorder import verify_recording
from tests.conftest import verified_client
from tests.fixtures.gateway import live_session
from tests.fixtures.gateway_process import (
    GatewayProcess,
    client_of,
    database_url,
    use_production_hasher,
    wait_ended,
    wait_listening,
)
from tests.fixtures.openbao import free_port
from tests.fixtures.pacs import grant_for
from tests.fixtures.pgtarget import POSTGRES_URL

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# Persistent connections, as a busy site would run: a dropped one is met at its next use.
CONN_MAX_AGE = "60"
DAPHNE = str(ROOT / ".venv" / "bin" / "daphne")
TEST_NAME = "test_dropped_database_connections_are_reopened_and_nothing_is_lost"


def _backends(dbname: str) -> set[str]:
    """The application names (PGAPPNAME of each child process) connected to the database now."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        rows = admin.execute("SELECT application_name FROM pg_stat_activity WHERE datname = %s", [dbname])
        return {name for (name,) in rows}


def _terminate_backends(dbname: str) -> list[str]:
    """pg_terminate_backend every connection of pamsite's processes (not the test's own)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT application_name FROM pg_stat_activity "
            "WHERE datname = %s AND application_name LIKE 'pamsite-%%' AND pg_terminate_backend(pid)",
            [dbname],
        ).fetchall()
    return sorted(name for (name,) in rows)


class WebProcess:
    """The web app as it runs in production (daphne, ASGI) on a free port, in a child process."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.port = free_port()
        self.log_path = workdir / "web.log"
        self.env = env
        self.cookies: dict[str, str] = {}
        self.process: subprocess.Popen | None = None

    def start(self) -> WebProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [DAPHNE, "-b", "127.0.0.1", "-p", str(self.port), "pamsite.asgi:application"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_listening(self.process, self.port, "daphne", lambda: self.log_path.read_text(errors="replace"))
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def request(self, path: str, data: dict | None = None) -> tuple[int, str]:
        """(status, body) of a GET, or a POST of ``data`` with the CSRF token of the last page."""
        body = None
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if data is not None:
            body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": self.csrf}).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=20) as resp:
                status, text, cookies = resp.status, resp.read().decode(), resp.headers.get_all("Set-Cookie")
        except urllib.error.HTTPError as exc:
            status, text, cookies = (
                exc.code,
                exc.read().decode(errors="replace"),
                exc.headers.get_all("Set-Cookie"),
            )
        for cookie in cookies or ():
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', text)
        if token:
            self.csrf = token.group(1)
        return status, text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_dropped_database_connections_are_reopened_and_nothing_is_lost(
    settings, approle_settings, tmp_path, alice, bob, ssh_account
):
    """Every connection of the gateway, the web app and the worker is terminated while
    alice's session is live: the web's next requests work (bob terminates the session from
    the live page), the gateway's housekeeping reconnects and cuts it, the session's end is
    recorded, its recordings verify, the worker keeps working (it expires the grant), and
    the audit trail is intact with every event of the story in it."""
    if connection.vendor != "postgresql":
        _run_on_postgresql(tmp_path)
        return
    use_production_hasher(alice)
    (tmp_path / "gw").mkdir()
    gateway = GatewayProcess(settings, tmp_path / "gw")
    gateway.env.update(DATABASE_CONN_MAX_AGE=CONN_MAX_AGE, PGAPPNAME="pamsite-gateway")
    env = {**os.environ, "DATABASE_URL": database_url(), "DATABASE_CONN_MAX_AGE": CONN_MAX_AGE}
    web = WebProcess(tmp_path, {**env, "PGAPPNAME": "pamsite-web"})
    # bob's web session, signed in with both factors (stored in the database daphne reads).
    web.cookies[django_settings.SESSION_COOKIE_NAME] = (
        verified_client(Client(), bob).cookies[django_settings.SESSION_COOKIE_NAME].value
    )
    gateway.start()
    web.start()
    with (tmp_path / "worker.log").open("ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "access_sweep", "--loop"],
            cwd=ROOT,
            env={**env, "ACCESS_SWEEP_SECONDS": "1", "PGAPPNAME": "pamsite-worker"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        grant = grant_for(alice, bob, ssh_account)
        client = client_of(gateway).popen(alice, "alice:pacs01-admin", tty=True)
        client.stdin.write(b"echo before-$((5*5))\n")
        client.stdin.flush()
        session = live_session(alice)
        status, _ = web.request(reverse("sessions:live"))
        assert status == 200  # the web process now holds a connection

        dbname = connection.settings_dict["NAME"]
        deadline = time.monotonic() + 15
        while not {"pamsite-gateway", "pamsite-worker"} <= _backends(dbname):  # each holds one now
            assert time.monotonic() < deadline, f"no connection to drop: {_backends(dbname)}"
            time.sleep(0.1)
        dropped = _terminate_backends(dbname)
        assert {"pamsite-gateway", "pamsite-worker"} <= set(dropped), dropped

        client.stdin.write(b"echo after-$((6*6))\n")
        client.stdin.flush()
        status, page = web.request(reverse("sessions:live"))
        assert status == 200, page[-3000:]
        assert f"/sessions/{session.pk}/" in page
        status, _ = web.request(
            reverse("sessions:terminate", args=[session.pk]), {"reason": "database failover drill"}
        )
        assert status == 302
        out, _ = client.communicate(timeout=20)
        text = out.decode(errors="replace")
        assert "after-36" in text and "terminated by bob" in text and "database failover drill" in text
        session = wait_ended(session)
        assert session.end_reason == GatewaySession.EndReason.TERMINATED
        for recording in session.recordings.all():
            ok, why = verify_recording(recording, root=gateway.recordings)
            assert ok, why
        cast = session.recordings.get(kind=Recording.Kind.TERMINAL)
        assert b"after-36" in (gateway.recordings / cast.path).read_bytes()
        actions = set(
            AuditEvent.objects.filter(
                object_id=str(session.pk), object_type="recordings.session"
            ).values_list("action", flat=True)
        )
        assert {"gateway.session.started", "session.terminate_requested", "gateway.session.ended"} <= actions
        # The worker met its dropped connection at its next pass, and carried on.
        Grant.objects.filter(pk=grant.pk).update(ends_at=timezone.now())
        deadline = time.monotonic() + 15
        while Grant.objects.get(pk=grant.pk).state != Grant.State.EXPIRED:
            assert worker.poll() is None, "the worker stopped:\n" + (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker did not expire the grant"
            time.sleep(0.2)
        assert verify_chain().ok, verify_chain().summary
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        web.stop()
        gateway.stop()


def _run_on_postgresql(tmp_path: Path) -> None:
    """Run this test in a child pytest whose DATABASE_URL is a PostgreSQL database of its own."""
    name = f"pamsite_faults_{secrets.token_hex(4)}"
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"This test needs PostgreSQL at {POSTGRES_URL} ({exc}): start it (see .ci/run)")
    env = {**os.environ, "DATABASE_URL": url, "PAMSITE_VAR_DIR": str(tmp_path / "var")}
    node = f"{Path(__file__).relative_to(ROOT)}::{TEST_NAME}"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", node, "-q", "-p", "no:cacheprovider", "--create-db"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"on PostgreSQL ({url}):\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert "1 passed" in done.stdout
