"""The session core's services, the same for every gateway protocol: which grant a connection
may use, opening, refusing and ending a GatewaySession, which live sessions must be cut and
why, and the audit rows of a gateway's security events.

A gateway (``gateway/ssh`` today; web consoles, PostgreSQL and the browser terminal next) names
its protocol when it opens or refuses a session, and calls these from its pool of threads
(never on its event loop: they query the database); each write is one atomic service with its
audit row in the same transaction. The audit actions are the same for every protocol
(``gateway.session.started`` ...), the protocol in their details. Nothing here holds a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from access.models import Account, Grant
from audit.services import audit_record
from identity.models import User
from recordings.models import GatewaySession

# One refusal for want of a grant is usually a grant that just ended; this many for one user
# within the window is someone trying accounts they were not given: a security alert.
DENIALS_BEFORE_ALERT = 3
DENIALS_WINDOW = timedelta(minutes=15)


def _url(path: str) -> str:
    return settings.PAMSITE_BASE_URL.rstrip("/") + path


def request_url(slug: str = "") -> str:
    """Where a user asks for access (for the messages the gateway prints)."""
    path = reverse("access:request_new")
    return _url(path + (f"?account={slug}" if slug else ""))


@dataclass(frozen=True)
class GrantLookup:
    """A live grant for the account, or why there is none (a message for the user)."""

    grant: Grant | None
    message: str = ""


def live_grants_of(*, user: User) -> list[Grant]:
    """The user's grants that are live now, soonest-ending last, with account and target."""
    return list(
        Grant.objects.filter(user=user, state=Grant.State.ACTIVE, ends_at__gt=timezone.now())
        .select_related("account__target")
        .order_by("account__slug", "-ends_at")
    )


def find_live_grant(*, user: User, slug: str) -> GrantLookup:
    """The user's live grant for account ``slug``, or a message saying what is missing."""
    close_old_connections()
    now = timezone.now()
    account = Account.objects.filter(slug=slug).select_related("target").first()
    if account is None or not account.is_active:
        mine = ", ".join(sorted({g.account.slug for g in live_grants_of(user=user)})) or "none"
        return GrantLookup(
            None,
            f"There is no account called '{slug}'. Your live grants: {mine}. "
            f"Connect as {user.username}:ACCOUNT, or see the accounts you may request at {request_url()}",
        )
    grant = (
        Grant.objects.filter(user=user, account=account, state=Grant.State.ACTIVE, ends_at__gt=now)
        .select_related("account__target", "user")
        .order_by("-ends_at")
        .first()
    )
    if grant is not None:
        return GrantLookup(grant)
    last = Grant.objects.filter(user=user, account=account).order_by("-starts_at").first()
    if last is None:
        why = f"You have no grant for {slug}."
    elif last.state == Grant.State.ACTIVE:
        why = f"Your grant for {slug} expired at {timezone.localtime(last.ends_at):%Y-%m-%d %H:%M %Z}."
    else:
        ended = timezone.localtime(last.ended_at or last.ends_at)
        why = (
            f"Your grant for {slug} ended at {ended:%Y-%m-%d %H:%M %Z} ({last.get_state_display().lower()})."
        )
    return GrantLookup(
        None, f"{why} Request access at {request_url(slug)} and connect again once it is approved."
    )


@transaction.atomic
def session_open(
    *, user: User, grant: Grant, protocol: str, client_address: str, node: str
) -> GatewaySession:
    """A new live GatewaySession for a grant over ``protocol`` (a ``GatewaySession.Protocol``);
    audited as gateway.session.started."""
    session = GatewaySession.objects.create(
        user=user,
        grant=grant,
        account=grant.account.slug,
        protocol=GatewaySession.Protocol(protocol),
        client_address=client_address or None,
        gateway_node=node,
    )
    audit_record(
        action="gateway.session.started",
        actor=user,
        source_ip=client_address,
        obj=session,
        details={
            "account": grant.account.slug,
            "grant": grant.pk,
            "node": node,
            "protocol": session.protocol,
        },
    )
    return session


