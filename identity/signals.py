"""Receivers for django-axes: a lockout is a security event and goes in the audit trail."""

from axes.signals import user_locked_out
from django.dispatch import receiver


@receiver(user_locked_out)
def audit_lockout(sender, request=None, username=None, ip_address=None, **kwargs):
    from identity.services import record_lockout

    record_lockout(request=request, username=username)
