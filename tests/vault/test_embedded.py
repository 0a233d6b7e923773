"""The embedded OpenBao of `make run` (vault/embedded.py): real ``bao server`` processes on
raft storage, stopped and started again on the same folder."""

from __future__ import annotations

import socket
import stat

import pytest

from tests.fixtures.openbao import free_port_pair
from vault.client import VaultClient, VaultConfig
from vault.embedded import EmbeddedOpenBao, EmbeddedVaultError

pytestmark = pytest.mark.slow


def root_client(server: EmbeddedOpenBao) -> VaultClient:
    return VaultClient(VaultConfig(addr=server.addr, token=server.root_token()))


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_first_start_initialises_once_and_keeps_key_and_token_private(embedded_openbao):
    server = embedded_openbao()

    assert server.initialised_now
    status = server.client().seal_status()
    assert (status.initialized, status.sealed, status.storage_type) == (True, False, "raft")
    assert not status.in_memory
    assert mode(server.directory) == 0o700
    assert mode(server.raft_dir) == 0o700
    assert mode(server.unseal_key_path) == 0o600
    assert mode(server.root_token_path) == 0o600
    # Active at once (raft elected it leader before start() returned): it takes writes.
    assert server.client().health().state == "unsealed"
    root_client(server).write("sys/mounts/kv-test", {"type": "kv", "options": {"version": "2"}})


def test_a_restart_on_the_same_folder_unseals_the_same_vault_with_its_data(embedded_openbao):
    server = embedded_openbao()
    vault = root_client(server)
    vault.write("sys/mounts/kv-test", {"type": "kv"})
    vault.write("kv-test/probe", {"kept": "across restarts"})
    cluster = server.client().seal_status().cluster_id
    token, key = server.root_token(), server.unseal_key_path.read_text()

    server.stop()
    server.start()

    assert not server.initialised_now
    assert server.root_token() == token and server.unseal_key_path.read_text() == key
    assert server.client().seal_status().cluster_id == cluster
    assert root_client(server).read("kv-test/probe")["data"] == {"kept": "across restarts"}


def test_a_restart_waits_for_the_raft_leader_before_it_returns(embedded_openbao):
    """Unsealed is not ready: a standby answers writes with an error. start() returns once active."""
    server = embedded_openbao()
    server.stop()
    server.start()

    assert server.client().health().state == "unsealed"
    root_client(server).write("sys/mounts/kv-after", {"type": "kv", "options": {"version": "2"}})


def test_a_vault_whose_data_is_gone_but_whose_key_is_kept_is_not_replaced(embedded_openbao, tmp_path):
    server = embedded_openbao(tmp_path / "openbao")
    server.stop()
    for path in sorted(server.raft_dir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()

    again = EmbeddedOpenBao(server.directory, port=free_port_pair())
    with pytest.raises(EmbeddedVaultError, match=r"holds no Vault data.*Restore"):
        again.start()
    assert again.process is None or again.process.poll() is not None


def test_a_sealed_vault_whose_unseal_key_is_missing_says_what_to_restore(embedded_openbao, tmp_path):
    server = embedded_openbao(tmp_path / "openbao")
    server.stop()
    server.unseal_key_path.unlink()

    again = EmbeddedOpenBao(server.directory, port=free_port_pair())
    with pytest.raises(EmbeddedVaultError, match="unseal-key is missing: restore it"):
        again.start()
    assert again.process.poll() is not None  # not left running sealed


def test_a_busy_port_is_reported_with_the_setting_to_change(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = EmbeddedOpenBao(tmp_path / "openbao", port=port)
        with pytest.raises(EmbeddedVaultError, match=rf"Port {port} .*PAMSITE_VAULT_PORT"):
            server.start()
    assert server.process is None
