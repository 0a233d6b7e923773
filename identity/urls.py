from django.urls import path

from identity import views, views_lockout

# A user's own page and its actions (users/<pk>/...) show grants and sessions: web/urls.py.

app_name = "identity"

urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("login/verify/", views.verify_view, name="verify"),
    path("mfa/enrol/", views.enrol_view, name="enrol"),
    path("logout/", views.logout_view, name="logout"),
    path("account/", views.account_view, name="account"),
    path("account/mfa/reset/", views.self_reset_view, name="self_reset"),
    path("account/mfa/backup-codes/", views.backup_codes_view, name="backup_codes"),
    path("account/ssh-keys/", views.ssh_key_add_view, name="ssh_key_add"),
    path("account/ssh-keys/<int:pk>/remove/", views.ssh_key_remove_view, name="ssh_key_remove"),
    path("account/password/", views.password_change_view, name="password_change"),
    path("account/password/new/", views.password_new_view, name="password_new"),
    path("invitation/password/", views.invitation_password_view, name="invitation_password"),
    path("invitation/<str:token>/", views.invitation_view, name="invitation"),
    path("users/", views.user_list_view, name="users"),
    path("users/invite/", views.user_invite_view, name="user_invite"),
    path("users/<int:pk>/reset-mfa/", views.admin_reset_view, name="admin_reset"),
    path("users/lockouts/", views_lockout.lockouts_view, name="lockouts"),
    path("users/lockouts/unlock/", views_lockout.lockout_release_view, name="lockout_release"),
    path("users/directory/", views.directory_view, name="directory"),
    path("users/directory/mappings/", views.directory_mapping_add_view, name="directory_mapping_add"),
    path(
        "users/directory/mappings/<int:pk>/remove/",
        views.directory_mapping_remove_view,
        name="directory_mapping_remove",
    ),
]
