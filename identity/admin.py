from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.core.exceptions import ValidationError
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from identity.models import DirectorySyncRun, LdapGroupMapping, User

# What the directory sync owns on a directory user: edits here would be undone by the next run.
DIRECTORY_FIELDS = ("username", "first_name", "last_name", "email", "display_name", "source", "directory_dn")


class PamsiteUserChangeForm(UserChangeForm):
    """The user form with the reason the "Active" box needs when it changes: unticking it
    deactivates the user through the one service every path uses (grants revoked, sessions
    cut), ticking it reactivates them (access.services.user_deactivate / user_reactivate)."""

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
        from access.services import REASON_MIN, user_reactivation_refusal

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
        from identity.users import roles_managed_by_directory

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
        from access import services as access_services

        # Everything else is saved as it was sent; the activation goes through the service.
        wanted = obj.is_active
        obj.is_active = not wanted
        super().save_model(request, obj, form, change)
        reason = form.cleaned_data["status_reason"]
        try:
            if wanted:
                access_services.user_reactivate(
                    user=obj, acting_user=request.user, reason=reason, request=request, via="configuration"
                )
            else:
                access_services.user_deactivate(
                    user=obj, acting_user=request.user, reason=reason, request=request, via="configuration"
                )
        except ValidationError as exc:  # checked by the form already; a race otherwise
            raise ValidationError(exc.messages) from None

    def user_change_password(self, request, id, form_url=""):
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and response.status_code == 302:
            from audit.services import audit_record

            audit_record(
                action="config.changed",
                request=request,
                obj=User.objects.get(pk=id),
                details={"fields": ["password"]},
            )
        return response


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
