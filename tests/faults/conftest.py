"""Fixtures for the fault tests: servers of their own that may be sealed, stopped or killed.

The session-scoped servers (OpenBao, slapd, the target sshd) are shared by the whole
suite, so these tests never break them: each starts its own where the fault needs it,
and puts a ``TcpProxy`` (tests/fixtures/netfault.py) in front where the fault is the
server going away at a chosen moment.

- ``faulty_vault``: a dedicated in-memory OpenBao, initialised, unsealed and
  bootstrapped, the app's AppRole settings pointed at it through a proxy: ``seal()``,
  ``unseal()``, ``stop()`` (unreachable: the proxy refuses), ``start()``.
- ``vault_static_account``: the suite's ``static_account`` (pacs01-svc on the test sshd),
  its password kept in that Vault.
- ``vault_db_account``: a database account (dynamic PostgreSQL users) in that Vault.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass

import pytest

from tests.fixtures.netfault import TcpProxy
from tests.fixtures.openbao import BaoServer, BootstrappedVault, bootstrap_server
from tests.fixtures.pacs import make_database_account, policy_for


@dataclass
class FaultyVault:
    """A dedicated OpenBao behind a proxy: what the app sees can be sealed or stopped."""

    server: BaoServer
    bootstrapped: BootstrappedVault
    proxy: TcpProxy

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def seal(self) -> None:
        self.server.seal()

    def unseal(self) -> None:
        self.server.unseal()

    def stop(self) -> None:
        """Vault goes away: connections cut, new ones refused (the server keeps its state)."""
        self.proxy.down()

    def start(self) -> None:
        self.proxy.up()

    def root(self, method: str, path: str, data: dict | None = None) -> dict | None:
        """A request with the root token, straight to the server (not through the proxy)."""
        if method == "LIST":
            req = urllib.request.Request(  # noqa: S310 (loopback)
                f"{self.server.addr}/v1/{path}",
                method="LIST",
                headers={"X-Vault-Token": self.server.root_token},
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                raise
        return self.server.api(method, path, data, token=self.server.root_token)

    def leases(self, prefix: str) -> dict[str, int]:
        """Every lease under ``prefix`` (e.g. ``pamsite-database/creds/ROLE/``) and its TTL left."""
        listed = self.root("LIST", f"sys/leases/lookup/{prefix}")
        keys = (listed or {}).get("data", {}).get("keys", [])
        ttls = {}
        for key in keys:
            info = self.root("PUT", "sys/leases/lookup", {"lease_id": prefix + key})
            ttls[prefix + key] = int(info["data"]["ttl"])
        return ttls


@pytest.fixture
def faulty_vault(settings, approle_settings, openbao_factory, tmp_path):
    """See the module docstring. Requests approle_settings first so that it cannot override these."""
    from vault.client import reset_client

    server = openbao_factory()
    server.initialize()
    server.unseal()
    approle_dir = tmp_path / "faulty-vault-approle"
    approle_dir.mkdir()
    bootstrapped = bootstrap_server(server, approle_dir)
    proxy = TcpProxy("127.0.0.1", server.port).start()
    vault = FaultyVault(server=server, bootstrapped=bootstrapped, proxy=proxy)
    settings.VAULT_ADDR = vault.addr
    settings.VAULT_TOKEN = ""
    settings.VAULT_ROLE_ID = bootstrapped.role_id
    settings.VAULT_SECRET_ID = bootstrapped.secret_id
    settings.VAULT_CACERT = ""
    settings.VAULT_NAMESPACE = ""
    settings.VAULT_TIMEOUT = 3
    reset_client()
    yield vault
    proxy.down()
    reset_client()


@pytest.fixture
def vault_static_account(faulty_vault, request):
    """The suite's ``static_account`` (tests/fixtures/pacs.py), its password in ``faulty_vault``."""
    return request.getfixturevalue("static_account")


@pytest.fixture
def vault_db_account(faulty_vault, pg_target):
    """A database account: each grant a PostgreSQL user made by the dedicated Vault."""
    account = make_database_account(pg_target)
    policy_for(account)
    return account
