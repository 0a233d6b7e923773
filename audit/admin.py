"""The audit trail in the Django admin: read-only, for whoever holds the view permission."""

from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: nobody adds, changes or deletes an audit event, superusers included."""

    list_display = (
        "sequence",
        "created_at",
        "actor_username",
        "source_ip",
        "action",
        "object_type",
        "object_id",
    )
    ordering = ("-sequence",)
    # No list_filter, search or date hierarchy: each would scan or group the whole table.
    show_full_result_count = False
    actions = None

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
