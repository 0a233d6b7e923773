"""vault/sources.py: checkout, reveal, release and signing against real servers.

OpenBao (the app's AppRole and policy, as in production), the machine's PostgreSQL as the
PACS database, and a private OpenSSH sshd as the PACS host. Nothing is mocked.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from django.conf import settings

from targets import errors, ssh, ssh_blocking
from tests.fixtures.pacs import account_ref_on, configure_pg_connection
from vault import sources
from vault.bootstrap import vault_bootstrap
from vault.client import (
    VaultClient,
    VaultConfig,
    VaultError,
    VaultNotFound,
    VaultSealed,
    VaultUnavailable,
    get_client,
)
from vault.sources import AccountRef, CheckedOut, CredentialError, RevealedSecret, SecretAlreadyShown


def root_client(server) -> VaultClient:
    config = replace(VaultConfig.from_settings(), addr=server.addr, token=server.root_token)
    return VaultClient(config.token_only())


def lease_ttl(server, lease_id: str) -> int:
    return root_client(server).write("sys/leases/lookup", {"lease_id": lease_id})["data"]["ttl"]


def leases(server, role: str) -> list[str]:
    """The live leases of a database role (Vault's LIST needs sudo: the root token)."""
    url = f"{server.addr}/v1/sys/leases/lookup/{settings.VAULT_DATABASE_MOUNT}/creds/{role}/?list=true"
    request = urllib.request.Request(url, headers={"X-Vault-Token": server.root_token})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())["data"]["keys"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


def members(pg_target) -> set[str]:
    """The roles that are members of the target's group role (the dynamic users)."""
    with pg_target.admin() as conn:
        rows = conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
            "JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = %s",
            [pg_target.group_role],
        ).fetchall()
    return {row[0] for row in rows}


def grant_ref() -> str:
    return str(secrets.randbelow(10**9))


@pytest.fixture
def vault_app(approle_settings):
    """The client the app uses: AppRole, the pamsite-app policy."""
    client = get_client()
    assert client.auth_method == "approle"
    return client


def make_db_account(vault, pg_target, *, max_ttl: int = 86400) -> AccountRef:
    suffix = secrets.token_hex(3)
    account = AccountRef(
        slug=f"pacsdb-admin-{suffix}",
        kind="database",
        username=pg_target.group_role,
        database=pg_target.database,
        connection=f"pacsdb-{suffix}",
        host=pg_target.host,
        port=pg_target.port,
    )
    configure_pg_connection(pg_target, account.connection, vault=vault)
    sources.configure_database_role(account=account, default_ttl=300, max_ttl=max_ttl, vault=vault)
    return account


@pytest.fixture
def db_account(vault_app, pg_target):
    """A database account configured through the app's own policy (as the pam-admin pages do)."""
    return make_db_account(vault_app, pg_target)


# --- database ---------------------------------------------------------------------------------


def test_database_checkout_makes_a_member_role_whose_lease_is_the_grant(
    db_account, vault_app, pg_target, bootstrapped_vault
):
    ref = grant_ref()
    before = datetime.now(UTC)

    out = sources.checkout(account=db_account, grant_ref=ref, ttl_seconds=900, vault=vault_app)
    try:
        assert out.login in pg_target.roles()
        assert pg_target.is_member(out.login, pg_target.group_role)
        assert out.lease_id.startswith(f"{settings.VAULT_DATABASE_MOUNT}/creds/{db_account.role_name}/")
        assert 890 <= lease_ttl(bootstrapped_vault.server, out.lease_id) <= 900
        assert before + timedelta(seconds=895) <= out.expires_at <= datetime.now(UTC) + timedelta(seconds=900)
        with pg_target.admin() as conn:
            valid_until = conn.execute("SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", [out.login])
            assert abs((valid_until.fetchone()[0] - out.expires_at).total_seconds()) < 5

        secret = sources.reveal(account=db_account, grant_ref=ref, vault=vault_app)

        assert secret.login == out.login
        assert pg_target.can_login(secret.login, secret.password)
        assert not pg_target.can_login(secret.login, secret.password + "x")
        assert secret.password not in repr(secret) and secret.password not in repr(out)
        with pg_target.connect(secret.login, secret.password) as conn:
            assert conn.execute("SELECT count(*) FROM studies").fetchone()[0] == 2
    finally:
        sources.release(account=db_account, grant_ref=ref, checked_out=out, vault=vault_app)


