"""Pages of the access workflow. Thin: every decision is in selectors and services."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from access import selectors, services
from access.forms import (
    BreakGlassForm,
    DatabaseSetupForm,
    DecisionForm,
    RequestForm,
    RevealForm,
    ReviewForm,
    RevokeForm,
    StaticSetupForm,
)
from access.models import AccessRequest, Account, Grant, InvalidTransition, Target
from identity.roles import BREAK_GLASS_GROUP, Role, has_role, require_role, roles_of
from identity.services import MFAError
from sessions import selectors as session_selectors
from vault.client import VaultError


def _attempt(request: HttpRequest, back_to, action, success: str) -> HttpResponse:
    """Run a workflow step; say what happened; go back to the object's page."""
    try:
        action()
    except InvalidTransition as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, success)
    return redirect(back_to)


def _form_errors(form, exc: ValidationError) -> None:
    for field, errors in exc.message_dict.items():
        form.add_error(field if field in form.fields else None, errors)


@never_cache
def my_access(request: HttpRequest) -> HttpResponse:
    """The requester's page: live grants with time left, requests, what can be requested."""
    user = request.user
    grants = list(selectors.my_grants(user=user)[:50])
    context = {
        "live": [g for g in grants if g.is_live],
        "past": [g for g in grants if not g.is_live][:20],
        "requests": selectors.my_requests(user=user)[:30],
        "requestable": selectors.requestable_accounts_for(user=user),
        "break_glass": BREAK_GLASS_GROUP in roles_of(user),
    }
    return render(request, "access/my_access.html", context)


@never_cache
@require_http_methods(["GET", "POST"])
def request_new(request: HttpRequest) -> HttpResponse:
    """Ask for access to an account."""
    require_role(request.user, Role.REQUESTER)
    accounts = selectors.requestable_accounts_for(user=request.user)
    initial = {"account": request.GET.get("account", "")}
    form = RequestForm(request.POST or None, accounts=accounts, initial=initial)
    if request.method == "POST" and form.is_valid():
        account = next(a for a, _ in accounts if a.slug == form.cleaned_data["account"])
        try:
            req = services.request_create(
                requester=request.user,
                account=account,
                reason=form.cleaned_data["reason"],
                ticket=form.cleaned_data["ticket"],
                duration_minutes=form.cleaned_data["duration_minutes"],
                http_request=request,
            )
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            if req.state == AccessRequest.State.FULFILLED:
                messages.success(request, f"Access to {account.slug} is granted.")
                return redirect(req.grant)
            messages.success(request, "Your request was sent to the approvers.")
            return redirect(req)
    return render(request, "access/request_new.html", {"form": form, "has_accounts": bool(accounts)})


@never_cache
def request_detail(request: HttpRequest, pk: int) -> HttpResponse:
    req = selectors.get_request_for(user=request.user, pk=pk)
    context = {
        "req": req,
        "approvals": req.approvals.select_related("approver"),
        "can_decide": has_role(request.user, Role.APPROVER)
        and req.requester_id != request.user.pk
        and req.state == AccessRequest.State.PENDING
        and not req.approvals.filter(approver=request.user).exists(),
        "decision_form": DecisionForm(),
        "history": selectors.recent_history_of(user=req.requester, excluding=req.pk),
    }
    return render(request, "access/request_detail.html", context)


@require_POST
def request_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    req = selectors.get_request_for(user=request.user, pk=pk)
    return _attempt(
        request,
        req,
        lambda: services.request_cancel(access_request=req, acting_user=request.user, http_request=request),
        "Request cancelled.",
    )


@require_POST
def request_retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Retry the checkout of an approved request (after Vault was down)."""
    req = selectors.get_request_for(user=request.user, pk=pk)
    if req.requester_id != request.user.pk and not has_role(request.user, Role.APPROVER, Role.PAM_ADMIN):
        raise PermissionDenied("Only the requester or an approver can retry the checkout.")
    try:
        grant = services.grant_checkout(access_request=req, acting_user=request.user)
    except services.CheckoutFailed as exc:
        messages.error(request, f"Still could not check the credential out: {exc} Try again in a moment.")
    except InvalidTransition as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "The credential is checked out: access granted.")
        return redirect(grant)
    return redirect(req)


@never_cache
def approval_queue(request: HttpRequest) -> HttpResponse:
    """Pending requests, oldest first, with each requester's recent history."""
    queue = list(selectors.approval_queue_for(user=request.user)[:100])
    rows = [(req, selectors.recent_history_of(user=req.requester, excluding=req.pk)) for req in queue]
    live = selectors.live_grants(user=request.user)[:100]
    return render(request, "access/approval_queue.html", {"rows": rows, "live": live, "form": DecisionForm()})


