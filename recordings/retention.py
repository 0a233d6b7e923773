"""Retention of recordings, and the legal holds that suspend it.

The files of a session that ended more than ``RECORDINGS_RETENTION_DAYS`` ago (0: never)
are deleted by ``recordings_expire`` (run by ``manage.py sessions_maintain`` and the
Celery task ``sessions.maintain``), unless a legal hold is active on the session or on its
user. The rows stay: each Recording gets ``deleted_at`` and keeps its path, size, sha256
and signature as the record of what existed; the session's search text is emptied too
(it was read from those files). One audit event per session ("recording.deleted") lists
the files and sizes. A live session, or one with a recording not sealed yet (being
written, or left by a gateway that died and has not restarted), is never touched.

Holds and the job cannot cross: the job locks the user's row and then the session's row
and checks for holds under those locks; placing a hold takes the same lock (the user's
for a hold on a user, the session's for a hold on a session) before it is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from pathlib import Path

from django import forms
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.http import HttpRequest
from django.utils import timezone

from audit.services import audit_record
from common.roles import has_role
from identity.models import User
from recordings.models import GatewaySession, LegalHold, Recording
from recordings.recorder import REPLAY_INDEX_SUFFIX
from recordings.search import session_text_clear
from recordings.selectors import HOLDERS

logger = logging.getLogger(__name__)

REASON_MAX_LENGTH = 1000


def retention_cutoff(*, now: dt.datetime | None = None) -> dt.datetime | None:
    """Sessions that ended before this moment are due for deletion; None when kept forever."""
    days = settings.RECORDINGS_RETENTION_DAYS
    if not days:
        return None
    return (now or timezone.now()) - dt.timedelta(days=days)


def session_delete_after(*, session: GatewaySession) -> dt.datetime | None:
    """When the session's files become due for deletion (unless held); None: live, or kept forever."""
    days = settings.RECORDINGS_RETENTION_DAYS
    if not days or session.ended_at is None:
        return None
    return session.ended_at + dt.timedelta(days=days)


def _active_holds() -> Q:
    return Q(released_at__isnull=True)


def _expirable(cutoff: dt.datetime):
    live_files = Recording.objects.filter(session=OuterRef("pk"), deleted_at__isnull=True)
    unsealed = live_files.filter(finalized_at__isnull=True)
    session_hold = LegalHold.objects.filter(_active_holds(), session=OuterRef("pk"))
    user_hold = LegalHold.objects.filter(_active_holds(), user=OuterRef("user_id"))
    return (
        GatewaySession.objects.filter(ended_at__isnull=False, ended_at__lt=cutoff)
        .filter(Exists(live_files))
        .exclude(Exists(unsealed))
        .exclude(Exists(session_hold))
        .exclude(Exists(user_hold))
    )


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"Recording path {relative!r} leaves RECORDINGS_ROOT")
    return path


@transaction.atomic
def _expire_session(*, pk: int, cutoff: dt.datetime, root: Path) -> bool:
    session = GatewaySession.objects.filter(pk=pk).values("user_id").first()
    if session is None:
        return False
    # The user's row first, then the session's: legal_hold_place takes the same locks.
    User.objects.select_for_update(no_key=True).filter(pk=session["user_id"]).values_list("pk").first()
    session = GatewaySession.objects.select_for_update().get(pk=pk)
    if not _expirable(cutoff).filter(pk=pk).exists():
        return False  # held, or changed, since the candidates were listed
    recordings = list(session.recordings.filter(deleted_at__isnull=True).order_by("pk"))
    files = []
    for recording in recordings:
        for relative in filter(None, (recording.path, recording.index_path)):
            path = _inside(root, relative)
            entry = {"path": relative, "size": None}
            try:
                entry["size"] = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                entry["missing"] = True
            files.append(entry)
        # The player's index of a terminal recording is derived from it (and holds its
        # screen text): it goes with it.
        with contextlib.suppress(FileNotFoundError):
            _inside(root, recording.path + REPLAY_INDEX_SUFFIX).unlink()
    now = timezone.now()
    Recording.objects.filter(pk__in=[r.pk for r in recordings]).update(deleted_at=now)
    session_text_clear(session=session)
    audit_record(
        action="recording.deleted",
        obj=session,
        details={
            "user": User.objects.get(pk=session.user_id).username,
            "account": session.account,
            "ended_at": session.ended_at.isoformat(),
            "retention_days": settings.RECORDINGS_RETENTION_DAYS,
            "files": files,
            "bytes": sum(f["size"] or 0 for f in files),
        },
    )
    if recordings:
        with contextlib.suppress(OSError):  # only when empty
            (root / recordings[0].path).parent.rmdir()
    return True


