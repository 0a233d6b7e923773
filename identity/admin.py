from django.contrib import admin
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from identity.models import DirectorySyncRun, LdapGroupMapping

# The users themselves (their "Active" box ends grants and sessions too): web/admin.py.


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


# django-otp's own admins show each authenticator's seed (and its QR code) and each user's
# backup codes, and let the admin set a seed of her choosing: replaced by read-only lists
# without secrets. A lost authenticator is reset on the user's page (identity:admin_reset,
# audited); the user enrols the new one herself.
for _model in (TOTPDevice, StaticDevice):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)


@admin.register(TOTPDevice)
class TOTPDeviceAdmin(ReadOnlyAdmin):
    """Who has an authenticator app, and when it was last used: never its seed."""

    list_display = ("user", "name", "confirmed", "created_at", "last_used_at")
    list_filter = ("confirmed",)
    search_fields = ("user__username",)
    fields = ("user", "name", "confirmed", "created_at", "last_used_at")


@admin.register(StaticDevice)
class StaticDeviceAdmin(ReadOnlyAdmin):
    """Who has backup codes and how many are left: never the codes."""

    list_display = ("user", "name", "confirmed", "codes_left")
    search_fields = ("user__username",)
    fields = ("user", "name", "confirmed", "codes_left")
    readonly_fields = ("codes_left",)

    @admin.display(description="codes left")
    def codes_left(self, obj):
        return obj.token_set.count()
