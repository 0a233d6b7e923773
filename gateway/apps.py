from django.apps import AppConfig


class GatewayConfig(AppConfig):
    """The gateways that broker privileged sessions (today: ``ssh_gateway``)."""

    name = "gateway"
    verbose_name = "Gateways"
