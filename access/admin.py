"""Configuration of targets, accounts and policies for rare cases (pam-admins, behind TOTP;
every change audited by pamsite.admin.AuditedModelAdmin). Daily work is on the Targets and
Policies pages (access/views.py)."""

from django.contrib import admin

from access import services
from access.models import AccessPolicy, Account, Target


class AccountInline(admin.TabularInline):
    model = Account
    extra = 0
    fields = ("slug", "kind", "username", "vault_role", "kv_path", "database_name", "is_active")
    # Deactivation revokes live grants: only the account's own page (or the Account admin,
    # which routes the box through access.services) changes it.
    readonly_fields = ("is_active",)


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
    readonly_fields = ("last_test_at", "last_test_ok", "last_test_message")

    def save_model(self, request, obj, form, change):
        """The ``is_active`` box goes through account_deactivate / account_reactivate, as the
        account's page does: unticking it revokes the account's live grants."""
        wanted = obj.is_active
        if change and "is_active" in form.changed_data:
            obj.is_active = not wanted  # saved as it was; the service changes it
        super().save_model(request, obj, form, change)
        if change and "is_active" in form.changed_data:
            done = "made active" if wanted else "made inactive"
            reason = f"{done} in the Configuration admin by {request.user.get_username()}"
            change_activation = services.account_reactivate if wanted else services.account_deactivate
            change_activation(
                account=obj, acting_user=request.user, reason=reason, http_request=request, via="admin"
            )
            obj.refresh_from_db()


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
