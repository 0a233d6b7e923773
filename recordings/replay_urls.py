"""Replay and live view of session recordings (``recordings/replay.py``), under ``/replay/``."""

from django.urls import path

from recordings import replay

app_name = "replay"

urlpatterns = [
    path("sessions/<int:pk>/", replay.session_replay, name="session"),
    path("sessions/<int:pk>/watch/", replay.session_watch, name="watch"),
    path("sessions/<int:pk>/watch/status", replay.watch_status, name="watch-status"),
    path("recordings/<int:pk>/cast", replay.cast, name="cast"),
    path("recordings/<int:pk>/index.json", replay.cast_index_view, name="index"),
    path("recordings/<int:pk>/segment.json", replay.cast_segment, name="segment"),
]
