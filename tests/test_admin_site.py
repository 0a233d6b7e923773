"""The configuration pages (Django admin) open to verified pam-admins only."""

import pytest
from django.urls import reverse

from tests.conftest import verified_client

pytestmark = pytest.mark.django_db


def test_pam_admin_opens_the_configuration_pages(client, pat):
    verified_client(client, pat)
    assert client.get(reverse("admin:index")).status_code == 200
    assert client.get(reverse("admin:identity_user_changelist")).status_code == 200


@pytest.mark.parametrize("persona", ["alice", "bob", "carol", "mallory"])
def test_other_roles_get_403_not_a_login_loop(client, request, persona):
    verified_client(client, request.getfixturevalue(persona))
    assert client.get(reverse("admin:index")).status_code == 403
    assert client.get(reverse("admin:identity_user_changelist")).status_code == 403


def test_deactivated_pam_admin_is_refused(client, pat):
    verified_client(client, pat)
    pat.is_active = False
    pat.save()
    assert client.get(reverse("admin:index"))["Location"].startswith("/login/")
