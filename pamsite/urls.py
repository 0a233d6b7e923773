from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from pamsite import status, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("status/", status.system_status, name="status"),
    path("", include("identity.urls")),
    path("audit/", include("audit.urls")),
    path("access/", include("access.urls")),
    path("sessions/", include("recordings.urls")),
    path("replay/", include("recordings.replay_urls")),
    # The Django admin sits behind the same password + TOTP login as everything else.
    path("admin/login/", RedirectView.as_view(pattern_name="identity:login", query_string=True)),
    path("admin/", admin.site.urls),
]
