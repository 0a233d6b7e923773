from django.conf import settings
from django.http import HttpRequest

from common.roles import roles_of


def pamsite(request: HttpRequest) -> dict:
    user = getattr(request, "user", None)
    return {
        "site_name": settings.PAMSITE_SITE_NAME,
        "user_roles": roles_of(user) if user is not None and user.is_authenticated else frozenset(),
        "idle_timeout_minutes": settings.SESSION_IDLE_TIMEOUT_MINUTES,
    }
