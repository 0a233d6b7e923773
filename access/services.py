"""The access workflow: request → approve → check out → check in / revoke / expire → release.

Each state change is one function, atomic, taking the acting user and writing its
audit event in the same transaction. Calls to Vault are arranged so that a
rollback never leaves one half done: a lease created for a checkout that does not
commit is revoked at once, and releases and rotations run after the commit that
ended the grant (retried until they succeed).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

# access.tasks imports this module too (its tasks are thin wrappers over these services): both
# import the other as a module, so either may be imported first.
from access import notifications, rotation, tasks
from access.changes import assign_changes
from access.models import AccessPolicy, AccessRequest, Account, Approval, Grant, InvalidTransition
from access.selectors import policy_for
from access.ticket_patterns import ticket_pattern_matches
from audit.services import audit_record
from common.roles import BREAK_GLASS_GROUP, Role, has_role, roles_of
from identity import users
from identity.models import User
from identity.services import mfa_check_fresh_code
from vault import sources
from vault.client import VaultError, VaultHealth, get_client

logger = logging.getLogger(__name__)


class CheckoutFailed(Exception):
    """Vault could not hand out the credential; the request stays approved for a retry."""


def account_ref(account: Account) -> sources.AccountRef:
    """What the credential sources need to know of an account (no secret)."""
    target = account.target
    return sources.AccountRef(
        slug=account.slug,
        kind=account.kind,
        username=account.username,
        vault_role=account.vault_role or account.slug,
        kv_path=account.kv_path or f"accounts/{account.slug}",
        host=target.host,
        port=target.port,
        host_key=target.host_key,
        database=account.database_name,
        connection=target.name,
    )


def _ticket_problem(policy: AccessPolicy, ticket: str) -> str | None:
    like = f" (like {policy.ticket_example})" if policy.ticket_example else " (e.g. INC-123)"
    if not ticket:
        return f"This account needs a ticket reference{like}." if policy.ticket_required else None
    if not policy.ticket_pattern:
        return None
    try:
        matches = ticket_pattern_matches(
            policy.ticket_pattern, ticket, ignore_case=policy.ticket_case_insensitive
        )
    except ValueError:
        # Saved before patterns were checked, or in the database by hand: never run it.
        return "This policy's ticket pattern cannot be used; ask a pam-admin to correct it."
    if not matches:
        shape = (
            f"like {policy.ticket_example}" if policy.ticket_example else f"matching {policy.ticket_pattern}"
        )
        return (
            f"The ticket reference {ticket!r} does not look like one this policy accepts: write it {shape}."
        )
    return None


def request_create(
    *,
    requester: User,
    account: Account,
    reason: str,
    ticket: str,
    duration_minutes: int,
    http_request: HttpRequest | None = None,
) -> AccessRequest:
    """Ask for an account. Checked against the policy; auto-approved when it needs no approver."""
    policy = policy_for(user=requester, account=account)
    if policy is None:
        raise PermissionDenied(f"No policy lets you request {account.slug}. Ask a pam-admin if you need it.")
    errors = {}
    if not reason.strip():
        errors["reason"] = "Say what the access is for."
    if duration_minutes < 5 or duration_minutes > policy.max_duration_minutes:
        errors["duration_minutes"] = (
            f"Choose between 5 and {policy.max_duration_minutes} minutes for this account."
        )
    problem = _ticket_problem(policy, ticket.strip())
    if problem:
        errors["ticket"] = problem
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        req = AccessRequest.objects.create(
            requester=requester,
            account=account,
            policy=policy,
            reason=reason.strip(),
            ticket=ticket.strip(),
            duration_minutes=duration_minutes,
            approvals_required=policy.approvals_required,
        )
        audit_record(
            action="access.request.created",
            actor=requester,
            request=http_request,
            obj=req,
            details={
                "account": account.slug,
                "ticket": req.ticket,
                "duration_minutes": duration_minutes,
                "approvals_required": policy.approvals_required,
                "policy": policy.name,
            },
        )
        if policy.approvals_required == 0:
            req.transition_to(AccessRequest.State.APPROVED)
            req.decided_at = timezone.now()
            req.save(update_fields=["state", "decided_at"])
            audit_record(action="access.request.approved", actor=None, obj=req, details={"by": "policy"})
        else:
            transaction.on_commit(lambda: notifications.new_request(req))
    if req.state == AccessRequest.State.APPROVED:
        _try_checkout(req, acting_user=requester)
    return req


def request_cancel(*, access_request: AccessRequest, acting_user: User, http_request=None) -> None:
    """The requester withdraws a request that is not granted yet."""
    with transaction.atomic():
        req = AccessRequest.objects.select_for_update().get(pk=access_request.pk)
        if req.requester_id != acting_user.pk:
            raise PermissionDenied("Only the requester can cancel a request.")
        req.transition_to(AccessRequest.State.CANCELLED)
        req.decided_at = timezone.now()
        req.save(update_fields=["state", "decided_at"])
        audit_record(action="access.request.cancelled", actor=acting_user, request=http_request, obj=req)
    access_request.refresh_from_db()


def request_decide(
    *, access_request: AccessRequest, approver: User, approve: bool, comment: str, http_request=None
) -> AccessRequest:
    """An approver approves or denies. Never one's own request; each approver counts once.

    The request row is locked, so two approvers deciding at once never produce two
    grants or lose a decision. Enough approvals approve the request and check out
    the credential (after this transaction commits).
    """
    if not has_role(approver, Role.APPROVER):
        raise PermissionDenied("Only approvers decide on requests.")
    with transaction.atomic():
        req = AccessRequest.objects.select_for_update().get(pk=access_request.pk)
        if req.requester_id == approver.pk:
            raise PermissionDenied("You cannot decide on your own request: another approver must.")
        if req.state != AccessRequest.State.PENDING:
            raise InvalidTransition(f"This request is already {req.get_state_display().lower()}.")
        if Approval.objects.filter(request=req, approver=approver).exists():
            raise InvalidTransition("You have already decided on this request; another approver is needed.")
        decision = Approval.Decision.APPROVE if approve else Approval.Decision.DENY
        Approval.objects.create(request=req, approver=approver, decision=decision, comment=comment.strip())
        if not approve:
            req.transition_to(AccessRequest.State.DENIED)
        elif req.approvals.filter(decision=Approval.Decision.APPROVE).count() >= req.approvals_required:
            req.transition_to(AccessRequest.State.APPROVED)
        if req.state != AccessRequest.State.PENDING:
            req.decided_at = timezone.now()
            req.save(update_fields=["state", "decided_at"])
        audit_record(
            action="access.request.approved" if approve else "access.request.denied",
            actor=approver,
            request=http_request,
            obj=req,
            details={"comment": comment.strip()[:500], "state": req.state},
        )
        if req.state in (AccessRequest.State.APPROVED, AccessRequest.State.DENIED):
            transaction.on_commit(lambda: notifications.decision(req))
    if req.state == AccessRequest.State.APPROVED:
        _try_checkout(req, acting_user=approver)
    access_request.refresh_from_db()
    return access_request


def _try_checkout(req: AccessRequest, *, acting_user: User) -> None:
    # A failure is recorded on the request; its page offers a retry.
    with contextlib.suppress(CheckoutFailed):
        grant_checkout(access_request=req, acting_user=acting_user)


def grant_checkout(*, access_request: AccessRequest, acting_user: User, vault=None) -> Grant:
    """Check the credential out of Vault and start the grant.

    Vault down or sealed: nothing is created, the request stays approved with the
    reason on it, and CheckoutFailed is raised; calling this again retries.
    """
    checked_out = None
    ref = None
    try:
        with transaction.atomic():
            req = (
                # of=self: lock the request row only, not the joined account and target
                # (locking those too deadlocked concurrent checkouts on PostgreSQL).
                AccessRequest.objects.select_for_update(of=("self",))
                .select_related("account__target")
                .get(pk=access_request.pk)
            )
            if req.state != AccessRequest.State.APPROVED:
                raise InvalidTransition(
                    f"This request is {req.get_state_display().lower()}: nothing to check out."
                )
            now = timezone.now()
            ends_at = now + timedelta(minutes=req.duration_minutes)
            grant = Grant(
                request=req,
                user=req.requester,
                account=req.account,
                starts_at=now,
                ends_at=ends_at,
                break_glass=req.break_glass,
            )
            grant.save()
            ref = account_ref(req.account)
            checked_out = sources.checkout(
                account=ref, grant_ref=str(grant.pk), ttl_seconds=req.duration_minutes * 60, vault=vault
            )
            grant.lease_id = checked_out.lease_id
            grant.login = checked_out.login
            grant.save(update_fields=["lease_id", "login"])
            req.transition_to(AccessRequest.State.FULFILLED)
            req.checkout_error = ""
            req.save(update_fields=["state", "checkout_error"])
            audit_record(
                action="access.grant.checked_out",
                actor=acting_user,
                obj=grant,
                details={
                    "account": req.account.slug,
                    "kind": req.account.kind,
                    "login": grant.login,
                    "ends_at": ends_at.isoformat(),
                    "break_glass": req.break_glass,
                    "request": req.pk,
                },
            )
    except VaultError as exc:
        _record_checkout_failure(access_request, acting_user, str(exc))
        raise CheckoutFailed(str(exc)) from None
    except Exception:
        # The transaction rolled back: give back whatever Vault handed out.
        if checked_out is not None and ref is not None:
            sources.release(account=ref, grant_ref=str(grant.pk), checked_out=checked_out, vault=vault)
        raise
    access_request.refresh_from_db()
    return grant


def _record_checkout_failure(access_request: AccessRequest, acting_user: User, message: str) -> None:
    with transaction.atomic():
        AccessRequest.objects.filter(pk=access_request.pk).update(checkout_error=message[:1000])
        audit_record(
            action="access.grant.checkout_failed",
            actor=acting_user,
            obj=access_request,
            details={"error": message[:500]},
        )
    access_request.refresh_from_db()


def _end(
    grant: Grant, *, new_state: str, acting_user: User | None, reason: str, action: str, http_request=None
):
    with transaction.atomic():
        locked = (
            Grant.objects.select_for_update(of=("self",)).select_related("account", "user").get(pk=grant.pk)
        )
        locked.transition_to(new_state)
        locked.ended_at = timezone.now()
        locked.ended_by = acting_user
        locked.end_reason = reason
        locked.cleanup = Grant.Cleanup.PENDING
        locked.cleanup_next_at = locked.ended_at
        locked.save(
            update_fields=["state", "ended_at", "ended_by", "end_reason", "cleanup", "cleanup_next_at"]
        )
        audit_record(
            action=action,
            actor=acting_user,
            request=http_request,
            obj=locked,
            details={"account": locked.account.slug, "reason": reason[:500], "user": locked.user.username},
        )
        pk = locked.pk
        transaction.on_commit(lambda: _schedule_cleanup(pk))
    grant.refresh_from_db()


def _schedule_cleanup(grant_pk: int) -> None:
    tasks.grant_cleanup_task.delay(grant_pk)


def grant_checkin(*, grant: Grant, acting_user: User, http_request=None) -> None:
    """The holder ends the grant early."""
    if grant.user_id != acting_user.pk:
        raise PermissionDenied("Only the holder checks a grant in; approvers revoke.")
    _end(
        grant,
        new_state=Grant.State.CHECKED_IN,
        acting_user=acting_user,
        reason="checked in",
        action="access.grant.checked_in",
        http_request=http_request,
    )


def grant_revoke(*, grant: Grant, acting_user: User | None, reason: str, http_request=None) -> None:
    """An approver or pam-admin (or the directory sync, with no user) ends someone's grant."""
    if acting_user is not None and not has_role(acting_user, Role.APPROVER, Role.PAM_ADMIN):
        raise PermissionDenied("Only approvers and pam-admins revoke grants.")
    if not reason.strip():
        raise ValidationError({"reason": "Give the reason for revoking (it is kept in the audit trail)."})
    _end(
        grant,
        new_state=Grant.State.REVOKED,
        acting_user=acting_user,
        reason=reason.strip(),
        action="access.grant.revoked",
        http_request=http_request,
    )


