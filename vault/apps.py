from django.apps import AppConfig


class VaultConfig(AppConfig):
    """The only code that talks to Vault / OpenBao. No views, no models."""

    name = "vault"
