"""The Django admin ("Configuration") for pam-admins, behind the same password + TOTP login."""

from __future__ import annotations

from functools import update_wrapper

from django.contrib.admin import AdminSite, ModelAdmin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from audit.services import audit_record
from common.roles import Role, has_role


class AuditedModelAdmin:
    """Mixed into every model admin of the site (``PamsiteAdminSite.register``): each object
    added, changed (its many-to-many fields, a user's groups, included) or deleted in the admin
    is an event of the hash-chained audit trail, with the names of the fields changed (never
    their values). The admin's own history (LogEntry) is not tamper-evident; this is."""

    def save_model(self, request, obj, form, change):
        if change and hasattr(obj, "groups"):
            # The groups as they were: they are saved after the object (save_related).
            request._pamsite_groups_before = sorted(
                type(obj).objects.get(pk=obj.pk).groups.values_list("name", flat=True)
            )
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        obj = form.instance
        # Fields whose change a service audits itself (a user's "Active" box: the deactivation
        # service), named by the model admin: left out here, so each change is audited once.
        by_service = set(getattr(self, "audited_by_service", ()))
        fields = sorted(f for f in form.changed_data if f not in by_service)
        for formset in formsets:
            if formset.has_changed():
                fields.append(formset.prefix)
        if change and not fields and set(form.changed_data) & by_service:
            return
        details = {"fields": fields}
        if hasattr(obj, "groups"):
            details["groups"] = sorted(obj.groups.values_list("name", flat=True))
            if change:
                details["groups_before"] = getattr(request, "_pamsite_groups_before", [])
        audit_record(
            action="config.changed" if change else "config.created", request=request, obj=obj, details=details
        )

    def delete_model(self, request, obj):
        audit_record(action="config.deleted", request=request, obj=obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


class PamsiteAdminSite(AdminSite):
    site_header = "pamsite configuration"
    site_title = "pamsite configuration"
    index_title = "Configuration"

    def has_permission(self, request: HttpRequest) -> bool:
        """Open to active pam-admins whose session is verified with TOTP; to no one else."""
        user = request.user
        return bool(user.is_active and user.is_verified() and has_role(user, Role.PAM_ADMIN))

    def register(self, model_or_iterable, admin_class=None, **options):
        """Every model admin registered here is audited (``AuditedModelAdmin``)."""
        admin_class = admin_class or ModelAdmin
        if not issubclass(admin_class, AuditedModelAdmin):
            admin_class = type(
                admin_class.__name__,
                (AuditedModelAdmin, admin_class),
                {"__module__": admin_class.__module__, "__doc__": admin_class.__doc__},
            )
        super().register(model_or_iterable, admin_class, **options)

    def admin_view(self, view, cacheable=False):
        inner = super().admin_view(view, cacheable)

        def wrapper(request, *args, **kwargs):
            # A signed-in user without the role gets a clear 403, not the admin's
            # own login form (sign-in happens only on pamsite's login pages).
            if request.user.is_authenticated and not self.has_permission(request):
                raise PermissionDenied("The configuration pages are for pam-admins.")
            return inner(request, *args, **kwargs)

        return update_wrapper(wrapper, view)