def grants_expire_due(*, now=None) -> int:
    """End every active grant whose time is up; returns how many."""
    now = now or timezone.now()
    ended = 0
    for grant in Grant.objects.filter(state=Grant.State.ACTIVE, ends_at__lte=now).order_by("ends_at")[:1000]:
        try:
            _end(
                grant,
                new_state=Grant.State.EXPIRED,
                acting_user=None,
                reason="time is up",
                action="access.grant.expired",
            )
            ended += 1
        except InvalidTransition:
            continue  # ended meanwhile by someone else
    return ended


def grants_of_inactive_revoke() -> int:
    """Revoke active grants whose user or account is no longer active; returns how many.

    The Users and Configuration pages deactivate through ``user_deactivate``, accounts
    through ``account_deactivate``: both revoke at once. The directory sync deactivates
    through identity alone, so its leavers' grants are revoked here, right after the sync,
    ending with the sync's reason ("left the directory"); this also catches a deactivation
    made around the services (a raw database change, a restore), so the credential is
    released within one sweep. The gateway has already cut the sessions: it watches
    ``is_active`` itself.
    """
    revoked = 0
    stale = Grant.objects.filter(state=Grant.State.ACTIVE).filter(
        Q(user__is_active=False) | Q(account__is_active=False)
    )
    for grant in stale.select_related("user", "account").order_by("pk")[:1000]:
        if not grant.user.is_active:
            reason = grant.user.deactivated_reason or "the user was deactivated"
        else:
            reason = "the account was deactivated"
        try:
            _end(
                grant,
                new_state=Grant.State.REVOKED,
                acting_user=None,
                reason=reason,
                action="access.grant.revoked",
            )
            revoked += 1
        except InvalidTransition:
            continue  # ended meanwhile by someone else
    return revoked


