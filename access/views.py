"""Pages of the access workflow. Thin: every decision is in selectors and services."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from access import selectors, services
from access import targets as target_services
from access.forms import (
    ACCOUNT_FORMS,
    TARGET_FORMS,
    ActivationForm,
    BreakGlassForm,
    DatabaseSetupForm,
    DecisionForm,
    PolicyForm,
    RequestForm,
    RevealForm,
    ReviewForm,
    RevokeForm,
    StaticSetupForm,
)
from access.models import AccessRequest, Account, Grant, InvalidTransition, Target
from common.roles import BREAK_GLASS_GROUP, Role, has_role, require_role, roles_of
from identity.services import MFAError
from targets.errors import TargetError
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


# --- Targets and accounts ------------------------------------------------------------------


@never_cache
def target_list(request: HttpRequest) -> HttpResponse:
    """Targets and their accounts: all of them for pam-admins, approvers and auditors;
    for requesters, the ones they may request. pam-admins see each account's readiness
    (pinned / in Vault / last test) and the next step."""
    user = request.user
    targets, requestable = selectors.targets_for(user=user)
    is_admin = has_role(user, Role.PAM_ADMIN)
    readiness = {}
    if is_admin:
        readiness = target_services.accounts_readiness(
            accounts=[a for t in targets for a in t.accounts.all()]
        )
    rows = [
        (
            t,
            [(a, readiness.get(a.pk)) for a in t.accounts.all() if a.is_active or is_admin],
        )
        for t in targets
    ]
    return render(
        request,
        "access/target_list.html",
        {"rows": rows, "requestable": requestable, "is_admin": is_admin, "kinds": Target.Kind.choices},
    )


@never_cache
@require_http_methods(["GET", "POST"])
def target_new(request: HttpRequest) -> HttpResponse:
    """pam-admins: add a target, with the form of its kind (chosen first)."""
    require_role(request.user, Role.PAM_ADMIN)
    kind = request.POST.get("kind") or request.GET.get("kind", "")
    if kind not in TARGET_FORMS:
        return render(request, "access/target_kind.html", {"kinds": Target.Kind.choices})
    form = TARGET_FORMS[kind](request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            target = target_services.target_create(
                acting_user=request.user, values={**form.values(), "kind": kind}, http_request=request
            )
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, f"Target {target.name} added. Now add its accounts.")
            return redirect("access:account_new", pk=target.pk)
    return render(
        request,
        "access/target_form.html",
        {"form": form, "kind": kind, "kind_label": Target.Kind(kind).label, "target": None},
    )


@never_cache
@require_http_methods(["GET", "POST"])
def target_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: change a target's settings (a new address drops its pinned key)."""
    target = selectors.get_target_for_admin(user=request.user, pk=pk)
    form_class = TARGET_FORMS[target.kind]
    initial = {name: getattr(target, name) for name in form_class.base_fields}
    form = form_class(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            changes = target_services.target_update(
                target=target, acting_user=request.user, values=form.values(), http_request=request
            )
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            if any(c["field"] == "host_key" for c in changes):
                messages.warning(
                    request,
                    f"{target.name} has a new address: its host key must be checked and pinned again.",
                )
            messages.success(request, f"Target {target.name} saved." if changes else "Nothing changed.")
            return redirect("access:targets")
    return render(
        request,
        "access/target_form.html",
        {"form": form, "kind": target.kind, "kind_label": target.get_kind_display(), "target": target},
    )


def _back_to_account(request: HttpRequest, fallback: str = "access:targets"):
    """The account page a setup step came from (``?account=``), else ``fallback``."""
    pk = request.POST.get("account") or request.GET.get("account", "")
    if pk.isdigit() and Account.objects.filter(pk=int(pk)).exists():
        return redirect("access:account", pk=int(pk))
    return redirect(fallback)


@never_cache
@require_http_methods(["GET", "POST"])
def target_host_key(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: fetch the target's SSH host key, check its fingerprint, pin it."""
    target = selectors.get_target_for_admin(user=request.user, pk=pk)
    account = request.POST.get("account") or request.GET.get("account", "")
    if not target.has_host_key:
        messages.info(request, f"{target.get_kind_display()} targets have no SSH host key to pin.")
        return _back_to_account(request)
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
        except TargetError as exc:
            # The host stopped answering between showing its key and the confirmation.
            messages.error(request, f"Nothing was pinned: {exc}")
        else:
            messages.success(request, f"Host key of {target.name} pinned: {target.host_key_fingerprint}")
            return _back_to_account(request)
    fetched, error = None, ""
    try:
        fetched = target_services.target_fetch_host_key(target=target)
    except TargetError as exc:
        error = str(exc)
    context = {
        "target": target,
        "fetched": fetched,
        "error": error,
        "account": account if account.isdigit() else "",
    }
    return render(request, "access/host_key.html", context)


@never_cache
@require_http_methods(["GET", "POST"])
def account_new(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: add an account to a target, with the form of its kind."""
    target = selectors.get_target_for_admin(user=request.user, pk=pk)
    kinds = [(k, Account.Kind(k).label) for k in target.account_kinds()]
    kind = request.POST.get("kind") or request.GET.get("kind", "")
    if len(kinds) == 1:
        kind = kinds[0][0]
    if kind not in dict(kinds):
        return render(request, "access/account_kind.html", {"target": target, "kinds": kinds})
    form = ACCOUNT_FORMS[kind](request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            account = target_services.account_create(
                target=target,
                acting_user=request.user,
                values={**form.values(), "kind": kind},
                http_request=request,
            )
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, f"Account {account.slug} added. Now set it up, step by step.")
            return redirect("access:account", pk=account.pk)
    context = {
        "form": form,
        "target": target,
        "kind": kind,
        "kind_label": Account.Kind(kind).label,
        "account": None,
    }
    return render(request, "access/account_form.html", context)


@never_cache
@require_http_methods(["GET", "POST"])
def account_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: change an account's login, tags, description, Vault names."""
    account = selectors.get_account_for_admin(user=request.user, pk=pk)
    form_class = ACCOUNT_FORMS[account.kind]
    initial = {name: getattr(account, name) for name in form_class.base_fields if name != "slug"}
    form = form_class(request.POST if request.method == "POST" else None, initial=initial, creating=False)
    if request.method == "POST" and form.is_valid():
        try:
            changes = target_services.account_update(
                account=account, acting_user=request.user, values=form.values(), http_request=request
            )
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, f"Account {account.slug} saved." if changes else "Nothing changed.")
            return redirect("access:account", pk=account.pk)
    context = {
        "form": form,
        "target": account.target,
        "kind": account.kind,
        "kind_label": account.get_kind_display(),
        "account": account,
    }
    return render(request, "access/account_form.html", context)


@never_cache
@require_safe
def account_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: an account's guided setup: pin the key, set it up in Vault, test the login."""
    account = selectors.get_account_for_admin(user=request.user, pk=pk)
    readiness = target_services.accounts_readiness(accounts=[account])[account.pk]
    context = {
        "account": account,
        "target": account.target,
        "readiness": readiness,
        "activation_form": ActivationForm(),
        "live_grants": account.grants.filter(state=Grant.State.ACTIVE).count(),
    }
    return render(request, "access/account_detail.html", context)


@require_POST
def account_test(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: Test connection: log in with the vaulted credential as the gateway would."""
    account = selectors.get_account_for_admin(user=request.user, pk=pk)
    result = target_services.account_test_connection(
        account=account, acting_user=request.user, http_request=request
    )
    (messages.success if result.ok else messages.error)(request, result.message)
    return redirect("access:account", pk=account.pk)


@require_POST
def account_deactivate(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: take an account out of use, with a reason (its live grants are revoked)."""
    account = selectors.get_account_for_admin(user=request.user, pk=pk)
    form = ActivationForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the reason for deactivating (at least 3 characters).")
        return redirect("access:account", pk=account.pk)
    revoked = services.account_deactivate(
        account=account, acting_user=request.user, reason=form.cleaned_data["reason"], http_request=request
    )
    messages.success(
        request,
        f"{account.slug} is deactivated: nobody can request it"
        + (f"; {revoked} live grant{'s' if revoked != 1 else ''} revoked." if revoked else "."),
    )
    return redirect("access:account", pk=account.pk)


@require_POST
def account_reactivate(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: put a deactivated account back in use, with a reason."""
    account = selectors.get_account_for_admin(user=request.user, pk=pk)
    form = ActivationForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the reason for reactivating (at least 3 characters).")
        return redirect("access:account", pk=account.pk)
    services.account_reactivate(
        account=account, acting_user=request.user, reason=form.cleaned_data["reason"], http_request=request
    )
    messages.success(request, f"{account.slug} is active again.")
    return redirect("access:account", pk=account.pk)


@sensitive_post_parameters("admin_password", "current_password")
@never_cache
@require_http_methods(["GET", "POST"])
def account_setup(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: connect an account to Vault (SSH role, database connection, or stored password)."""
    account = selectors.get_account_for_admin(user=request.user, pk=pk)
    form = None
    if account.kind == Account.Kind.DATABASE:
        initial = {
            "host": account.target.host,
            "port": account.target.port,
            "database": account.database_name,
            "sslmode": account.database_sslmode or "require",
        }
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
            return redirect("access:account", pk=account.pk)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        except (VaultError, TargetError) as exc:
            messages.error(request, f"Not done: {exc}")
    return render(request, "access/account_setup.html", {"account": account, "form": form})


# --- Policies ----------------------------------------------------------------------------


@never_cache
@require_safe
def policy_list(request: HttpRequest) -> HttpResponse:
    """pam-admins: every policy, what it covers and on which terms."""
    policies = selectors.policies_for_admin(user=request.user)
    return render(
        request, "access/policy_list.html", {"policies": policies, "activation_form": ActivationForm()}
    )


@never_cache
@require_http_methods(["GET", "POST"])
def policy_new(request: HttpRequest) -> HttpResponse:
    """pam-admins: add a policy."""
    require_role(request.user, Role.PAM_ADMIN)
    form = PolicyForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            policy = services.policy_create(
                acting_user=request.user, values=form.values(), http_request=request
            )
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, f"Policy {policy.name} added.")
            return redirect("access:policies")
    return render(request, "access/policy_form.html", {"form": form, "policy": None})


@never_cache
@require_http_methods(["GET", "POST"])
def policy_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: change a policy (requests already made keep their terms)."""
    policy = selectors.get_policy_for_admin(user=request.user, pk=pk)
    initial = {name: getattr(policy, name) for name in services.POLICY_FIELDS}
    initial.update({name: list(getattr(policy, name).all()) for name in services.POLICY_RELATIONS})
    form = PolicyForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            changes = services.policy_update(
                policy=policy, acting_user=request.user, values=form.values(), http_request=request
            )
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, f"Policy {policy.name} saved." if changes else "Nothing changed.")
            return redirect("access:policies")
    return render(request, "access/policy_form.html", {"form": form, "policy": policy})


def _policy_set_active(request: HttpRequest, pk: int, *, active: bool) -> HttpResponse:
    policy = selectors.get_policy_for_admin(user=request.user, pk=pk)
    services.policy_set_active(policy=policy, acting_user=request.user, active=active, http_request=request)
    if active:
        messages.success(request, f"Policy {policy.name} is active again.")
    else:
        messages.success(
            request,
            f"Policy {policy.name} is deactivated: no new requests under it; live grants run to their end.",
        )
    return redirect("access:policies")


@require_POST
def policy_deactivate(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: stop a policy (nobody may request under it any more)."""
    return _policy_set_active(request, pk, active=False)


@require_POST
def policy_reactivate(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: put a deactivated policy back in force."""
    return _policy_set_active(request, pk, active=True)
