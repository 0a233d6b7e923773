"""Fixtures for the gateway tests: a PACS target on the test sshd, its accounts, grants."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from access import services
from access.models import AccessPolicy, Account, Grant, Target
from vault import sources


def policy_for(account: Account) -> None:
    policy = AccessPolicy.objects.create(
        name=f"policy for {account.slug}",
        approvals_required=1,
        max_duration_minutes=60,
        ticket_required=False,
    )
    policy.groups.add(Group.objects.get_or_create(name="requester")[0])
    policy.accounts.add(account)


def grant_for(alice, bob, account, minutes: int = 30) -> Grant:
    req = services.request_create(
        requester=alice, account=account, reason="work", ticket="", duration_minutes=minutes
    )
    services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    req.refresh_from_db()
    assert req.state == "fulfilled", req.checkout_error
    return req.grant


@pytest.fixture
def pacs_target(sshd_target, approle_settings):
    return Target.objects.create(
        name="pacs01",
        kind=Target.Kind.PACS,
        host=sshd_target.host,
        port=sshd_target.port,
        host_key=sshd_target.host_key,
    )


@pytest.fixture
def ssh_account(pacs_target, sshd_target):
    user = sshd_target.create_user()
    account = Account.objects.create(
        target=pacs_target, slug="pacs01-admin", kind=Account.Kind.SSH_CA, username=user.name
    )
    sources.configure_ssh_role(account=services.account_ref(account))
    policy_for(account)
    return account


@pytest.fixture
def static_account(pacs_target, sshd_target):
    user = sshd_target.create_user()
    account = Account.objects.create(
        target=pacs_target, slug="pacs01-svc", kind=Account.Kind.STATIC, username=user.name
    )
    sources.static_set_password(account=services.account_ref(account), password=user.password)
    policy_for(account)
    return account


@pytest.fixture
def alice_key(alice, tmp_path):
    """An Ed25519 key made by ssh-keygen, registered on alice's account page."""
    from identity.services import ssh_key_add

    path = tmp_path / "alice_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", str(path)], check=True
    )
    ssh_key_add(user=alice, name="laptop", public_key_line=Path(f"{path}.pub").read_text(), request=None)
    return path