def requests_expire_stale(*, now=None) -> int:
    """Pending or approved-but-not-granted requests older than the setting lapse."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.ACCESS_REQUEST_PENDING_HOURS)
    expired = 0
    stale = AccessRequest.objects.filter(
        state__in=[AccessRequest.State.PENDING, AccessRequest.State.APPROVED], created_at__lte=cutoff
    )
    for req in stale[:1000]:
        with transaction.atomic():
            locked = AccessRequest.objects.select_for_update().get(pk=req.pk)
            try:
                locked.transition_to(AccessRequest.State.EXPIRED)
            except InvalidTransition:
                continue
            locked.decided_at = now
            locked.save(update_fields=["state", "decided_at"])
            audit_record(
                action="access.request.expired", obj=locked, details={"account": locked.account.slug}
            )
            expired += 1
    return expired


def grant_cleanup(*, grant_pk: int, vault=None) -> bool:
    """Release the credential of an ended grant (revoke lease; rotate a static password).

    Returns True when done. A failure is recorded and retried with back-off; after
    a few failures pam-admins are alerted. Never raises for Vault or target errors.
    """
    grant = Grant.objects.select_related("account__target", "user").get(pk=grant_pk)
    if grant.cleanup not in (Grant.Cleanup.PENDING, Grant.Cleanup.FAILED):
        return grant.cleanup == Grant.Cleanup.DONE
    ref = account_ref(grant.account)
    try:
        sources.release(
            account=ref,
            grant_ref=str(grant.pk),
            checked_out=sources.CheckedOut(
                lease_id=grant.lease_id, login=grant.login, expires_at=grant.ends_at
            ),
            vault=vault,
        )
        rotated_version = None
        if grant.account.kind == Account.Kind.STATIC:
            rotated_version = rotation.static_rotate(account=ref, vault=vault)
    except Exception as exc:
        if isinstance(exc, VaultError) and str(exc):  # worded for the people who read it
            message = str(exc)[:1000]
        else:  # a bug: its repr or class name would mean nothing on the grant page
            logger.exception("Releasing the credential of grant %s failed unexpectedly", grant.pk)
            message = "pamsite failed unexpectedly (its log has the details); it tries again"
        with transaction.atomic():
            attempts = grant.cleanup_attempts + 1
            delay = min(60 * 2 ** min(attempts, 6), 3600)
            Grant.objects.filter(pk=grant.pk).update(
                cleanup=Grant.Cleanup.FAILED,
                cleanup_attempts=attempts,
                cleanup_error=message,
                cleanup_next_at=timezone.now() + timedelta(seconds=delay),
            )
            audit_record(
                action="access.grant.release_failed",
                obj=grant,
                details={"account": grant.account.slug, "error": message[:500], "attempt": attempts},
            )
            if attempts in (1, 3) or attempts % 10 == 0:
                transaction.on_commit(lambda: notifications.cleanup_failed(grant, message, attempts))
        return False
    with transaction.atomic():
        Grant.objects.filter(pk=grant.pk).update(
            cleanup=Grant.Cleanup.DONE, cleanup_error="", cleanup_next_at=None
        )
        details = {"account": grant.account.slug, "kind": grant.account.kind}
        if rotated_version is not None:
            details["kv_version"] = rotated_version
        audit_record(
            action="access.password.rotated" if rotated_version is not None else "access.grant.released",
            obj=grant,
            details=details,
        )
    return True


def grants_cleanup_due(*, now=None, vault=None) -> int:
    """Retry every release/rotation that is due; returns how many succeeded."""
    now = now or timezone.now()
    due = Grant.objects.filter(
        cleanup__in=[Grant.Cleanup.PENDING, Grant.Cleanup.FAILED], cleanup_next_at__lte=now
    ).values_list("pk", flat=True)
    return sum(1 for pk in list(due[:500]) if grant_cleanup(grant_pk=pk, vault=vault))


def grants_warn_expiring(*, now=None) -> int:
    """Tell holders their grant ends soon (once per grant)."""
    now = now or timezone.now()
    soon = now + timedelta(minutes=settings.ACCESS_EXPIRY_WARNING_MINUTES)
    warned = 0
    for grant in Grant.objects.filter(
        state=Grant.State.ACTIVE, ends_at__lte=soon, ends_at__gt=now, expiry_warned_at__isnull=True
    ).select_related("user", "account"):
        if Grant.objects.filter(pk=grant.pk, expiry_warned_at__isnull=True).update(expiry_warned_at=now):
            notifications.expiring(grant)
            warned += 1
    return warned


def grant_reveal(*, grant: Grant, acting_user: User, code: str, http_request: HttpRequest, vault=None):
    """Show a database/static secret once to the holder, after a fresh TOTP code.

    Returns the secret for this one response; pamsite keeps no copy.
    """
    if grant.user_id != acting_user.pk:
        raise PermissionDenied("Only the holder of a grant can see its secret.")
    policy = grant.request.policy
    if not grant.account.revealable or policy is None or not policy.allow_reveal:
        raise PermissionDenied("This account's secret is never shown: connect through the gateway.")
    if not grant.is_live:
        raise InvalidTransition("This grant has ended: its secret is no longer valid.")
    mfa_check_fresh_code(request=http_request, user=acting_user, purpose="reveal", code=code)
    with transaction.atomic():
        locked = Grant.objects.select_for_update().get(pk=grant.pk)
        if locked.revealed_at is not None:
            raise InvalidTransition("The secret of this grant was already shown once.")
        secret = rotation.reveal(account=account_ref(grant.account), grant_ref=str(grant.pk), vault=vault)
        locked.revealed_at = timezone.now()
        locked.save(update_fields=["revealed_at"])
        audit_record(
            action="access.secret.revealed",
            actor=acting_user,
            request=http_request,
            obj=locked,
            details={"account": grant.account.slug, "login": secret.login},
        )
    return secret


def break_glass_activate(
    *, user: User, account: Account, justification: str, duration_minutes: int, http_request=None
) -> Grant:
    """Emergency access without approval: members of break-glass, at most an hour, reviewed after.

    An emergency does not wait for Vault. When Vault is unreachable or sealed the grant is
    made all the same, without a checkout: it tells the holder to use the account's sealed
    emergency credential (kept offline by the hospital), raises a security alert to
    pam-admins, and flags the account so that its password is rotated as soon as Vault is
    back (``break_glass_rotations_due``). Any other checkout failure raises CheckoutFailed.
    """
    if BREAK_GLASS_GROUP not in roles_of(user):
        raise PermissionDenied("Only members of the break-glass group can use emergency access.")
    limit = settings.ACCESS_BREAK_GLASS_MAX_MINUTES
    errors = {}
    if len(justification.strip()) < 10:
        errors["justification"] = "Explain the emergency (at least a sentence): it is reviewed afterwards."
    if not 5 <= duration_minutes <= limit:
        errors["duration_minutes"] = f"Emergency access lasts between 5 and {limit} minutes."
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        req = AccessRequest.objects.create(
            requester=user,
            account=account,
            policy=None,
            reason=justification.strip(),
            ticket="",
            duration_minutes=duration_minutes,
            approvals_required=0,
            break_glass=True,
            state=AccessRequest.State.APPROVED,
            decided_at=timezone.now(),
        )
        audit_record(
            action="access.break_glass.activated",
            actor=user,
            request=http_request,
            obj=req,
            details={
                "account": account.slug,
                "duration_minutes": duration_minutes,
                "justification": req.reason[:500],
            },
        )
    try:
        grant = grant_checkout(access_request=req, acting_user=user)
    except CheckoutFailed:
        health = get_client().health()
        if health.ok:
            raise  # Vault answers: a configuration problem, not an outage
        grant = _break_glass_from_sealed_envelope(
            access_request=req, health=health, http_request=http_request
        )
    transaction.on_commit(lambda: notifications.break_glass(grant))
    return grant


def _break_glass_from_sealed_envelope(
    *, access_request: AccessRequest, health: VaultHealth, http_request=None
) -> Grant:
    """The emergency grant when Vault is down: no checkout, the sealed emergency credential instead."""
    with transaction.atomic():
        req = (
            AccessRequest.objects.select_for_update(of=("self",))
            .select_related("account", "requester")
            .get(pk=access_request.pk)
        )
        if req.state != AccessRequest.State.APPROVED:
            raise InvalidTransition(f"This request is {req.get_state_display().lower()}: nothing to grant.")
        account = req.account
        now = timezone.now()
        grant = Grant.objects.create(
            request=req,
            user=req.requester,
            account=account,
            starts_at=now,
            ends_at=now + timedelta(minutes=req.duration_minutes),
            login=account.username,
            credential=Grant.Credential.SEALED_ENVELOPE,
            break_glass=True,
        )
        # checkout_error stays on the request: it says why Vault could not be used.
        req.transition_to(AccessRequest.State.FULFILLED)
        req.save(update_fields=["state"])
        Account.objects.filter(pk=account.pk, emergency_rotation_due_since__isnull=True).update(
            emergency_rotation_due_since=now
        )
        audit_record(
            action="security.alert.break_glass_without_vault",
            actor=req.requester,
            request=http_request,
            obj=grant,
            details={
                "account": account.slug,
                "kind": account.kind,
                "vault": health.state,
                "vault_message": health.message[:500],
                "ends_at": grant.ends_at.isoformat(),
                "request": req.pk,
                "rotation": "when Vault is back" if account.kind == Account.Kind.STATIC else "by a pam-admin",
            },
        )
        transaction.on_commit(lambda: notifications.break_glass_without_vault(grant, health.message))
    return grant


def break_glass_rotations_due(*, vault=None) -> int:
    """Rotate the static passwords that break-glass handed out from the sealed envelope; how many.

    Runs with the worker's sweep. While Vault is still down it does nothing (the next sweep
    tries again); once Vault is back each flagged static account gets a new password on its
    target (``rotation.static_rotate``), so the envelope's password stops working, and its
    flag is cleared. A rotation that fails stays flagged and is retried at the next sweep;
    the emergency grant's own release, when it ends, retries with back-off and alerts.
    """
    due = list(
        Account.objects.filter(kind=Account.Kind.STATIC, emergency_rotation_due_since__isnull=False)
        .select_related("target")
        .order_by("emergency_rotation_due_since")[:100]
    )
    if not due:
        return 0
    vault = vault or get_client()
    if not vault.health().ok:
        return 0
    rotated = 0
    for account in due:
        try:
            version = rotation.static_rotate(account=account_ref(account), vault=vault)
        except Exception as exc:  # Vault or the target: retried at the next sweep
            logger.warning("Rotation of %s after break-glass without Vault failed: %s", account.slug, exc)
            continue
        with transaction.atomic():
            # Only the flag this rotation answered: a new emergency meanwhile keeps it set.
            Account.objects.filter(
                pk=account.pk, emergency_rotation_due_since=account.emergency_rotation_due_since
            ).update(emergency_rotation_due_since=None)
            audit_record(
                action="access.password.rotated",
                obj=account,
                details={
                    "account": account.slug,
                    "kind": account.kind,
                    "kv_version": version,
                    "after": "break-glass without Vault",
                },
            )
        rotated += 1
    return rotated


def grant_review(*, grant: Grant, reviewer: User, comment: str, http_request=None) -> None:
    """An approver records the after-the-fact review of an emergency grant."""
    if not has_role(reviewer, Role.APPROVER):
        raise PermissionDenied("Only approvers review emergency access.")
    if not grant.break_glass:
        raise InvalidTransition("Only emergency (break-glass) grants are reviewed after the fact.")
    if grant.user_id == reviewer.pk:
        raise PermissionDenied("Another approver must review your own emergency access.")
    if len(comment.strip()) < 5:
        raise ValidationError({"comment": "Write what the review found."})
    with transaction.atomic():
        locked = Grant.objects.select_for_update().get(pk=grant.pk)
        if locked.reviewed_at is not None:
            raise InvalidTransition("This emergency grant has already been reviewed.")
        locked.reviewed_by = reviewer
        locked.reviewed_at = timezone.now()
        locked.review_comment = comment.strip()
        locked.save(update_fields=["reviewed_by", "reviewed_at", "review_comment"])
        audit_record(
            action="access.break_glass.reviewed",
            actor=reviewer,
            request=http_request,
            obj=locked,
            details={"comment": comment.strip()[:500]},
        )
    grant.refresh_from_db()


# --- Accounts and policies (pam-admin pages, pam_config apply) ------------------------------

POLICY_FIELDS = (
    "name",
    "tags",
    "approvals_required",
    "max_duration_minutes",
    "ticket_required",
    "ticket_pattern",
    "ticket_example",
    "ticket_case_insensitive",
    "allow_reveal",
)
POLICY_RELATIONS = ("groups", "accounts", "targets")


def _via(via: str) -> dict:
    return {"via": via} if via else {}


def _clean_reason(reason: str) -> str:
    reason = reason.strip()
    if len(reason) < 3:
        raise ValidationError({"reason": "Give the reason (it is kept in the audit trail)."})
    return reason


@transaction.atomic
def account_deactivate(
    *, account: Account, acting_user: User | None, reason: str, http_request=None, via: str = ""
) -> int:
    """Take an account out of use: nobody can request it, its live grants are revoked (the
    gateway then cuts their sessions) and its open requests cancelled. Returns the number of
    grants revoked. Deactivating an inactive account does nothing."""
    if acting_user is not None and not has_role(acting_user, Role.PAM_ADMIN):
        raise PermissionDenied("Only pam-admins deactivate accounts.")
    reason = _clean_reason(reason)
    locked = Account.objects.select_for_update().get(pk=account.pk)
    if not locked.is_active:
        return 0
    locked.is_active = False
    locked.save(update_fields=["is_active"])
    # Open requests first: locking them waits for a checkout in progress (it locks its
    # request), whose grant is then revoked below; a checkout after this finds its request
    # cancelled.
    open_states = [AccessRequest.State.PENDING, AccessRequest.State.APPROVED]
    cancelled = len(
        _requests_cancel(
            requests=AccessRequest.objects.select_for_update().filter(account=locked, state__in=open_states),
            acting_user=acting_user,
            reason=f"account {locked.slug} deactivated",
            http_request=http_request,
        )
    )
    revoked = 0
    for grant in Grant.objects.filter(account=locked, state=Grant.State.ACTIVE):
        grant_revoke(
            grant=grant,
            acting_user=acting_user,
            reason=f"account {locked.slug} deactivated: {reason}",
            http_request=http_request,
        )
        revoked += 1
    audit_record(
        action="access.account.deactivated",
        actor=acting_user,
        request=http_request,
        obj=locked,
        details={
            "reason": reason[:500],
            "grants_revoked": revoked,
            "requests_cancelled": cancelled,
            **_via(via),
        },
    )
    account.refresh_from_db()
    return revoked


@transaction.atomic
def account_reactivate(
    *, account: Account, acting_user: User | None, reason: str, http_request=None, via: str = ""
) -> None:
    """Put a deactivated account back in use (requests under its policies work again)."""
    if acting_user is not None and not has_role(acting_user, Role.PAM_ADMIN):
        raise PermissionDenied("Only pam-admins reactivate accounts.")
    reason = _clean_reason(reason)
    locked = Account.objects.select_for_update().get(pk=account.pk)
    if locked.is_active:
        return
    locked.is_active = True
    locked.save(update_fields=["is_active"])
    audit_record(
        action="access.account.reactivated",
        actor=acting_user,
        request=http_request,
        obj=locked,
        details={"reason": reason[:500], **_via(via)},
    )
    account.refresh_from_db()


def _policy_check(policy: AccessPolicy, relations: dict) -> None:
    errors = {}
    if "groups" in relations and not relations["groups"]:
        errors["groups"] = "Choose at least one group whose members may request."
    covered = [relations.get(name) for name in ("accounts", "targets")]
    if all(name in relations for name in ("accounts", "targets")) and not any(covered) and not policy.tags:
        errors["accounts"] = "Say what the policy covers: accounts, targets or tags."
    try:
        policy.full_clean(exclude=["groups", "accounts", "targets"])
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            if field == "name" and any("already exists" in m for m in messages):
                messages = [f"A policy called {policy.name} exists already: choose another name."]
            errors.setdefault(field, " ".join(messages))
    if errors:
        raise ValidationError(errors)


def _relation_changes(policy: AccessPolicy, relations: dict) -> list[dict]:
    changes = []
    for name in POLICY_RELATIONS:
        if name not in relations:
            continue
        manager = getattr(policy, name)
        before = sorted(str(o) for o in manager.all()) if policy.pk else []
        after = sorted(str(o) for o in relations[name])
        if before != after:
            changes.append({"field": name, "from": before, "to": after})
            manager.set(relations[name])
    return changes


@transaction.atomic
def policy_create(
    *, acting_user: User | None, values: dict, http_request=None, via: str = ""
) -> AccessPolicy:
    """Add a policy: which groups may request what (accounts, targets, tags), on which terms.

    ``values`` holds POLICY_FIELDS and the lists ``groups``, ``accounts``, ``targets``.
    """
    relations = {k: list(values.get(k, [])) for k in POLICY_RELATIONS}
    policy = AccessPolicy(**{k: v for k, v in values.items() if k in POLICY_FIELDS})
    _policy_check(policy, relations)
    policy.save()
    _relation_changes(policy, relations)
    audit_record(
        action="access.policy.created",
        actor=acting_user,
        request=http_request,
        obj=policy,
        details={
            **{k: getattr(policy, k) for k in POLICY_FIELDS if k != "name"},
            **{k: sorted(str(o) for o in v) for k, v in relations.items()},
            **_via(via),
        },
    )
    return policy


@transaction.atomic
def policy_update(
    *, policy: AccessPolicy, acting_user: User | None, values: dict, http_request=None, via: str = ""
) -> list[dict]:
    """Change a policy; returns the changes (none: nothing written, nothing audited).

    Requests already made keep the terms they were made under; new ones get the new terms.
    """
    locked = AccessPolicy.objects.select_for_update().get(pk=policy.pk)
    relations = {k: list(values[k]) for k in POLICY_RELATIONS if k in values}
    changes = assign_changes(locked, values, POLICY_FIELDS)
    _policy_check(
        locked,
        {k: relations.get(k, list(getattr(locked, k).all())) for k in POLICY_RELATIONS},
    )
    if changes:
        locked.save()
    changes += _relation_changes(locked, relations)
    if changes:
        audit_record(
            action="access.policy.changed",
            actor=acting_user,
            request=http_request,
            obj=locked,
            details={"changes": changes, **_via(via)},
        )
    policy.refresh_from_db()
    return changes


@transaction.atomic
def policy_set_active(
    *, policy: AccessPolicy, acting_user: User | None, active: bool, http_request=None, via: str = ""
) -> bool:
    """Deactivate (nobody may request under it any more; live grants run to their end) or
    reactivate a policy; returns whether anything changed."""
    locked = AccessPolicy.objects.select_for_update().get(pk=policy.pk)
    if locked.is_active == active:
        return False
    locked.is_active = active
    locked.save(update_fields=["is_active"])
    audit_record(
        action="access.policy.reactivated" if active else "access.policy.deactivated",
        actor=acting_user,
        request=http_request,
        obj=locked,
        details=_via(via),
    )
    policy.refresh_from_db()
    return True


# --- Deactivating people ---------------------------------------------------------------------
#
# The Users page and the Configuration pages' "Active" box deactivate through user_deactivate
# here: identity.users.user_deactivate in the same transaction as the revocation of the
# person's grants and the cancellation of their requests. The directory sync, below this
# layer, deactivates through identity's alone; the sweep (grants_of_inactive_revoke,
# requests_of_inactive_cancel), run right after every sync, ends what those users held here.
# The gateway does not wait for either: it watches ``user.is_active`` itself
# (recordings/sessions.py), so even a raw database change cuts live sessions.


def _requests_cancel(*, requests, acting_user: User | None, reason: str, http_request=None) -> list[int]:
    """Cancel pending and approved requests (row-locked by the caller's query); their pks."""
    cancelled = []
    now = timezone.now()
    for req in requests:
        try:
            req.transition_to(AccessRequest.State.CANCELLED)
        except InvalidTransition:
            continue  # decided meanwhile
        req.decided_at = now
        req.save(update_fields=["state", "decided_at"])
        audit_record(
            action="access.request.cancelled",
            actor=acting_user,
            request=http_request,
            obj=req,
            details={"reason": reason[:500]},
        )
        cancelled.append(req.pk)
    return cancelled


def user_deactivate(
    *,
    user: User,
    acting_user: User | None,
    reason: str,
    request: HttpRequest | None = None,
    via: str = "users page",
    also_end: Callable[[User, str], dict] | None = None,
) -> users.UserDeactivation | None:
    """Deactivate a person (identity.users.user_deactivate) and end everything they hold in
    access, in one transaction.

    Their live grants are revoked (``grant_revoke``: credentials released after the commit)
    and their pending and approved requests cancelled; the lists join the deactivation's
    audit row (``grants_revoked``, ``requests_cancelled``), with whatever ``also_end`` (a
    layer above: the gateway sessions being cut) reports. Returns what was ended, or None
    if the user was already inactive.
    """

    def end_here(locked: User, clean_reason: str) -> dict:
        revoked = []
        for grant in Grant.objects.filter(user=locked, state=Grant.State.ACTIVE).order_by("pk"):
            grant_revoke(grant=grant, acting_user=acting_user, reason=clean_reason, http_request=request)
            revoked.append(grant.pk)
        cancelled = _requests_cancel(
            requests=AccessRequest.objects.select_for_update().filter(
                requester=locked, state__in=[AccessRequest.State.PENDING, AccessRequest.State.APPROVED]
            ),
            acting_user=acting_user,
            reason=clean_reason,
            http_request=request,
        )
        above = also_end(locked, clean_reason) if also_end is not None else {}
        return {"grants_revoked": revoked, "requests_cancelled": cancelled, **above}

    return users.user_deactivate(
        user=user, acting_user=acting_user, reason=reason, request=request, via=via, also_end=end_here
    )


def requests_of_inactive_cancel() -> int:
    """Cancel pending and approved requests of deactivated users; returns how many.

    The directory sync deactivates through identity alone (it sits below this app), so its
    leavers' requests are cancelled here, right after the sync and at every sweep; so is a
    deactivation made around the services.
    """
    cancelled = 0
    stale = AccessRequest.objects.filter(
        requester__is_active=False,
        state__in=[AccessRequest.State.PENDING, AccessRequest.State.APPROVED],
    ).select_related("requester")
    for req in stale.order_by("pk")[:1000]:
        with transaction.atomic():
            reason = req.requester.deactivated_reason or "the user was deactivated"
            cancelled += len(
                _requests_cancel(
                    requests=AccessRequest.objects.select_for_update().filter(
                        pk=req.pk, state__in=[AccessRequest.State.PENDING, AccessRequest.State.APPROVED]
                    ),
                    acting_user=None,
                    reason=reason,
                )
            )
    return cancelled
