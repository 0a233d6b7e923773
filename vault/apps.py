from django.apps import AppConfig


class VaultConfig(AppConfig):
    """The only code that talks to Vault / OpenBao. No views; one model: the signing key's public keys."""

    name = "vault"
