from django.apps import AppConfig


class IdentityConfig(AppConfig):
    """Users, roles, TOTP enrolment and verification, login and logout."""

    name = "identity"

    def ready(self) -> None:
        # Imported once the app registry is ready (signals imports the models): ready() is
        # where Django has receivers connected.
        from identity import signals  # noqa: F401  (connects the receivers)