def recordings_expire(
    *, now: dt.datetime | None = None, root: Path | str | None = None, batch: int = 200
) -> int:
    """Delete the files of ended sessions past the retention that no legal hold keeps.

    Returns the number of sessions whose files were deleted. Each session is one
    transaction (files unlinked, rows marked, search text emptied, one "recording.deleted"
    event); a session that fails (a file that cannot be removed) is logged and left for the
    next run. Does nothing when ``RECORDINGS_RETENTION_DAYS`` is 0.
    """
    cutoff = retention_cutoff(now=now)
    if cutoff is None:
        return 0
    root = Path(root) if root is not None else Path(settings.RECORDINGS_ROOT)
    done, last = 0, 0
    while True:
        ids = list(_expirable(cutoff).filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch])
        if not ids:
            return done
        for pk in ids:
            try:
                done += _expire_session(pk=pk, cutoff=cutoff, root=root)
            except (OSError, ValueError):
                logger.exception("Could not delete the recordings of session %s", pk)
        last = ids[-1]


def _clean_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Give the reason for the hold (a case, a request): it is audited."})
    if len(reason) > REASON_MAX_LENGTH:
        raise ValidationError({"reason": f"Keep the reason under {REASON_MAX_LENGTH} characters."})
    return reason


@transaction.atomic
def legal_hold_place(
    *,
    acting_user: User,
    reason: str,
    session: GatewaySession | None = None,
    user: User | None = None,
    http_request: HttpRequest | None = None,
) -> LegalHold:
    """An auditor or pam-admin keeps the recordings of a session, or of every session of a user.

    Exactly one of ``session`` and ``user``. PermissionDenied for anyone else; a
    ValidationError for a blank or over-long reason, or a session whose files are already
    deleted. Several holds may be active on the same session or user (separate matters);
    each is released on its own. Audited as "recording.legal_hold.placed".
    """
    if not has_role(acting_user, *HOLDERS):
        raise PermissionDenied("Only auditors and pam-admins place legal holds.")
    if (session is None) == (user is None):
        raise ValueError("A legal hold is on one session or on one user.")
    reason = _clean_reason(reason)
    if session is not None:
        session = GatewaySession.objects.select_for_update().select_related("user").get(pk=session.pk)
        kept = session.recordings.filter(deleted_at__isnull=True)
        if session.recordings.exists() and not kept.exists():
            raise ValidationError(
                "The recordings of this session were already deleted: there is nothing to hold."
            )
        details = {"session": session.pk, "user": session.user.username, "account": session.account}
    else:
        user = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        details = {"user": user.username}
    hold = LegalHold.objects.create(session=session, user=user, reason=reason, created_by=acting_user)
    audit_record(
        action="recording.legal_hold.placed",
        actor=acting_user,
        request=http_request,
        obj=hold,
        details={**details, "hold": hold.pk, "reason": reason},
    )
    return hold


@transaction.atomic
def legal_hold_release(
    *, hold: LegalHold, acting_user: User, http_request: HttpRequest | None = None
) -> None:
    """An auditor or pam-admin releases an active hold; the retention job may then delete
    the files (unless another hold keeps them). Audited as "recording.legal_hold.released"."""
    if not has_role(acting_user, *HOLDERS):
        raise PermissionDenied("Only auditors and pam-admins release legal holds.")
    locked = LegalHold.objects.select_for_update().get(pk=hold.pk)
    if locked.released_at is not None:
        raise ValidationError("This hold was already released.")
    locked.released_at = timezone.now()
    locked.released_by = acting_user
    locked.save(update_fields=["released_at", "released_by"])
    held = {"session": locked.session_id} if locked.session_id else {"user": locked.user.username}
    audit_record(
        action="recording.legal_hold.released",
        actor=acting_user,
        request=http_request,
        obj=locked,
        details={**held, "hold": locked.pk, "reason": locked.reason, "placed_by": locked.created_by.username},
    )
    hold.released_at, hold.released_by = locked.released_at, locked.released_by


class LegalHoldForm(forms.Form):
    """Place a hold: on a session (its id, from the session page) or on a user (a username).

    The reason is not required here: the service checks it after the permission. (Here
    rather than in recordings/forms.py so the form sits beside the rules it feeds.)
    """

    session = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    username = forms.CharField(required=False, max_length=150, strip=True, label="User")
    reason = forms.CharField(
        required=False, max_length=REASON_MAX_LENGTH, label="Reason (case, request; audited)"
    )
    # The session page to go back to (its id), or empty for the search page.
    back = forms.CharField(required=False, max_length=20)
