"""People's lifecycle in pamsite, short of deactivation: inviting a local user, resetting a
local user's password, the first password an invited user chooses, a user changing her own
password, a pam-admin changing someone's roles, and deactivating and reactivating a person.

Every state change is one atomic function writing its audit row in the same transaction;
tokens and passwords are never in the database (a token only as its SHA-256, a password only
as Django's hash), the audit trail or the logs. ``user_deactivate`` here ends what this layer
holds (web sessions, invitations); ``access.services.user_deactivate`` wraps it to end grants and
requests in the same transaction. The gateway watches ``user.is_active`` itself.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from audit.services import audit_record
from common.roles import BREAK_GLASS_GROUP, Role, has_role, require_role
from identity import lockout
from identity.models import Invitation, User
from identity.services import end_user_sessions, mfa_has_confirmed_device

# The roles a pam-admin gives on the Users page (the Django groups of common.roles).
ROLE_CHOICES = [
    *((role.value, role.label) for role in Role),
    (BREAK_GLASS_GROUP, "Break-glass (emergency access)"),
]
ROLE_NAMES = frozenset(value for value, _ in ROLE_CHOICES)
# One-time passwords: no look-alike characters, since a person reads it out or types it.
OTP_ALPHABET = "abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY3479"
OTP_GROUPS, OTP_GROUP_LENGTH = 4, 5


class InvitationRefused(Exception):
    """An invitation link that cannot be used; ``reason`` is "unknown", "used", "expired" or
    "revoked", and the message says what to do."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IssuedInvitation:
    """What the pam-admin is shown once: the link or the one-time password (never stored)."""

    invitation: Invitation
    link: str = ""
    password: str = ""
    emailed_to: str = ""


