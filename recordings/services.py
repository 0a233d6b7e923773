"""Changes to gateway sessions made from the web: asking the gateway to end one.

The gateway relaying a session polls its row every second; when it sees
``terminate_requested_at`` set it closes the session with a message to the user and
records the end (reason "terminated"). So terminating from the web is only setting the
request on the row, atomically and audited; the gateway does the rest.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.services import audit_record
from common.roles import has_role
from identity.models import User
from recordings.models import GatewaySession
from recordings.selectors import TERMINATORS

REASON_MAX_LENGTH = 1000


def _when(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")


@transaction.atomic
def session_terminate(
    *, session: GatewaySession, acting_user: User, reason: str, http_request: HttpRequest | None = None
) -> None:
    """An approver or pam-admin asks the gateway to end a live session, for a reason.

    Refused (PermissionDenied) for anyone else, with a ValidationError for a blank or
    over-long reason or a session that has already ended. Asking again while the
    gateway has not yet acted keeps the first request (who, when, why) on the row, as
    the gateway reads it to tell the user; the repeat is still audited, marked so.
    """
    if not has_role(acting_user, *TERMINATORS):
        raise PermissionDenied("Only approvers and pam-admins terminate sessions.")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError(
            {"reason": "Give the reason for terminating (the user reads it; it is kept in the audit trail)."}
        )
    if len(reason) > REASON_MAX_LENGTH:
        raise ValidationError({"reason": f"Keep the reason under {REASON_MAX_LENGTH} characters."})
    # No select_related here: PostgreSQL cannot lock the nullable side of an outer join.
    locked = GatewaySession.objects.select_for_update().get(pk=session.pk)
    if locked.ended_at is not None:
        how = locked.get_end_reason_display().lower() or "no reason recorded"
        raise ValidationError(
            f"This session already ended at {_when(locked.ended_at)} ({how}): there is nothing to terminate."
        )
    details = {"account": locked.account, "user": locked.user.username, "reason": reason}
    if locked.terminate_requested_at is None:
        locked.terminate_requested_at = timezone.now()
        locked.terminate_requested_by = acting_user
        locked.terminate_reason = reason
        locked.save(update_fields=["terminate_requested_at", "terminate_requested_by", "terminate_reason"])
    else:
        first_by = locked.terminate_requested_by
        details.update(
            repeat=True,
            first_requested_by=first_by.username if first_by else "",
            first_requested_at=locked.terminate_requested_at.isoformat(),
        )
    audit_record(
        action="session.terminate_requested",
        actor=acting_user,
        request=http_request,
        obj=locked,
        details=details,
    )
    session.terminate_requested_at = locked.terminate_requested_at
    session.terminate_requested_by = locked.terminate_requested_by
    session.terminate_reason = locked.terminate_reason
