"""The Django admin ("Configuration") for pam-admins, behind the same password + TOTP login."""

from __future__ import annotations

from functools import update_wrapper

from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from identity.roles import Role, has_role


class PamsiteAdminSite(AdminSite):
    site_header = "pamsite configuration"
    site_title = "pamsite configuration"
    index_title = "Configuration"

    def has_permission(self, request: HttpRequest) -> bool:
        """Open to active pam-admins whose session is verified with TOTP; to no one else."""
        user = request.user
        return bool(user.is_active and user.is_verified() and has_role(user, Role.PAM_ADMIN))

    def admin_view(self, view, cacheable=False):
        inner = super().admin_view(view, cacheable)

        def wrapper(request, *args, **kwargs):
            # A signed-in user without the role gets a clear 403, not the admin's
            # own login form (sign-in happens only on pamsite's login pages).
            if request.user.is_authenticated and not self.has_permission(request):
                raise PermissionDenied("The configuration pages are for pam-admins.")
            return inner(request, *args, **kwargs)

        return update_wrapper(wrapper, view)


class PamsiteAdminConfig(AdminConfig):
    default_site = "pamsite.admin.PamsiteAdminSite"
