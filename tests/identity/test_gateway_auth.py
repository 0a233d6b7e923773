"""Logging in through the SSH gateway: password or key, then always a code; audited and
throttled together with the web login."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
from pathlib import Path

import asyncssh
import pytest
from django.contrib.sessions.models import Session
from django.urls import reverse
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from identity.gateway_auth import (
    gateway_key_login,
    gateway_keys_refused,
    gateway_locked_out,
    gateway_lockout,
    gateway_password_login,
    gateway_request,
    gateway_verify_code,
)
from identity.models import LoginFailure
from identity.services import MFAError, _new_backup_codes, ssh_key_add
from tests.conftest import PASSWORD, make_user
from tests.identity.test_ssh_keys import sk_public_key_line
from tests.totp import totp_code

pytestmark = pytest.mark.django_db

CLIENT_IP = "192.0.2.10"
OTHER_IP = "198.51.100.7"


def keygen(directory: Path, name: str, *args: str) -> asyncssh.SSHKey:
    """A key made by ssh-keygen, its public half as the gateway's asyncssh server sees the client's key."""
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-f", str(path), *args], check=True, capture_output=True)
    return asyncssh.read_public_key(f"{path}.pub")


def register(user, key: asyncssh.SSHKey, name: str = "laptop"):
    line = key.export_public_key().decode()
    return ssh_key_add(user=user, name=name, public_key_line=line, request=None)


def key_login(username: str, key: asyncssh.SSHKey, client_ip: str = CLIENT_IP, key_type: str | None = None):
    return gateway_key_login(
        username=username,
        key_type=key_type or key.get_algorithm(),
        key_blob=key.public_data,
        client_ip=client_ip,
    )


def device_of(user) -> TOTPDevice:
    return TOTPDevice.objects.get(user=user, confirmed=True)


def wrong_code(user) -> str:
    good = totp_code(device_of(user).bin_key)
    return f"{(int(good) + 500_000) % 1_000_000:06d}"


def wrong_codes(user, count: int) -> None:
    for _ in range(count):
        device = device_of(user)
        device.throttle_reset()  # skip django-otp's growing delay: it is the lockout we test
        with pytest.raises(MFAError):
            gateway_verify_code(user=user, code=wrong_code(user), client_ip=CLIENT_IP)


def last(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("sequence").last()


# --- The synthetic request -----------------------------------------------------------


def test_the_request_stands_for_the_ssh_client():
    request = gateway_request(client_ip=CLIENT_IP)
    assert request.META["REMOTE_ADDR"] == CLIENT_IP
    assert request.META["HTTP_USER_AGENT"] == "pamsite-ssh-gateway"
    assert request.path == "/ssh/"
    assert not hasattr(request, "session")


def test_an_ipv4_mapped_address_counts_as_the_ipv4_address():
    assert gateway_request(client_ip="::ffff:192.0.2.10").META["REMOTE_ADDR"] == CLIENT_IP


def test_a_client_ip_that_is_not_an_address_is_refused():
    with pytest.raises(ValueError):
        gateway_request(client_ip="gateway-host")


# --- Password --------------------------------------------------------------------------


def test_the_right_password_returns_the_user_and_is_audited(alice):
    assert gateway_password_login(username="alice", password=PASSWORD, client_ip=CLIENT_IP) == alice
    event = last("auth.login.password_ok")
    assert event.actor == alice
    assert event.actor_username == "alice"
    assert event.source_ip == CLIENT_IP
    assert event.details == {"channel": "ssh"}


def test_a_wrong_password_is_refused_audited_and_counted(alice):
    assert gateway_password_login(username="alice", password="not the password", client_ip=CLIENT_IP) is None
    event = last("auth.login.failure")
    assert event.actor_username == "alice"
    assert event.source_ip == CLIENT_IP
    assert event.details == {"reason": "bad_password", "step": "password", "channel": "ssh"}
    assert LoginFailure.objects.filter(username="alice").count() == 1


def test_an_unknown_user_is_refused(db):
    assert gateway_password_login(username="nobody", password=PASSWORD, client_ip=CLIENT_IP) is None
    assert last("auth.login.failure").details["reason"] == "unknown_user"


def test_an_inactive_user_is_refused(alice):
    alice.is_active = False
    alice.save()
    assert gateway_password_login(username="alice", password=PASSWORD, client_ip=CLIENT_IP) is None
    assert last("auth.login.failure").details["reason"] == "inactive"


def test_wrong_passwords_lock_the_username_for_gateway_and_web(client, alice, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        gateway_password_login(username="alice", password="wrong", client_ip=CLIENT_IP)
    assert gateway_locked_out(username="alice", client_ip=OTHER_IP)
    # Locked: the right password is refused, from any address, and on the web too.
    assert gateway_password_login(username="alice", password=PASSWORD, client_ip=OTHER_IP) is None
    assert last("auth.login.failure").details == {
        "reason": "locked_out",
        "step": "password",
        "channel": "ssh",
    }
    lockout = last("auth.lockout")
    assert lockout.actor_username == "alice"
    assert lockout.details["scope"] == "username"
    assert lockout.details["failures"] == settings.LOGIN_FAILURE_LIMIT
    assert lockout.details["channel"] == "ssh"
    response = client.post(reverse("identity:login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 429


def test_web_failures_count_towards_the_gateway_lockout(client, alice, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        client.post(reverse("identity:login"), {"username": "alice", "password": "wrong"})
    assert gateway_locked_out(username="alice", client_ip=OTHER_IP)
    assert gateway_password_login(username="alice", password=PASSWORD, client_ip=OTHER_IP) is None


def test_password_spraying_from_one_address_locks_that_address(alice, settings):
    for n in range(settings.LOGIN_ADDRESS_FAILURE_LIMIT):
        assert not gateway_locked_out(username="alice", client_ip=CLIENT_IP), n
        gateway_password_login(username=f"guess{n}", password="Winter2026!", client_ip=CLIENT_IP)
    lock = gateway_lockout(username="alice", client_ip=CLIENT_IP)
    assert lock is not None and lock.is_address
    assert f"came from {CLIENT_IP}" in lock.message() and "locked until" in lock.message()
    assert gateway_password_login(username="alice", password=PASSWORD, client_ip=CLIENT_IP) is None
    # Alice from her own address is not locked out by someone else's guessing.
    assert not gateway_locked_out(username="alice", client_ip=OTHER_IP)
    assert gateway_password_login(username="alice", password=PASSWORD, client_ip=OTHER_IP) == alice


# --- Public key ------------------------------------------------------------------------


def test_a_registered_key_logs_its_owner_in(alice, tmp_path):
    key = keygen(tmp_path, "alice", "-t", "ed25519")
    registered = register(alice, key)
    assert key_login("alice", key) == alice
    registered.refresh_from_db()
    assert registered.last_used_at is not None
    event = last("auth.login.key_ok")
    assert event.actor == alice
    assert event.source_ip == CLIENT_IP
    assert event.details == {"channel": "ssh", "step": "publickey", "fingerprint": registered.fingerprint}


def test_an_rsa_key_offered_with_a_sha2_signature_name_is_recognised(alice, tmp_path):
    key = keygen(tmp_path, "alice", "-t", "rsa", "-b", "2048")
    register(alice, key)
    assert key_login("alice", key, key_type="rsa-sha2-512") == alice


@pytest.mark.parametrize("key_type", ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"])
def test_a_registered_security_key_logs_its_owner_in(alice, key_type):
    """A FIDO key as the gateway's asyncssh server hands it over once its signature checked out."""
    key = asyncssh.import_public_key(sk_public_key_line(key_type))
    registered = register(alice, key)
    assert registered.key_type == key_type
    assert key_login("alice", key) == alice
    assert last("auth.login.key_ok").details["fingerprint"] == registered.fingerprint


