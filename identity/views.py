"""Login (password, then TOTP), enrolment, logout, the user's own account and SSH keys, user admin,
the directory sync's page."""

from __future__ import annotations

import segno
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from identity import directory, lockout, services
from identity.forms import (
    AdminResetForm,
    BackupCodesForm,
    CodeForm,
    EnrolForm,
    LoginForm,
    SelfResetForm,
    SSHKeyForm,
)
from identity.models import LdapGroupMapping
from identity.selectors import get_user_for_mfa_reset, ssh_keys_for, users_for
from identity.ssh_keys import PublicKeyError, parse_public_key


def _next_url(request: HttpRequest) -> str:
    """The page to go to after login: a local path only (no open redirect)."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse(settings.LOGIN_REDIRECT_URL)


def _with_next(view_name: str, request: HttpRequest) -> str:
    url = reverse(view_name)
    nxt = request.POST.get("next") or request.GET.get("next")
    if nxt and url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}):
        from urllib.parse import urlencode

        url += "?" + urlencode({"next": nxt})
    return url


def lockout_response(request: HttpRequest, lock: lockout.Lockout) -> HttpResponse:
    """Shown instead of the sign-in pages while the username or the address is locked: which,
    and until when. A half-signed-in session ends."""
    if request.user.is_authenticated:
        auth_logout(request)
    return render(request, "identity/locked.html", {"lock": lock}, status=429)


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    """First step: username and password."""
    if request.user.is_authenticated:
        if request.user.is_verified():
            return HttpResponseRedirect(_next_url(request))
        return redirect(_with_next("identity:verify", request))
    form = LoginForm(request, data=request.POST or None)
    if request.method == "POST":
        username = _typed_username(request)
        lock = lockout.lockout_for(request=request, username=username)
        if lock is not None:
            services.record_login_failure(request=request, username=username, locked_out=True)
            return lockout_response(request, lock)
        if form.is_valid():
            user = form.get_user()
            auth_login(request, user)  # new session key: no fixation
            services.record_password_ok(request=request, user=user)
            target = "identity:verify" if services.mfa_has_confirmed_device(user=user) else "identity:enrol"
            return redirect(_with_next(target, request))
        # Locked a moment ago by another process (the backend refused): not counted again.
        lock = getattr(request, "login_lockout", None)
        services.record_login_failure(request=request, username=username, locked_out=lock is not None)
        if lock is None and form.has_error(NON_FIELD_ERRORS, "invalid_login"):
            # The password was checked and refused (a form missing a field checks nothing).
            lock = lockout.failure_record(request=request, username=username)
        if lock is not None:
            return lockout_response(request, lock)
    return render(request, "identity/login.html", {"form": form, "next": request.GET.get("next", "")})


def _typed_username(request: HttpRequest) -> str:
    """The username as typed, for the audit trail: as much as it keeps, without NUL (which
    PostgreSQL cannot store or even look up; the form refused it already)."""
    return request.POST.get("username", "")[:150].replace("\x00", "\ufffd")


def _lock_of(request: HttpRequest) -> lockout.Lockout | None:
    return lockout.lockout_for(request=request, username=request.user.username)


@sensitive_post_parameters("code")
@never_cache
@require_http_methods(["GET", "POST"])
def verify_view(request: HttpRequest) -> HttpResponse:
    """Second step: a TOTP code (or a backup code) for a user who gave the right password."""
    user = request.user
    if user.is_verified():
        return HttpResponseRedirect(_next_url(request))
    if not services.mfa_has_confirmed_device(user=user):
        return redirect(_with_next("identity:enrol", request))
    lock = _lock_of(request)
    if lock is not None:
        return lockout_response(request, lock)
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            result = services.mfa_verify(request=request, user=user, code=form.cleaned_data["code"])
        except services.MFAError as exc:
            if exc.lockout is not None:
                return lockout_response(request, exc.lockout)
            form.add_error("code", str(exc))
        else:
            if result.backup_codes_left is not None:
                level = messages.WARNING if result.backup_codes_left <= 3 else messages.INFO
                messages.add_message(
                    request,
                    level,
                    f"You signed in with a backup code; {result.backup_codes_left} left. "
                    "Make new ones from My account if you are running out.",
                )
            return HttpResponseRedirect(_next_url(request))
    return render(request, "identity/verify.html", {"form": form, "next": request.GET.get("next", "")})


def _qr_svg(data: str) -> str:
    """The QR code as inline SVG, rendered here (no third-party service sees the secret)."""
    qr = segno.make(data, error="m")
    return qr.svg_inline(scale=5, border=2, dark="#102a43", light="#ffffff")


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@sensitive_post_parameters("code")
@never_cache
@require_http_methods(["GET", "POST"])
def enrol_view(request: HttpRequest) -> HttpResponse:
    """Enrol an authenticator app: QR code and secret, confirm with a code, get backup codes."""
    user = request.user
    if services.mfa_has_confirmed_device(user=user):
        # A second device is never added by someone who only knows the password.
        if user.is_verified():
            return redirect("identity:account")
        return redirect(_with_next("identity:verify", request))
    lock = _lock_of(request)
    if lock is not None:
        # Enrolment completes a sign-in: a lock that started after the password step holds here too.
        return lockout_response(request, lock)
    device = services.mfa_start_enrolment(user=user)
    form = EnrolForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            codes = services.mfa_confirm_enrolment(request=request, user=user, code=form.cleaned_data["code"])
        except services.MFAError as exc:
            form.add_error("code", str(exc))
        else:
            return render(
                request,
                "identity/backup_codes.html",
                {"codes": codes, "continue_url": _next_url(request), "first_time": True},
            )
    from base64 import b32encode

    secret = b32encode(device.bin_key).decode("ascii").rstrip("=")
    context = {
        "form": form,
        # segno's SVG output is generated markup with no user input in it.
        "qr_svg": mark_safe(_qr_svg(device.config_url)),  # noqa: S308  # nosec B308 B703
        "secret": _grouped(secret),
        "issuer": settings.OTP_TOTP_ISSUER,
        "next": request.GET.get("next", ""),
    }
    return render(request, "identity/enrol.html", context)


@never_cache
@require_http_methods(["GET", "POST"])
def logout_view(request: HttpRequest) -> HttpResponse:
    """Sign out (POST); GET shows a button, so a link or an image cannot sign anyone out."""
    if request.method == "POST":
        if request.user.is_authenticated:
            services.record_logout(request=request, user=request.user)
        auth_logout(request)
        messages.info(request, "You have signed out.")
        return redirect("identity:login")
    return render(request, "identity/logout.html")


def _account_page(
    request: HttpRequest, *, reset_form=None, codes_form=None, ssh_key_form=None, status: int = 200
) -> HttpResponse:
    context = {
        "backup_codes_left": services.mfa_backup_codes_left(user=request.user),
        "reset_form": reset_form or SelfResetForm(),
        "codes_form": codes_form or BackupCodesForm(),
        "ssh_keys": ssh_keys_for(user=request.user),
        "ssh_key_form": ssh_key_form or SSHKeyForm(),
        "gateway_host": getattr(settings, "GATEWAY_PUBLIC_HOST", "localhost"),
        "gateway_port": getattr(settings, "GATEWAY_PUBLIC_PORT", 2222),
    }
    return render(request, "identity/account.html", context, status=status)


@never_cache
def account_view(request: HttpRequest) -> HttpResponse:
    """The user's own account: second factor status, backup codes, reset, SSH keys."""
    return _account_page(request)


