from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("", views.event_list, name="events"),
    path("verify/", views.verify, name="verify"),
    path("export.csv", views.export, {"fmt": "csv"}, name="export_csv"),
    path("export.jsonl", views.export, {"fmt": "jsonl"}, name="export_jsonl"),
]
