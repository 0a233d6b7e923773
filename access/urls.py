from django.urls import path

from access import views

app_name = "access"

urlpatterns = [
    path("", views.my_access, name="mine"),
    path("request/", views.request_new, name="request_new"),
    path("requests/<int:pk>/", views.request_detail, name="request"),
    path("requests/<int:pk>/cancel/", views.request_cancel, name="request_cancel"),
    path("requests/<int:pk>/retry/", views.request_retry, name="request_retry"),
    path("requests/<int:pk>/decide/", views.request_decide, name="request_decide"),
    path("approvals/", views.approval_queue, name="approvals"),
    path("grants/<int:pk>/", views.grant_detail, name="grant"),
    path("grants/<int:pk>/checkin/", views.grant_checkin, name="grant_checkin"),
    path("grants/<int:pk>/revoke/", views.grant_revoke, name="grant_revoke"),
    path("grants/<int:pk>/reveal/", views.grant_reveal, name="grant_reveal"),
    path("grants/<int:pk>/review/", views.grant_review, name="grant_review"),
    path("break-glass/", views.break_glass, name="break_glass"),
    path("targets/", views.target_list, name="targets"),
    path("targets/<int:pk>/host-key/", views.target_host_key, name="target"),
    path("accounts/<int:pk>/setup/", views.account_setup, name="account_setup"),
]
