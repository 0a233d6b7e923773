from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from access import urls as access_urls
from identity import urls as identity_urls
from pamsite import status, views
from web import urls as web_urls

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("status/", status.system_status, name="status"),
    # The pages of web/ that show several layers keep identity's and access's names and paths.
    path("", include((identity_urls.urlpatterns + web_urls.identity_patterns, identity_urls.app_name))),
    path("audit/", include("audit.urls")),
    path("access/", include((access_urls.urlpatterns + web_urls.access_patterns, access_urls.app_name))),
    path("sessions/", include("recordings.urls")),
    path("replay/", include("recordings.replay_urls")),
    # The Django admin sits behind the same password + TOTP login as everything else.
    path("admin/login/", RedirectView.as_view(pattern_name="identity:login", query_string=True)),
    path("admin/", admin.site.urls),
]
