"""Reads for the access workflow, and who may see or act on which object.

Every view goes through one of these: a request or grant is visible to its owner,
to approvers and pam-admins (who act on them) and to auditors (read-only); anyone
else gets a 404, as if it did not exist.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from access.models import AccessPolicy, AccessRequest, Account, Grant, Target
from common.roles import Role, has_role, require_role
from identity.models import User

OVERSEERS = (Role.APPROVER, Role.PAM_ADMIN, Role.AUDITOR)


def policies_for(*, user: User) -> list[AccessPolicy]:
    """Active policies whose groups include one of the user's groups."""
    return list(
        AccessPolicy.objects.filter(is_active=True, groups__in=user.groups.all())
        .distinct()
        .prefetch_related("accounts", "targets")
    )


def policy_for(*, user: User, account: Account) -> AccessPolicy | None:
    """The policy under which the user may request the account, or None.

    When several apply, the strictest wins: most approvals, then shortest duration.
    """
    if not has_role(user, Role.REQUESTER) or not account.is_active:
        return None
    matching = [p for p in policies_for(user=user) if p.applies_to(account)]
    if not matching:
        return None
    return sorted(matching, key=lambda p: (-p.approvals_required, p.max_duration_minutes, p.pk))[0]


def requestable_accounts_for(*, user: User) -> list[tuple[Account, AccessPolicy]]:
    """Every active account the user may request, with the policy that applies."""
    if not has_role(user, Role.REQUESTER):
        return []
    policies = policies_for(user=user)
    if not policies:
        return []
    result = []
    for account in Account.objects.filter(is_active=True).select_related("target"):
        matching = [p for p in policies if p.applies_to(account)]
        if matching:
            best = sorted(matching, key=lambda p: (-p.approvals_required, p.max_duration_minutes, p.pk))[0]
            result.append((account, best))
    return result


def _visible(user: User, owner_id: int) -> bool:
    return owner_id == user.pk or has_role(user, *OVERSEERS)


def get_request_for(*, user: User, pk: int) -> AccessRequest:
    """A request its requester, approvers, pam-admins and auditors may see; else 404."""
    try:
        req = AccessRequest.objects.select_related("account__target", "requester", "policy").get(pk=pk)
    except AccessRequest.DoesNotExist:
        raise Http404("No such request.") from None
    if not _visible(user, req.requester_id):
        raise Http404("No such request.")
    return req


def get_grant_for(*, user: User, pk: int) -> Grant:
    """A grant its holder, approvers, pam-admins and auditors may see; else 404."""
    try:
        grant = Grant.objects.select_related("account__target", "user", "request__policy").get(pk=pk)
    except Grant.DoesNotExist:
        raise Http404("No such grant.") from None
    if not _visible(user, grant.user_id):
        raise Http404("No such grant.")
    return grant


def approval_queue_for(*, user: User) -> QuerySet[AccessRequest]:
    """Pending requests, oldest first, for approvers (their own are shown but cannot be decided)."""
    require_role(user, Role.APPROVER)
    return (
        AccessRequest.objects.filter(state=AccessRequest.State.PENDING)
        .select_related("account__target", "requester")
        .prefetch_related("approvals__approver")
        .order_by("created_at")
    )


def recent_history_of(*, user: User, excluding: int | None = None, limit: int = 5) -> list[AccessRequest]:
    """The user's latest requests (but the one being decided), for approvers."""
    requests = AccessRequest.objects.filter(requester=user).exclude(pk=excluding)
    return list(requests.select_related("account").order_by("-created_at")[:limit])


def my_grants(*, user: User) -> QuerySet[Grant]:
    return Grant.objects.filter(user=user).select_related("account__target").order_by("-starts_at")


def my_requests(*, user: User) -> QuerySet[AccessRequest]:
    return (
        AccessRequest.objects.filter(requester=user).select_related("account__target").order_by("-created_at")
    )


def live_grants(*, user: User) -> QuerySet[Grant]:
    """Active grants of everyone, for approvers and pam-admins (to revoke)."""
    if not has_role(user, Role.APPROVER, Role.PAM_ADMIN):
        raise PermissionDenied("Only approvers and pam-admins see everyone's grants.")
    return Grant.objects.filter(state=Grant.State.ACTIVE).select_related("account__target", "user")


# --- Configuration (pam-admins) -------------------------------------------------------------


def get_target_for_admin(*, user: User, pk: int) -> Target:
    """A target to configure: pam-admins only (403 for anyone else), 404 if there is none."""
    require_role(user, Role.PAM_ADMIN)
    return get_object_or_404(Target, pk=pk)


def get_account_for_admin(*, user: User, pk: int) -> Account:
    """An account to configure, with its target: pam-admins only."""
    require_role(user, Role.PAM_ADMIN)
    return get_object_or_404(Account.objects.select_related("target"), pk=pk)


def get_policy_for_admin(*, user: User, pk: int) -> AccessPolicy:
    """A policy to configure: pam-admins only."""
    require_role(user, Role.PAM_ADMIN)
    return get_object_or_404(AccessPolicy, pk=pk)


def policies_for_admin(*, user: User) -> QuerySet[AccessPolicy]:
    """Every policy, active first, with what it covers: pam-admins only."""
    require_role(user, Role.PAM_ADMIN)
    return AccessPolicy.objects.prefetch_related("groups", "accounts", "targets").order_by(
        "-is_active", "name"
    )


def targets_for(*, user: User) -> tuple[list[Target], set[int]]:
    """The targets a user sees on the Targets page, with their accounts, and the accounts the
    user may request: everything for pam-admins, approvers and auditors; for requesters, the
    targets of the accounts they may request."""
    requestable = {a.pk for a, _ in requestable_accounts_for(user=user)}
    targets = Target.objects.prefetch_related(
        Prefetch("accounts", queryset=Account.objects.select_related("target").order_by("slug"))
    )
    if not has_role(user, Role.PAM_ADMIN, Role.APPROVER, Role.AUDITOR):
        targets = targets.filter(accounts__pk__in=requestable).distinct()
    return list(targets), requestable
