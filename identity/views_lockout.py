"""pam-admins: the usernames and addresses whose sign-in is locked now, and unlocking them."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from common.roles import Role, require_role
from identity import lockout
from identity.models import LoginLock


class LockoutReleaseForm(forms.Form):
    scope = forms.ChoiceField(choices=LoginLock.Scope.choices)
    value = forms.CharField(max_length=150)


@never_cache
@require_http_methods(["GET", "HEAD"])
def lockouts_view(request: HttpRequest) -> HttpResponse:
    """pam-admins: what is locked now, until when, the failures that locked it; Unlock buttons."""
    require_role(request.user, Role.PAM_ADMIN)
    locks = lockout.lockouts_for(acting_user=request.user)
    now = timezone.now()
    rows = [
        {
            "lock": row,
            "until_text": lockout.local_time_text(row.locked_until),
            "seconds_left": max(1, int((row.locked_until - now).total_seconds())),
        }
        for row in locks
    ]
    context = {
        "rows": rows,
        "failure_limit": settings.LOGIN_FAILURE_LIMIT,
        "lockout_minutes": settings.LOGIN_LOCKOUT_MINUTES,
        "by_ip": settings.LOGIN_LOCKOUT_BY_IP,
        "address_limit": settings.LOGIN_ADDRESS_FAILURE_LIMIT,
        "address_usernames": settings.LOGIN_ADDRESS_USERNAMES,
    }
    return render(request, "identity/lockouts.html", context)


def _back(request: HttpRequest) -> HttpResponse:
    """Back to the page the Unlock button was on (``next``: a local path only), else this one."""
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(back)
    return redirect("identity:lockouts")


@never_cache
@require_POST
def lockout_release_view(request: HttpRequest) -> HttpResponse:
    """pam-admins: unlock one username or address now (audited ``auth.lockout.released``).

    POST ``scope`` ("username" or "address"), ``value``, optionally ``next`` (a local path to
    go back to, e.g. the Users page's); then back there with a message.
    """
    require_role(request.user, Role.PAM_ADMIN)
    form = LockoutReleaseForm(request.POST)
    if not form.is_valid():
        messages.error(
            request, "Nothing was unlocked: use the Unlock button of a locked username or address."
        )
        return _back(request)
    try:
        row = lockout.lockout_release(
            acting_user=request.user,
            scope=form.cleaned_data["scope"],
            value=form.cleaned_data["value"],
            request=request,
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        if row.scope == LoginLock.Scope.USERNAME:
            messages.success(request, f"Unlocked {row.value}: sign-in as {row.value} works again now.")
        else:
            messages.success(request, f"Unlocked the address {row.value}: sign-in from it works again now.")
    return _back(request)
