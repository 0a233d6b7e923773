from django.apps import AppConfig


class RecordingsConfig(AppConfig):
    """The SSH gateway, session recordings, replay and live views.

    The label is not ``sessions``: that one belongs to django.contrib.sessions.
    """

    name = "sessions"
    label = "recordings"
    verbose_name = "Sessions and recordings"
