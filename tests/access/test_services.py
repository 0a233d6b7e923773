"""The request → approval → checkout → end workflow, against a real OpenBao."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from access import services
from access.models import AccessRequest, Grant, InvalidTransition
from audit.models import AuditEvent
from tests.conftest import make_user

# Transactional: the workflow relies on on_commit (notifications, credential release).
pytestmark = pytest.mark.django_db(transaction=True)


def ask(user, account, *, minutes=60, ticket="INC-123", reason="replace DICOM router cert"):
    return services.request_create(
        requester=user, account=account, reason=reason, ticket=ticket, duration_minutes=minutes
    )


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True))


def test_request_approve_checkout_and_checkin(alice, bob, policy, ssh_account, vault_ready):
    req = ask(alice, ssh_account)
    assert req.state == AccessRequest.State.PENDING
    services.request_decide(access_request=req, approver=bob, approve=True, comment="ok")
    req.refresh_from_db()
    assert req.state == AccessRequest.State.FULFILLED
    grant = req.grant
    assert grant.is_live and grant.login == "root"
    assert timedelta(minutes=59) < grant.ends_at - grant.starts_at <= timedelta(minutes=60)

    services.grant_checkin(grant=grant, acting_user=alice)
    grant.refresh_from_db()
    assert grant.state == Grant.State.CHECKED_IN
    assert grant.cleanup == Grant.Cleanup.DONE  # tasks run eagerly without a broker
    assert actions() == [
        "access.request.created",
        "access.request.approved",
        "access.grant.checked_out",
        "access.grant.checked_in",
        "access.grant.released",
    ]


def test_self_approval_is_refused_even_for_an_approver(bob, policy, ssh_account):
    bob.groups.add(*type(bob.groups.first()).objects.filter(name="requester"))
    req = ask(bob, ssh_account)
    with pytest.raises(PermissionDenied, match="your own request"):
        services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    req.refresh_from_db()
    assert req.state == AccessRequest.State.PENDING
    assert not req.approvals.exists()


def test_an_approver_counts_once(alice, bob, policy, ssh_account):
    policy.approvals_required = 2
    policy.save()
    req = ask(alice, ssh_account)
    services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    with pytest.raises(InvalidTransition, match="already decided"):
        services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    req.refresh_from_db()
    assert req.state == AccessRequest.State.PENDING


def test_requester_outside_every_policy_is_refused(mallory, ssh_account, policy):
    with pytest.raises(PermissionDenied, match="No policy lets you request"):
        ask(mallory, ssh_account)
    assert not AccessRequest.objects.exists()


def test_duration_over_the_maximum_is_refused(alice, policy, ssh_account):
    with pytest.raises(ValidationError) as exc:
        ask(alice, ssh_account, minutes=121)
    assert "between 5 and 120 minutes" in str(exc.value)


@pytest.mark.parametrize("ticket", ["", "INC123", "CHG-5", "INC-12; DROP"])
def test_missing_or_ill_formed_ticket_is_refused(alice, policy, ssh_account, ticket):
    with pytest.raises(ValidationError) as exc:
        ask(alice, ssh_account, ticket=ticket)
    assert "ticket" in exc.value.message_dict


def test_approving_a_cancelled_request_is_refused(alice, bob, policy, ssh_account):
    req = ask(alice, ssh_account)
    services.request_cancel(access_request=req, acting_user=alice)
    with pytest.raises(InvalidTransition, match="cancelled"):
        services.request_decide(access_request=req, approver=bob, approve=True, comment="")


def test_approving_an_expired_request_is_refused(alice, bob, policy, ssh_account, settings):
    req = ask(alice, ssh_account)
    AccessRequest.objects.filter(pk=req.pk).update(created_at=timezone.now() - timedelta(hours=25))
    assert services.requests_expire_stale() == 1
    with pytest.raises(InvalidTransition, match="expired"):
        services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    assert "access.request.expired" in actions()


def test_only_the_requester_cancels(alice, bob, policy, ssh_account):
    req = ask(alice, ssh_account)
    with pytest.raises(PermissionDenied):
        services.request_cancel(access_request=req, acting_user=bob)


def test_deny_ends_the_request(alice, bob, policy, ssh_account):
    req = ask(alice, ssh_account)
    services.request_decide(access_request=req, approver=bob, approve=False, comment="no change window")
    req.refresh_from_db()
    assert req.state == AccessRequest.State.DENIED
    assert not Grant.objects.exists()


def test_zero_approval_policy_grants_at_once(alice, policy, ssh_account, vault_ready):
    policy.approvals_required = 0
    policy.save()
    req = ask(alice, ssh_account)
    assert req.state == AccessRequest.State.FULFILLED
    assert req.grant.is_live


def test_revoke_needs_an_approver_and_a_reason(alice, bob, carol, policy, ssh_account, vault_ready):
    req = ask(alice, ssh_account)
    services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    grant = Grant.objects.get()
    with pytest.raises(PermissionDenied):
        services.grant_revoke(grant=grant, acting_user=carol, reason="auditor tries")
    with pytest.raises(ValidationError):
        services.grant_revoke(grant=grant, acting_user=bob, reason=" ")
    services.grant_revoke(grant=grant, acting_user=bob, reason="vendor left the call")
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED and grant.end_reason == "vendor left the call"
    with pytest.raises(InvalidTransition):
        services.grant_checkin(grant=grant, acting_user=alice)


def test_expiry_sweep_ends_grants(alice, bob, policy, ssh_account, vault_ready):
    req = ask(alice, ssh_account, minutes=5)
    services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    grant = Grant.objects.get()
    assert services.grants_expire_due() == 0
    assert services.grants_expire_due(now=grant.ends_at + timedelta(seconds=1)) == 1
    grant.refresh_from_db()
    assert grant.state == Grant.State.EXPIRED
    assert "access.grant.expired" in actions()


@pytest.mark.parametrize("what", ["user", "account"])
def test_the_sweep_revokes_grants_of_a_user_or_account_deactivated_around_the_services(
    what, alice, bob, policy, ssh_account, vault_ready
):
    """A raw change (a restore, SQL by hand) that deactivates without the service: the next
    sweep revokes the grant, so its credential is released too."""
    req = ask(alice, ssh_account)
    services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    grant = Grant.objects.get()
    assert services.grants_of_inactive_revoke() == 0
    model = type(alice) if what == "user" else type(ssh_account)
    model.objects.filter(pk=(alice if what == "user" else ssh_account).pk).update(is_active=False)
    assert services.grants_of_inactive_revoke() == 1
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED
    assert grant.end_reason == f"the {what} was deactivated"
    assert grant.cleanup != Grant.Cleanup.NONE
    assert services.grants_of_inactive_revoke() == 0


def test_the_sweep_cancels_the_open_requests_of_a_deactivated_user_with_her_reason(
    alice, policy, ssh_account
):
    """The directory sync deactivates through identity alone: the sweep right after it (and
    every sweep) cancels what its leavers still had pending, saying why."""
    req = ask(alice, ssh_account)
    assert services.requests_of_inactive_cancel() == 0
    type(alice).objects.filter(pk=alice.pk).update(is_active=False, deactivated_reason="left the directory")
    assert services.requests_of_inactive_cancel() == 1
    req.refresh_from_db()
    assert req.state == AccessRequest.State.CANCELLED
    event = AuditEvent.objects.get(action="access.request.cancelled", object_id=str(req.pk))
    assert event.actor is None and event.details["reason"] == "left the directory"
    assert services.requests_of_inactive_cancel() == 0


def test_vault_down_at_checkout_keeps_the_request_approved_and_retry_works(
    alice, bob, policy, ssh_account, settings, openbao_factory, vault_ready
):
    from tests.fixtures.openbao import point_settings_at
    from vault.client import reset_client

    good = (settings.VAULT_ADDR, settings.VAULT_ROLE_ID, settings.VAULT_SECRET_ID, settings.VAULT_TOKEN)
    down = openbao_factory()
    down.initialize()  # sealed
    point_settings_at(settings, down)
    req = ask(alice, ssh_account)
    services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    req.refresh_from_db()
    assert req.state == AccessRequest.State.APPROVED
    assert "sealed" in req.checkout_error
    assert not Grant.objects.exists()
    assert "access.grant.checkout_failed" in actions()

    settings.VAULT_ADDR, settings.VAULT_ROLE_ID, settings.VAULT_SECRET_ID, settings.VAULT_TOKEN = good
    reset_client()
    grant = services.grant_checkout(access_request=req, acting_user=alice)
    assert grant.is_live
    req.refresh_from_db()
    assert req.state == AccessRequest.State.FULFILLED and req.checkout_error == ""


def test_break_glass_needs_membership_and_is_flagged_until_reviewed(
    alice, bob, ssh_account, vault_ready, mailoutbox
):
    from django.contrib.auth.models import Group

    carol = make_user("carol2", "auditor", email="carol2@hospital.example")
    with pytest.raises(PermissionDenied):
        services.break_glass_activate(
            user=alice, account=ssh_account, justification="CT down, ER waiting", duration_minutes=30
        )
    alice.groups.add(Group.objects.get_or_create(name="break-glass")[0])
    alice._pamsite_roles = None
    with pytest.raises(ValidationError):
        services.break_glass_activate(
            user=alice, account=ssh_account, justification="CT down", duration_minutes=90
        )
    grant = services.break_glass_activate(
        user=alice, account=ssh_account, justification="CT down, ER waiting for images", duration_minutes=30
    )
    assert grant.break_glass and grant.is_live
    assert any(carol.email in m.to and "EMERGENCY" in m.subject for m in mailoutbox)
    with pytest.raises(PermissionDenied):
        services.grant_review(grant=grant, reviewer=alice, comment="fine by me")
    services.grant_review(grant=grant, reviewer=bob, comment="checked with ER lead")
    grant.refresh_from_db()
    assert grant.reviewed_by == bob
    assert "access.break_glass.reviewed" in actions()


def test_break_glass_with_vault_unreachable_sends_to_the_sealed_envelope_and_alerts(
    alice, pat, ssh_account, vault_ready, settings, mailoutbox
):
    from django.contrib.auth.models import Group

    from tests.fixtures.openbao import free_port

    alice.groups.add(Group.objects.get_or_create(name="break-glass")[0])
    alice._pamsite_roles = None
    settings.VAULT_ADDR = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    grant = services.break_glass_activate(
        user=alice, account=ssh_account, justification="CT down, ER waiting for images", duration_minutes=30
    )
    assert (grant.break_glass, grant.is_live, grant.credential) == (
        True,
        True,
        Grant.Credential.SEALED_ENVELOPE,
    )
    assert grant.request.state == AccessRequest.State.FULFILLED and grant.lease_id == ""
    ssh_account.refresh_from_db()
    assert ssh_account.emergency_rotation_due_since is not None
    alert = AuditEvent.objects.get(action="security.alert.break_glass_without_vault")
    assert (alert.details["vault"], alert.details["rotation"]) == ("unreachable", "by a pam-admin")
    alerted = [m for m in mailoutbox if "SECURITY ALERT" in m.subject]
    assert [m.to for m in alerted] == [[pat.email]] and "change it on the target" in alerted[0].body
    # Vault back: an ssh-ca account's emergency password is not pamsite's to rotate.
    settings.VAULT_ADDR = vault_ready.VAULT_ADDR
    assert services.break_glass_rotations_due() == 0
    ssh_account.refresh_from_db()
    assert ssh_account.emergency_rotation_due_since is not None


def test_break_glass_is_refused_when_vault_answers_but_cannot_hand_out_the_credential(
    alice, pacs01, approle_settings
):
    from django.contrib.auth.models import Group

    from access.models import Account

    unconfigured = Account.objects.create(
        target=pacs01, slug="pacs01-unconfigured", kind=Account.Kind.SSH_CA, username="root"
    )
    alice.groups.add(Group.objects.get_or_create(name="break-glass")[0])
    alice._pamsite_roles = None
    with pytest.raises(services.CheckoutFailed, match="pacs01-unconfigured"):
        services.break_glass_activate(
            user=alice, account=unconfigured, justification="CT down, ER waiting", duration_minutes=30
        )
    assert not Grant.objects.exists()
    assert not AuditEvent.objects.filter(action="security.alert.break_glass_without_vault").exists()


def test_approvers_are_told_of_new_requests(alice, bob, policy, ssh_account, mailoutbox):
    ask(alice, ssh_account)
    assert [m.to for m in mailoutbox] == [["bob@hospital.example"]]
    assert "INC-123" in mailoutbox[0].body


def test_holders_are_warned_once_before_expiry(alice, bob, policy, ssh_account, vault_ready, mailoutbox):
    req = ask(alice, ssh_account, minutes=30)
    services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    grant = Grant.objects.get()
    mailoutbox.clear()
    assert services.grants_warn_expiring() == 0  # 30 minutes left: not yet
    soon = grant.ends_at - timedelta(minutes=5)
    assert services.grants_warn_expiring(now=soon) == 1
    assert services.grants_warn_expiring(now=soon) == 0
    assert [m.to for m in mailoutbox] == [["alice@hospital.example"]]
    assert "ends at" in mailoutbox[0].subject
