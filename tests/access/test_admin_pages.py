"""The pam-admin pages for targets, accounts and policies, the account and policy services behind
them, and the request form's ticket rule and reason limit (no Vault or target needed here)."""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from access import services
from access.models import AccessPolicy, AccessRequest, Account, Grant, Target
from audit.models import AuditEvent
from tests.conftest import verified_client

pytestmark = pytest.mark.django_db

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq5Q0Yg7C3ZbJrQWwq0b0bH8r4bqg3v8c3zZ"


@pytest.fixture
def admin_client(client, pat):
    return verified_client(client, pat)


def _live_grant(user, account) -> Grant:
    req = AccessRequest.objects.create(
        requester=user,
        account=account,
        reason="work",
        duration_minutes=60,
        approvals_required=0,
        state=AccessRequest.State.FULFILLED,
    )
    return Grant.objects.create(
        request=req, user=user, account=account, ends_at=timezone.now() + timedelta(hours=1)
    )


# --- Targets --------------------------------------------------------------------------------


def test_a_pacs_target_is_added_with_tags_and_ports_as_plain_inputs(admin_client, pat):
    url = reverse("access:target_new") + "?kind=pacs"
    page = admin_client.get(url)
    assert b'name="forward_ports"' in page.content and b'name="tags"' in page.content
    data = {
        "kind": "pacs",
        "name": "pacs01",
        "host": "10.0.0.5",
        "port": "22",
        "tags": "Radiology, night-shift",
    }
    response = admin_client.post(url, {**data, "forward_ports": "104, 5432, 104"})
    target = Target.objects.get(name="pacs01")
    assert response["Location"] == reverse("access:account_new", args=[target.pk])
    assert target.tags == ["radiology", "night-shift"] and target.forward_ports == [104, 5432]
    event = AuditEvent.objects.get(action="access.target.created")
    assert event.actor == pat and event.details["host"] == "10.0.0.5"


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("forward_ports", "104, ssh", "'ssh' is not a TCP port"),
        ("forward_ports", "70000", "'70000' is not a TCP port"),
        ("tags", "radiology ward", "'radiology ward' is not a tag"),
        ("name", "PACS 01", "Use lower-case letters, digits and hyphens"),
        ("port", "0", "A TCP port is a number from 1 to 65535."),
    ],
)
def test_bad_target_input_is_refused_with_what_to_do_and_nothing_lost(admin_client, field, value, says):
    data = {"kind": "pacs", "name": "pacs01", "host": "10.0.0.5", "port": "22", "tags": "radiology"}
    response = admin_client.post(reverse("access:target_new"), {**data, field: value})
    assert response.status_code == 200
    assert says in html.unescape(response.content.decode())
    assert 'value="10.0.0.5"' in response.content.decode()  # what was typed stays
    assert not Target.objects.exists()


def test_a_database_target_has_no_host_key_and_takes_database_accounts_only(admin_client):
    page = admin_client.get(reverse("access:target_new") + "?kind=database")
    assert b'name="forward_ports"' not in page.content and b'value="5432"' in page.content
    admin_client.post(
        reverse("access:target_new"),
        {"kind": "database", "name": "pacsdb", "host": "db.example", "port": "5432"},
    )
    target = Target.objects.get(name="pacsdb")
    assert not target.has_host_key
    page = admin_client.get(reverse("access:account_new", args=[target.pk]))
    assert b'name="database_sslmode"' in page.content  # the only kind: straight to its form
    response = admin_client.post(
        reverse("access:account_new", args=[target.pk]),
        {"kind": "ssh-ca", "slug": "pacsdb-root", "username": "root"},
    )
    assert response.status_code == 200 and not Account.objects.filter(slug="pacsdb-root").exists()


def test_a_new_address_drops_the_pinned_host_key(admin_client):
    target = Target.objects.create(
        name="pacs01", host="10.0.0.5", host_key=KEY, host_key_fingerprint="SHA256:x"
    )
    response = admin_client.post(
        reverse("access:target_edit", args=[target.pk]),
        {"name": "pacs01", "host": "10.0.0.6", "port": "22", "tags": "", "forward_ports": ""},
        follow=True,
    )
    assert b"must be checked and pinned again" in response.content
    target.refresh_from_db()
    assert target.host == "10.0.0.6" and target.host_key == ""
    changes = AuditEvent.objects.get(action="access.target.changed").details["changes"]
    assert {c["field"] for c in changes} == {"host", "host_key"}