@require_POST
def request_decide(request: HttpRequest, pk: int) -> HttpResponse:
    req = selectors.get_request_for(user=request.user, pk=pk)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        return redirect(req)
    try:
        services.request_decide(
            access_request=req,
            approver=request.user,
            approve=form.cleaned_data["decision"] == "approve",
            comment=form.cleaned_data["comment"],
            http_request=request,
        )
    except InvalidTransition as exc:
        messages.error(request, str(exc))
        return redirect(req)
    req.refresh_from_db()
    if req.state == AccessRequest.State.APPROVED and req.checkout_error:
        messages.warning(
            request, f"Approved, but the credential could not be checked out yet: {req.checkout_error}"
        )
    else:
        messages.success(request, f"Request #{req.pk}: {req.get_state_display().lower()}.")
    return redirect("access:approvals")


@never_cache
def grant_detail(request: HttpRequest, pk: int) -> HttpResponse:
    grant = selectors.get_grant_for(user=request.user, pk=pk)
    user = request.user
    policy = grant.request.policy
    context = {
        "grant": grant,
        "is_holder": grant.user_id == user.pk,
        "can_revoke": grant.is_live and has_role(user, Role.APPROVER, Role.PAM_ADMIN),
        "can_reveal": grant.user_id == user.pk
        and grant.is_live
        and grant.account.revealable
        and policy is not None
        and policy.allow_reveal
        and grant.revealed_at is None,
        "can_review": grant.break_glass
        and grant.reviewed_at is None
        and has_role(user, Role.APPROVER)
        and grant.user_id != user.pk,
        "revoke_form": RevokeForm(),
        "reveal_form": RevealForm(),
        "review_form": ReviewForm(),
        "gateway_sessions": session_selectors.sessions_of_grant(grant=grant)[:100],
        "gateway_host": getattr(settings, "GATEWAY_PUBLIC_HOST", "localhost"),
        "gateway_port": getattr(settings, "GATEWAY_PUBLIC_PORT", 2222),
        # Database accounts go through the gateway as a port forward only (no shell).
        "forward_only": grant.account.kind == Account.Kind.DATABASE,
        "sealed_envelope": grant.credential == Grant.Credential.SEALED_ENVELOPE,
    }
    return render(request, "access/grant_detail.html", context)


@require_POST
def grant_checkin(request: HttpRequest, pk: int) -> HttpResponse:
    grant = selectors.get_grant_for(user=request.user, pk=pk)
    return _attempt(
        request,
        grant,
        lambda: services.grant_checkin(grant=grant, acting_user=request.user, http_request=request),
        "Checked in: the credential is being released.",
    )


@require_POST
def grant_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    grant = selectors.get_grant_for(user=request.user, pk=pk)
    form = RevokeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the reason for revoking.")
        return redirect(grant)
    return _attempt(
        request,
        grant,
        lambda: services.grant_revoke(
            grant=grant, acting_user=request.user, reason=form.cleaned_data["reason"], http_request=request
        ),
        f"Grant revoked: {grant.user.username} loses access to {grant.account.slug}.",
    )


@sensitive_post_parameters("code")
@never_cache
@require_POST
def grant_reveal(request: HttpRequest, pk: int) -> HttpResponse:
    """Show the secret once, on this response only, after a fresh code."""
    grant = selectors.get_grant_for(user=request.user, pk=pk)
    form = RevealForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter the code from your authenticator app.")
        return redirect(grant)
    try:
        secret = services.grant_reveal(
            grant=grant, acting_user=request.user, code=form.cleaned_data["code"], http_request=request
        )
    except (MFAError, InvalidTransition) as exc:
        messages.error(request, str(exc))
        return redirect(grant)
    except VaultError as exc:
        messages.error(request, f"The secret could not be fetched: {exc}")
        return redirect(grant)
    response = render(request, "access/reveal.html", {"grant": grant, "secret": secret})
    response["Cache-Control"] = "no-store"
    return response


@require_POST
def grant_review(request: HttpRequest, pk: int) -> HttpResponse:
    grant = selectors.get_grant_for(user=request.user, pk=pk)
    form = ReviewForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Write what the review found.")
        return redirect(grant)
    return _attempt(
        request,
        grant,
        lambda: services.grant_review(
            grant=grant, reviewer=request.user, comment=form.cleaned_data["comment"], http_request=request
        ),
        "Review recorded.",
    )


