"""The Directory page (pam-admins): the sync's last runs and the group → role mapping editor."""

from __future__ import annotations

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from identity.directory import directory_sync
from identity.models import LdapGroupMapping
from tests.conftest import verified_client

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("persona", ["alice", "bob", "carol", "mallory"])
def test_only_pam_admins_see_the_page_or_change_the_mapping(client, request, persona):
    verified_client(client, request.getfixturevalue(persona))
    assert client.get(reverse("identity:directory")).status_code == 403
    add = client.post(
        reverse("identity:directory_mapping_add"), {"group_dn": "cn=x,dc=example", "role": "pam-admin"}
    )
    assert add.status_code == 403
    assert not LdapGroupMapping.objects.exists()


def test_the_users_page_links_to_it(client, pat):
    verified_client(client, pat)
    assert reverse("identity:directory").encode() in client.get(reverse("identity:users")).content


def test_the_page_shows_the_last_runs(client, pat, ldap_settings, ldap_tree):
    ldap_tree.add_user("alice")
    directory_sync(full=True, dry_run=False)
    ldap_settings.LDAP_SERVER_URI = ["ldap://127.0.0.1:1"]
    from identity.ldap_client import reset_config

    reset_config()
    directory_sync(full=False, dry_run=False)
    verified_client(client, pat)
    page = client.get(reverse("identity:directory")).content.decode()
    runs = page[page.index('id="sync-runs"') :]
    assert runs.count("<tr>") == 3  # header and two runs
    assert "succeeded" in runs and "failed" in runs and "Cannot reach the directory server" in runs
    assert "full" in runs and "incremental" in runs
    assert "ldap://127.0.0.1:1" in page


def test_the_mapping_editor_adds_and_removes_rows_audited(client, pat, ldap_settings):
    ldap_settings.LDAP_GROUP_ROLE_MAP = [("cn=helpdesk,ou=groups,dc=hospital,dc=example", "approver")]
    verified_client(client, pat)
    page = client.get(reverse("identity:directory")).content.decode()
    assert "LDAP_GROUP_ROLE_MAP" in page and "cn=helpdesk,ou=groups,dc=hospital,dc=example" in page

    response = client.post(
        reverse("identity:directory_mapping_add"),
        {"group_dn": "cn=PACS\\2C Admins, ou=groups,dc=hospital,dc=example", "role": "requester"},
    )
    assert response.status_code == 302
    rows = dict(LdapGroupMapping.objects.values_list("role", "group_dn"))
    # The setting's pair was copied in; the new DN is kept in one spelling.
    assert rows == {
        "approver": "cn=helpdesk,ou=groups,dc=hospital,dc=example",
        "requester": "cn=PACS\\, Admins,ou=groups,dc=hospital,dc=example",
    }
    added = AuditEvent.objects.filter(action="identity.directory.mapping_added").order_by("sequence")
    assert [e.details["role"] for e in added] == ["approver", "requester"]
    assert all(e.actor == pat for e in added)

    bad = client.post(
        reverse("identity:directory_mapping_add"), {"group_dn": "pacs-admins", "role": "requester"}
    )
    assert bad.status_code == 400 and b"is not a distinguished name" in bad.content
    same = client.post(
        reverse("identity:directory_mapping_add"),
        {"group_dn": "CN=pacs\\, admins,OU=Groups,DC=hospital,DC=example", "role": "requester"},
    )
    assert same.status_code == 400 and b"already gives the role requester" in same.content
    assert LdapGroupMapping.objects.count() == 2

    mapping = LdapGroupMapping.objects.get(role="requester")
    response = client.post(reverse("identity:directory_mapping_remove", args=[mapping.pk]))
    assert response.status_code == 302
    assert not LdapGroupMapping.objects.filter(pk=mapping.pk).exists()
    removed = AuditEvent.objects.get(action="identity.directory.mapping_removed")
    assert removed.details == {"group_dn": mapping.group_dn, "role": "requester"} and removed.actor == pat
    assert removed.object_id == str(mapping.pk)


def test_the_configuration_pages_show_runs_and_mappings_read_only(client, pat):
    verified_client(client, pat)
    assert client.get(reverse("admin:identity_directorysyncrun_changelist")).status_code == 200
    assert client.get(reverse("admin:identity_ldapgroupmapping_changelist")).status_code == 200
    assert client.get(reverse("admin:identity_ldapgroupmapping_add")).status_code == 403
