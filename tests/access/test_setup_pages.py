"""pam-admin pages: pin a target's host key, connect an account to Vault. Refused to everyone else."""

from __future__ import annotations

import subprocess

import pytest
from django.urls import reverse

from access.models import Account, Target
from audit.models import AuditEvent
from tests.conftest import verified_client
from vault import sources

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def vna01(sshd_target):
    return Target.objects.create(
        name="vna01", kind=Target.Kind.VNA, host=sshd_target.host, port=sshd_target.port
    )


def test_pam_admin_pins_the_host_key_after_seeing_its_fingerprint(client, pat, vna01, sshd_target):
    verified_client(client, pat)
    page = client.get(reverse("access:target", args=[vna01.pk]))
    expected = subprocess.run(
        ["ssh-keygen", "-lf", f"{sshd_target.host_key_path}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert expected.encode() in page.content
    vna01.refresh_from_db()
    assert vna01.host_key == ""  # shown, not trusted yet

    response = client.post(
        reverse("access:target", args=[vna01.pk]), {"host_key": sshd_target.host_key, "fingerprint": expected}
    )
    assert response.status_code == 302
    vna01.refresh_from_db()
    assert vna01.host_key == sshd_target.host_key and vna01.host_key_fingerprint == expected
    assert AuditEvent.objects.get(action="access.target.host_pinned").details["fingerprint"] == expected


def test_a_key_other_than_the_hosts_is_never_pinned(client, pat, vna01):
    verified_client(client, pat)
    forged = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq5Q0Yg7C3ZbJrQWwq0b0bH8r4bqg3v8c3zZ"
    response = client.post(
        reverse("access:target", args=[vna01.pk]),
        {"host_key": forged, "fingerprint": "SHA256:forged"},
        follow=True,
    )
    assert b"different key" in response.content
    vna01.refresh_from_db()
    assert vna01.host_key == ""


@pytest.mark.parametrize("persona", ["alice", "bob", "carol"])
def test_setup_pages_refuse_everyone_but_pam_admins(client, request, persona, vna01):
    account = Account.objects.create(target=vna01, slug="vna01-svc", kind=Account.Kind.STATIC, username="svc")
    verified_client(client, request.getfixturevalue(persona))
    assert client.get(reverse("access:target", args=[vna01.pk])).status_code == 403
    assert (
        client.post(reverse("access:account_setup", args=[account.pk]), {"current_password": "x"}).status_code
        == 403
    )


def test_static_setup_checks_the_password_on_the_target_first(
    client, pat, vna01, sshd_target, approle_settings
):
    user = sshd_target.create_user()
    Target.objects.filter(pk=vna01.pk).update(host_key=sshd_target.host_key)
    account = Account.objects.create(
        target=vna01, slug="vna01-svc", kind=Account.Kind.STATIC, username=user.name
    )
    verified_client(client, pat)
    url = reverse("access:account_setup", args=[account.pk])
    response = client.post(url, {"current_password": "not-it"}, follow=True)
    assert b"could not log in" in response.content
    response = client.post(url, {"current_password": user.password})
    assert response.status_code == 302
    from access.services import account_ref

    assert sources.reveal(account=account_ref(account), grant_ref="1").password == user.password
    event = AuditEvent.objects.get(action="vault.account.configured")
    assert event.details["verified_on_target"] is True
    assert user.password not in str(event.details)


def test_ssh_setup_creates_the_vault_role(client, pat, vna01, approle_settings):
    account = Account.objects.create(
        target=vna01, slug="vna01-root", kind=Account.Kind.SSH_CA, username="root"
    )
    verified_client(client, pat)
    assert client.post(reverse("access:account_setup", args=[account.pk])).status_code == 302
    from access.services import account_ref

    checked = sources.checkout(account=account_ref(account), grant_ref="1", ttl_seconds=60)
    assert checked.login == "root"
