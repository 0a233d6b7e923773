"""A restart of the embedded OpenBao (`make run`'s, vault/embedded.py) loses nothing.

The real stack around it: the embedded OpenBao on raft storage, bootstrapped by
``manage.py vault_bootstrap`` as `make run` does, the gateway (AppRole), a private sshd
trusting that Vault's SSH CA, the real OpenSSH client. The OpenBao process is stopped and
started again on the same folder between "before" and "after".
"""

from __future__ import annotations

import time

import pytest

from access import rotation, services
from access.models import Account
from recordings.models import GatewaySession
from recordings.recorder import signed_manifest, verify_recording
from targets import ssh_blocking
from tests.fixtures.openbao import bootstrap_embedded
from tests.fixtures.pacs import grant_for, policy_for, target_on
from tests.fixtures.sshd import SshdTarget, vault_ssh_ca_public_key
from vault import sources
from vault.client import get_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def stack(settings, approle_settings, embedded_openbao, tmp_path):
    """The embedded OpenBao, bootstrapped, the app on its AppRole; an sshd trusting its SSH CA."""
    server = embedded_openbao()
    bootstrap_embedded(settings, server, tmp_path / "approle")
    sshd = SshdTarget(
        tmp_path / "sshd", ca_public_key=vault_ssh_ca_public_key(server.addr, settings.VAULT_SSH_MOUNT)
    )
    sshd.start()
    try:
        yield server, sshd
    finally:
        sshd.stop()
        sshd.remove_users()


def session_ended(user, count: int) -> GatewaySession:
    """The user's ``count``-th gateway session with a grant, once the gateway ended it."""
    deadline = time.monotonic() + 15
    while True:
        sessions = list(GatewaySession.objects.filter(user=user, grant__isnull=False).order_by("pk"))
        if len(sessions) >= count and sessions[count - 1].ended_at is not None:
            return sessions[count - 1]
        assert time.monotonic() < deadline, f"the gateway did not end session {count}: {sessions}"
        time.sleep(0.1)


def test_after_a_restart_recordings_verify_certificates_sign_and_rotated_passwords_work(
    gateway, stack, alice, bob, settings
):
    server, sshd = stack
    target = target_on(sshd, name="pacs01")
    admin, svc = sshd.create_user(), sshd.create_user()
    ssh_account = Account.objects.create(
        target=target, slug="pacs01-admin", kind=Account.Kind.SSH_CA, username=admin.name
    )
    sources.configure_ssh_role(account=services.account_ref(ssh_account))
    policy_for(ssh_account)
    static_account = Account.objects.create(
        target=target, slug="pacs01-svc", kind=Account.Kind.STATIC, username=svc.name
    )
    static_ref = services.account_ref(static_account)
    sources.static_set_password(account=static_ref, password=svc.password)
    policy_for(static_account)

    # Before: a recorded session through the gateway with an SSH certificate, and a rotation.
    grant_for(alice, bob, ssh_account)
    result = gateway.ssh(alice, "alice:pacs01-admin", "echo before-$((6*7))")
    assert result.returncode == 0 and b"before-42" in result.stdout, result.stderr
    before = list(session_ended(alice, 1).recordings.all())
    assert before and all(verify_recording(r)[0] for r in before)
    rotation.static_rotate(account=static_ref)
    rotated = sources.static_login_password(account=static_ref)
    assert rotated != svc.password
    signing_keys = get_client().transit_public_keys()
    ssh_ca = vault_ssh_ca_public_key(server.addr, settings.VAULT_SSH_MOUNT)

    server.stop()
    assert get_client().health().state == "unreachable"
    server.start()

    assert not server.initialised_now
    # The recordings made before verify, here and by Vault itself: its signing key is the same.
    vault = get_client()
    assert vault.transit_public_keys() == signing_keys
    for recording in before:
        ok, why = verify_recording(recording)
        assert ok, why
        assert vault.transit_verify(signed_manifest(recording), recording.signature)
    # The SSH CA and the account's SSH role are still there: the gateway logs in with a certificate.
    assert vault_ssh_ca_public_key(server.addr, settings.VAULT_SSH_MOUNT) == ssh_ca
    result = gateway.ssh(alice, "alice:pacs01-admin", "echo after-$((6*7)); whoami")
    assert result.returncode == 0 and b"after-42" in result.stdout, result.stderr
    assert admin.name.encode() in result.stdout
    after = list(session_ended(alice, 2).recordings.all())
    assert after and all(r.signature.startswith("vault:v1:") and verify_recording(r)[0] for r in after)
    # The rotated password is where it was: in Vault, and the one the target takes.
    assert sources.static_login_password(account=static_ref) == rotated
    assert ssh_blocking.check_password_login(
        host=sshd.host, port=sshd.port, username=svc.name, host_key=sshd.host_key, password=rotated
    )
    grant_for(alice, bob, static_account)
    result = gateway.ssh(alice, "alice:pacs01-svc", "whoami")
    assert result.returncode == 0 and result.stdout.strip() == svc.name.encode(), result.stderr