def _account_anchor(fragment: str) -> str:
    return reverse("identity:account") + "#" + fragment


@sensitive_post_parameters("public_key")
@never_cache
@require_POST
def ssh_key_add_view(request: HttpRequest) -> HttpResponse:
    """Register a public key for the SSH gateway (the line of the user's .pub file)."""
    form = SSHKeyForm(request.POST)
    if form.is_valid():
        try:
            key = services.ssh_key_add(
                user=request.user,
                name=form.cleaned_data["name"],
                public_key_line=form.cleaned_data["public_key"],
                request=request,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"SSH key “{key.name}” added ({key.fingerprint}).")
            return HttpResponseRedirect(_account_anchor("ssh-keys"))
    _withhold_private_key(form)
    return _account_page(request, ssh_key_form=form, status=400)


def _withhold_private_key(form: SSHKeyForm) -> None:
    """Never send a pasted private key back to the browser in the form, whatever else was
    wrong with the post (a bad name fails the form before the key is looked at)."""
    try:
        parse_public_key(form.data.get("public_key", ""))
    except PublicKeyError as exc:
        if exc.code != "private_key":
            return
        if not form.has_error("public_key", "private_key"):
            form.add_error("public_key", ValidationError(str(exc), code="private_key"))
        form.data = form.data.copy()
        form.data["public_key"] = ""


