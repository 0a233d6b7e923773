"""Login (password, then TOTP), enrolment, logout, the user's own account, password and SSH keys,
the invitation link, the Users list, invitations and authenticator resets (pam-admins), the
directory sync's page. One user's page, which shows their grants and sessions too, is web/."""

from __future__ import annotations

import segno
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.password_validation import password_validators_help_texts
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
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

from common.roles import BREAK_GLASS_GROUP, Role, require_role
from identity import directory, lockout, services, users
from identity.forms import (
    AdminResetForm,
    BackupCodesForm,
    CodeForm,
    EnrolForm,
    InviteForm,
    LoginForm,
    NewPasswordForm,
    PasswordChangeForm,
    SelfResetForm,
    SSHKeyForm,
)
from identity.models import LdapGroupMapping, User
from identity.selectors import (
    USER_STATES,
    get_user_for_mfa_reset,
    ssh_keys_for,
    user_filters_from,
    user_search_for,
)
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
    request: HttpRequest,
    *,
    reset_form=None,
    codes_form=None,
    ssh_key_form=None,
    password_form=None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "backup_codes_left": services.mfa_backup_codes_left(user=request.user),
        "reset_form": reset_form or SelfResetForm(),
        "codes_form": codes_form or BackupCodesForm(),
        "ssh_keys": ssh_keys_for(user=request.user),
        "ssh_key_form": ssh_key_form or SSHKeyForm(),
        "password_form": password_form or PasswordChangeForm(),
        "password_help": password_validators_help_texts(),
        "gateway_host": getattr(settings, "GATEWAY_PUBLIC_HOST", "localhost"),
        "gateway_port": getattr(settings, "GATEWAY_PUBLIC_PORT", 2222),
    }
    return render(request, "identity/account.html", context, status=status)


@never_cache
def account_view(request: HttpRequest) -> HttpResponse:
    """The user's own account: password, second factor status, backup codes, reset, SSH keys."""
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


# --- My account: the password ----------------------------------------------------------------


@sensitive_post_parameters("password", "new_password1", "new_password2")
@never_cache
@require_POST
def password_change_view(request: HttpRequest) -> HttpResponse:
    """A local user changes her own password (current one, new one twice); her other web
    sessions end. Directory users are told their password is the directory's."""
    form = PasswordChangeForm(request.POST)
    if form.is_valid():
        try:
            ended = users.password_change(
                request=request,
                user=request.user,
                current_password=form.cleaned_data["password"],
                new_password=form.cleaned_data["new_password1"],
            )
        except users.PasswordChangeRefused as exc:
            lock = exc.lockout or _lock_of(request)
            if lock is not None:
                return lockout_response(request, lock)
            form.add_error("password", str(exc))
        except ValidationError as exc:
            form.add_error("new_password1", exc)
        else:
            ended_text = f" {ended} other web session(s) were signed out." if ended else ""
            messages.success(request, "Your password was changed." + ended_text)
            return HttpResponseRedirect(_account_anchor("password"))
    return _account_page(request, password_form=form, status=400)


# --- The invitation link and the first password ----------------------------------------------


def _quietly(response: HttpResponse) -> HttpResponse:
    """Keep the request's path out of Django's log of 4xx answers: it holds the link's token."""
    response._has_been_logged = True
    return response


def _invitation_refused(request: HttpRequest, exc: users.InvitationRefused) -> HttpResponse:
    status = 404 if exc.reason == "unknown" else 410
    context = {"message": str(exc), "reason": exc.reason}
    return _quietly(render(request, "identity/invitation_refused.html", context, status=status))


INVITATION_SESSION_KEY = "pamsite_invitation"


def _signed_in_refusal(request: HttpRequest) -> HttpResponse:
    context = {"signed_in_as": request.user.username}
    return _quietly(render(request, "identity/invitation_refused.html", context, status=403))


@never_cache
@require_http_methods(["GET", "HEAD"])
def invitation_view(request: HttpRequest, token: str) -> HttpResponse:
    """The invited user's link (no sign-in needed, only a valid token). The link is checked,
    then kept in the browser's session (as its hash) and the browser sent on to the page that
    asks for the password, so that the token is in one request's address only (in no Referer,
    and in no log line written after it). A wrong, used, withdrawn or expired link gets a page
    that says which, and what to do."""
    if request.user.is_authenticated:
        if users.invitation_is_for(token=token, user=request.user):
            # Her own link again (from the e-mail, say) once she is in: nothing to do.
            messages.info(request, "You have used this invitation already: you are signed in.")
            return redirect(settings.LOGIN_REDIRECT_URL)
        return _signed_in_refusal(request)
    try:
        invitation = users.invitation_for_token(token=token)
    except users.InvitationRefused as exc:
        return _invitation_refused(request, exc)
    request.session[INVITATION_SESSION_KEY] = invitation.token_hash
    return redirect("identity:invitation_password")


