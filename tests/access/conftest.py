"""Fixtures for the access workflow: a PACS target, accounts, a policy; Vault for checkouts."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from access.models import AccessPolicy, Account, Target


@pytest.fixture
def pacs01(db):
    return Target.objects.create(name="pacs01", kind=Target.Kind.PACS, host="127.0.0.1", port=22)


@pytest.fixture
def ssh_account(pacs01):
    return Account.objects.create(
        target=pacs01, slug="pacs01-root", kind=Account.Kind.SSH_CA, username="root"
    )


@pytest.fixture
def policy(ssh_account):
    policy = AccessPolicy.objects.create(
        name="PACS admins",
        approvals_required=1,
        max_duration_minutes=120,
        ticket_required=True,
        ticket_pattern=r"^INC-\d+$",
    )
    policy.groups.add(Group.objects.get_or_create(name="requester")[0])
    policy.targets.add(ssh_account.target)
    return policy


@pytest.fixture
def vault_ready(approle_settings, ssh_account):
    """The app's AppRole against the bootstrapped OpenBao, with the account's SSH role configured."""
    from access.services import account_ref
    from vault import sources

    sources.configure_ssh_role(account=account_ref(ssh_account))
    return approle_settings
