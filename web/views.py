"""Pages that show several layers at once: a user's page (roles and authenticator from
identity, with their grants, requests and gateway sessions) and the actions on it, and a
grant's page with its gateway sessions. URL paths and names are identity's and access's
(pamsite/urls.py puts them in those namespaces)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from access import selectors as access_selectors
from access.forms import RevealForm, ReviewForm, RevokeForm
from access.models import Account, Grant
from common.roles import Role, has_role
from identity import directory, lockout, users
from identity.forms import PasswordResetForm, ReasonForm, RolesForm
from identity.models import User
from identity.selectors import get_user_for_admin
from identity.views import issued_page
from recordings import selectors as session_selectors
from web import services
from web.selectors import user_overview_for

# --- The Users pages (pam-admins): one user ----------------------------------------------------


def _count(number: int, thing: str, done: str) -> str:
    """``2 live grants revoked``; nothing for none."""
    return f"{number} {thing}{'' if number == 1 else 's'} {done}" if number else ""


def _user_page(request: HttpRequest, pk: int, *, status: int = 200, **forms_) -> HttpResponse:
    overview = user_overview_for(acting_user=request.user, pk=pk)
    target = overview.user
    mapping = {}
    for group_dn, role in directory.group_role_map():
        mapping.setdefault(role, []).append(group_dn)
    context = {
        "o": overview,
        "target": target,
        "is_self": target.pk == request.user.pk,
        "roles_form": forms_.get("roles_form") or RolesForm(initial={"roles": overview.roles}),
        "roles_from_directory": users.roles_managed_by_directory(target),
        "role_groups": [(role, mapping.get(role, [])) for role in overview.roles],
        "deactivate_form": forms_.get("deactivate_form") or ReasonForm(prefix="deactivate"),
        "reactivate_form": forms_.get("reactivate_form") or ReasonForm(prefix="reactivate"),
        "reactivation_refusal": "" if target.is_active else users.user_reactivation_refusal(user=target),
        "reset_form": forms_.get("reset_form") or PasswordResetForm(),
        "lifetime_hours": settings.INVITATION_LIFETIME_HOURS,
        "locked_until": lockout.locked_usernames([target.username]).get(target.username),
    }
    return render(request, "identity/user_detail.html", context, status=status)


@never_cache
@require_http_methods(["GET", "HEAD"])
def user_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: one user and what can be done: roles, authenticator reset, password reset
    (local users), deactivate or reactivate."""
    return _user_page(request, pk)


def _back_to(target: User) -> HttpResponseRedirect:
    return redirect("identity:user", pk=target.pk)


@never_cache
@require_POST
def user_roles_view(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: set a local user's roles (audited); a directory user's come from the directory."""
    target = get_user_for_admin(acting_user=request.user, pk=pk)
    form = RolesForm(request.POST)
    if form.is_valid():
        try:
            added, removed = users.user_roles_set(
                acting_user=request.user, user=target, roles=set(form.cleaned_data["roles"]), request=request
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            if added or removed:
                parts = ([f"given {', '.join(added)}"] if added else []) + (
                    [f"no longer {', '.join(removed)}"] if removed else []
                )
                messages.success(request, f"{target.username}: " + "; ".join(parts) + ".")
            else:
                messages.info(request, "No role changed.")
            return _back_to(target)
    return _user_page(request, pk, roles_form=form, status=400)


@never_cache
@require_POST
def user_deactivate_view(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: deactivate a user, with a reason: grants revoked, requests cancelled, web and
    gateway sessions ended (web.services.user_deactivate)."""
    target = get_user_for_admin(acting_user=request.user, pk=pk)
    form = ReasonForm(request.POST, prefix="deactivate")
    if form.is_valid():
        try:
            result = services.user_deactivate(
                user=target, acting_user=request.user, reason=form.cleaned_data["reason"], request=request
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            if result is None:
                messages.info(request, f"{target.username} was already deactivated.")
            else:
                ended = result.details()
                parts = [
                    _count(len(ended["grants_revoked"]), "live grant", "revoked"),
                    _count(len(ended["gateway_sessions_terminated"]), "gateway session", "being cut"),
                    _count(len(ended["requests_cancelled"]), "open request", "cancelled"),
                    _count(result.web_sessions_ended, "web session", "ended"),
                ]
                held = "; ".join(part for part in parts if part) or "they held nothing"
                messages.success(request, f"{target.username} is deactivated: {held}.")
            return _back_to(target)
    return _user_page(request, pk, deactivate_form=form, status=400)


@never_cache
@require_POST
def user_reactivate_view(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: give a deactivated user their account back, with a reason (nothing they held
    comes back)."""
    target = get_user_for_admin(acting_user=request.user, pk=pk)
    form = ReasonForm(request.POST, prefix="reactivate")
    if form.is_valid():
        try:
            users.user_reactivate(
                user=target, acting_user=request.user, reason=form.cleaned_data["reason"], request=request
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(
                request,
                f"{target.username} is active again. Earlier grants stay ended: they request access anew.",
            )
            return _back_to(target)
    return _user_page(request, pk, reactivate_form=form, status=400)


@never_cache
@require_POST
def user_password_reset_view(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: a new one-time link or password for a local user (shown once); their
    password stops working and their web sessions end."""
    target = get_user_for_admin(acting_user=request.user, pk=pk)
    form = PasswordResetForm(request.POST)
    if form.is_valid():
        try:
            issued = users.user_password_reset(
                acting_user=request.user,
                user=target,
                method=form.cleaned_data["method"],
                email_link=form.cleaned_data["email_link"],
                request=request,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return issued_page(request, issued, reset=True)
    return _user_page(request, pk, reset_form=form, status=400)


# --- A grant's page -------------------------------------------------------------------------


@never_cache
def grant_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One grant (access.selectors.get_grant_for decides who sees it): how to connect, and
    its gateway sessions from recordings, which is why the page is here and not in access."""
    grant = access_selectors.get_grant_for(user=request.user, pk=pk)
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
