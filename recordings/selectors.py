"""Reads of gateway sessions, and who may see, search, download, hold or terminate what.

The one place for these rules:

- a session is visible to its own user and to approvers, pam-admins and auditors (the
  overseers); anyone else gets a 404, as if it did not exist;
- only overseers search sessions and download recordings (403 for anyone else; a
  session's own user sees its page but does not download its files);
- only approvers and pam-admins terminate a session: its own user ends it by leaving her
  ssh session, and auditors are read-only;
- only auditors and pam-admins place and release legal holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import F, Q, QuerySet
from django.http import Http404

from access.models import Grant, Target
from common.roles import Role, has_role, require_role
from identity.models import User
from recordings.models import GatewaySession, LegalHold, Recording
from recordings.recorder import SignatureUncheckable, verify_recording
from recordings.search import SessionSearchFilters, parse_query, text_filter
from vault.signatures import KeyRing

OVERSEERS = (Role.APPROVER, Role.PAM_ADMIN, Role.AUDITOR)
TERMINATORS = (Role.APPROVER, Role.PAM_ADMIN)
HOLDERS = (Role.AUDITOR, Role.PAM_ADMIN)


def _with_relations(sessions: QuerySet[GatewaySession]) -> QuerySet[GatewaySession]:
    return sessions.select_related("user", "grant__account__target", "terminate_requested_by")


def get_session_for(*, user: User, pk: int) -> GatewaySession:
    """A session its own user, approvers, pam-admins and auditors may see; else 404."""
    try:
        session = _with_relations(GatewaySession.objects.all()).get(pk=pk)
    except GatewaySession.DoesNotExist:
        raise Http404("No such session.") from None
    if session.user_id != user.pk and not has_role(user, *OVERSEERS):
        raise Http404("No such session.")
    return session


def live_sessions_for(*, user: User) -> QuerySet[GatewaySession]:
    """Live sessions, newest first: everyone's for overseers, one's own for anyone else."""
    live = _with_relations(GatewaySession.objects.filter(ended_at__isnull=True))
    if not has_role(user, *OVERSEERS):
        live = live.filter(user=user)
    return live.order_by("-started_at")


def sessions_of_grant(*, grant: Grant) -> QuerySet[GatewaySession]:
    """The gateway sessions opened under a grant, newest first (the grant's viewer may see them)."""
    return GatewaySession.objects.filter(grant=grant).select_related("user").order_by("-started_at")


def recordings_of(*, session: GatewaySession) -> QuerySet[Recording]:
    """The session's recorded files: its events file first, then one per channel."""
    return session.recordings.order_by(F("channel").asc(nulls_first=True), "pk")


def can_terminate(*, user: User, session: GatewaySession) -> bool:
    """Whether the user may ask the gateway to end the session: approver or pam-admin, session live."""
    return session.is_live and has_role(user, *TERMINATORS)


# --- Search ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionSearchPage:
    """One page of sessions, newest first, with the cursors to the pages either side (None: none)."""

    sessions: list[GatewaySession] = field(default_factory=list)
    newer_cursor: int | None = None
    older_cursor: int | None = None


def sessions_search_require_access(*, user: User) -> None:
    """Raise PermissionDenied unless the user may search sessions: approvers, pam-admins, auditors."""
    require_role(user, *OVERSEERS)


def _older_than(started_at, pk: int) -> Q:
    # The redundant first half lets the (started_at, id) index start the scan at the cursor.
    return Q(started_at__lte=started_at) & (
        Q(started_at__lt=started_at) | Q(started_at=started_at, pk__lt=pk)
    )


def _newer_than(started_at, pk: int) -> Q:
    return Q(started_at__gte=started_at) & (
        Q(started_at__gt=started_at) | Q(started_at=started_at, pk__gt=pk)
    )


def _searched(filters: SessionSearchFilters) -> QuerySet[GatewaySession]:
    sessions = GatewaySession.objects.all()
    # Names to ids first, so the planner sees an indexed column (user, started_at).
    if filters.user:
        user_id = User.objects.filter(username=filters.user).values_list("pk", flat=True).first()
        sessions = sessions.filter(user_id=user_id) if user_id is not None else sessions.none()
    if filters.target:
        target_id = Target.objects.filter(name=filters.target).values_list("pk", flat=True).first()
        sessions = (
            sessions.filter(grant__account__target_id=target_id) if target_id is not None else sessions.none()
        )
    if filters.account:
        sessions = sessions.filter(account=filters.account)
    if filters.grant is not None:
        sessions = sessions.filter(grant_id=filters.grant)
    if filters.since is not None:
        sessions = sessions.filter(started_at__gte=filters.since)
    if filters.until is not None:
        sessions = sessions.filter(started_at__lt=filters.until)
    if filters.end_reason == "live":
        sessions = sessions.filter(ended_at__isnull=True)
    elif filters.end_reason:
        sessions = sessions.filter(end_reason=filters.end_reason)
    if filters.q:
        sessions = sessions.filter(text_filter(parse_query(filters.q)))
    return sessions


def sessions_search_for(
    *, user: User, filters: SessionSearchFilters, page_size: int | None = None
) -> SessionSearchPage:
    """One page of the sessions matching ``filters``, newest first; PermissionDenied unless an overseer.

    Keyset pagination on (started_at, id), the cursor being a session id: each page reads
    ``page_size + 1`` rows whatever its depth, and nothing counts the matches.
    """
    sessions_search_require_access(user=user)
    size = page_size or settings.SESSIONS_PAGE_SIZE
    matching = _searched(filters)
    shown = _with_relations(matching)
    cursor = filters.after if filters.after is not None else filters.before
    anchor = None
    if cursor is not None:
        anchor = GatewaySession.objects.filter(pk=cursor).values_list("started_at", flat=True).first()
        if anchor is None:
            return SessionSearchPage()
    if filters.after is not None:
        rows = list(shown.filter(_newer_than(anchor, cursor)).order_by("started_at", "pk")[: size + 1])
        has_newer = len(rows) > size
        rows = rows[:size][::-1]
        has_older = bool(rows) and matching.filter(_older_than(rows[-1].started_at, rows[-1].pk)).exists()
    else:
        if filters.before is not None:
            shown = shown.filter(_older_than(anchor, cursor))
        rows = list(shown.order_by("-started_at", "-pk")[: size + 1])
        has_older = len(rows) > size
        rows = rows[:size]
        has_newer = (
            filters.before is not None
            and bool(rows)
            and matching.filter(_newer_than(rows[0].started_at, rows[0].pk)).exists()
        )
    return SessionSearchPage(
        sessions=rows,
        newer_cursor=rows[0].pk if rows and has_newer else None,
        older_cursor=rows[-1].pk if rows and has_older else None,
    )


# --- Recordings: download and integrity -----------------------------------------------------


def can_download(*, user: User) -> bool:
    """Whether the user may download recordings: approvers, pam-admins and auditors."""
    return has_role(user, *OVERSEERS)


def get_recording_for(*, user: User, pk: int) -> Recording:
    """A recording the user may download: 404 unless its session is visible to her, 403 unless an overseer."""
    recording = Recording.objects.filter(pk=pk).first()
    if recording is None:
        raise Http404("No such recording.")
    recording.session = get_session_for(user=user, pk=recording.session_id)
    if not can_download(user=user):
        raise PermissionDenied("Only approvers, pam-admins and auditors download recordings.")
    return recording


@dataclass(frozen=True)
class IntegrityCheck:
    """The verdict on one recording: ``state`` is intact, tampered, unchecked, deleted or unsealed."""

    recording: Recording
    state: str
    label: str
    why: str = ""

    @property
    def badge(self) -> str:
        return {"intact": "ok", "tampered": "bad"}.get(self.state, "warn")


def _verdict(ok: bool, why: str, recording: Recording) -> IntegrityCheck:
    if ok:
        return IntegrityCheck(recording, "intact", "intact", why)
    if why.startswith("missing"):
        return IntegrityCheck(recording, "tampered", f"MISSING: {why}", why)
    return IntegrityCheck(recording, "tampered", f"TAMPERED: {why}", why)


def recordings_integrity(
    *, recordings: list[Recording], root: Path | str | None = None
) -> list[IntegrityCheck]:
    """Recompute each recording's sha256 and check its signature (``verify_recording``).

    The signature is checked against the signing key's public key that pamsite keeps, so
    this works while Vault is down. Never says intact without a valid signature: a recording
    signed by a key neither pamsite nor Vault has is "cannot check: signing key not found"
    (never TAMPERED: it was signed, by a Vault that is gone); one whose key version is not
    kept yet while Vault cannot be asked is "cannot check: Vault unreachable" (or sealed).
    A sha256 that differs is TAMPERED whatever Vault's state. One key ring for the page:
    the kept keys are read once, and Vault asked at most once.
    """
    root = Path(root) if root is not None else Path(settings.RECORDINGS_ROOT)
    keyring = KeyRing()
    checks = []
    for recording in recordings:
        if recording.deleted_at is not None:
            when = recording.deleted_at.strftime("%Y-%m-%d")
            checks.append(
                IntegrityCheck(
                    recording, "deleted", f"deleted {when} (retention); its sha256 and signature are kept"
                )
            )
            continue
        if recording.finalized_at is None or not recording.signature:
            checks.append(
                IntegrityCheck(recording, "unsealed", "not sealed yet: no sha256 or signature to check")
            )
            continue
        try:
            ok, why = verify_recording(recording, root=root, keyring=keyring)
        except SignatureUncheckable as exc:
            checks.append(IntegrityCheck(recording, "unchecked", f"cannot check: {exc.reason}", str(exc)))
            continue
        checks.append(_verdict(ok, why, recording))
    return checks


# --- Legal holds ----------------------------------------------------------------------------


def can_hold(*, user: User) -> bool:
    """Whether the user may place and release legal holds: auditors and pam-admins."""
    return has_role(user, *HOLDERS)


def holds_require_access(*, user: User) -> None:
    """Raise PermissionDenied unless the user may place and release legal holds."""
    require_role(user, *HOLDERS)


def holds_on_session(*, session: GatewaySession) -> list[LegalHold]:
    """The active holds that keep this session's recordings: on it, or on its user."""
    holds = LegalHold.objects.filter(released_at__isnull=True).filter(
        Q(session=session) | Q(user_id=session.user_id)
    )
    return list(holds.select_related("created_by", "user", "session"))


def active_holds(*, limit: int = 200) -> list[LegalHold]:
    """The active legal holds, newest first (at most ``limit``)."""
    holds = LegalHold.objects.filter(released_at__isnull=True).select_related("created_by", "user", "session")
    return list(holds[:limit])


def get_hold_for(*, user: User, pk: int) -> LegalHold:
    """A legal hold the user may release; PermissionDenied unless an auditor or pam-admin."""
    holds_require_access(user=user)
    try:
        return LegalHold.objects.select_related("session", "user").get(pk=pk)
    except LegalHold.DoesNotExist:
        raise Http404("No such legal hold.") from None