@never_cache
@require_POST
def ssh_key_remove_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Remove one of the user's own SSH keys (anyone else's: 404)."""
    key = services.ssh_key_remove(user=request.user, key_pk=pk, request=request)
    messages.success(request, f"SSH key “{key.name}” removed: the gateway no longer accepts it.")
    return HttpResponseRedirect(_account_anchor("ssh-keys"))


@sensitive_post_parameters("password", "code")
@never_cache
@require_POST
def self_reset_view(request: HttpRequest) -> HttpResponse:
    """Remove one's own authenticator after a fresh password and code, then enrol again."""
    user = request.user
    form = SelfResetForm(request.POST)
    if form.is_valid():
        try:
            services.mfa_self_reset(
                request=request,
                user=user,
                password=form.cleaned_data["password"],
                code=form.cleaned_data["code"],
            )
        except services.MFAError as exc:
            if exc.lockout is not None:
                return lockout_response(request, exc.lockout)
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Your authenticator was removed. Set up the new one now.")
            return redirect("identity:enrol")
    return _account_page(request, reset_form=form, status=400)


@sensitive_post_parameters("code")
@never_cache
@require_POST
def backup_codes_view(request: HttpRequest) -> HttpResponse:
    """New backup codes after a fresh TOTP code; the old ones stop working."""
    user = request.user
    form = BackupCodesForm(request.POST)
    if form.is_valid():
        try:
            codes = services.mfa_regenerate_backup_codes(
                request=request, user=user, code=form.cleaned_data["code"]
            )
        except services.MFAError as exc:
            form.add_error("code", str(exc))
        else:
            return render(
                request,
                "identity/backup_codes.html",
                {"codes": codes, "continue_url": reverse("identity:account"), "first_time": False},
            )
    return _account_page(request, codes_form=form, status=400)


@never_cache
def user_list_view(request: HttpRequest) -> HttpResponse:
    """pam-admins: every user, their roles and whether they have enrolled TOTP."""
    page = Paginator(users_for(acting_user=request.user), 50).get_page(request.GET.get("page"))
    return render(request, "identity/user_list.html", {"page": page})


@never_cache
@require_http_methods(["GET", "POST"])
def admin_reset_view(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: remove another user's authenticator (lost or replaced phone)."""
    target = get_user_for_mfa_reset(acting_user=request.user, pk=pk)
    form = AdminResetForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        ended = services.mfa_admin_reset(
            request=request, acting_user=request.user, user=target, reason=form.cleaned_data["reason"]
        )
        messages.success(
            request,
            f"{target.username}'s authenticator was removed and {ended} web session(s) ended. "
            "They will set up a new one at their next sign-in.",
        )
        return redirect("identity:users")
    return render(request, "identity/admin_reset.html", {"target": target, "form": form})


class GroupMappingForm(forms.Form):
    group_dn = forms.CharField(
        label="Directory group (DN)",
        max_length=1000,
        widget=forms.TextInput(attrs={"placeholder": "cn=pacs-admins,ou=groups,dc=hospital,dc=example"}),
    )
    role = forms.ChoiceField(label="gives the role", choices=LdapGroupMapping.ROLE_CHOICES)


def _directory_page(request: HttpRequest, *, form=None, status: int = 200) -> HttpResponse:
    overview = directory.directory_overview_for(acting_user=request.user)
    context = {
        "overview": overview,
        "config": overview.config,
        "form": form or GroupMappingForm(),
        "interval": settings.LDAP_SYNC_INTERVAL_MINUTES,
        "full_interval": settings.LDAP_SYNC_FULL_INTERVAL_HOURS,
        "max_deactivate": settings.LDAP_SYNC_MAX_DEACTIVATE,
        "max_deactivate_percent": settings.LDAP_SYNC_MAX_DEACTIVATE_PERCENT,
    }
    return render(request, "identity/directory.html", context, status=status)


@never_cache
@require_http_methods(["GET", "HEAD"])
def directory_view(request: HttpRequest) -> HttpResponse:
    """pam-admins: the directory sync's last runs, and the group → role mapping editor."""
    return _directory_page(request)


@never_cache
@require_POST
def directory_mapping_add_view(request: HttpRequest) -> HttpResponse:
    """pam-admins: map a directory group to a role (audited; the next sync applies it)."""
    form = GroupMappingForm(request.POST)
    if form.is_valid():
        try:
            mapping = directory.group_mapping_add(
                acting_user=request.user,
                group_dn=form.cleaned_data["group_dn"],
                role=form.cleaned_data["role"],
                request=request,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(
                request, f"Members of {mapping.group_dn} get the role {mapping.role} from the next sync."
            )
            return redirect("identity:directory")
    return _directory_page(request, form=form, status=400)


@never_cache
@require_POST
def directory_mapping_remove_view(request: HttpRequest, pk: int) -> HttpResponse:
    """pam-admins: remove a group → role row (audited; the next sync takes the role away)."""
    try:
        directory.group_mapping_remove(acting_user=request.user, mapping_pk=pk, request=request)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, "Mapping removed: the next sync takes the role from the group's members.")
    return redirect("identity:directory")
