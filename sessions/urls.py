from django.urls import path

from sessions import views

app_name = "sessions"

urlpatterns = [
    path("live/", views.live, name="live"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/terminate/", views.terminate, name="terminate"),
]
