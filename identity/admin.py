from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from identity.models import DirectorySyncRun, LdapGroupMapping, User

# What the directory sync owns on a directory user: edits here would be undone by the next run.
DIRECTORY_FIELDS = ("username", "first_name", "last_name", "email", "display_name", "source", "directory_dn")


@admin.register(User)
class PamsiteUserAdmin(UserAdmin):
    list_display = ("username", "display_name", "email", "source", "is_active", "last_login")
    list_filter = ("source", "is_active", "groups")
    search_fields = ("username", "first_name", "last_name", "email", "display_name")
    fieldsets = (
        *UserAdmin.fieldsets,
        (
            "Directory",
            {"fields": ("display_name", "source", "external_id", "directory_dn", "deactivated_reason")},
        ),
    )
    readonly_fields = ("last_login", "date_joined", "external_id", "directory_dn", "deactivated_reason")

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        if obj is not None and obj.source == User.Source.LDAP:
            return (*fields, *DIRECTORY_FIELDS)
        return fields


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(DirectorySyncRun)
class DirectorySyncRunAdmin(ReadOnlyAdmin):
    """The sync's runs (read-only; also on the Directory page)."""

    list_display = ("started_at", "full", "dry_run", "state", "seen", "created", "updated", "deactivated")
    list_filter = ("state", "full", "dry_run", "trigger")


@admin.register(LdapGroupMapping)
class LdapGroupMappingAdmin(ReadOnlyAdmin):
    """Read-only here: pam-admins edit the mapping on the Directory page, where it is audited."""

    list_display = ("group_dn", "role", "created_at", "created_by")
    list_filter = ("role",)
