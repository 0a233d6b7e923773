"""End to end per account kind, against real OpenBao, PostgreSQL and sshd:
the credential works while the grant is live and stops working when it ends."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from access import services
from access.models import AccessPolicy, Account, Grant, Target
from audit.models import AuditEvent
from targets import ssh_blocking
from tests.conftest import verified_client
from tests.fixtures.pacs import grant_for, make_database_account, target_on
from tests.totp import totp_code
from vault import sources

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _policy(account: Account, *, allow_reveal: bool) -> AccessPolicy:
    policy = AccessPolicy.objects.create(
        name=f"policy for {account.slug}",
        approvals_required=1,
        max_duration_minutes=60,
        ticket_required=False,
        allow_reveal=allow_reveal,
    )
    policy.groups.add(Group.objects.get_or_create(name="requester")[0])
    policy.accounts.add(account)
    return policy


@pytest.fixture
def db_account(pg_target, approle_settings):
    account = make_database_account(pg_target)
    _policy(account, allow_reveal=True)
    return account


@pytest.fixture
def static_account(sshd_target, approle_settings):
    user = sshd_target.create_user()
    target = target_on(sshd_target, name="vna01", kind=Target.Kind.VNA)
    account = Account.objects.create(
        target=target, slug="vna01-svc", kind=Account.Kind.STATIC, username=user.name
    )
    sources.static_set_password(account=services.account_ref(account), password=user.password)
    _policy(account, allow_reveal=False)
    return account, user


@pytest.mark.parametrize("ending", ["checkin", "revoke", "expiry"])
def test_database_role_lives_only_as_long_as_the_grant(alice, bob, db_account, pg_target, ending):
    grant = grant_for(alice, bob, db_account)
    assert grant.login in pg_target.roles()
    assert pg_target.is_member(grant.login, pg_target.group_role)
    if ending == "checkin":
        services.grant_checkin(grant=grant, acting_user=alice)
    elif ending == "revoke":
        services.grant_revoke(grant=grant, acting_user=bob, reason="done")
    else:
        services.grants_expire_due(now=grant.ends_at + timedelta(seconds=1))
    grant.refresh_from_db()
    assert grant.cleanup == Grant.Cleanup.DONE, grant.cleanup_error
    assert grant.login not in pg_target.roles()


def test_revealed_database_password_logs_in_once_shown(client, alice, bob, db_account, pg_target):
    grant = grant_for(alice, bob, db_account)
    verified_client(client, alice)
    page = client.get(reverse("access:grant", args=[grant.pk]))
    assert b"Show the secret" in page.content
    # Without a fresh code: refused.
    response = client.post(reverse("access:grant_reveal", args=[grant.pk]), {"code": "000000"})
    assert response.status_code == 302
    grant.refresh_from_db()
    assert grant.revealed_at is None

    import time

    time.sleep(1.1)  # django-otp's delay after a wrong code
    key = alice.totpdevice_set.get().bin_key
    response = client.post(
        reverse("access:grant_reveal", args=[grant.pk]), {"code": totp_code(key, at=time.time() + 30)}
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    password = re.search(rb'id="secret-password">([^<]+)<', response.content).group(1).decode()
    assert pg_target.can_login(grant.login, password)
    assert AuditEvent.objects.filter(action="access.secret.revealed").count() == 1
    # Shown once: the page no longer offers it.
    assert b"Show the secret" not in client.get(reverse("access:grant", args=[grant.pk])).content
    services.grant_checkin(grant=grant, acting_user=alice)
    assert not pg_target.can_login(grant.login, password)


def test_static_password_is_rotated_after_the_grant(alice, bob, static_account, sshd_target):
    account, user = static_account
    grant = grant_for(alice, bob, account)
    kwargs = {
        "host": sshd_target.host,
        "port": sshd_target.port,
        "username": user.name,
        "host_key": sshd_target.host_key,
    }
    assert ssh_blocking.check_password_login(password=user.password, **kwargs)
    services.grant_checkin(grant=grant, acting_user=alice)
    grant.refresh_from_db()
    assert grant.cleanup == Grant.Cleanup.DONE, grant.cleanup_error
    assert not ssh_blocking.check_password_login(password=user.password, **kwargs)
    new = sources.reveal(account=services.account_ref(account), grant_ref=str(grant.pk))
    assert new.password != user.password
    assert ssh_blocking.check_password_login(password=new.password, **kwargs)
    assert AuditEvent.objects.filter(action="access.password.rotated").exists()


def test_failed_rotation_is_retried_and_alerts_pam_admins(
    alice, bob, pat, static_account, sshd_target, mailoutbox
):
    account, user = static_account
    grant = grant_for(alice, bob, account)
    # The target now shows another host key (as if replaced): rotation must refuse and retry later.
    Target.objects.filter(pk=account.target_id).update(
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq5Q0Yg7C3ZbJrQWwq0b0bH8r4bqg3v8c3zZ"
    )
    services.grant_checkin(grant=grant, acting_user=alice)
    grant.refresh_from_db()
    assert grant.cleanup == Grant.Cleanup.FAILED
    assert grant.cleanup_attempts == 1 and grant.cleanup_next_at > grant.ended_at
    assert any(pat.email in m.to for m in mailoutbox)
    kwargs = {
        "host": sshd_target.host,
        "port": sshd_target.port,
        "username": user.name,
        "host_key": sshd_target.host_key,
    }
    # Nothing half done: the old password still works and is still the one in KV.
    assert ssh_blocking.check_password_login(password=user.password, **kwargs)
    assert (
        sources.reveal(account=services.account_ref(account), grant_ref=str(grant.pk)).password
        == user.password
    )

    Target.objects.filter(pk=account.target_id).update(host_key=sshd_target.host_key)
    assert services.grants_cleanup_due(now=grant.cleanup_next_at + timedelta(seconds=1)) == 1
    assert not ssh_blocking.check_password_login(password=user.password, **kwargs)
