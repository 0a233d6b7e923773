"""ASGI entry point: `daphne pamsite.asgi:application` (what `make run` starts).

Django runs each request's view in a thread of its own, with its own database
connection; under a burst, hundreds of them would compete for the CPU and for the
audit trail's head, each slower than the last, until PostgreSQL refuses connections.
``ConcurrencyLimit`` lets ``WEB_MAX_CONCURRENT_REQUESTS`` HTTP requests run at once and
queues the rest in the event loop (cheap), first come first served.
"""

import asyncio
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamsite.settings")


class ConcurrencyLimit:
    """An ASGI wrapper: at most ``limit`` HTTP requests inside ``app`` at once."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._slots is None:  # made on the server's event loop
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots:
            return await self.app(scope, receive, send)


def _application():
    from django.conf import settings

    django_app = get_asgi_application()
    return ConcurrencyLimit(django_app, settings.WEB_MAX_CONCURRENT_REQUESTS)


application = _application()