def test_saving_a_target_unchanged_audits_nothing(admin_client):
    target = Target.objects.create(name="pacs01", host="10.0.0.5", tags=["radiology"])
    admin_client.post(
        reverse("access:target_edit", args=[target.pk]),
        {"name": "pacs01", "host": "10.0.0.5", "port": "22", "tags": "radiology", "forward_ports": ""},
    )
    assert not AuditEvent.objects.filter(action="access.target.changed").exists()


def test_the_targets_page_shows_each_accounts_readiness_and_next_step(admin_client, settings):
    settings.VAULT_ADDR = "http://127.0.0.1:1"  # Vault unreachable: "in Vault" is unknown
    target = Target.objects.create(name="pacs01", host="10.0.0.5")
    account = Account.objects.create(target=target, slug="pacs01-root", kind="ssh-ca", username="root")
    page = admin_client.get(reverse("access:targets")).content.decode()
    assert "✗ not pinned" in page and "Vault not asked" in page and "not tested" in page
    assert f"{reverse('access:target', args=[target.pk])}?account={account.pk}" in page
    assert "Next: pin the host key" in page


# --- Accounts -----------------------------------------------------------------------------------


@pytest.fixture
def ssh_root(db):
    target = Target.objects.create(name="pacs01", host="10.0.0.5")
    return Account.objects.create(target=target, slug="pacs01-root", kind="ssh-ca", username="root")


def test_deactivating_an_account_revokes_its_live_grants_and_cancels_its_requests(alice, pat, ssh_root):
    grant = _live_grant(alice, ssh_root)
    waiting = AccessRequest.objects.create(
        requester=alice, account=ssh_root, reason="later", duration_minutes=30, approvals_required=1
    )
    revoked = services.account_deactivate(account=ssh_root, acting_user=pat, reason="vendor contract ended")
    assert revoked == 1
    grant.refresh_from_db()
    waiting.refresh_from_db()
    ssh_root.refresh_from_db()
    assert not ssh_root.is_active
    assert grant.state == Grant.State.REVOKED and "vendor contract ended" in grant.end_reason
    assert waiting.state == AccessRequest.State.CANCELLED
    event = AuditEvent.objects.get(action="access.account.deactivated")
    assert event.details["grants_revoked"] == 1 and event.details["requests_cancelled"] == 1
    # Again: nothing more to do, nothing more audited.
    assert services.account_deactivate(account=ssh_root, acting_user=pat, reason="again") == 0
    assert AuditEvent.objects.filter(action="access.account.deactivated").count() == 1


def test_only_pam_admins_deactivate_accounts(bob, ssh_root):
    with pytest.raises(services.PermissionDenied):
        services.account_deactivate(account=ssh_root, acting_user=bob, reason="not mine")


def test_the_deactivate_button_needs_a_reason_and_reactivate_brings_it_back(admin_client, alice, ssh_root):
    grant = _live_grant(alice, ssh_root)
    url = reverse("access:account_deactivate", args=[ssh_root.pk])
    page = admin_client.post(url, {"reason": ""}, follow=True)
    assert b"Give the reason" in page.content
    ssh_root.refresh_from_db()
    assert ssh_root.is_active
    page = admin_client.post(url, {"reason": "host retired"}, follow=True)
    assert b"1 live grant revoked" in page.content
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED
    admin_client.post(reverse("access:account_reactivate", args=[ssh_root.pk]), {"reason": "host is back"})
    ssh_root.refresh_from_db()
    assert ssh_root.is_active
    assert AuditEvent.objects.get(action="access.account.reactivated").details["reason"] == "host is back"


def test_the_django_admins_active_box_goes_through_the_deactivation(admin_client, alice, ssh_root):
    grant = _live_grant(alice, ssh_root)
    url = reverse("admin:access_account_change", args=[ssh_root.pk])
    form = {
        "target": str(ssh_root.target_id),
        "slug": ssh_root.slug,
        "kind": ssh_root.kind,
        "username": ssh_root.username,
        "tags": "[]",
        "database_sslmode": "",
    }
    response = admin_client.post(url, form)  # is_active unticked
    assert response.status_code == 302, response.content.decode()[:2000]
    grant.refresh_from_db()
    ssh_root.refresh_from_db()
    assert not ssh_root.is_active and grant.state == Grant.State.REVOKED
    event = AuditEvent.objects.get(action="access.account.deactivated")
    assert event.details["via"] == "admin" and event.actor.username == "pat"
    admin_client.post(url, {**form, "is_active": "on"})
    ssh_root.refresh_from_db()
    assert ssh_root.is_active
    assert AuditEvent.objects.filter(action="access.account.reactivated").exists()


