from django.apps import AppConfig


class IdentityConfig(AppConfig):
    """Users, roles, TOTP enrolment and verification, login and logout."""

    name = "identity"
