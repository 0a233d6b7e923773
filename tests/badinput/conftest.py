"""Fixtures of the bad-input tests: a target with accounts and a ticket policy, and a Vault
that is not there (so a post that gets through its form fails fast and says so)."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from tests.conftest import make_user, verified_client
from tests.fixtures.openbao import free_port

TICKET_PATTERN = r"^(INC|CHG)-\d{3,10}$"


@pytest.fixture
def no_vault(settings):
    """Vault on a port nothing listens on, with a token that must never reach a page."""
    from vault.client import reset_client

    settings.VAULT_ADDR = f"http://127.0.0.1:{free_port()}"
    settings.VAULT_TOKEN = "hvs.badinput-" + secrets.token_hex(12)
    settings.VAULT_ROLE_ID = ""
    settings.VAULT_SECRET_ID = ""
    reset_client()
    yield settings
    reset_client()


@pytest.fixture
def target(db):
    from access.models import Target

    # A port nothing listens on: fetching its host key fails at once.
    return Target.objects.create(name="pacs01", kind=Target.Kind.PACS, host="127.0.0.1", port=free_port())


@pytest.fixture
def accounts(target):
    from access.models import Account

    return {
        kind: Account.objects.create(target=target, slug=f"pacs01-{kind}", kind=kind, username="svc_pacs")
        for kind in (Account.Kind.SSH_CA, Account.Kind.DATABASE, Account.Kind.STATIC)
    }


@pytest.fixture
def ticket_policy(accounts):
    """Requesters may ask for every account of pacs01, with a ticket like INC-123, up to 2 hours."""
    from access.models import AccessPolicy

    policy = AccessPolicy.objects.create(
        name="PACS admins",
        approvals_required=1,
        max_duration_minutes=120,
        ticket_required=True,
        ticket_pattern=TICKET_PATTERN,
        allow_reveal=True,
    )
    policy.groups.add(Group.objects.get_or_create(name="requester")[0])
    policy.targets.add(next(iter(accounts.values())).target)
    return policy


def live_grant(*, user, account, break_glass: bool = False):
    """A live grant made directly (no Vault): what a checkout leaves behind."""
    from access.models import AccessRequest, Grant

    req = AccessRequest.objects.create(
        requester=user,
        account=account,
        reason="work",
        ticket="INC-123",
        duration_minutes=60,
        approvals_required=0 if break_glass else 1,
        state=AccessRequest.State.FULFILLED,
        break_glass=break_glass,
    )
    return Grant.objects.create(
        request=req,
        user=user,
        account=account,
        ends_at=timezone.now() + timedelta(hours=1),
        break_glass=break_glass,
        login=account.username,
    )


@pytest.fixture
def alice_client(client, alice):
    return verified_client(client, alice)


@pytest.fixture
def bob_client(client, bob):
    return verified_client(client, bob)


@pytest.fixture
def carol_client(client, carol):
    return verified_client(client, carol)


@pytest.fixture
def pat_client(client, pat):
    return verified_client(client, pat)


@pytest.fixture
def erin(db):
    """A requester in the break-glass group."""
    return make_user("erin", "requester", "break-glass", email="erin@hospital.example")
