from django.apps import AppConfig


class WebConfig(AppConfig):
    """The pages that show several layers at once (a user with their grants and gateway
    sessions, a grant with its sessions), so that no lower app imports a higher one."""

    name = "web"
    verbose_name = "Cross-layer pages"
