"""Gateway sessions and recordings in the Django admin: read-only evidence.

The gateway writes these rows; nobody adds, changes or deletes one here, superusers
included (a recording's row holds the sha256 and signature that prove its file intact).
"""

from django.contrib import admin

from recordings.models import GatewaySession, Recording


class _ReadOnly(admin.ModelAdmin):
    show_full_result_count = False
    actions = None

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RecordingInline(admin.TabularInline):
    model = Recording
    fields = ("channel", "kind", "path", "size", "sha256", "finalized_at", "interrupted")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(GatewaySession)
class SessionAdmin(_ReadOnly):
    list_display = (
        "pk",
        "user",
        "account",
        "client_address",
        "gateway_node",
        "started_at",
        "ended_at",
        "end_reason",
    )
    list_select_related = ("user",)
    ordering = ("-started_at",)
    inlines = (RecordingInline,)


@admin.register(Recording)
class RecordingAdmin(_ReadOnly):
    list_display = ("pk", "session", "channel", "kind", "size", "finalized_at", "interrupted")
    list_select_related = ("session__user",)
    ordering = ("-pk",)
