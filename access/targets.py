"""Target configuration services: pinning a target's SSH host key."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from access.models import Target
from audit.services import audit_record
from identity.models import User
from sessions import upstream


def target_fetch_host_key(*, target: Target) -> upstream.HostKey:
    """Ask the target for its SSH host key (to be shown to a pam-admin, not trusted yet)."""
    return upstream.fetch_host_key(host=target.host, port=target.port)


@transaction.atomic
def target_pin_host_key(
    *, target: Target, acting_user: User, host_key: str, fingerprint: str, http_request=None
) -> None:
    """Pin the host key the pam-admin confirmed; refuse if the host now shows another key."""
    current = target_fetch_host_key(target=target)
    if current.openssh != host_key.strip() or current.fingerprint != fingerprint.strip():
        raise ValidationError(
            "The host now shows a different key from the one you confirmed: nothing was pinned. "
            "Check the fingerprint with the host's administrator before trying again."
        )
    previous = target.host_key_fingerprint
    target.host_key = current.openssh
    target.host_key_fingerprint = current.fingerprint
    target.host_key_confirmed_by = acting_user
    target.host_key_confirmed_at = timezone.now()
    target.save(
        update_fields=["host_key", "host_key_fingerprint", "host_key_confirmed_by", "host_key_confirmed_at"]
    )
    audit_record(
        action="access.target.host_pinned",
        actor=acting_user,
        request=http_request,
        obj=target,
        details={"fingerprint": current.fingerprint, "previous": previous},
    )
