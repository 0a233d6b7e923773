"""The Celery application: background jobs (expiry sweeps, rotation, LDAP sync).

With no CELERY_BROKER_URL (the embedded default) tasks run eagerly in the calling
process; with Redis configured, `celery -A pamsite worker -B` runs them.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamsite.settings")

app = Celery("pamsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
