"""Test connection against the real servers: an sshd trusting Vault's SSH CA, OpenBao, the
machine's PostgreSQL. Each account kind logs in as the gateway would, and each failure is
said in words: host unreachable, host key changed, password refused, TLS mode wrong, not set
up in Vault. The result is kept on the account and audited, never with a secret."""

from __future__ import annotations

import secrets

import pytest

from access import services
from access.models import Account, Target
from access.targets import account_test_connection, accounts_readiness
from audit.models import AuditEvent
from tests.fixtures.pacs import configure_pg_connection, make_database_account, target_on
from vault import sources

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CLOSED_PORT = 1  # nothing listens on port 1 of the loopback
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq5Q0Yg7C3ZbJrQWwq0b0bH8r4bqg3v8c3zZ"


@pytest.fixture
def pacs(sshd_target, approle_settings):
    return target_on(sshd_target, name="pacs01")


def _slug(prefix: str) -> str:
    # Vault outlives each test: a fresh name keeps roles and passwords of others out.
    return f"{prefix}-{secrets.token_hex(3)}"


def _ssh_ca(target, user, *, slug=None, configure=True) -> Account:
    slug = slug or _slug("pacs01-admin")
    account = Account.objects.create(target=target, slug=slug, kind=Account.Kind.SSH_CA, username=user.name)
    if configure:
        sources.configure_ssh_role(account=services.account_ref(account))
    return account


def _static(target, user, *, slug=None, password=None) -> Account:
    slug = slug or _slug("pacs01-svc")
    account = Account.objects.create(target=target, slug=slug, kind=Account.Kind.STATIC, username=user.name)
    sources.static_set_password(account=services.account_ref(account), password=password or user.password)
    return account


def test_an_ssh_ca_account_logs_in_with_a_certificate_signed_by_vault(pacs, sshd_target, pat):
    account = _ssh_ca(pacs, sshd_target.create_user())
    result = account_test_connection(account=account, acting_user=pat)
    assert result.ok, result.message
    assert "certificate signed by Vault" in result.message
    account.refresh_from_db()
    assert account.last_test_ok is True and account.last_test_at == result.at
    event = AuditEvent.objects.get(action="access.account.tested")
    assert event.details["ok"] is True and event.actor == pat
    assert accounts_readiness(accounts=[account])[account.pk].next_step == ""


def test_an_ssh_ca_account_without_its_vault_role_says_so(pacs, sshd_target, pat):
    account = _ssh_ca(pacs, sshd_target.create_user(), configure=False)
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok
    assert result.message.startswith(f"Not set up in Vault: No SSH role {account.slug} in Vault")
    readiness = accounts_readiness(accounts=[account])[account.pk]
    assert readiness.pinned is True and readiness.in_vault is False and readiness.next_step == "vault"


def test_a_login_changed_after_the_vault_setup_is_not_in_the_role(pacs, sshd_target, pat):
    account = _ssh_ca(pacs, sshd_target.create_user())
    Account.objects.filter(pk=account.pk).update(username=sshd_target.create_user().name)
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok
    assert (
        "does not sign certificates for the login" in result.message
        and "Not set up in Vault" in result.message
    )


def test_a_host_showing_another_key_than_the_pinned_one_is_host_key_changed(pacs, sshd_target, pat):
    account = _ssh_ca(pacs, sshd_target.create_user())
    Target.objects.filter(pk=pacs.pk).update(host_key=OTHER_KEY)
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok
    assert result.message.startswith("Host key changed or not pinned:")
    assert "does not match the pinned key" in result.message


def test_a_static_account_logs_in_with_the_password_vault_holds(pacs, sshd_target, pat):
    user = sshd_target.create_user()
    account = _static(pacs, user)
    result = account_test_connection(account=account, acting_user=pat)
    assert result.ok, result.message
    assert user.password not in str(AuditEvent.objects.get(action="access.account.tested").details)