def test_a_shorter_grant_shortens_the_lease_below_the_role_default(db_account, vault_app, bootstrapped_vault):
    ref = grant_ref()
    out = sources.checkout(account=db_account, grant_ref=ref, ttl_seconds=120, vault=vault_app)
    try:
        assert 115 <= lease_ttl(bootstrapped_vault.server, out.lease_id) <= 120  # the role's default is 300
    finally:
        sources.release(account=db_account, grant_ref=ref, checked_out=out, vault=vault_app)


def test_the_database_password_is_shown_only_once(db_account, vault_app, bootstrapped_vault):
    ref = grant_ref()
    out = sources.checkout(account=db_account, grant_ref=ref, ttl_seconds=300, vault=vault_app)
    try:
        sources.reveal(account=db_account, grant_ref=ref, vault=vault_app)

        with pytest.raises(SecretAlreadyShown, match=f"The password of grant {ref} was already shown"):
            sources.reveal(account=db_account, grant_ref=ref, vault=vault_app)

        # The version that held the password is destroyed, not just hidden.
        versions = root_client(bootstrapped_vault.server).read(
            f"{settings.VAULT_KV_MOUNT}/metadata/grants/{ref}"
        )
        assert versions["data"]["versions"]["1"]["destroyed"] is True
        assert "password" not in vault_app.kv_read(f"grants/{ref}")
    finally:
        sources.release(account=db_account, grant_ref=ref, checked_out=out, vault=vault_app)


def test_release_drops_the_role_and_cuts_its_open_connection(
    db_account, vault_app, pg_target, bootstrapped_vault
):
    ref = grant_ref()
    out = sources.checkout(account=db_account, grant_ref=ref, ttl_seconds=600, vault=vault_app)
    secret = sources.reveal(account=db_account, grant_ref=ref, vault=vault_app)
    live = pg_target.connect(secret.login, secret.password)
    assert live.execute("SELECT current_user").fetchone()[0] == out.login
    # Something the admin made during the session must not block the revocation.
    live.execute(f'CREATE TABLE "worklist_{ref}" (id int)')

    sources.release(account=db_account, grant_ref=ref, checked_out=out, vault=vault_app)

    assert out.login not in pg_target.roles()
    with pytest.raises(psycopg.OperationalError):
        live.execute("SELECT 1")
    live.close()
    assert leases(bootstrapped_vault.server, db_account.role_name) == []
    with pg_target.admin() as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = %s", [f"worklist_{ref}"])
        assert owner.fetchone()[0] == pg_target.group_role
    with pytest.raises(VaultNotFound):
        vault_app.kv_read(f"grants/{ref}")
    with pytest.raises(CredentialError, match="not checked out, or already released"):
        sources.reveal(account=db_account, grant_ref=ref, vault=vault_app)

    sources.release(account=db_account, grant_ref=ref, checked_out=out, vault=vault_app)  # again: fine


def test_release_finds_the_lease_in_the_stash_when_the_caller_lost_it(
    db_account, vault_app, pg_target, bootstrapped_vault
):
    ref = grant_ref()
    out = sources.checkout(account=db_account, grant_ref=ref, ttl_seconds=300, vault=vault_app)
    sources.reveal(account=db_account, grant_ref=ref, vault=vault_app)

    sources.release(account=db_account, grant_ref=ref, checked_out=replace(out, lease_id=""), vault=vault_app)

    assert out.login not in pg_target.roles()
    assert leases(bootstrapped_vault.server, db_account.role_name) == []


def test_release_refuses_a_lease_of_another_account(db_account, vault_app):
    other = CheckedOut(lease_id="pamsite-database/creds/someone-else/abc", login="x", expires_at=None)

    with pytest.raises(CredentialError, match=r"is not one of .*: not revoked"):
        sources.release(account=db_account, grant_ref="1", checked_out=other, vault=vault_app)


