"""No secret (password, TOTP key or code, Vault token, secret_id, KV value) reaches a log
line, the audit trail or the lockout records, across the flows of this part.

The same holds for the whole run: tests/secrets_registry.py scans every log file the run
wrote for every secret the suite created; the tests at the end show that scan at work.
"""

from __future__ import annotations

import logging
import os
import secrets as random_secrets
import subprocess
import sys
from base64 import b32encode
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from identity.models import LoginFailure, LoginLock
from tests.conftest import PASSWORD, make_user
from tests.secrets_registry import Leak, SecretRegistry, remembered
from tests.totp import totp_code

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db


def test_secrets_stay_out_of_logs_and_audit(client, caplog, approle_settings, bootstrapped_vault):
    from vault.client import VaultError, get_client

    caplog.set_level(logging.DEBUG)
    user = make_user("dana", "requester")
    device = TOTPDevice.objects.get(user=user)
    code = totp_code(device.bin_key)
    wrong_password = "Tr0ub4dor&3-wrong"

    client.post(reverse("identity:login"), {"username": "dana", "password": wrong_password})
    client.post(reverse("identity:login"), {"username": "dana", "password": PASSWORD})
    client.post(reverse("identity:verify"), {"code": "123456"})
    client.post(reverse("identity:verify"), {"code": code})

    vault = get_client()
    kv_value = "pacs01-root-password-Zx9!"
    vault.kv_write("test/pacs01-root", {"password": kv_value})
    assert vault.kv_read("test/pacs01-root")["password"] == kv_value
    vault.transit_sign(b"recording sha256")
    with pytest.raises(VaultError) as denied:
        vault.write("sys/policies/acl/evil", {"policy": 'path "*" { capabilities = ["sudo"] }'})

    secrets = {
        "password": PASSWORD,
        "wrong password": wrong_password,
        "totp key (hex)": device.key,
        "totp key (base32)": b32encode(device.bin_key).decode().rstrip("="),
        "totp code": code,
        "root token": bootstrapped_vault.root_token,
        "secret_id": bootstrapped_vault.secret_id,
        "kv value": kv_value,
    }
    places = {
        "log": caplog.text,
        "error message": str(denied.value),
        "audit trail": " ".join(
            f"{e.details} {e.object_repr} {e.actor_username}" for e in AuditEvent.objects.all()
        ),
        "lockout records": " ".join(
            f"{f.username} {f.address} {f.channel}" for f in LoginFailure.objects.all()
        )
        + " ".join(f"{lock.scope} {lock.value}" for lock in LoginLock.objects.all()),
    }
    assert caplog.text and places["audit trail"]
    for where, text in places.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} found in the {where}"
    # The run's log scan knows each of them (a wrong password and a code are not the suite's secrets).
    for what in ("password", "totp key (hex)", "totp key (base32)", "root token", "secret_id", "kv value"):
        assert remembered(secrets[what]), f"the {what} is not registered for the log scan"
    assert remembered(vault._hvac.token) == "Vault token (AppRole login)"


# --- The scan of the run's log files ----------------------------------------------------------


def test_the_scan_finds_a_planted_secret_and_names_only_its_kind(tmp_path):
    registry = SecretRegistry()
    token = registry.remember(random_secrets.token_urlsafe(24), "Vault root token")
    password = registry.remember(f"horse battery: Zx9!{random_secrets.token_hex(4)}", "account password")
    log = tmp_path / "planted.log"
    log.write_text(
        "2026-01-01 INFO starting\n"
        "2026-01-01 DEBUG nothing here\n"
        f"2026-01-01 DEBUG hvac: X-Vault-Token: {token}\n"
        f"2026-01-01 DEBUG POST body=user=root&password={quote_plus(password)}\n"
    )
    leaks = registry.scan([log])
    assert leaks == [Leak(log, 3, "Vault root token"), Leak(log, 4, "account password")]
    assert all(token not in str(leak) and password not in str(leak) for leak in leaks)
    assert str(leaks[0]) == f"{log}:3: Vault root token"


def test_the_scan_passes_a_clean_log_and_tolerated_lines(tmp_path):
    registry = SecretRegistry()
    token = registry.remember(random_secrets.token_urlsafe(24), "Vault root token")
    registry.remember("short", "too short to register")
    registry.tolerate("bao.log", "Root Token: ", "the dev server's banner")
    banner = tmp_path / "bao.log"
    banner.write_text(f"==> OpenBao server started\nRoot Token: {token}\nshort lines, short words\n")
    assert registry.scan([banner]) == []
    banner.write_text(f"Root Token: {token}\nrequest with token {token}\n")
    assert registry.scan([banner]) == [Leak(banner, 2, "Vault root token")]
    elsewhere = tmp_path / "other.log"
    elsewhere.write_text(f"Root Token: {token}\n")  # tolerated in bao.log only
    assert registry.scan([elsewhere]) == [Leak(elsewhere, 1, "Vault root token")]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "two-xdist-workers"])
def test_a_secret_in_a_log_fails_the_run_without_printing_it(tmp_path, workers):
    """A whole pytest run (with this suite's plugin) whose test writes a registered secret to a log file;
    under pytest-xdist the worker's secret and file reach the controller's scan."""
    secret = "planted-" + random_secrets.token_urlsafe(18)
    test_file = tmp_path / "test_planted.py"
    test_file.write_text(
        "from tests.secrets_registry import remember_secret\n\n\n"
        "def test_logs_a_secret(tmp_path):\n"
        f"    secret = remember_secret({secret!r}, 'planted secret')\n"
        "    (tmp_path / 'planted.log').write_text('login with ' + secret)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PAMSITE_VAR_DIR"] = str(tmp_path / "var")
    command = [sys.executable, "-m", "pytest", "-p", "tests.secrets_registry", "-p", "no:cacheprovider"]
    command += [
        "-c",
        str(ROOT / "pyproject.toml"),
        "--rootdir",
        str(ROOT),
        "--basetemp",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(
        [*command, *workers, str(test_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 passed" in output
    assert "SECRET IN LOG" in output and "planted.log:1: planted secret" in output
    assert secret not in output
