"""Authentication backends: model permissions follow the pam-admin role; directory logins."""

from __future__ import annotations

import logging

from django_auth_ldap.backend import LDAPBackend
from django_auth_ldap.config import LDAPSettings

from common.roles import Role, has_role
from identity import ldap_client
from identity.directory import DirectoryLoginRefused, directory_login_user
from identity.ldap_client import DirectoryError
from identity.models import User

logger = logging.getLogger(__name__)


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


class DirectoryBackend(LDAPBackend):
    """Password login against the directory (LDAP / Active Directory), with django-auth-ldap.

    Configured from the LDAP_* settings (identity.ldap_client.auth_ldap_settings): the
    user's DN is searched as the sync account with the typed username escaped into the
    filter, the password checked by binding as that DN, through the same fail-over and
    LDAP_TIMEOUT as the sync (a directory that is down or hangs fails within the timeout and
    the next backend, ModelBackend, is asked). The pamsite user is the one whose
    ``external_id`` is the entry's stable id (identity.directory.directory_login_user):
    created on a first login if the sync has not yet, updated as a sync would; never a user
    found by username alone, so a directory account can never log in as a local one. TOTP
    follows, as for everyone.

    Usernames of local users are never sent to the directory: a local pam-admin logs in
    even while it is down. Deactivated users are refused here and in ``get_user`` (their
    web sessions end).
    """

    def __init__(self):
        self._config = ldap_client.get_config()

    @property
    def settings(self):
        if self._settings is None:
            # A prefix no setting has: every value comes from the defaults given here.
            self._settings = LDAPSettings(
                "PAMSITE_DIRECTORY_BACKEND_", ldap_client.auth_ldap_settings(self._config)
            )
        return self._settings

    @settings.setter
    def settings(self, value):
        self._settings = value

    @property
    def ldap(self):
        if self._ldap is None:
            self._ldap = ldap_client.auth_ldap_module(self._config)
        return self._ldap

    def authenticate(self, request, username=None, password=None, **kwargs):
        if not self._config.enabled or not username or not password:
            return None
        username = username.strip()
        if User.objects.filter(username__iexact=username).exclude(source=User.Source.LDAP).exists():
            return None
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None or not user.is_active:
            return None
        return user

    def get_or_build_user(self, username, ldap_user):
        try:
            return directory_login_user(dn=ldap_user.dn), False
        except (DirectoryLoginRefused, DirectoryError) as exc:
            logger.warning("LDAP login of %r refused: %s", username[:150], exc)
            raise ldap_user.AuthenticationFailed(str(exc)) from None

    def get_user(self, user_id):
        return User.objects.filter(pk=user_id, is_active=True).first()

    # Permissions come from roles (RolePermissionBackend), never from directory groups.
    def has_perm(self, user, perm, obj=None) -> bool:
        return False

    def has_module_perms(self, user, app_label) -> bool:
        return False

    def get_all_permissions(self, user, obj=None) -> set:
        return set()

    def get_group_permissions(self, user, obj=None) -> set:
        return set()