def test_another_users_key_is_refused_audited_and_not_counted(alice, bob, tmp_path, settings):
    bobs_key = keygen(tmp_path, "bob", "-t", "ed25519")
    bobs = register(bob, bobs_key)
    # An agent with many keys offers them all: none of these may lock alice out.
    for _ in range(settings.LOGIN_FAILURE_LIMIT + 1):
        assert key_login("alice", bobs_key) is None
    event = last("auth.login.failure")
    assert event.actor_username == "alice"
    assert event.details == {
        "reason": "unknown_key",
        "step": "publickey",
        "channel": "ssh",
        "fingerprint": bobs.fingerprint,
    }
    assert not LoginFailure.objects.exists()
    assert not gateway_locked_out(username="alice", client_ip=CLIENT_IP)
    bobs.refresh_from_db()
    assert bobs.last_used_at is None


def test_an_unregistered_key_is_refused(alice, tmp_path):
    assert key_login("alice", keygen(tmp_path, "stray", "-t", "ed25519")) is None
    assert last("auth.login.failure").details["reason"] == "unknown_key"


def test_an_inactive_users_key_is_refused(alice, tmp_path):
    key = keygen(tmp_path, "alice", "-t", "ed25519")
    register(alice, key)
    alice.is_active = False
    alice.save()
    assert key_login("alice", key) is None
    assert last("auth.login.failure").details["reason"] == "inactive"


