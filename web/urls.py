"""The cross-layer pages keep the URL paths and names they always had: pamsite/urls.py adds
these to the identity and access namespaces."""

from django.urls import path

from web import views

# Under "" in the "identity" namespace.
identity_patterns = [
    path("users/<int:pk>/", views.user_detail_view, name="user"),
    path("users/<int:pk>/roles/", views.user_roles_view, name="user_roles"),
    path("users/<int:pk>/deactivate/", views.user_deactivate_view, name="user_deactivate"),
    path("users/<int:pk>/reactivate/", views.user_reactivate_view, name="user_reactivate"),
    path("users/<int:pk>/reset-password/", views.user_password_reset_view, name="user_password_reset"),
]

# Under "access/" in the "access" namespace.
access_patterns = [
    path("grants/<int:pk>/", views.grant_detail, name="grant"),
]
