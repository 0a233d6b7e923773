"""Writes that reach every layer at once: a person's deactivation from the Users and
Configuration pages."""

from __future__ import annotations

from django.http import HttpRequest

from access import services as access_services
from identity.models import User
from identity.users import UserDeactivation
from web.selectors import live_gateway_sessions_of


def user_deactivate(
    *, user: User, acting_user: User, reason: str, request: HttpRequest | None = None, via: str = "users page"
) -> UserDeactivation | None:
    """Deactivate a person and end everything they hold (access.services.user_deactivate).

    Their live gateway sessions are not touched here: every gateway process sees
    ``is_active`` go false within a second and cuts them, telling the user why ("Your
    pamsite account was deactivated: by pat: <reason>"). Which ones will be cut is listed in
    the deactivation's audit row (``gateway_sessions_terminated``) and counted on the page.
    """
    return access_services.user_deactivate(
        user=user,
        acting_user=acting_user,
        reason=reason,
        request=request,
        via=via,
        also_end=lambda locked, _reason: {
            "gateway_sessions_terminated": live_gateway_sessions_of(user=locked)
        },
    )