@transaction.atomic
def session_refuse(
    *, user: User, account: str, protocol: str, client_address: str, node: str, message: str, reason: str
) -> GatewaySession:
    """Record a connection over ``protocol`` refused after login (no grant, unknown account,
    target refused).

    The DENIALS_BEFORE_ALERT-th such refusal of one user within DENIALS_WINDOW also raises
    ``security.alert.access_without_grant`` (once per run of refusals).
    """
    now = timezone.now()
    session = GatewaySession.objects.create(
        user=user,
        account=account[:63],
        protocol=GatewaySession.Protocol(protocol),
        client_address=client_address or None,
        gateway_node=node,
        started_at=now,
        ended_at=now,
        end_reason=GatewaySession.EndReason.REFUSED,
        end_message=message[:2000],
    )
    audit_record(
        action="gateway.session.refused",
        actor=user,
        source_ip=client_address,
        obj=session,
        details={
            "account": account[:63],
            "protocol": session.protocol,
            "reason": reason,
            "message": message[:500],
        },
    )
    # Counted under the audit chain's lock, which concurrent refusals take in turn.
    recent = GatewaySession.objects.filter(
        user=user,
        grant__isnull=True,
        end_reason=GatewaySession.EndReason.REFUSED,
        started_at__gt=now - DENIALS_WINDOW,
    )
    if recent.count() == DENIALS_BEFORE_ALERT:
        audit_record(
            action="security.alert.access_without_grant",
            actor=user,
            source_ip=client_address,
            obj=session,
            details={
                "refusals": DENIALS_BEFORE_ALERT,
                "minutes": int(DENIALS_WINDOW.total_seconds() // 60),
                "accounts": sorted(set(recent.values_list("account", flat=True))),
            },
        )
    return session


@transaction.atomic
def session_end(
    *,
    session: GatewaySession,
    reason: str,
    message: str = "",
    bytes_in: int = 0,
    bytes_out: int = 0,
    ended_at=None,
) -> None:
    """Close a live GatewaySession (once); audited as gateway.session.ended.

    ``ended_at``: when it ended, if not now (a session recovered after its gateway died). Its
    search text is made by the worker (``recordings.search.sessions_index_recent``, within
    SESSIONS_INDEX_SECONDS), not here: a gateway only relays.
    """
    locked = GatewaySession.objects.select_for_update().get(pk=session.pk)
    if locked.ended_at is not None:
        return
    locked.ended_at = ended_at or timezone.now()
    locked.end_reason = reason
    locked.end_message = message[:2000]
    locked.bytes_in = bytes_in
    locked.bytes_out = bytes_out
    locked.save(update_fields=["ended_at", "end_reason", "end_message", "bytes_in", "bytes_out"])
    audit_record(
        action="gateway.session.ended",
        actor=locked.user,
        source_ip=locked.client_address,
        obj=locked,
        details={
            "account": locked.account,
            "protocol": locked.protocol,
            "reason": locked.end_reason,
            "message": message[:500],
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "seconds": round((locked.ended_at - locked.started_at).total_seconds(), 3),
        },
    )
    session.ended_at, session.end_reason = locked.ended_at, locked.end_reason


def sessions_to_cut(*, session_ids: list[int]) -> dict[int, tuple[str, str]]:
    """Of these live sessions, the ones that must end now: {pk: (end reason, message)}.

    A session ends when an approver or pam-admin asked for it, when its user or its account
    was deactivated (by whatever path: the Users page, the Configuration pages, the directory
    sync, even a change made straight in the database), or when its grant is no longer
    active (checked in, revoked, expired) or its time is up.
    """
    if not session_ids:
        return {}
    close_old_connections()
    now = timezone.now()
    due = (
        GatewaySession.objects.filter(pk__in=session_ids, ended_at__isnull=True)
        .filter(
            Q(terminate_requested_at__isnull=False)
            | Q(user__is_active=False)
            | Q(grant__account__is_active=False)
            | ~Q(grant__state=Grant.State.ACTIVE)
            | Q(grant__ends_at__lte=now)
        )
        .select_related("user", "grant__account", "grant__ended_by", "terminate_requested_by")
    )
    cuts = {}
    for session in due:
        cuts[session.pk] = end_of(session=session, now=now)
    return cuts


def _loaded(descriptor, instance):
    """The related object if it is already loaded, else None: ``end_of`` also runs on the
    gateway's event loop with the objects it holds, where a query must not happen."""
    return getattr(instance, descriptor.field.name) if descriptor.is_cached(instance) else None


def deactivated_message(user: User) -> str:
    """What a deactivated user reads: why, in words ("left the directory", "by pat: <reason>")."""
    why = user.deactivated_reason.strip()
    return f"Your pamsite account was deactivated: {why}." if why else "Your pamsite account was deactivated."


def end_of(*, session: GatewaySession, now=None) -> tuple[str, str]:
    """Why a session must end, and the message the user reads."""
    now = now or timezone.now()
    grant = session.grant
    slug = session.account
    if session.terminate_requested_at is not None:
        by = session.terminate_requested_by
        why = f" Reason: {session.terminate_reason}" if session.terminate_reason else ""
        return (
            GatewaySession.EndReason.TERMINATED,
            f"This session was terminated by {by.username}.{why}"
            if by
            else f"This session was terminated.{why}",
        )
    user = _loaded(GatewaySession.user, session)
    if user is not None and not user.is_active:
        return GatewaySession.EndReason.REVOKED, deactivated_message(user)
    account = _loaded(Grant.account, grant)
    if account is not None and not account.is_active:
        return (
            GatewaySession.EndReason.REVOKED,
            f"The account {slug} was deactivated in pamsite: it can no longer be used through the gateway.",
        )
    if grant.state == Grant.State.REVOKED:
        by = grant.ended_by.username if grant.ended_by else "the directory sync"
        why = f" Reason: {grant.end_reason}" if grant.end_reason else ""
        return GatewaySession.EndReason.REVOKED, f"Your grant for {slug} was revoked by {by}.{why}"
    if grant.state == Grant.State.CHECKED_IN:
        return GatewaySession.EndReason.GRANT_ENDED, f"Your grant for {slug} was checked in."
    return (
        GatewaySession.EndReason.GRANT_ENDED,
        f"Your grant for {slug} expired at {timezone.localtime(grant.ends_at):%H:%M %Z}. "
        f"Request access again at {request_url(slug)}",
    )


def record_refused_channel(
    *, session: GatewaySession | None, user: User, client_address: str, what: str
) -> None:
    """A channel or request the gateway refuses (agent, X11, remote forwarding, other ports)."""
    close_old_connections()
    audit_record(
        action="gateway.request.refused",
        actor=user,
        source_ip=client_address,
        obj=session,
        details={"what": what[:300], "account": session.account if session else ""},
    )


def record_tracking_stopped(*, session: GatewaySession, user: User, client_address: str, what: str) -> None:
    """File transfers on a channel could not be followed to the end: auditors should look."""
    close_old_connections()
    audit_record(
        action="security.alert.transfer_untracked",
        actor=user,
        source_ip=client_address,
        obj=session,
        details={"account": session.account, "what": what[:500]},
    )


def record_host_key_mismatch(
    *, session: GatewaySession | None, user: User, client_address: str, target: str, message: str
) -> None:
    """A target offered a host key other than the pinned one: a security alert."""
    close_old_connections()
    audit_record(
        action="security.alert.host_key_mismatch",
        actor=user,
        source_ip=client_address,
        obj=session,
        details={"target": target, "message": message[:500]},
    )


def record_forward(*, session: GatewaySession, user: User, client_address: str, host: str, port: int) -> None:
    close_old_connections()
    audit_record(
        action="gateway.forward.opened",
        actor=user,
        source_ip=client_address,
        obj=session,
        details={"account": session.account, "host": host, "port": port},
    )