def test_a_connection_that_offered_only_strangers_keys_counts_once_towards_the_lockout(alice, settings):
    """Unknown keys are not counted one by one (an agent offers all it has), but a connection
    that ended with nothing else counts as one failure: spraying keys gets locked out too."""
    for n in range(settings.LOGIN_FAILURE_LIMIT):
        assert not gateway_locked_out(username="alice", client_ip=CLIENT_IP), n
        gateway_keys_refused(username="alice", client_ip=CLIENT_IP)
    assert gateway_locked_out(username="alice", client_ip=CLIENT_IP)
    event = last("auth.login.failure")
    assert event.actor_username == "alice" and event.source_ip == CLIENT_IP
    assert event.details == {"reason": "keys_refused", "step": "publickey", "channel": "ssh"}
    # Once locked, nothing more is counted or audited.
    count = AuditEvent.objects.filter(action="auth.login.failure").count()
    gateway_keys_refused(username="alice", client_ip=CLIENT_IP)
    assert AuditEvent.objects.filter(action="auth.login.failure").count() == count
    assert (
        "alice: sign-in is locked until" in gateway_lockout(username="alice", client_ip=CLIENT_IP).message()
    )


def test_a_locked_out_user_is_refused_even_with_her_key(alice, tmp_path, settings):
    key = keygen(tmp_path, "alice", "-t", "ed25519")
    register(alice, key)
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        gateway_password_login(username="alice", password="wrong", client_ip=OTHER_IP)
    assert key_login("alice", key) is None
    assert last("auth.login.failure").details["reason"] == "locked_out"
    assert not AuditEvent.objects.filter(action="auth.login.key_ok").exists()


# --- The code --------------------------------------------------------------------------


def test_the_right_code_completes_the_login_and_clears_the_failure_count(alice):
    gateway_password_login(username="alice", password="wrong", client_ip=CLIENT_IP)
    assert LoginFailure.objects.filter(username="alice").exists()
    code = totp_code(device_of(alice).bin_key)
    assert gateway_verify_code(user=alice, code=code, client_ip=CLIENT_IP) == "totp"
    event = last("auth.login.success")
    assert event.actor == alice
    assert event.source_ip == CLIENT_IP
    assert event.details == {"method": "totp", "channel": "ssh"}
    assert not LoginFailure.objects.filter(username="alice").exists()
    alice.refresh_from_db()
    assert alice.last_login is not None
    # No web session was made or touched.
    assert not Session.objects.exists()


def test_a_wrong_code_is_refused_with_the_webs_message_audited_and_counted(alice):
    with pytest.raises(MFAError) as caught:
        gateway_verify_code(user=alice, code=wrong_code(alice), client_ip=CLIENT_IP)
    assert caught.value.reason == "wrong_code"
    assert str(caught.value).startswith("That code is not right.")
    event = last("auth.mfa.failure")
    assert event.actor == alice
    assert event.source_ip == CLIENT_IP
    assert event.details == {"reason": "wrong_code", "channel": "ssh"}
    assert LoginFailure.objects.get(username="alice").channel == "ssh"