@sensitive_post_parameters("new_password1", "new_password2")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def invitation_password_view(request: HttpRequest) -> HttpResponse:
    """After the link: the invited user chooses a password, then sets up the authenticator."""
    if request.user.is_authenticated:
        return _signed_in_refusal(request)
    digest = request.session.get(INVITATION_SESSION_KEY, "")
    if not digest:
        message = "Open the link from your invitation first, in this browser: it brings you here."
        return render(request, "identity/invitation_refused.html", {"message": message}, status=400)
    try:
        invitation = users.invitation_for_digest(digest=digest)
    except users.InvitationRefused as exc:
        return _invitation_refused(request, exc)
    form = NewPasswordForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            user = users.invitation_accept(
                digest=digest, password=form.cleaned_data["new_password1"], request=request
            )
        except users.InvitationRefused as exc:
            return _invitation_refused(request, exc)
        except ValidationError as exc:
            form.add_error("new_password1", exc)
        else:
            # The link stood for the password step; the authenticator comes next, as for everyone.
            auth_login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session.pop(INVITATION_SESSION_KEY, None)
            messages.success(request, "Your password is set. Now set up your authenticator app.")
            return redirect(users.next_step_after_password(user))
    context = {
        "invitation": invitation,
        "invited": invitation.user,
        "form": form,
        "password_help": password_validators_help_texts(),
    }
    return render(request, "identity/invitation.html", context, status=400 if form.errors else 200)


@sensitive_post_parameters("new_password1", "new_password2")
@never_cache
@require_http_methods(["GET", "POST"])
def password_new_view(request: HttpRequest) -> HttpResponse:
    """The first password of a user who signed in with a one-time password (every other page
    sends them here until it is done: pamsite.middleware); then the authenticator."""
    user = request.user
    if not user.must_change_password:
        # Her password is her own already (the middleware sent anyone not verified to the code).
        return redirect(_account_anchor("password"))
    if _is_login_step(request.GET.get("next", "")):
        # Sent here on the way to the code or enrolment page: that is where she goes next anyway.
        return redirect("identity:password_new")
    refusal = users.first_password_refusal(user=user)
    if refusal:
        auth_logout(request)
        return render(request, "identity/invitation_refused.html", {"message": refusal}, status=403)
    form = NewPasswordForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            users.password_set_first(
                request=request, user=user, new_password=form.cleaned_data["new_password1"]
            )
        except PermissionDenied as exc:
            auth_logout(request)
            return render(request, "identity/invitation_refused.html", {"message": str(exc)}, status=403)
        except ValidationError as exc:
            form.add_error("new_password1", exc)
        else:
            if user.is_verified():
                messages.success(request, "Your new password is set.")
                return HttpResponseRedirect(_next_url(request))
            messages.success(request, "Your password is set. Now the second step.")
            return redirect(_with_next(users.next_step_after_password(user), request))
    context = {
        "form": form,
        "password_help": password_validators_help_texts(),
        "next": request.GET.get("next", ""),
    }
    return render(request, "identity/password_new.html", context, status=400 if form.errors else 200)


def _is_login_step(path: str) -> bool:
    return any(path.startswith(reverse(name)) for name in ("identity:verify", "identity:enrol"))


# --- The Users pages (pam-admins) ------------------------------------------------------------

USERS_PAGE_SIZE = 50


@never_cache
def user_list_view(request: HttpRequest) -> HttpResponse:
    """pam-admins: users with their roles, source, authenticator, last sign-in and state;
    search by name, username or e-mail, filter by role, state and source, a page at a time."""
    filters = user_filters_from(request.GET)
    found = user_search_for(acting_user=request.user, filters=filters)
    page = Paginator(found, USERS_PAGE_SIZE).get_page(request.GET.get("page"))
    keep = request.GET.copy()
    keep.pop("page", None)
    context = {
        "page": page,
        "filters": filters,
        "query": keep.urlencode(),
        "role_choices": [
            *((r.value, r.value) for r in Role),
            (BREAK_GLASS_GROUP, BREAK_GLASS_GROUP),
            ("none", "no role"),
        ],
        "state_choices": list(USER_STATES.items()),
        "source_choices": User.Source.choices,
        "locked": lockout.locked_usernames(u.username for u in page),
    }
    return render(request, "identity/user_list.html", context)


def issued_page(request: HttpRequest, issued: users.IssuedInvitation, *, reset: bool) -> HttpResponse:
    context = {
        "issued": issued,
        "invited": issued.invitation.user,
        "reset": reset,
        "login_url": settings.PAMSITE_BASE_URL.rstrip("/") + reverse("identity:login"),
    }
    return render(request, "identity/invitation_issued.html", context)


@never_cache
@require_http_methods(["GET", "POST"])
def user_invite_view(request: HttpRequest) -> HttpResponse:
    """pam-admins: invite a local user; the one-time link or password is shown once."""
    require_role(request.user, Role.PAM_ADMIN)
    form = InviteForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            issued = users.user_invite(
                acting_user=request.user,
                username=data["username"],
                first_name=data["first_name"],
                last_name=data["last_name"],
                email=data["email"],
                roles=set(data["roles"]),
                method=data["method"],
                email_link=data["email_link"],
                request=request,
            )
        except ValidationError as exc:
            form.add_error(None, exc)  # a dict's messages go to the fields they name
        else:
            return issued_page(request, issued, reset=False)
    context = {"form": form, "lifetime_hours": settings.INVITATION_LIFETIME_HOURS}
    return render(request, "identity/user_invite.html", context, status=400 if form.errors else 200)


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
        return redirect("identity:user", pk=target.pk)
    return render(request, "identity/admin_reset.html", {"target": target, "form": form})
