"""manage.py vault_bootstrap against real OpenBao servers."""

from __future__ import annotations

import json
import stat
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from tests.fixtures.openbao import point_settings_at
from tests.vault.test_client import root_client
from vault.bootstrap import render_policy, vault_bootstrap
from vault.client import VaultClient, VaultConfig, VaultError, get_client


def test_a_fresh_server_is_set_up(bootstrapped_vault):
    changed = bootstrapped_vault.result.changed

    assert changed[:4] == [
        "enabled kv-v2 at pamsite-kv",
        "enabled database at pamsite-database",
        "enabled ssh at pamsite-ssh",
        "enabled transit at pamsite-transit",
    ]
    assert "generated the SSH CA signing key (ed25519) at pamsite-ssh" in changed
    assert "created transit signing key pamsite-recordings (ed25519) at pamsite-transit" in changed
    assert "wrote policy pamsite-app" in changed
    assert "created AppRole role pamsite" in changed
    assert bootstrapped_vault.result.ssh_ca_public_key.startswith("ssh-ed25519 ")


def test_a_second_run_changes_nothing_and_keeps_the_ssh_ca(bootstrapped_vault, vault_settings):
    first = bootstrapped_vault.result

    second = vault_bootstrap()

    assert second.changed == []
    assert second.warnings == []
    assert second.ssh_ca_public_key == first.ssh_ca_public_key
    assert get_client().ssh_ca_public_key() == first.ssh_ca_public_key


def test_the_transit_key_cannot_be_exported_or_deleted(bootstrapped_vault, vault_settings):
    key = get_client().read("pamsite-transit/keys/pamsite-recordings")["data"]

    assert key["type"] == "ed25519"
    assert key["exportable"] is False
    assert key["deletion_allowed"] is False
    with pytest.raises(VaultError):
        get_client().delete("pamsite-transit/keys/pamsite-recordings")


def test_the_approle_role_is_narrow(bootstrapped_vault, vault_settings):
    role = get_client().read("auth/approle/role/pamsite")["data"]

    assert role["token_policies"] == ["pamsite-app"]
    assert role["token_no_default_policy"] is True
    assert role["bind_secret_id"] is True
    assert (role["token_ttl"], role["token_max_ttl"]) == (3600, 86400)


@pytest.mark.django_db
def test_the_command_reports_each_step_and_never_prints_the_secret_id(
    bootstrapped_vault, vault_settings, tmp_path
):
    out = StringIO()
    target = tmp_path / "approle"

    call_command("vault_bootstrap", "--write-approle", str(target), stdout=out)

    text = out.getvalue()
    secret_id = (target / "secret_id").read_text().strip()
    role_id = (target / "role_id").read_text().strip()
    assert "already enabled: kv-v2 at pamsite-kv" in text
    assert f"ssh CA public key: {bootstrapped_vault.result.ssh_ca_public_key}" in text
    assert "issued a new secret_id for AppRole pamsite" in text
    assert secret_id not in text
    assert role_id not in text
    assert role_id == bootstrapped_vault.role_id
    assert secret_id != bootstrapped_vault.secret_id
    for name in ("role_id", "secret_id"):
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    event = AuditEvent.objects.get(action="vault.bootstrap")
    assert event.actor is None
    assert event.details["changed"] == ["issued a new secret_id for AppRole pamsite"]
    assert event.details["mounts"] == ["pamsite-kv", "pamsite-database", "pamsite-ssh", "pamsite-transit"]
    assert secret_id not in json.dumps(event.details)
    # The new secret_id works.
    config = VaultConfig(addr=bootstrapped_vault.addr, role_id=role_id, secret_id=secret_id)
    assert VaultClient(config).transit_sign(b"x").startswith("vault:v1:")


def test_the_command_needs_a_token(settings, openbao):
    point_settings_at(settings, openbao, token="")

    with pytest.raises(CommandError, match="vault_bootstrap needs a privileged Vault token: set VAULT_TOKEN"):
        call_command("vault_bootstrap", stdout=StringIO())


def test_print_policy_fills_in_the_mount_names(settings):
    settings.VAULT_KV_MOUNT = "site-kv"
    out = StringIO()

    call_command("vault_bootstrap", "--print-policy", "pamsite-app", stdout=out)

    body = [line for line in out.getvalue().splitlines() if not line.lstrip().startswith("#")]
    assert 'path "site-kv/data/*" {' in body
    assert 'path "pamsite-transit/sign/pamsite-recordings" {' in body
    assert not any("{kv_mount}" in line or "sys/mounts" in line or "secret/" in line for line in body)


def test_a_mount_name_that_would_widen_the_policy_is_refused(settings):
    settings.VAULT_KV_MOUNT = 'kv" {} path "*'

    with pytest.raises(VaultError, match="VAULT_KV_MOUNT must be a plain Vault path name"):
        render_policy("pamsite-app")


def test_the_admin_policy_is_enough_to_bootstrap_a_fresh_server(settings, openbao_factory, tmp_path):
    server = openbao_factory(dev=True)
    point_settings_at(settings, server)
    root = root_client(server)
    root.write("sys/policies/acl/pamsite-admin", {"policy": render_policy("pamsite-admin")})
    token = root.write("auth/token/create", {"policies": ["pamsite-admin"], "no_default_policy": True})
    settings.VAULT_TOKEN = token["auth"]["client_token"]

    first = vault_bootstrap(approle_dir=tmp_path)
    second = vault_bootstrap()

    assert "generated the SSH CA signing key (ed25519) at pamsite-ssh" in first.changed
    assert second.changed == []
    settings.VAULT_TOKEN = ""
    settings.VAULT_ROLE_ID = (tmp_path / "role_id").read_text().strip()
    settings.VAULT_SECRET_ID = (tmp_path / "secret_id").read_text().strip()
    assert get_client().kv_write("check", {"a": "b"}) == 1


def test_an_existing_ssh_ca_is_kept(settings, openbao_factory):
    server = openbao_factory(dev=True)
    point_settings_at(settings, server)
    root = root_client(server)
    root.write("sys/mounts/pamsite-ssh", {"type": "ssh"})
    existing = root.write("pamsite-ssh/config/ca", {"generate_signing_key": True})["data"][
        "public_key"
    ].strip()

    result = vault_bootstrap()

    assert result.ssh_ca_public_key == existing
    assert "already configured: SSH CA at pamsite-ssh" in result.unchanged
    assert "enabled ssh at pamsite-ssh" not in result.changed


def test_a_kv_v1_engine_at_the_kv_mount_is_reported_not_replaced(settings, openbao_factory):
    server = openbao_factory(dev=True)
    point_settings_at(settings, server)
    root_client(server).write("sys/mounts/pamsite-kv", {"type": "kv", "options": {"version": "1"}})

    with pytest.raises(VaultError, match="pamsite-kv is already a kv-v1 engine, not kv-v2"):
        vault_bootstrap()


def test_a_changed_policy_or_role_is_put_back(settings, openbao_factory):
    server = openbao_factory(dev=True)
    point_settings_at(settings, server)
    vault_bootstrap()
    root = root_client(server)
    root.write("sys/policies/acl/pamsite-app", {"policy": 'path "*" { capabilities = ["read"] }'})
    root.write("auth/approle/role/pamsite", {"token_policies": ["root"]})
    root.write("pamsite-transit/keys/pamsite-recordings/config", {"deletion_allowed": True})

    result = vault_bootstrap()

    assert result.changed == [
        "made transit key pamsite-recordings undeletable",
        "updated policy pamsite-app",
        "updated AppRole role pamsite",
    ]
    assert vault_bootstrap().changed == []
