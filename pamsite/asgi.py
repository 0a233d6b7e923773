"""ASGI entry point: `daphne pamsite.asgi:application` (what `make run` starts)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamsite.settings")

application = get_asgi_application()
