from django.apps import AppConfig


class AccessConfig(AppConfig):
    """Targets, accounts, policies and the request → approval → grant workflow."""

    name = "access"