def token_hash(token: str) -> str:
    """The form in which a link's token is kept: its SHA-256 (the token has 256 random bits)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _one_time_password() -> str:
    groups = (
        "".join(secrets.choice(OTP_ALPHABET) for _ in range(OTP_GROUP_LENGTH)) for _ in range(OTP_GROUPS)
    )
    return "-".join(groups)


def invitation_link(token: str) -> str:
    """The link a person opens (PAMSITE_BASE_URL: the address users reach pamsite at)."""
    return settings.PAMSITE_BASE_URL.rstrip("/") + reverse("identity:invitation", args=[token])


def invitations_revoke(*, user: User) -> int:
    """Revoke the user's open invitations (a newer one, a deactivation); how many."""
    return Invitation.objects.filter(user=user, used_at__isnull=True, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


def _issue(*, user: User, acting_user: User, method: str, is_reset: bool) -> IssuedInvitation:
    """A new invitation for the user (earlier open ones revoked); the caller audits it."""
    invitations_revoke(user=user)
    expires_at = timezone.now() + timedelta(hours=settings.INVITATION_LIFETIME_HOURS)
    if method == Invitation.Method.LINK:
        token = secrets.token_urlsafe(32)
        invitation = Invitation.objects.create(
            user=user,
            method=method,
            token_hash=token_hash(token),
            created_by=acting_user,
            expires_at=expires_at,
            is_reset=is_reset,
        )
        # Until the link is used, no password at all signs in as this user.
        user.password = make_password(None)
        user.must_change_password = True
        user.save(update_fields=["password", "must_change_password"])
        return IssuedInvitation(invitation=invitation, link=invitation_link(token))
    if method == Invitation.Method.PASSWORD:
        password = _one_time_password()
        invitation = Invitation.objects.create(
            user=user, method=method, created_by=acting_user, expires_at=expires_at, is_reset=is_reset
        )
        user.set_password(password)
        user.must_change_password = True
        user.save(update_fields=["password", "must_change_password"])
        return IssuedInvitation(invitation=invitation, password=password)
    raise ValidationError({"method": "Choose a one-time link or a one-time password."})


def _send_link(issued: IssuedInvitation, *, user: User, acting_user: User) -> str:
    """E-mail the link after the commit (a rollback sends nothing); returns the address."""
    if settings.EMAIL_BACKEND == "django.core.mail.backends.console.EmailBackend":
        # The console backend writes each e-mail, the link in it, to the process's log.
        raise ValidationError(
            {
                "email_link": "pamsite has no mail server set up (EMAIL_BACKEND is the console, which "
                "writes e-mails to the log): copy the link and give it to them yourself."
            }
        )
    if not user.email:
        raise ValidationError(
            {
                "email_link": "There is no e-mail address to send the link to: add one, "
                "or copy the link yourself."
            }
        )
    until = timezone.localtime(issued.invitation.expires_at)
    what = "reset your password for" if issued.invitation.is_reset else "join"
    body = (
        f"Hello {user.get_full_name() or user.username},\n\n"
        f"{acting_user.get_full_name() or acting_user.username} invites you to {what} "
        f"{settings.PAMSITE_SITE_NAME}, the hospital's privileged access service.\n\n"
        f"Open this link to choose your password (your username is {user.username}):\n\n"
        f"{issued.link}\n\n"
        f"The link works once, until {until:%Y-%m-%d %H:%M %Z}. After choosing the password you set up "
        "an authenticator app on your phone.\n\n"
        "If you did not expect this, do not open the link: tell your PAM team.\n"
    )
    subject = f"[{settings.PAMSITE_SITE_NAME}] Your invitation"
    address = user.email
    transaction.on_commit(lambda: send_mail(subject, body, None, [address], fail_silently=False))
    return address


def _clean_username(username: str) -> str:
    username = (username or "").strip()
    field = User._meta.get_field("username")
    try:
        field.run_validators(username)
    except ValidationError as exc:
        raise ValidationError({"username": exc.messages}) from None
    if not username:
        raise ValidationError({"username": "Enter a username."})
    if len(username) > field.max_length:
        raise ValidationError({"username": f"A username has at most {field.max_length} characters."})
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError(
            {
                "username": f"The username {username!r} is taken (usernames are compared without "
                "case): choose another."
            }
        )
    return username


def _set_roles(user: User, roles: set[str]) -> tuple[list[str], list[str]]:
    current = set(user.groups.filter(name__in=ROLE_NAMES).values_list("name", flat=True))
    added, removed = sorted(roles - current), sorted(current - roles)
    for name in added:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    if removed:
        user.groups.remove(*Group.objects.filter(name__in=removed))
    user.__dict__.pop("_pamsite_roles", None)
    return added, removed


@transaction.atomic
def user_invite(
    *,
    acting_user: User,
    username: str,
    first_name: str,
    last_name: str,
    email: str,
    roles: set[str],
    method: str,
    email_link: bool = False,
    request: HttpRequest | None = None,
) -> IssuedInvitation:
    """A pam-admin invites a new local user: the user is created with the roles and no
    password of their own, and either a one-time link (single use) or a one-time password
    is returned, to be shown once (and with ``email_link``, the link is e-mailed to them).

    At their first sign-in they choose a password (Django's validators) and then set up
    their authenticator before any other page. Audited ``identity.user.invited`` (the roles,
    the method, the expiry; never the link or the password). ValidationError names the
    field that is wrong.
    """
    require_role(acting_user, Role.PAM_ADMIN)
    username = _clean_username(username)
    unknown = set(roles) - ROLE_NAMES
    if unknown:
        raise ValidationError({"roles": f"Not roles of pamsite: {', '.join(sorted(unknown))}."})
    if email_link and method != Invitation.Method.LINK:
        raise ValidationError(
            {"email_link": "Only a link is e-mailed: a one-time password is shown to you only."}
        )
    user = User.objects.create(
        username=username,
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        email=email.strip(),
        source=User.Source.LOCAL,
        password=make_password(None),
    )
    _set_roles(user, set(roles))
    issued = _issue(user=user, acting_user=acting_user, method=method, is_reset=False)
    emailed_to = _send_link(issued, user=user, acting_user=acting_user) if email_link else ""
    audit_record(
        action="identity.user.invited",
        actor=acting_user,
        request=request,
        obj=user,
        details={
            "username": user.username,
            "roles": sorted(roles),
            "method": method,
            "emailed": bool(emailed_to),
            "expires_at": issued.invitation.expires_at.isoformat(),
        },
    )
    return IssuedInvitation(
        invitation=issued.invitation, link=issued.link, password=issued.password, emailed_to=emailed_to
    )


@transaction.atomic
def user_password_reset(
    *,
    acting_user: User,
    user: User,
    method: str,
    email_link: bool = False,
    request: HttpRequest | None = None,
) -> IssuedInvitation:
    """A pam-admin resets a local user's password: their password stops working at once,
    their web sessions end, and a new one-time link or password is returned to be shown once
    (as for an invitation). Their authenticator is kept. Directory users are refused (their
    password is the directory's), and so is one's own (change it on My account). Audited
    ``identity.user.password_reset``.
    """
    require_role(acting_user, Role.PAM_ADMIN)
    if user.source == User.Source.LDAP:
        raise ValidationError(
            f"{user.username} signs in with the directory's password: reset it in the directory, not here."
        )
    if user.pk == acting_user.pk:
        raise ValidationError("Change your own password on My account.")
    if not user.is_active:
        raise ValidationError(f"{user.username} is deactivated: reactivate them first.")
    if email_link and method != Invitation.Method.LINK:
        raise ValidationError(
            {"email_link": "Only a link is e-mailed: a one-time password is shown to you only."}
        )
    locked = User.objects.select_for_update(no_key=True).get(pk=user.pk)
    issued = _issue(user=locked, acting_user=acting_user, method=method, is_reset=True)
    emailed_to = _send_link(issued, user=locked, acting_user=acting_user) if email_link else ""
    ended = end_user_sessions(user=locked)
    audit_record(
        action="identity.user.password_reset",
        actor=acting_user,
        request=request,
        obj=locked,
        details={
            "username": locked.username,
            "method": method,
            "emailed": bool(emailed_to),
            "expires_at": issued.invitation.expires_at.isoformat(),
            "web_sessions_ended": ended,
        },
    )
    user.refresh_from_db()
    return IssuedInvitation(
        invitation=issued.invitation, link=issued.link, password=issued.password, emailed_to=emailed_to
    )


def _refusal_for(invitation: Invitation | None, now: datetime) -> InvitationRefused | None:
    if invitation is None:
        return InvitationRefused(
            "This invitation link is not valid. Check that you opened the whole link from the message "
            "(links are long); if it still fails, ask your pam-admin for a new invitation.",
            reason="unknown",
        )
    if invitation.used_at is not None:
        return InvitationRefused(
            "This invitation link has already been used to choose a password, and works only once. "
            "Sign in with that password. If it was not you who used it, tell your pam-admin now.",
            reason="used",
        )
    if invitation.revoked_at is not None or not invitation.user.is_active:
        return InvitationRefused(
            "This invitation was withdrawn (a newer one was made, or the account was deactivated). "
            "Use the newest invitation you received, or ask your pam-admin.",
            reason="revoked",
        )
    if invitation.has_expired(now):
        until = timezone.localtime(invitation.expires_at)
        return InvitationRefused(
            f"This invitation link expired at {until:%Y-%m-%d %H:%M %Z}. Ask your pam-admin for a new one.",
            reason="expired",
        )
    return None


def invitation_for_digest(*, digest: str) -> Invitation:
    """The open invitation whose token has this SHA-256 (``token_hash``); InvitationRefused
    (with what to do) if there is none, or it was used, withdrawn or has expired."""
    invitation = (
        Invitation.objects.select_related("user").filter(token_hash=digest).first() if digest else None
    )
    refusal = _refusal_for(invitation, timezone.now())
    if refusal is not None:
        raise refusal
    return invitation


def invitation_for_token(*, token: str) -> Invitation:
    """The open invitation a link's token names (see ``invitation_for_digest``)."""
    return invitation_for_digest(digest=token_hash(token) if token else "")


def invitation_is_for(*, token: str, user: User) -> bool:
    """True when the link's token is one of this user's invitations (used or not)."""
    return bool(token) and Invitation.objects.filter(token_hash=token_hash(token), user=user).exists()


def invitation_accept(*, digest: str, password: str, request: HttpRequest | None = None) -> User:
    """The invited user chooses their password with the link (``digest``: its token's SHA-256,
    kept in their browser session once the link was opened): the link is used up, the
    password set (Django's validators: ValidationError with their messages), and the user
    returned for the caller to sign in with the password step done (the authenticator comes
    next). Audited ``identity.user.invitation_accepted``.
    """
    with transaction.atomic():
        found = invitation_for_digest(digest=digest)
        invitation = Invitation.objects.select_for_update().select_related("user").get(pk=found.pk)
        refusal = _refusal_for(invitation, timezone.now())
        if refusal is not None:  # used a moment ago, in another tab
            raise refusal
        user = invitation.user
        validate_password(password, user)
        user.set_password(password)
        user.must_change_password = False
        user.save(update_fields=["password", "must_change_password"])
        invitation.used_at = timezone.now()
        invitation.save(update_fields=["used_at"])
        invitations_revoke(user=user)
        audit_record(
            action="identity.user.invitation_accepted",
            actor=user,
            request=request,
            obj=user,
            details={"invitation": invitation.pk, "method": invitation.method, "reset": invitation.is_reset},
        )
    return user


def pending_password_invitation(*, user: User) -> Invitation | None:
    """The user's open one-time-password invitation, if any (the newest)."""
    return (
        Invitation.objects.filter(
            user=user, method=Invitation.Method.PASSWORD, used_at__isnull=True, revoked_at__isnull=True
        )
        .order_by("-created_at", "-pk")
        .first()
    )


def first_password_refusal(*, user: User) -> str:
    """Why a user who must choose a password cannot do it now (their one-time password
    expired), or ""."""
    invitation = pending_password_invitation(user=user)
    if invitation is not None and invitation.has_expired():
        until = timezone.localtime(invitation.expires_at)
        return (
            f"Your one-time password expired at {until:%Y-%m-%d %H:%M %Z}. "
            "Ask your pam-admin for a new invitation."
        )
    return ""


def password_set_first(*, request: HttpRequest, user: User, new_password: str) -> None:
    """A user signed in with a one-time password (``must_change_password``) chooses their
    own: Django's validators (ValidationError), the one-time password stops working, their
    other web sessions end, this one stays signed in. Audited ``identity.user.password_set``.
    """
    with transaction.atomic():
        locked = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        if not locked.must_change_password:
            raise ValidationError("Your password is already set: change it on My account.")
        refusal = first_password_refusal(user=locked)
        if refusal:
            raise PermissionDenied(refusal)
        validate_password(new_password, locked)
        if locked.check_password(new_password):
            raise ValidationError("Choose a new password, not the one-time password you were given.")
        locked.set_password(new_password)
        locked.must_change_password = False
        locked.save(update_fields=["password", "must_change_password"])
        invitation = pending_password_invitation(user=locked)
        if invitation is not None:
            Invitation.objects.filter(pk=invitation.pk).update(used_at=timezone.now())
        invitations_revoke(user=locked)
        ended = end_user_sessions(user=locked, keep_session_key=request.session.session_key)
        audit_record(
            action="identity.user.password_set",
            actor=locked,
            request=request,
            obj=locked,
            details={"with": "one-time password", "web_sessions_ended": ended},
        )
    update_session_auth_hash(request, locked)
    user.refresh_from_db()


class PasswordChangeRefused(Exception):
    """The current password was wrong (counted towards the lockout); nothing changed.

    ``lockout`` is the lock that failure brought about (or None): the page then says it.
    """

    def __init__(self, message: str, *, lockout=None):
        super().__init__(message)
        self.lockout = lockout


def password_change(*, request: HttpRequest, user: User, current_password: str, new_password: str) -> int:
    """A local user changes her own password: the current one first (a wrong one is audited
    and counted towards the sign-in lockout, like a wrong password at sign-in:
    PasswordChangeRefused), then Django's validators (ValidationError with their messages).
    Her other web sessions end; this one stays. Audited ``identity.user.password_changed``.
    Returns the number of other sessions ended. Directory users are refused: their password
    is the directory's.
    """
    if user.source == User.Source.LDAP:
        raise ValidationError(
            "Your password is the directory's (the one you use for the hospital's network): change it there."
        )
    if not user.check_password(current_password):
        audit_record(
            action="identity.user.password_change_failed",
            request=request,
            actor=user,
            obj=user,
            details={"reason": "bad_password"},
        )
        lock = lockout.failure_record(request=request, username=user.username)
        raise PasswordChangeRefused(
            "Your current password is not right; nothing was changed. (Wrong passwords count towards "
            "the sign-in lockout.)",
            lockout=lock,
        )
    validate_password(new_password, user)
    if current_password == new_password:
        raise ValidationError("The new password is the same as the current one: choose a different one.")
    with transaction.atomic():
        locked = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        locked.set_password(new_password)
        locked.must_change_password = False
        locked.save(update_fields=["password", "must_change_password"])
        ended = end_user_sessions(user=locked, keep_session_key=request.session.session_key)
        audit_record(
            action="identity.user.password_changed",
            request=request,
            actor=locked,
            obj=locked,
            details={"by": "self", "web_sessions_ended": ended},
        )
    update_session_auth_hash(request, locked)
    user.refresh_from_db()
    return ended


def roles_managed_by_directory(user: User) -> bool:
    """True when the directory sync owns the user's roles: a directory user while a directory
    is configured. Every sync (and each of their sign-ins) sets a directory user's roles from
    the mapped groups and takes away any role none of them gives, so a change made here
    would be undone without a word: it is refused, and the page says where to change it."""
    return user.source == User.Source.LDAP and bool(getattr(settings, "LDAP_SERVER_URI", None))


@transaction.atomic
def user_roles_set(
    *, acting_user: User, user: User, roles: set[str], request: HttpRequest | None = None
) -> tuple[list[str], list[str]]:
    """A pam-admin sets a user's roles (requester, approver, auditor, pam-admin, break-glass);
    returns (added, removed). Audited ``identity.user.roles_changed``. Refused: for a
    directory user (``roles_managed_by_directory``), and taking pam-admin from oneself
    (another pam-admin does that, so there is always one left). Live grants are kept
    (revoke them on the grant's page if needed).
    """
    require_role(acting_user, Role.PAM_ADMIN)
    roles = set(roles)
    unknown = roles - ROLE_NAMES
    if unknown:
        raise ValidationError({"roles": f"Not roles of pamsite: {', '.join(sorted(unknown))}."})
    locked = User.objects.select_for_update(no_key=True).get(pk=user.pk)
    if roles_managed_by_directory(locked):
        raise ValidationError(
            f"{locked.username}'s roles come from their directory groups (see the mapping on the Directory "
            "page): the next sync would undo a change made here. Change their group membership in the "
            "directory, or the group → role mapping."
        )
    current = set(locked.groups.filter(name__in=ROLE_NAMES).values_list("name", flat=True))
    if Role.PAM_ADMIN in current and Role.PAM_ADMIN not in roles and locked.pk == acting_user.pk:
        # Another pam-admin must: so the last one can never take it from herself.
        raise ValidationError("You cannot take the pam-admin role from yourself: another pam-admin must.")
    added, removed = _set_roles(locked, roles)
    if added or removed:
        audit_record(
            action="identity.user.roles_changed",
            actor=acting_user,
            request=request,
            obj=locked,
            details={"username": locked.username, "added": added, "removed": removed},
        )
    return added, removed


def next_step_after_password(user: User) -> str:
    """Where a user goes once the password step is done: the authenticator set-up, or the code."""
    return "identity:verify" if mfa_has_confirmed_device(user=user) else "identity:enrol"


# --- Deactivating and reactivating people ---------------------------------------------------
#
# Every way a person loses pamsite — the Users page, the Configuration pages' "Active" box, the
# directory sync — goes through user_deactivate. The layers above end what they hold: the
# Users and Configuration pages call ``access.services.user_deactivate``, which revokes grants
# and cancels requests in the same transaction (passing ``also_end``); after a directory sync
# the access worker's sweep does the same for the users it deactivated. The gateway does not
# wait for either: it watches ``user.is_active`` itself, so even a raw database change cuts
# live sessions.

DEACTIVATION_VIA = ("users page", "configuration", "directory sync")
# The directory sync's own reasons (identity.directory): a user it deactivated comes back only
# through it.
LEFT = "left the directory"
DISABLED = "disabled in the directory"
DEACTIVATION_REASONS = (LEFT, DISABLED)
REASON_MIN, REASON_MAX = 5, 500


@dataclass(frozen=True)
class UserDeactivation:
    """What a deactivation ended (the numbers the page shows, the lists the audit row keeps).

    ``ended`` holds what the layers above reported (grants revoked, requests cancelled,
    gateway sessions being cut), by the audit row's key.
    """

    web_sessions_ended: int
    invitations_revoked: int
    ended: dict = field(default_factory=dict)

    def details(self) -> dict:
        return {
            **self.ended,
            "web_sessions_ended": self.web_sessions_ended,
            "invitations_revoked": self.invitations_revoked,
        }


def _person_reason(reason: str) -> str:
    reason = " ".join((reason or "").split())
    if len(reason) < REASON_MIN:
        raise ValidationError(
            {"reason": "Give the reason (at least 5 characters): it is kept in the audit trail."}
        )
    if len(reason) > REASON_MAX:
        raise ValidationError(
            {
                "reason": f"Keep the reason under {REASON_MAX} characters ({len(reason)} now); "
                "nothing was changed."
            }
        )
    return reason


def user_deactivate(
    *,
    user: User,
    acting_user: User | None,
    reason: str,
    request: HttpRequest | None = None,
    via: str = "users page",
    also_end: Callable[[User, str], dict] | None = None,
) -> UserDeactivation | None:
    """Deactivate a person (never delete) and end what they hold here, in one transaction.

    ``acting_user`` is the pam-admin (``via`` "users page" or "configuration"), or None for
    the directory sync (``via`` "directory sync", ``reason`` its own words: "left the
    directory"). Their open invitations are revoked and their web sessions ended.
    ``also_end(user, reason)`` is how a layer above ends what it holds in the same transaction
    (the user row is locked and already inactive); what it returns joins the audit row's
    details. One audit row for the deactivation: ``identity.user.deactivated`` (or
    ``identity.directory.deactivated`` for the sync), with the acting user. A pam-admin never
    deactivates herself. Returns what was ended, or None if the user was already inactive.
    """
    if via not in DEACTIVATION_VIA:
        raise ValueError(f"unknown deactivation path {via!r}")
    if acting_user is None:
        if via != "directory sync":
            raise PermissionDenied("Only the directory sync deactivates without a pam-admin.")
        reason = reason.strip()
        stored = reason
    else:
        if not has_role(acting_user, Role.PAM_ADMIN):
            raise PermissionDenied("Only pam-admins deactivate users.")
        if acting_user.pk == user.pk:
            raise ValidationError("You cannot deactivate yourself: another pam-admin must do it.")
        reason = _person_reason(reason)
        stored = f"by {acting_user.username}: {reason}"
    with transaction.atomic():
        locked = User.objects.select_for_update(no_key=True).filter(pk=user.pk, is_active=True).first()
        if locked is None:
            return None
        locked.is_active = False
        locked.deactivated_reason = stored
        locked.deactivated_at = timezone.now()
        locked.deactivated_by = acting_user
        locked.save(update_fields=["is_active", "deactivated_reason", "deactivated_at", "deactivated_by"])
        ended = also_end(locked, reason) if also_end is not None else {}
        result = UserDeactivation(
            web_sessions_ended=end_user_sessions(user=locked),
            invitations_revoked=invitations_revoke(user=locked),
            ended=ended,
        )
        audit_record(
            action="identity.directory.deactivated"
            if via == "directory sync"
            else "identity.user.deactivated",
            actor=acting_user,
            request=request,
            obj=locked,
            details={"username": locked.username, "reason": reason, "via": via, **result.details()},
        )
    user.refresh_from_db()
    return result


def user_reactivation_refusal(*, user: User) -> str:
    """Why a pam-admin may not reactivate this user, or "" (the rule of user_reactivate)."""
    if user.is_active:
        return f"{user.username} is active already."
    if user.source == User.Source.LDAP and user.deactivated_reason in DEACTIVATION_REASONS:
        return (
            f"{user.username} was deactivated by the directory sync ({user.deactivated_reason}). "
            "The sync reactivates them by itself when the directory has them again: enable or "
            "restore their account in the directory."
        )
    return ""


def user_reactivate(
    *, user: User, acting_user: User, reason: str, request: HttpRequest | None = None, via: str = "users page"
) -> None:
    """A pam-admin gives a deactivated person their account back (audited
    ``identity.user.reactivated``).

    Nothing they held comes back: revoked grants stay revoked, cancelled requests cancelled;
    they sign in as before (password, and their authenticator if it was not reset). A
    directory user the sync deactivated is refused (see ``user_reactivation_refusal``):
    the next sync would deactivate them again. (The sync's own reactivation of users who
    come back stays in identity.directory.)
    """
    if not has_role(acting_user, Role.PAM_ADMIN):
        raise PermissionDenied("Only pam-admins reactivate users.")
    reason = _person_reason(reason)
    with transaction.atomic():
        locked = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        refusal = user_reactivation_refusal(user=locked)
        if refusal:
            raise ValidationError(refusal)
        before = locked.deactivated_reason
        locked.is_active = True
        locked.deactivated_reason = ""
        locked.deactivated_at = None
        locked.deactivated_by = None
        locked.save(update_fields=["is_active", "deactivated_reason", "deactivated_at", "deactivated_by"])
        audit_record(
            action="identity.user.reactivated",
            actor=acting_user,
            request=request,
            obj=locked,
            details={"username": locked.username, "reason": reason, "was": before, "via": via},
        )
    user.refresh_from_db()
