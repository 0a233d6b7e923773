from django.apps import AppConfig


class RecordingsConfig(AppConfig):
    """Gateway sessions of every protocol: recordings, sealing, retention, search, replay and live views.

    The label is not ``sessions``: that one belongs to django.contrib.sessions.
    """

    name = "recordings"
    label = "recordings"
    verbose_name = "Sessions and recordings"
