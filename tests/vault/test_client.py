"""vault/client.py against real OpenBao servers (never a mock of hvac)."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import time
from dataclasses import replace
from urllib.parse import urlparse

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from tests.fixtures.openbao import BAO, free_port, point_settings_at
from vault.client import (
    VaultAuthError,
    VaultClient,
    VaultConfig,
    VaultError,
    VaultPermissionDenied,
    VaultSealed,
    VaultUnavailable,
    get_client,
    reset_client,
)

# Vault's database engine connects here to create dynamic roles (trust auth on this machine).
POSTGRES_URL = os.environ.get("PAMSITE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def root_client(server) -> VaultClient:
    config = replace(VaultConfig.from_settings(), addr=server.addr, token=server.root_token)
    return VaultClient(config.token_only())


# --- Health --------------------------------------------------------------------------


def test_health_reports_unsealed_with_the_server_version(vault_settings):
    health = get_client().health()
    version = subprocess.run([BAO, "version"], capture_output=True, text=True, check=True).stdout

    assert health.state == "unsealed"
    assert health.ok
    assert health.version and f"v{health.version} " in version
    assert health.cluster_name
    assert health.address == vault_settings.VAULT_ADDR


def test_health_reports_uninitialized_then_sealed(settings, openbao_factory):
    server = openbao_factory()
    point_settings_at(settings, server, token="")

    assert get_client().health().state == "uninitialized"
    server.initialize()
    health = get_client().health()

    assert health.state == "sealed"
    assert not health.ok
    assert health.message == f"Vault is sealed at {server.addr}: unseal it (bao operator unseal) and retry"
    assert health.version


def test_a_request_to_a_sealed_vault_raises_vault_sealed(settings, openbao_factory):
    server = openbao_factory()
    server.initialize()
    server.unseal()
    point_settings_at(settings, server)
    client = get_client()
    assert client.health().state == "unsealed"

    server.seal()
    with pytest.raises(VaultSealed) as excinfo:
        client.kv_read("targets/pacs01")

    assert (
        str(excinfo.value) == f"Vault is sealed at {server.addr}: unseal it (bao operator unseal) and retry"
    )
    assert isinstance(excinfo.value, VaultUnavailable)
    server.unseal()
    assert client.health().state == "unsealed"


def test_a_stopped_server_is_unreachable(settings, openbao_factory):
    server = openbao_factory(dev=True)
    point_settings_at(settings, server)
    server.stop()
    client = get_client()

    health = client.health()
    assert health.state == "unreachable"
    assert health.message.startswith(f"Vault unreachable at {server.addr}: ")
    with pytest.raises(
        VaultUnavailable, match=r"^Vault unreachable at http://127\.0\.0\.1:\d+: check VAULT_ADDR"
    ):
        client.kv_read("targets/pacs01")


def test_tls_is_verified_against_vault_cacert(settings, openbao_factory):
    server = openbao_factory(tls=True)
    point_settings_at(settings, server, token="")

    health = get_client().health()
    assert health.state == "unreachable"
    assert health.message.startswith(f"TLS verification failed for Vault at {server.addr}: set VAULT_CACERT")

    settings.VAULT_CACERT = str(server.cacert)
    assert get_client().health().state == "uninitialized"


# --- AppRole and the pamsite-app policy --------------------------------------------


def test_approle_can_write_and_read_kv(approle_settings):
    client = get_client()
    assert client.auth_method == "approle"

    first = client.kv_write("targets/pacs01/root", {"password": "first-password"})
    second = client.kv_write("targets/pacs01/root", {"password": "second-password"})

    assert second == first + 1
    assert client.kv_read("targets/pacs01/root") == {"password": "second-password"}
    assert client.kv_read("targets/pacs01/root", version=first) == {"password": "first-password"}


def test_approle_can_sign_and_verify_with_transit(approle_settings):
    client = get_client()

    signature = client.transit_sign(b"sha256 of a recording")

    assert signature.startswith("vault:v1:")
    assert client.transit_verify(b"sha256 of a recording", signature) is True
    assert client.transit_verify(b"sha256 of another recording", signature) is False
    assert client.transit_verify(b"sha256 of a recording", "not a signature") is False


def test_approle_can_have_an_ssh_key_signed_by_the_ca(approle_settings):
    client = get_client()
    user_key = Ed25519PrivateKey.generate().public_key()
    public_key = user_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()

    signed = client.ssh_sign_public_key(settings.VAULT_SSH_ROLE, public_key, ["pacsadmin"], 60)

    cert = serialization.load_ssh_public_identity(signed.encode())
    ca_key = serialization.load_ssh_public_key(client.ssh_ca_public_key().encode())
    assert cert.valid_principals == [b"pacsadmin"]
    assert cert.signature_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ) == ca_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert cert.valid_before - cert.valid_after <= 60 + 60  # ttl, plus Vault's 30 s backdating and slack


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("sys/policies/acl/evil", {"policy": 'path "*" { capabilities = ["sudo"] }'}),
        ("secret/data/x", {"data": {"a": "b"}}),
        ("sys/mounts/evil", {"type": "kv"}),
        ("auth/token/create", {"policies": ["root"]}),
        ("auth/approle/role/pamsite/secret-id", {}),
        ("pamsite-transit/keys/pamsite-recordings/config", {"deletion_allowed": True}),
        ("pamsite-ssh/config/ca", {"generate_signing_key": True}),
        ("pamsite-database/rotate-root/pacsdb", {}),
        ("pamsite-ssh/roles/pamsite-gateway", {"key_type": "ca", "allowed_users": "root"}),
        ("pamsite-kv/destroy/accounts/pacs01-root", {"versions": [1]}),
        ("other-database/config/evil", {"plugin_name": "postgresql-database-plugin"}),
    ],
)
def test_approle_is_denied_outside_its_policy(approle_settings, path, data):
    with pytest.raises(VaultPermissionDenied) as excinfo:
        get_client().write(path, data)

    assert str(excinfo.value) == (
        f"Vault refused the request (permission denied) for {path}: check the pamsite policy"
    )


def test_approle_cannot_read_other_kv_metadata_destructively(approle_settings):
    client = get_client()
    client.kv_write("targets/pacs02/root", {"password": "pw-for-pacs02"})

    with pytest.raises(VaultPermissionDenied):
        client.delete(f"{settings.VAULT_KV_MOUNT}/metadata/targets/pacs02/root")
    assert client.kv_read("targets/pacs02/root") == {"password": "pw-for-pacs02"}


def test_database_credentials_are_leased_renewed_and_revoked(approle_settings, bootstrapped_vault):
    pg = urlparse(POSTGRES_URL)
    mount = settings.VAULT_DATABASE_MOUNT
    root = root_client(bootstrapped_vault.server)
    root.write(
        f"{mount}/config/pamsite-test",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": "postgresql://{{username}}:{{password}}@"
            f"{pg.hostname}:{pg.port or 5432}{pg.path or '/postgres'}?sslmode=disable",
            "username": pg.username or "postgres",
            "password": pg.password or "unused-with-trust-auth",
            "allowed_roles": ["pamsite-test-role"],
        },
    )
    root.write(
        f"{mount}/roles/pamsite-test-role",
        {
            "db_name": "pamsite-test",
            "creation_statements": [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
            ],
            "revocation_statements": ['DROP ROLE IF EXISTS "{{name}}";'],
            "default_ttl": 120,
            "max_ttl": 600,
        },
    )

    def role_exists(name: str) -> bool:
        with psycopg.connect(POSTGRES_URL) as conn:
            return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone() is not None

    client = get_client()
    creds = client.database_credentials("pamsite-test-role")
    username, password, lease_id, lease_duration = creds
    try:
        assert role_exists(username)
        assert lease_id.startswith(f"{mount}/creds/pamsite-test-role/")
        assert lease_duration == 120
        assert password not in repr(creds)
        assert client.lease_renew(lease_id, 300) == 300
    finally:
        client.lease_revoke(lease_id)
    assert not role_exists(username)
    client.lease_revoke(lease_id)  # revoking twice is harmless


# --- Tokens: expiry, revocation, bad credentials --------------------------------------


def test_a_revoked_approle_token_is_replaced_by_logging_in_again(approle_settings, bootstrapped_vault):
    client = get_client()
    client.kv_write("renewal/check", {"value": "one"})
    accessor = client.read("auth/token/lookup-self")["data"]["accessor"]

    root_client(bootstrapped_vault.server).write("auth/token/revoke-accessor", {"accessor": accessor})

    assert client.kv_read("renewal/check") == {"value": "one"}
    assert client.read("auth/token/lookup-self")["data"]["accessor"] != accessor


def test_an_approle_token_near_expiry_is_renewed(approle_settings):
    client = get_client()
    client.kv_write("renewal/check", {"value": "two"})
    before = client.read("auth/token/lookup-self")["data"]

    client._token_deadline = time.monotonic() + 1  # pretend the hour is nearly over
    client.kv_read("renewal/check")

    after = client.read("auth/token/lookup-self")["data"]
    assert after["accessor"] == before["accessor"]  # renewed, not replaced
    assert after["expire_time"] >= before["expire_time"]
    assert client._token_deadline > time.monotonic() + 3000


def test_wrong_approle_credentials_are_rejected_without_revealing_them(settings, bootstrapped_vault, caplog):
    caplog.set_level(logging.DEBUG)
    bad_secret_id = f"bad-{secrets.token_hex(16)}"
    point_settings_at(settings, bootstrapped_vault.server, token="")
    settings.VAULT_ROLE_ID = bootstrapped_vault.role_id
    settings.VAULT_SECRET_ID = bad_secret_id

    with pytest.raises(VaultAuthError) as excinfo:
        get_client().kv_read("targets/pacs01/root")

    message = str(excinfo.value)
    assert message.startswith("Vault rejected the AppRole credentials: check VAULT_ROLE_ID / VAULT_SECRET_ID")
    for secret in (bad_secret_id, bootstrapped_vault.role_id, bootstrapped_vault.secret_id):
        assert secret not in message
        assert secret not in repr(excinfo.value)
        assert secret not in caplog.text
        assert secret not in repr(get_client())
        assert secret not in repr(get_client().config)
    assert excinfo.value.__suppress_context__  # hvac's exception (and its request) is not chained


def test_a_wrong_token_is_reported_as_such(settings, openbao):
    wrong = f"wrong-{secrets.token_hex(16)}"
    point_settings_at(settings, openbao, token=wrong)

    with pytest.raises(VaultAuthError) as excinfo:
        get_client().kv_read("targets/pacs01/root")

    assert "check VAULT_TOKEN" in str(excinfo.value)
    assert wrong not in str(excinfo.value)


def test_messages_and_logs_never_hold_a_token_or_secret_id(approle_settings, bootstrapped_vault, caplog):
    caplog.set_level(logging.DEBUG)
    client = get_client()
    client.kv_write("targets/pacs03/root", {"password": "pw-for-pacs03"})
    token = client._hvac.token
    messages = []
    for path in ("sys/policies/acl/evil", "secret/data/x"):
        with pytest.raises(VaultError) as excinfo:
            client.write(path, {"token": token, "secret_id": bootstrapped_vault.secret_id})
        messages.append(str(excinfo.value))

    for secret in (token, bootstrapped_vault.secret_id, bootstrapped_vault.root_token, "pw-for-pacs03"):
        assert all(secret not in message for message in messages)
        assert secret not in caplog.text
        assert secret not in repr(client)


def test_no_credentials_at_all_is_a_clear_error_but_health_works(settings, openbao):
    point_settings_at(settings, openbao, token="")

    with pytest.raises(VaultAuthError, match="No Vault credentials are configured: set VAULT_ROLE_ID"):
        get_client().kv_read("targets/pacs01/root")
    assert get_client().health().state == "unsealed"


def test_unsafe_paths_are_refused_before_reaching_vault(vault_settings):
    with pytest.raises(VaultError, match="Refusing an unsafe Vault KV path"):
        get_client().kv_read("../../sys/policies/acl/pamsite-app")


# --- The cached client -------------------------------------------------------------


def test_the_client_is_cached_until_a_vault_setting_changes(vault_settings):
    first = get_client()
    assert get_client() is first

    vault_settings.VAULT_TIMEOUT = 3
    second = get_client()
    assert second is not first
    assert second.config.timeout == 3

    reset_client()
    assert get_client() is not second


def test_an_unreachable_port_is_reported_quickly(settings):
    settings.VAULT_ADDR = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert get_client().health().state == "unreachable"
    assert time.monotonic() - started < 2
