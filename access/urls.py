from django.urls import path

from access import views

app_name = "access"

# A grant's page (grants/<pk>/) lists its gateway sessions: web/urls.py.

urlpatterns = [
    path("", views.my_access, name="mine"),
    path("request/", views.request_new, name="request_new"),
    path("requests/<int:pk>/", views.request_detail, name="request"),
    path("requests/<int:pk>/cancel/", views.request_cancel, name="request_cancel"),
    path("requests/<int:pk>/retry/", views.request_retry, name="request_retry"),
    path("requests/<int:pk>/decide/", views.request_decide, name="request_decide"),
    path("approvals/", views.approval_queue, name="approvals"),
    path("grants/<int:pk>/checkin/", views.grant_checkin, name="grant_checkin"),
    path("grants/<int:pk>/revoke/", views.grant_revoke, name="grant_revoke"),
    path("grants/<int:pk>/reveal/", views.grant_reveal, name="grant_reveal"),
    path("grants/<int:pk>/review/", views.grant_review, name="grant_review"),
    path("break-glass/", views.break_glass, name="break_glass"),
    path("targets/", views.target_list, name="targets"),
    path("targets/new/", views.target_new, name="target_new"),
    path("targets/<int:pk>/edit/", views.target_edit, name="target_edit"),
    path("targets/<int:pk>/host-key/", views.target_host_key, name="target"),
    path("targets/<int:pk>/accounts/new/", views.account_new, name="account_new"),
    path("accounts/<int:pk>/", views.account_detail, name="account"),
    path("accounts/<int:pk>/edit/", views.account_edit, name="account_edit"),
    path("accounts/<int:pk>/setup/", views.account_setup, name="account_setup"),
    path("accounts/<int:pk>/test/", views.account_test, name="account_test"),
    path("accounts/<int:pk>/deactivate/", views.account_deactivate, name="account_deactivate"),
    path("accounts/<int:pk>/reactivate/", views.account_reactivate, name="account_reactivate"),
    path("policies/", views.policy_list, name="policies"),
    path("policies/new/", views.policy_new, name="policy_new"),
    path("policies/<int:pk>/", views.policy_edit, name="policy_edit"),
    path("policies/<int:pk>/deactivate/", views.policy_deactivate, name="policy_deactivate"),
    path("policies/<int:pk>/reactivate/", views.policy_reactivate, name="policy_reactivate"),
]
