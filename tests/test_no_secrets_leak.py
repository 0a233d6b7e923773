"""No secret (password, TOTP key or code, Vault token, secret_id, KV value) reaches a log
line, the audit trail or the lockout records, across the flows of this part."""

from __future__ import annotations

import logging
from base64 import b32encode

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from tests.conftest import PASSWORD, make_user
from tests.totp import totp_code

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
        "lockout records": " ".join(f"{a.get_data} {a.post_data}" for a in AccessAttempt.objects.all())
        + " ".join(f"{f.username} {f.user_agent}" for f in AccessFailureLog.objects.all()),
    }
    assert caplog.text and places["audit trail"]
    for where, text in places.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} found in the {where}"