def test_a_password_changed_on_the_target_is_password_refused(pacs, sshd_target, pat):
    user = sshd_target.create_user()
    account = _static(pacs, user)
    sshd_target.set_password(user.name, "changed-behind-pamsites-back-7")
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok
    assert result.message.startswith("Password refused: the password Vault holds for")
    account.refresh_from_db()
    assert account.last_test_ok is False and "Password refused" in account.last_test_message
    assert user.password not in account.last_test_message


def test_a_host_nobody_answers_on_is_host_unreachable(sshd_target, approle_settings, pat):
    target = Target.objects.create(
        name="pacs09", host="127.0.0.1", port=CLOSED_PORT, host_key=sshd_target.host_key
    )
    account = _static(target, sshd_target.create_user(), slug="pacs09-svc")
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok
    assert result.message.startswith("Host unreachable:") and "refused the connection" in result.message


def test_a_static_account_without_a_pinned_key_is_refused_before_any_password_is_sent(
    sshd_target, approle_settings, pat
):
    target = Target.objects.create(name="pacs02", host=sshd_target.host, port=sshd_target.port)
    account = _static(target, sshd_target.create_user(), slug="pacs02-svc")
    offset = len(sshd_target.log())
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok and "No host key is pinned" in result.message
    assert "password" not in sshd_target.log()[offset:].lower()
    assert accounts_readiness(accounts=[account])[account.pk].next_step == "pin"


def test_a_database_account_logs_in_as_a_short_lived_user_released_after(pg_target, approle_settings, pat):
    account = make_database_account(pg_target, name="pacsdb07", slug="pacsdb07-admin")
    Account.objects.filter(pk=account.pk).update(database_sslmode="disable")
    before = pg_target.roles()
    result = account_test_connection(account=account, acting_user=pat)
    assert result.ok, result.message
    assert "short-lived user from Vault, released again" in result.message
    assert pg_target.roles() == before  # the dynamic user is dropped again


def test_a_tls_mode_the_database_does_not_offer_is_tls_mode_wrong(pg_target, approle_settings, pat):
    # The machine's PostgreSQL runs without TLS (and so does CI's).
    account = make_database_account(pg_target, name="pacsdb08", slug="pacsdb08-admin")
    Account.objects.filter(pk=account.pk).update(database_sslmode="require")
    before = pg_target.roles()
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok
    assert result.message.startswith("TLS mode wrong:") and "does not offer TLS" in result.message
    assert pg_target.roles() == before  # released even though the login failed


def test_a_database_nobody_answers_on_is_host_unreachable(pg_target, approle_settings, pat):
    account = make_database_account(pg_target, name="pacsdb09", slug="pacsdb09-admin")
    Target.objects.filter(pk=account.target_id).update(port=CLOSED_PORT)
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok
    assert result.message.startswith("Host unreachable:") and "refused the connection" in result.message


def test_a_database_account_without_its_vault_role_says_so(pg_target, approle_settings, pat):
    target = Target.objects.create(
        name="pacsdb10", kind=Target.Kind.DATABASE, host=pg_target.host, port=pg_target.port
    )
    configure_pg_connection(pg_target, target.name)
    account = Account.objects.create(
        target=target,
        slug="pacsdb10-admin",
        kind=Account.Kind.DATABASE,
        username=pg_target.group_role,
        database_name=pg_target.database,
    )
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok
    assert result.message.startswith("Not set up in Vault: No database role pacsdb10-admin in Vault")
    assert accounts_readiness(accounts=[account])[account.pk].pinned is None  # no host key to pin


def test_vault_down_says_so_and_the_readiness_is_unknown(pacs, sshd_target, pat, settings):
    account = _ssh_ca(pacs, sshd_target.create_user())
    settings.VAULT_ADDR = f"http://127.0.0.1:{CLOSED_PORT}"
    result = account_test_connection(account=account, acting_user=pat)
    assert not result.ok and result.message.startswith("Vault could not be asked:")
    readiness = accounts_readiness(accounts=[account])[account.pk]
    assert readiness.in_vault is None and "unreachable" in readiness.vault_message.lower()
