"""Access pages: who sees what, who is refused, forms with bad input."""

from __future__ import annotations

import pytest
from django.urls import reverse

from access import services
from access.models import AccessRequest, Grant
from tests.conftest import make_user, verified_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pending(alice, policy, ssh_account):
    return services.request_create(
        requester=alice, account=ssh_account, reason="cert renewal", ticket="INC-7", duration_minutes=30
    )


def test_requester_asks_through_the_form(client, alice, policy, ssh_account):
    verified_client(client, alice)
    page = client.get(reverse("access:request_new"))
    assert b"pacs01-root" in page.content
    response = client.post(
        reverse("access:request_new"),
        {"account": "pacs01-root", "duration_minutes": "45", "ticket": "INC-42", "reason": "DICOM router"},
    )
    req = AccessRequest.objects.get()
    assert response["Location"] == req.get_absolute_url()
    assert req.duration_minutes == 45 and req.ticket == "INC-42"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"duration_minutes": "500"}, b"between 5 and 120 minutes"),
        ({"duration_minutes": "abc"}, b"Enter a whole number"),
        ({"ticket": ""}, b"needs a ticket reference"),
        ({"ticket": "nope"}, b"does not look like one"),
        ({"reason": ""}, b"This field is required"),
        ({"account": "someone-elses"}, b"Select a valid choice"),
    ],
)
def test_bad_request_form_input_gets_a_clear_error(client, alice, policy, ssh_account, data, message):
    verified_client(client, alice)
    form = {"account": "pacs01-root", "duration_minutes": "30", "ticket": "INC-1", "reason": "x", **data}
    response = client.post(reverse("access:request_new"), form)
    assert response.status_code == 200
    assert message in response.content
    assert not AccessRequest.objects.exists()


def test_approver_queue_and_decision(client, bob, pending, vault_ready):
    verified_client(client, bob)
    page = client.get(reverse("access:approvals"))
    assert b"INC-7" in page.content
    response = client.post(reverse("access:request_decide", args=[pending.pk]), {"decision": "approve"})
    assert response.status_code == 302
    assert Grant.objects.get().user.username == "alice"


def test_deny_needs_a_comment(client, bob, pending):
    verified_client(client, bob)
    client.post(reverse("access:request_decide", args=[pending.pk]), {"decision": "deny", "comment": ""})
    pending.refresh_from_db()
    assert pending.state == AccessRequest.State.PENDING


@pytest.mark.parametrize("persona", ["alice", "carol", "pat", "mallory"])
def test_non_approvers_cannot_open_the_queue_or_decide(client, request, persona, pending):
    user = request.getfixturevalue(persona)
    verified_client(client, user)
    assert client.get(reverse("access:approvals")).status_code == 403
    response = client.post(reverse("access:request_decide", args=[pending.pk]), {"decision": "approve"})
    assert response.status_code in (302, 403, 404)
    pending.refresh_from_db()
    assert pending.state == AccessRequest.State.PENDING


def test_someone_elses_request_and_grant_are_404(client, pending, bob, vault_ready):
    services.request_decide(access_request=pending, approver=bob, approve=True, comment="")
    grant = Grant.objects.get()
    other = make_user("dora", "requester")
    verified_client(client, other)
    assert client.get(reverse("access:request", args=[pending.pk])).status_code == 404
    assert client.get(reverse("access:grant", args=[grant.pk])).status_code == 404
    assert client.post(reverse("access:grant_checkin", args=[grant.pk])).status_code == 404
    assert client.post(reverse("access:request_cancel", args=[pending.pk])).status_code == 404
    grant.refresh_from_db()
    assert grant.is_live


def test_auditor_reads_but_cannot_revoke(client, carol, pending, bob, vault_ready):
    services.request_decide(access_request=pending, approver=bob, approve=True, comment="")
    grant = Grant.objects.get()
    verified_client(client, carol)
    assert client.get(reverse("access:grant", args=[grant.pk])).status_code == 200
    assert (
        client.post(reverse("access:grant_revoke", args=[grant.pk]), {"reason": "x" * 5}).status_code == 403
    )
    grant.refresh_from_db()
    assert grant.is_live


def test_holder_checks_in_from_the_page(client, alice, pending, bob, vault_ready):
    services.request_decide(access_request=pending, approver=bob, approve=True, comment="")
    grant = Grant.objects.get()
    verified_client(client, alice)
    page = client.get(reverse("access:mine"))
    assert b"pacs01-root" in page.content
    client.post(reverse("access:grant_checkin", args=[grant.pk]))
    grant.refresh_from_db()
    assert grant.state == Grant.State.CHECKED_IN


def test_reveal_is_refused_where_the_policy_does_not_allow_it(client, alice, pending, bob, vault_ready):
    services.request_decide(access_request=pending, approver=bob, approve=True, comment="")
    grant = Grant.objects.get()
    verified_client(client, alice)
    response = client.post(reverse("access:grant_reveal", args=[grant.pk]), {"code": "123456"})
    assert response.status_code == 403


def test_people_without_the_requester_role_cannot_ask(client, mallory, carol, policy, ssh_account):
    for user in (mallory, carol):
        verified_client(client, user)
        assert client.get(reverse("access:request_new")).status_code == 403
        response = client.post(
            reverse("access:request_new"),
            {"account": "pacs01-root", "duration_minutes": "30", "ticket": "INC-1", "reason": "x"},
        )
        assert response.status_code == 403
    assert not AccessRequest.objects.exists()