def test_a_grant_longer_than_the_role_allows_leaves_no_role_and_no_lease(
    vault_app, pg_target, bootstrapped_vault
):
    account = make_db_account(vault_app, pg_target, max_ttl=600)
    before = members(pg_target)

    with pytest.raises(
        CredentialError,
        match=r"allows leases of at most about (9|10) min, shorter than the grant \(1 h\)",
    ):
        sources.checkout(account=account, grant_ref=grant_ref(), ttl_seconds=3600, vault=vault_app)

    assert members(pg_target) == before
    assert leases(bootstrapped_vault.server, account.role_name) == []


def test_a_second_checkout_for_the_same_grant_gives_its_lease_back(
    db_account, vault_app, pg_target, bootstrapped_vault
):
    ref = grant_ref()
    # The target is shared by the run: roles other tests left to expire are not this test's.
    before = members(pg_target)
    first = sources.checkout(account=db_account, grant_ref=ref, ttl_seconds=300, vault=vault_app)
    try:
        with pytest.raises(
            CredentialError, match=f"Grant {ref} already has database credentials checked out"
        ):
            sources.checkout(account=db_account, grant_ref=ref, ttl_seconds=300, vault=vault_app)

        assert leases(bootstrapped_vault.server, db_account.role_name) == [first.lease_id.rsplit("/", 1)[1]]
        assert members(pg_target) - before == {first.login}
    finally:
        sources.release(account=db_account, grant_ref=ref, checked_out=first, vault=vault_app)


def test_a_sealed_or_stopped_vault_fails_the_checkout_and_leaves_nothing(
    settings, openbao_factory, pg_target
):
    server = openbao_factory()
    server.initialize()
    server.unseal()
    vault = root_client(server)
    vault_bootstrap(vault=vault)
    account = make_db_account(vault, pg_target)
    before = members(pg_target)

    server.seal()
    with pytest.raises(VaultSealed, match=f"Vault is sealed at {server.addr}: unseal it"):
        sources.checkout(account=account, grant_ref="7", ttl_seconds=300, vault=vault)
    server.unseal()
    assert leases(server, account.role_name) == []
    assert members(pg_target) == before

    server.stop()
    with pytest.raises(VaultUnavailable, match=f"Vault unreachable at {server.addr}"):
        sources.checkout(account=account, grant_ref="8", ttl_seconds=300, vault=vault)
    assert members(pg_target) == before


def test_database_configuration_is_validated(vault_app, pg_target):
    common = {
        "name": "pacsdb-x",
        "host": pg_target.host,
        "port": pg_target.port,
        "admin_username": "postgres",
        "admin_password": "pw",
        "vault": vault_app,
    }
    with pytest.raises(CredentialError, match="Not a plain PostgreSQL database name"):
        sources.configure_database_connection(**common, database='pacs"; DROP TABLE x; --')
    with pytest.raises(CredentialError, match="Not a host name or address"):
        sources.configure_database_connection(**{**common, "host": "db@evil/x"}, database="pacs")
    bad = AccountRef(
        slug="x", kind="database", username='admin" WITH SUPERUSER', database="d", connection="c"
    )
    with pytest.raises(CredentialError, match="Not a plain PostgreSQL group role"):
        sources.configure_database_role(account=bad, vault=vault_app)
    missing = replace(bad, username="pacs_admin", connection="no-such-connection")
    with pytest.raises(CredentialError, match="No database connection no-such-connection in Vault"):
        sources.configure_database_role(account=missing, vault=vault_app)


def test_a_wrong_admin_password_never_appears_in_the_error(vault_app, pg_target):
    """Vault verifies the connection; its error names the failure, not the password."""
    password = "Admin-Secret-" + secrets.token_hex(8)
    with pytest.raises(VaultError) as excinfo:
        sources.configure_database_connection(
            name="pacsdb-unreachable",
            host="127.0.0.1",
            port=1,  # nothing listens there
            database=pg_target.database,
            admin_username="postgres",
            admin_password=password,
            sslmode="disable",
            vault=vault_app,
        )
    assert password not in str(excinfo.value)
    assert "pamsite-database/config/pacsdb-unreachable" in str(excinfo.value)


# --- ssh-ca -----------------------------------------------------------------------------------------


