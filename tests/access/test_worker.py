"""A real Celery worker, with the machine's Redis as broker, releases an ended grant."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from django.db import connection

from access import services
from access.models import Grant

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("PAMSITE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def redis_broker():
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis is not answering at {REDIS_URL}: start it (this machine's Redis runs on 6379).")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


def _database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    host, port = s["HOST"] or "127.0.0.1", s["PORT"] or 5432
    return f"postgres://{s['USER']}:{s['PASSWORD'] or 'x'}@{host}:{port}/{s['NAME']}"


def test_worker_releases_a_checked_in_grant(
    alice, bob, policy, ssh_account, vault_ready, redis_broker, tmp_path
):
    from celery import Celery

    req = services.request_create(
        requester=alice, account=ssh_account, reason="worker test", ticket="INC-9", duration_minutes=30
    )
    services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    grant = Grant.objects.get()
    # End it without running the release here: the worker must do it.
    Grant.objects.filter(pk=grant.pk).update(state=Grant.State.CHECKED_IN, cleanup=Grant.Cleanup.PENDING)

    queue = f"pamsite-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "pamsite.settings",
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": redis_broker,
        "VAULT_ADDR": vault_ready.VAULT_ADDR,
        "VAULT_ROLE_ID": vault_ready.VAULT_ROLE_ID,
        "VAULT_SECRET_ID": vault_ready.VAULT_SECRET_ID,
        "PAMSITE_VAR_DIR": str(tmp_path),
    }
    env.pop("VAULT_TOKEN", None)
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pamsite",
            "worker",
            "-Q",
            queue,
            "--pool=solo",
            "--loglevel=INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # A client of its own: the site's app may already hold a connection to another broker.
    sender = Celery("pamsite-test-client", broker=redis_broker)
    try:
        sender.send_task("access.grant_cleanup", args=[grant.pk], queue=queue)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            grant.refresh_from_db()
            if grant.cleanup == Grant.Cleanup.DONE:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.3)
        assert grant.cleanup == Grant.Cleanup.DONE, (tmp_path / "worker.log").read_text()[-3000:]
        assert "access.grant_cleanup" in (tmp_path / "worker.log").read_text()
    finally:
        sender.close()
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