def test_wrong_codes_lock_the_account_and_then_even_the_right_password_is_refused(client, alice, settings):
    wrong_codes(alice, settings.LOGIN_FAILURE_LIMIT)
    assert gateway_locked_out(username="alice", client_ip=OTHER_IP)
    assert last("auth.lockout").details["channel"] == "ssh"
    assert gateway_password_login(username="alice", password=PASSWORD, client_ip=OTHER_IP) is None
    response = client.post(reverse("identity:login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 429
    # Nor is a right code tried any more.
    device_of(alice).throttle_reset()
    with pytest.raises(MFAError) as caught:
        gateway_verify_code(user=alice, code=totp_code(device_of(alice).bin_key), client_ip=CLIENT_IP)
    assert caught.value.reason == "locked_out"
    assert "locked" in str(caught.value)
    assert not AuditEvent.objects.filter(action="auth.login.success").exists()


def test_wrong_passwords_and_wrong_codes_count_together(alice, settings):
    gateway_password_login(username="alice", password="wrong", client_ip=CLIENT_IP)
    wrong_codes(alice, settings.LOGIN_FAILURE_LIMIT - 1)
    assert gateway_locked_out(username="alice", client_ip=OTHER_IP)


def test_a_code_cannot_be_used_twice(alice):
    code = totp_code(device_of(alice).bin_key)
    assert gateway_verify_code(user=alice, code=code, client_ip=CLIENT_IP) == "totp"
    with pytest.raises(MFAError) as caught:
        gateway_verify_code(user=alice, code=code, client_ip=CLIENT_IP)
    assert caught.value.reason == "replayed"
    assert "already been used" in str(caught.value)
    assert last("auth.mfa.failure").details == {"reason": "replayed", "channel": "ssh"}


def test_a_backup_code_works_once(alice):
    codes = _new_backup_codes(alice)
    assert gateway_verify_code(user=alice, code=codes[0], client_ip=CLIENT_IP) == "backup_code"
    assert last("auth.login.success").details == {
        "method": "backup_code",
        "backups_left": 9,
        "channel": "ssh",
    }
    assert StaticToken.objects.filter(device__user=alice).count() == 9
    with pytest.raises(MFAError) as caught:
        gateway_verify_code(user=alice, code=codes[0], client_ip=CLIENT_IP)
    assert caught.value.reason == "wrong_code"


def test_a_user_without_an_authenticator_is_told_to_enrol_on_the_web(db):
    newbie = make_user("newbie", "requester", totp=False)
    with pytest.raises(MFAError) as caught:
        gateway_verify_code(user=newbie, code="123456", client_ip=CLIENT_IP)
    assert caught.value.reason == "not_enrolled"
    assert "on the web" in str(caught.value)
    assert not LoginFailure.objects.exists()


def test_a_one_time_password_never_opens_the_gateway(alice):
    """A pam-admin's reset gave alice a one-time password: it is for choosing a new one on
    the web, so the gateway refuses her (whatever her code) and says where to go."""
    alice.must_change_password = True
    alice.save(update_fields=["must_change_password"])
    user = gateway_password_login(username="alice", password=PASSWORD, client_ip=CLIENT_IP)
    with pytest.raises(MFAError) as caught:
        gateway_verify_code(user=user, code=totp_code(device_of(alice).bin_key), client_ip=CLIENT_IP)
    assert caught.value.reason == "password_change_required"
    assert "choose a new password first" in str(caught.value) and "on the web" in str(caught.value)
    assert not LoginFailure.objects.exists()


def test_a_user_disabled_between_the_two_factors_is_refused(alice):
    user = gateway_password_login(username="alice", password=PASSWORD, client_ip=CLIENT_IP)
    alice.is_active = False
    alice.save()
    with pytest.raises(MFAError) as caught:
        gateway_verify_code(user=user, code=totp_code(device_of(alice).bin_key), client_ip=CLIENT_IP)
    assert caught.value.reason == "inactive"


# --- Secrets ---------------------------------------------------------------------------


def test_no_password_code_or_key_reaches_the_audit_trail_logs_or_lockout_records(alice, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    key = keygen(tmp_path, "alice", "-t", "ed25519")
    stray = keygen(tmp_path, "stray", "-t", "ed25519")
    register(alice, key)
    wrong_password = "Tr0ub4dor&3-ssh-wrong"
    bad_code = wrong_code(alice)
    gateway_password_login(username="alice", password=wrong_password, client_ip=CLIENT_IP)
    gateway_password_login(username="alice", password=PASSWORD, client_ip=CLIENT_IP)
    key_login("alice", stray)
    key_login("alice", key)
    with pytest.raises(MFAError) as failed:
        gateway_verify_code(user=alice, code=bad_code, client_ip=CLIENT_IP)
    device_of(alice).throttle_reset()
    good_code = totp_code(device_of(alice).bin_key)
    gateway_verify_code(user=alice, code=good_code, client_ip=CLIENT_IP)

    secrets = {
        "password": PASSWORD,
        "wrong password": wrong_password,
        "wrong code": bad_code,
        "right code": good_code,
        "key": base64.b64encode(key.public_data).decode(),
        "stray key": base64.b64encode(stray.public_data).decode(),
    }
    events = AuditEvent.objects.all()
    assert {e.details.get("channel") for e in events if e.action.startswith("auth.")} == {"ssh"}
    places = {
        "audit trail": " ".join(
            f"{json.dumps(e.details)} {e.object_repr} {e.actor_username}" for e in events
        ),
        "log": caplog.text,
        "error message": str(failed.value),
        "lockout records": " ".join(
            f"{f.username} {f.address} {f.channel}" for f in LoginFailure.objects.all()
        ),
    }
    for place, text in places.items():
        for name, secret in secrets.items():
            assert secret not in text, f"the {name} is in the {place}"