def test_an_account_page_walks_through_the_setup_steps(admin_client, ssh_root, settings):
    settings.VAULT_ADDR = "http://127.0.0.1:1"
    page = admin_client.get(reverse("access:account", args=[ssh_root.pk])).content.decode()
    assert "1. Pin the host key of pacs01" in page and "2. Set it up in Vault" in page
    assert "3. Test the connection" in page and reverse("access:account_test", args=[ssh_root.pk]) in page


# --- Policies -----------------------------------------------------------------------------------


def _policy_form(**changes):
    data = {
        "name": "PACS admins",
        "groups": [str(Group.objects.get(name="requester").pk)],
        "tags": "radiology",
        "approvals_required": "1",
        "max_duration_minutes": "120",
        "ticket_required": "on",
        "ticket_pattern": r"^INC-\d{3,8}$",
        "ticket_example": "INC-12345",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"ticket_pattern": "^(INC"}, "Not a valid regular expression"),
        ({"ticket_pattern": r"^(\d+)+$"}, "could take too long"),
        ({"ticket_example": "CHG-1"}, "does not match the pattern"),
        ({"ticket_example": ""}, "Give an example ticket"),
        ({"groups": None}, "This field is required"),
        ({"tags": ""}, "Say what the policy covers"),
    ],
)
def test_a_bad_policy_is_refused_with_the_reason(admin_client, changes, says):
    response = admin_client.post(reverse("access:policy_new"), _policy_form(**changes))
    assert response.status_code == 200
    assert says in html.unescape(response.content.decode())
    assert not AccessPolicy.objects.exists()


def test_a_policy_is_made_edited_and_deactivated_on_its_pages(admin_client, pat):
    response = admin_client.post(reverse("access:policy_new"), _policy_form())
    assert response["Location"] == reverse("access:policies")
    policy = AccessPolicy.objects.get()
    assert policy.tags == ["radiology"] and policy.ticket_example == "INC-12345"
    assert AuditEvent.objects.get(action="access.policy.created").actor == pat
    admin_client.post(
        reverse("access:policy_edit", args=[policy.pk]), _policy_form(max_duration_minutes="60")
    )
    change = AuditEvent.objects.get(action="access.policy.changed").details["changes"]
    assert change == [{"field": "max_duration_minutes", "from": 120, "to": 60}]
    admin_client.post(reverse("access:policy_deactivate", args=[policy.pk]))
    policy.refresh_from_db()
    assert not policy.is_active
    assert "inactive" in admin_client.get(reverse("access:policies")).content.decode()


@pytest.fixture
def requestable(alice, ssh_root):
    policy = AccessPolicy.objects.create(
        name="PACS admins", ticket_pattern=r"^INC-\d+$", ticket_example="INC-12345", max_duration_minutes=120
    )
    policy.groups.add(Group.objects.get(name="requester"))
    policy.accounts.add(ssh_root)
    return policy


def test_the_request_form_shows_the_ticket_example_before_the_first_error(client, alice, requestable):
    verified_client(client, alice)
    page = client.get(reverse("access:request_new")).content.decode()
    assert "Ticket required, like INC-12345." in page
    assert "errorlist" not in page


def test_a_site_can_accept_tickets_in_any_case(alice, ssh_root, requestable):
    with pytest.raises(services.ValidationError) as refused:
        services.request_create(
            requester=alice, account=ssh_root, reason="work", ticket="inc-123", duration_minutes=30
        )
    assert "write it like INC-12345" in str(refused.value)
    AccessPolicy.objects.filter(pk=requestable.pk).update(ticket_case_insensitive=True)
    req = services.request_create(
        requester=alice, account=ssh_root, reason="work", ticket="inc-123", duration_minutes=30
    )
    assert req.ticket == "inc-123"


def test_a_reason_over_the_limit_is_refused_with_its_length_and_kept(client, alice, requestable):
    verified_client(client, alice)
    page = client.get(reverse("access:request_new")).content.decode()
    assert "maxlength" not in page  # a browser would cut a pasted reason without a word
    reason = "The DICOM router queue is stuck. " * 727 + "Please help."  # 24,003 characters
    response = client.post(
        reverse("access:request_new"),
        {"account": "pacs01-root", "duration_minutes": "30", "ticket": "INC-1", "reason": reason},
    )
    text = html.unescape(response.content.decode())
    assert response.status_code == 200
    assert "at most 2,000 characters, and this has 24,003" in text
    assert reason in text  # everything typed is still in the form
    assert not AccessRequest.objects.exists()
