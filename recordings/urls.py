from django.urls import path

from recordings import views

app_name = "sessions"

urlpatterns = [
    path("", views.search, name="search"),
    path("live/", views.live, name="live"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/terminate/", views.terminate, name="terminate"),
    path("recordings/<int:pk>/download/", views.download, name="download"),
    path("holds/", views.hold_place, name="hold_place"),
    path("holds/<int:pk>/release/", views.hold_release, name="hold_release"),
]
