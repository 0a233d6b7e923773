"""WSGI entry point, for sites that serve Django with a WSGI server."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamsite.settings")

application = get_wsgi_application()
