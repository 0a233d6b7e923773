"""The one place that decides a request's client address."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The client's IP address.

    REMOTE_ADDR unless TRUSTED_PROXY_COUNT proxies sit in front of pamsite, in which
    case the address that the outermost trusted proxy saw, taken from the right-hand
    end of X-Forwarded-For (the left-hand entries are whatever the client claimed).
    """
    address = request.META.get("REMOTE_ADDR") or None
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        if len(hops) >= proxies:
            address = hops[-proxies]
    if address is None:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None
