"""Configuration of targets, accounts and policies (pam-admins, behind TOTP)."""

from django.contrib import admin

from access.models import AccessPolicy, Account, Target
from audit.services import audit_record


class AuditedAdmin(admin.ModelAdmin):
    """Every configuration change made here goes in the audit trail."""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit_record(
            action="config.changed" if change else "config.created",
            request=request,
            obj=obj,
            details={"fields": sorted(form.changed_data)},
        )

    def delete_model(self, request, obj):
        audit_record(action="config.deleted", request=request, obj=obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


class AccountInline(admin.TabularInline):
    model = Account
    extra = 0
    fields = ("slug", "kind", "username", "vault_role", "kv_path", "database_name", "is_active")


@admin.register(Target)
class TargetAdmin(AuditedAdmin):
    list_display = ("name", "kind", "host", "port", "host_key_fingerprint")
    search_fields = ("name", "host", "description")
    list_filter = ("kind",)
    inlines = [AccountInline]
    # The host key is pinned only through "Pin host key" (fetched, shown, confirmed).
    readonly_fields = ("host_key", "host_key_fingerprint", "host_key_confirmed_by", "host_key_confirmed_at")


@admin.register(Account)
class AccountAdmin(AuditedAdmin):
    list_display = ("slug", "target", "kind", "username", "is_active")
    list_filter = ("kind", "is_active")
    search_fields = ("slug", "username", "target__name")


@admin.register(AccessPolicy)
class AccessPolicyAdmin(AuditedAdmin):
    list_display = (
        "name",
        "approvals_required",
        "max_duration_minutes",
        "ticket_required",
        "allow_reveal",
        "is_active",
    )
    filter_horizontal = ("groups", "accounts", "targets")
