from django.apps import AppConfig


class IdentityConfig(AppConfig):
    """Users, roles, TOTP enrolment and verification, login and logout."""

    name = "identity"

    def ready(self) -> None:
        from identity import signals  # noqa: F401  (connects the receivers)
