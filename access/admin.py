"""Configuration of targets, accounts and policies (pam-admins, behind TOTP; every change
audited by pamsite.admin.AuditedModelAdmin)."""

from django.contrib import admin

from access.models import AccessPolicy, Account, Target


class AccountInline(admin.TabularInline):
    model = Account
    extra = 0
    fields = ("slug", "kind", "username", "vault_role", "kv_path", "database_name", "is_active")


@admin.register(Target)
class TargetAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "host", "port", "host_key_fingerprint")
    search_fields = ("name", "host", "description")
    list_filter = ("kind",)
    inlines = [AccountInline]
    # The host key is pinned only through "Pin host key" (fetched, shown, confirmed).
    readonly_fields = ("host_key", "host_key_fingerprint", "host_key_confirmed_by", "host_key_confirmed_at")


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("slug", "target", "kind", "username", "is_active", "emergency_rotation_due_since")
    list_filter = ("kind", "is_active")
    search_fields = ("slug", "username", "target__name")


@admin.register(AccessPolicy)
class AccessPolicyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "approvals_required",
        "max_duration_minutes",
        "ticket_required",
        "allow_reveal",
        "is_active",
    )
    filter_horizontal = ("groups", "accounts", "targets")
