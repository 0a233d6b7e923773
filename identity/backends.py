"""Model permissions follow the pam-admin role (used by the configuration pages)."""

from __future__ import annotations

from identity.roles import Role, has_role


class RolePermissionBackend:
    """Grants every model permission to active pam-admins; authenticates no one.

    Roles are the one source of authority in pamsite, so no per-user or per-group
    Django permission needs keeping in step with them. Read-only models (the audit
    trail) refuse changes in their ModelAdmin whatever the permission says.
    """

    def authenticate(self, request, **credentials):
        return None

    def has_perm(self, user_obj, perm, obj=None) -> bool:
        return has_role(user_obj, Role.PAM_ADMIN)

    def has_module_perms(self, user_obj, app_label) -> bool:
        return has_role(user_obj, Role.PAM_ADMIN)
