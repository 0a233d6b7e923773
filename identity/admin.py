from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from identity.models import User


@admin.register(User)
class PamsiteUserAdmin(UserAdmin):
    list_display = ("username", "display_name", "email", "source", "is_active", "last_login")
    list_filter = ("source", "is_active", "groups")
    fieldsets = (
        *UserAdmin.fieldsets,
        ("Directory", {"fields": ("display_name", "source", "external_id")}),
    )
    readonly_fields = ("last_login", "date_joined", "external_id")
