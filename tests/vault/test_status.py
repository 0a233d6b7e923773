"""The system status page (/status/)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from tests.conftest import verified_client
from tests.fixtures.openbao import bootstrap_embedded, bootstrap_server, free_port, point_settings_at
from vault.client import get_client
from vault.models import TransitPublicKey
from vault.signatures import public_key_fingerprint, transit_keys_keep


def test_a_pam_admin_sees_vault_unsealed_with_its_version(client, pat, approle_settings, bootstrapped_vault):
    response = verified_client(client, pat).get(reverse("status"))

    assert response.status_code == 200
    page = response.content.decode()
    health = get_client().health()
    assert '<span class="badge ok">unsealed</span>' in page
    assert health.version in page
    assert bootstrapped_vault.addr in page
    assert "AppRole" in page
    for mount in ("pamsite-kv", "pamsite-database", "pamsite-ssh", "pamsite-transit"):
        assert mount in page
    assert page.count('<span class="badge ok">') == 5  # unsealed, and the four mounts found
    assert bootstrapped_vault.result.ssh_ca_public_key in page
    assert connection.vendor in page
    for secret in (bootstrapped_vault.role_id, bootstrapped_vault.secret_id, bootstrapped_vault.root_token):
        assert secret not in page


def test_the_page_says_token_and_never_shows_it(client, pat, vault_settings, openbao):
    page = " ".join(verified_client(client, pat).get(reverse("status")).content.decode().split())

    assert "pamsite authenticates with</th><td> token </td>" in page
    assert openbao.root_token not in page


def test_a_sealed_vault_is_shown_as_sealed(client, pat, settings, openbao_factory):
    server = openbao_factory()
    server.initialize()
    point_settings_at(settings, server)

    page = verified_client(client, pat).get(reverse("status")).content.decode()

    assert '<span class="badge bad">sealed</span>' in page
    assert "unseal it (bao operator unseal)" in page
    assert "not checked" in page
    assert server.root_token not in page


def test_an_unreachable_vault_is_shown_as_unreachable(client, pat, settings):
    settings.VAULT_ADDR = f"http://127.0.0.1:{free_port()}"

    page = verified_client(client, pat).get(reverse("status")).content.decode()

    assert '<span class="badge bad">unreachable</span>' in page
    assert "Vault unreachable at" in page


@pytest.mark.parametrize("persona", ["alice", "bob", "carol", "mallory"])
def test_everyone_else_is_refused(client, request, vault_settings, persona):
    user = request.getfixturevalue(persona)

    response = verified_client(client, user).get(reverse("status"))

    assert response.status_code == 403


def test_an_anonymous_visitor_is_sent_to_login(client, vault_settings):
    response = client.get(reverse("status"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("identity:login"))


def test_no_missing_mounts_message_when_every_mount_is_there(client, pat, approle_settings):
    """It used to say "Missing mounts: run manage.py vault_bootstrap." whatever Vault had."""
    page = verified_client(client, pat).get(reverse("status")).content.decode()

    assert page.count('<span class="badge bad">missing</span>') == 0
    assert "Missing" not in page
    assert "run <code>manage.py vault_bootstrap</code>" not in page


def test_the_mounts_a_fresh_vault_lacks_are_named_with_what_to_run(client, pat, settings, openbao_factory):
    point_settings_at(settings, openbao_factory(dev=True))

    page = " ".join(verified_client(client, pat).get(reverse("status")).content.decode().split())

    assert page.count('<span class="badge bad">missing</span>') == 4
    assert (
        "Missing or of another engine: pamsite-kv, pamsite-database, pamsite-ssh, pamsite-transit. "
        "Run <code>manage.py vault_bootstrap</code>"
    ) in page


def test_a_sealed_vault_names_no_missing_mount(client, pat, settings, openbao_factory):
    server = openbao_factory()
    server.initialize()
    point_settings_at(settings, server)

    page = verified_client(client, pat).get(reverse("status")).content.decode()

    assert "not checked" in page and 'id="mounts-missing"' not in page


def test_a_vault_in_memory_is_warned_about(client, pat, approle_settings):
    """The suite's server is OpenBao's dev server: storage inmem, lost when it stops."""
    page = " ".join(verified_client(client, pat).get(reverse("status")).content.decode().split())

    assert '<code>inmem</code> <span class="badge bad">in memory</span>' in page
    assert 'id="vault-in-memory"' in page
    assert "when it stops, everything pamsite keeps there is lost for good" in page


@pytest.mark.slow
def test_the_embedded_vault_on_raft_is_not_warned_about_and_its_signing_key_is_listed(
    client, pat, settings, embedded_openbao, tmp_path
):
    server = embedded_openbao()
    bootstrap_embedded(settings, server, tmp_path / "approle")

    page = " ".join(verified_client(client, pat).get(reverse("status")).content.decode().split())

    assert '<code>raft</code> <span class="badge ok">kept on disk</span>' in page
    assert 'id="vault-in-memory"' not in page and "in memory" not in page
    assert 'id="mounts-missing"' not in page
    kept = TransitPublicKey.objects.get()
    assert public_key_fingerprint(kept.public_key) in page
    assert 'id="signing-key-replaced"' not in page


def test_a_replaced_vault_is_named_on_the_page(
    client, pat, settings, openbao_factory, approle_settings, tmp_path
):
    """pamsite kept version 1 of one Vault's key; the Vault it talks to now has another version 1."""
    transit_keys_keep()  # the suite's server's key
    fresh = openbao_factory(dev=True)
    point_settings_at(settings, fresh)
    bootstrap_server(fresh, tmp_path / "approle")

    page = " ".join(verified_client(client, pat).get(reverse("status")).content.decode().split())

    assert 'id="signing-key-replaced"' in page
    assert "this Vault was replaced, or the key made again" in page
