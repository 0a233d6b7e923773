from django.contrib.admin.apps import AdminConfig


class PamsiteAdminConfig(AdminConfig):
    """django.contrib.admin with pamsite's site (pam-admins only, every change audited).

    Kept apart from pamsite/admin.py, which INSTALLED_APPS would otherwise import before the
    app registry is ready: the site is loaded in ready(), so it imports the models it audits
    at the top.
    """

    default_site = "pamsite.admin.PamsiteAdminSite"