@pytest.fixture
def ssh_account(vault_app, sshd_target):
    return account_ref_on(sshd_target, sshd_target.create_user(), "ssh-ca")


def test_ssh_ca_checkout_needs_the_accounts_role(ssh_account, vault_app):
    with pytest.raises(CredentialError, match=f"No SSH role {ssh_account.role_name} in Vault"):
        sources.checkout(account=ssh_account, grant_ref="1", ttl_seconds=600, vault=vault_app)

    sources.configure_ssh_role(account=ssh_account, vault=vault_app)
    out = sources.checkout(account=ssh_account, grant_ref="1", ttl_seconds=600, vault=vault_app)

    assert out.lease_id == "" and out.login == ssh_account.username
    assert abs((out.expires_at - datetime.now(UTC)).total_seconds() - 600) < 5
    sources.release(account=ssh_account, grant_ref="1", checked_out=out, vault=vault_app)  # nothing to do
    with pytest.raises(CredentialError, match="has no secret to show: connect through the gateway"):
        sources.reveal(account=ssh_account, grant_ref="1", vault=vault_app)


def test_a_signed_certificate_logs_in_as_the_principal_and_no_one_else(ssh_account, vault_app, sshd_target):
    sources.configure_ssh_role(account=ssh_account, vault=vault_app)
    other = sshd_target.create_user()
    private_key, public_key = ssh.generate_keypair()

    certificate = sources.ssh_sign(
        account=ssh_account, public_key=public_key, ttl_seconds=60, vault=vault_app
    )

    cert = serialization.load_ssh_public_identity(certificate.encode())
    now = datetime.now(UTC).timestamp()
    assert cert.valid_principals == [ssh_account.username.encode()]
    assert now + 55 <= cert.valid_before <= now + 60
    assert set(cert.extensions) == {b"permit-pty", b"permit-port-forwarding"}
    common = {"host": sshd_target.host, "port": sshd_target.port, "host_key": sshd_target.host_key}
    with ssh_blocking.connect(
        **common, username=ssh_account.username, private_key=private_key, certificate=certificate
    ) as c:
        assert (
            ssh_blocking.run(connection=c, command="id -un").stdout.decode().strip() == ssh_account.username
        )
    with pytest.raises(
        errors.AuthFailed, match=f"Authentication as {other.name} .* \\(certificate rejected\\)"
    ):
        ssh_blocking.connect(**common, username=other.name, private_key=private_key, certificate=certificate)
    with pytest.raises(errors.AuthFailed):  # the bare key, without the CA's signature
        ssh_blocking.connect(**common, username=ssh_account.username, private_key=private_key)
    # Vault itself refuses another principal on the account's role.
    with pytest.raises(VaultError):
        vault_app.ssh_sign_public_key(ssh_account.role_name, public_key, [other.name], 60)


def test_the_gateway_role_cannot_be_taken_over_by_an_account(vault_app):
    account = AccountRef(slug="x", kind="ssh-ca", username="root", vault_role=settings.VAULT_SSH_ROLE)

    with pytest.raises(CredentialError, match="is the gateway's own SSH role"):
        sources.configure_ssh_role(account=account, vault=vault_app)


# --- static -------------------------------------------------------------------------------------------


def test_static_checkout_needs_the_password_and_reveal_gives_the_one_that_logs_in(vault_app, sshd_target):
    user = sshd_target.create_user()
    account = account_ref_on(sshd_target, user, "static")
    with pytest.raises(CredentialError, match=f"No password in Vault for {account.slug}"):
        sources.checkout(account=account, grant_ref="1", ttl_seconds=600, vault=vault_app)

    sources.static_set_password(account=account, password=user.password, vault=vault_app)
    out = sources.checkout(account=account, grant_ref="1", ttl_seconds=600, vault=vault_app)
    secret = sources.reveal(account=account, grant_ref="1", vault=vault_app)

    assert out == CheckedOut(lease_id="", login=user.name, expires_at=None)
    assert secret == RevealedSecret(login=user.name, password=user.password)
    assert ssh_blocking.check_password_login(
        host=sshd_target.host,
        port=sshd_target.port,
        username=user.name,
        host_key=sshd_target.host_key,
        password=secret.password,
    )
