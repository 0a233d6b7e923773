"""Every page needs a password *and* a verified second factor."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from identity.services import mfa_has_confirmed_device

# Pages anyone may open: the first step of login, logout, the load balancer's probe, and an
# invitation link with the page it leads to (which answer only a valid token:
# identity.views.invitation_view, invitation_password_view).
PUBLIC_VIEWS = frozenset(
    {"identity:login", "identity:logout", "healthz", "identity:invitation", "identity:invitation_password"}
)
# Pages for a user who gave the right password but no code yet.
MFA_PENDING_VIEWS = frozenset({"identity:verify", "identity:enrol"})
# The one page (with logout) of a user who signed in with a one-time password and has not
# chosen her own yet (``must_change_password``): before the code step and before enrolment.
FIRST_SIGN_IN_VIEW = "identity:password_new"


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
        if getattr(user, "must_change_password", False):
            if view_name == FIRST_SIGN_IN_VIEW:
                return None
            return _redirect(FIRST_SIGN_IN_VIEW, request)
        if user.is_verified():
            return None
        if view_name in MFA_PENDING_VIEWS:
            return None
        return _redirect(_second_step(user), request)


def _second_step(user) -> str:
    return "identity:verify" if mfa_has_confirmed_device(user=user) else "identity:enrol"


def _redirect(view_name: str, request: HttpRequest) -> HttpResponseRedirect:
    url = reverse(view_name)
    if request.method == "GET" and request.get_full_path() not in ("/", url):
        url += "?" + urlencode({"next": request.get_full_path()})
    return HttpResponseRedirect(url)
