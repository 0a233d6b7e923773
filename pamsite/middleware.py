"""Every page needs a password *and* a verified second factor."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

# Pages anyone may open: the first step of login, logout and the load balancer's probe.
PUBLIC_VIEWS = frozenset({"identity:login", "identity:logout", "healthz"})
# Pages for a user who gave the right password but no code yet.
MFA_PENDING_VIEWS = frozenset({"identity:verify", "identity:enrol"})


class MFARequiredMiddleware:
    """Refuse every view but the login pages to a session not verified with TOTP.

    Sits after django-otp's OTPMiddleware (which sets ``request.user.is_verified``).
    The decision is made on the resolved view name, so a view added later is
    protected unless it is named here.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs):
        view_name = request.resolver_match.view_name if request.resolver_match else ""
        if view_name in PUBLIC_VIEWS:
            return None
        user = request.user
        if not user.is_authenticated:
            return _redirect("identity:login", request)
        if not user.is_active:
            logout(request)
            return _redirect("identity:login", request)
        if user.is_verified():
            return None
        if view_name in MFA_PENDING_VIEWS:
            return None
        from identity.services import mfa_has_confirmed_device

        target = "identity:verify" if mfa_has_confirmed_device(user=user) else "identity:enrol"
        return _redirect(target, request)


def _redirect(view_name: str, request: HttpRequest) -> HttpResponseRedirect:
    url = reverse(view_name)
    if request.method == "GET" and request.get_full_path() not in ("/", url):
        url += "?" + urlencode({"next": request.get_full_path()})
    return HttpResponseRedirect(url)