@never_cache
@require_http_methods(["GET", "POST"])
def break_glass(request: HttpRequest) -> HttpResponse:
    """Emergency access without approval, for members of break-glass."""
    if BREAK_GLASS_GROUP not in roles_of(request.user):
        raise PermissionDenied("Emergency access is for members of the break-glass group.")
    form = BreakGlassForm(request.POST or None, accounts=Account.objects.filter(is_active=True))
    if request.method == "POST" and form.is_valid():
        try:
            grant = services.break_glass_activate(
                user=request.user,
                account=form.cleaned_data["account"],
                justification=form.cleaned_data["justification"],
                duration_minutes=form.cleaned_data["duration_minutes"],
                http_request=request,
            )
        except ValidationError as exc:
            _form_errors(form, exc)
        except services.CheckoutFailed as exc:
            form.add_error(None, f"The credential could not be checked out: {exc}")
        else:
            if grant.credential == Grant.Credential.SEALED_ENVELOPE:
                messages.error(
                    request,
                    f"Emergency access granted, but Vault is unreachable: use the sealed emergency "
                    f"credential of {grant.account.slug}. pam-admins, auditors and approvers have been told.",
                )
            else:
                messages.warning(request, "Emergency access granted. Auditors and approvers have been told.")
            return redirect(grant)
    return render(request, "access/break_glass.html", {"form": form})


@never_cache
def target_list(request: HttpRequest) -> HttpResponse:
    """Targets and their accounts: all of them for pam-admins, approvers and auditors;
    for requesters, the ones they may request."""
    user = request.user
    if has_role(user, Role.PAM_ADMIN, Role.APPROVER, Role.AUDITOR):
        targets = Target.objects.prefetch_related("accounts")
        requestable = {a.pk for a, _ in selectors.requestable_accounts_for(user=user)}
    else:
        requestable_accounts = selectors.requestable_accounts_for(user=user)
        requestable = {a.pk for a, _ in requestable_accounts}
        targets = Target.objects.filter(accounts__pk__in=requestable).distinct().prefetch_related("accounts")
    return render(
        request,
        "access/target_list.html",
        {"targets": targets, "requestable": requestable, "is_admin": has_role(user, Role.PAM_ADMIN)},
    )


@never_cache
@require_http_methods(["GET", "POST"])
def target_host_key(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: fetch the target's SSH host key, check its fingerprint, pin it."""
    require_role(request.user, Role.PAM_ADMIN)
    target = get_object_or_404(Target, pk=pk)
    from access import targets as target_services
    from sessions.upstream import UpstreamError

    if request.method == "POST":
        try:
            target_services.target_pin_host_key(
                target=target,
                acting_user=request.user,
                host_key=request.POST.get("host_key", ""),
                fingerprint=request.POST.get("fingerprint", ""),
                http_request=request,
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        except UpstreamError as exc:
            # The host stopped answering between showing its key and the confirmation.
            messages.error(request, f"Nothing was pinned: {exc}")
        else:
            messages.success(request, f"Host key of {target.name} pinned: {target.host_key_fingerprint}")
            return redirect("access:targets")
    fetched, error = None, ""
    try:
        fetched = target_services.target_fetch_host_key(target=target)
    except UpstreamError as exc:
        error = str(exc)
    return render(request, "access/host_key.html", {"target": target, "fetched": fetched, "error": error})


@sensitive_post_parameters("admin_password", "current_password")
@never_cache
@require_http_methods(["GET", "POST"])
def account_setup(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: connect an account to Vault (SSH role, database connection, or stored password)."""
    require_role(request.user, Role.PAM_ADMIN)
    account = get_object_or_404(Account.objects.select_related("target"), pk=pk)
    from access import targets as target_services
    from sessions.upstream import UpstreamError

    form = None
    if account.kind == Account.Kind.DATABASE:
        initial = {"host": account.target.host, "database": account.database_name, "port": 5432}
        form = DatabaseSetupForm(request.POST or None, initial=initial)
    elif account.kind == Account.Kind.STATIC:
        form = StaticSetupForm(request.POST or None)
    if request.method == "POST" and (form is None or form.is_valid()):
        try:
            if account.kind == Account.Kind.SSH_CA:
                target_services.account_setup_ssh(
                    account=account, acting_user=request.user, http_request=request
                )
                messages.success(
                    request, f"Vault now signs certificates for {account.username} ({account.slug})."
                )
            elif account.kind == Account.Kind.DATABASE:
                data = form.cleaned_data
                target_services.account_setup_database(
                    account=account,
                    acting_user=request.user,
                    host=data["host"],
                    port=data["port"],
                    database=data["database"],
                    admin_username=data["admin_username"],
                    admin_password=data["admin_password"],
                    sslmode=data["sslmode"],
                    max_ttl_seconds=data["max_hours"] * 3600,
                    http_request=request,
                )
                messages.success(request, f"Vault manages database users for {account.slug}.")
            else:
                verified = target_services.account_setup_static(
                    account=account,
                    acting_user=request.user,
                    current_password=form.cleaned_data["current_password"],
                    http_request=request,
                )
                messages.success(
                    request,
                    "Password stored in Vault"
                    + (
                        " and checked on the target."
                        if verified
                        else "; pin the host key to check and rotate it."
                    ),
                )
            return redirect("access:targets")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        except (VaultError, UpstreamError) as exc:
            messages.error(request, f"Not done: {exc}")
    return render(request, "access/account_setup.html", {"account": account, "form": form})
