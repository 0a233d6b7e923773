"""The system status page (/status/)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from tests.conftest import verified_client
from tests.fixtures.openbao import free_port, point_settings_at
from vault.client import get_client


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
