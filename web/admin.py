"""The Configuration pages' users: the "Active" box deactivates through the service that ends
everything the person holds (grants, requests, gateway sessions), so this admin sits above
every layer."""

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.core.exceptions import ValidationError

from audit.services import audit_record
from identity import users
from identity.models import User
from identity.users import REASON_MIN, roles_managed_by_directory, user_reactivation_refusal
from web import services

# What the directory sync owns on a directory user: edits here would be undone by the next run.
DIRECTORY_FIELDS = ("username", "first_name", "last_name", "email", "display_name", "source", "directory_dn")


class PamsiteUserChangeForm(UserChangeForm):
    """The user form with the reason the "Active" box needs when it changes: unticking it
    deactivates the user through the one service every path uses (grants revoked, sessions
    cut), ticking it reactivates them (web.services.user_deactivate / identity.users.user_reactivate)."""

    status_reason = forms.CharField(
        label="Reason for deactivating or reactivating",
        required=False,
        max_length=500,
        help_text="Needed when you change “Active”: kept in the audit trail, and shown to the user if "
        "they are connected through the gateway. Deactivating revokes their grants, cuts their "
        "gateway sessions, cancels their requests and ends their web sessions.",
    )
    acting_user = None  # set by PamsiteUserAdmin.get_form

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is None or "is_active" not in self.changed_data:
            return cleaned
        reason = " ".join((cleaned.get("status_reason") or "").split())
        if len(reason) < REASON_MIN:
            self.add_error(
                "status_reason", "Give the reason (at least 5 characters): it is kept in the audit trail."
            )
        if cleaned.get("is_active"):
            refusal = user_reactivation_refusal(user=User.objects.get(pk=self.instance.pk))
            if refusal:
                self.add_error("is_active", refusal)
        elif self.acting_user is not None and self.acting_user.pk == self.instance.pk:
            self.add_error("is_active", "You cannot deactivate yourself: another pam-admin must.")
        return cleaned


@admin.register(User)
class PamsiteUserAdmin(UserAdmin):
    """Users in the Configuration pages (the Users page is the everyday one). The "Active" box
    goes through the deactivation service; a directory user's roles (groups) are read-only
    while a directory is configured, since every sync sets them from the mapped groups."""

    form = PamsiteUserChangeForm
    list_display = ("username", "display_name", "email", "source", "is_active", "last_login")
    list_filter = ("source", "is_active", "groups")
    search_fields = ("username", "first_name", "last_name", "email", "display_name")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Active", {"fields": ("is_active", "status_reason", "deactivated_reason", "deactivated_at")}),
        ("Permissions", {"fields": ("is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
        ("Directory", {"fields": ("display_name", "source", "external_id", "directory_dn")}),
    )
    readonly_fields = (
        "last_login",
        "date_joined",
        "external_id",
        "directory_dn",
        "deactivated_reason",
        "deactivated_at",
    )
    # The "Active" box is audited by the deactivation service, not as a field change here.
    audited_by_service = ("is_active", "status_reason")

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        if obj is not None and obj.source == User.Source.LDAP:
            fields = (*fields, *DIRECTORY_FIELDS)
            if roles_managed_by_directory(obj):
                fields = (*fields, "groups")
        return fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if issubclass(form, PamsiteUserChangeForm):
            form.acting_user = request.user
        return form

    def save_model(self, request, obj, form, change):
        if not (change and "is_active" in form.changed_data):
            super().save_model(request, obj, form, change)
            return
        # Everything else is saved as it was sent; the activation goes through the service.
        wanted = obj.is_active
        obj.is_active = not wanted
        super().save_model(request, obj, form, change)
        reason = form.cleaned_data["status_reason"]
        try:
            if wanted:
                users.user_reactivate(
                    user=obj, acting_user=request.user, reason=reason, request=request, via="configuration"
                )
            else:
                services.user_deactivate(
                    user=obj, acting_user=request.user, reason=reason, request=request, via="configuration"
                )
        except ValidationError as exc:  # checked by the form already; a race otherwise
            raise ValidationError(exc.messages) from None

    def user_change_password(self, request, id, form_url=""):
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and response.status_code == 302:
            audit_record(
                action="config.changed",
                request=request,
                obj=User.objects.get(pk=id),
                details={"fields": ["password"]},
            )
        return response
