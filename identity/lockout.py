"""Sign-in lockouts, one set of rules for the web and the SSH gateway.

The rules (settings in pamsite/settings.py, explained in the README):

- **A username** is locked for ``LOGIN_LOCKOUT_MINUTES`` once ``LOGIN_FAILURE_LIMIT``
  failures of it were counted within the last ``LOGIN_LOCKOUT_MINUTES``, from any address.
  Only that username is locked: someone else at the same address signs in as usual.
- **A client address** (with ``LOGIN_LOCKOUT_BY_IP``) is locked for ``LOGIN_LOCKOUT_MINUTES``
  once ``LOGIN_ADDRESS_FAILURE_LIMIT`` failures from it were counted within that window
  *and* they name at least ``LOGIN_ADDRESS_USERNAMES`` different usernames: password
  spraying. However often one user fails, that alone never locks the address (the
  settings refuse ``LOGIN_ADDRESS_USERNAMES`` below 2).
- **What counts**: a wrong password (of a known or unknown username), a wrong, replayed
  or empty code at sign-in or for a sensitive step, a gateway connection that offered
  only keys that are not the user's. **What never counts**: an attempt refused because
  the authenticator is throttled (django-otp's growing delay after a wrong code: the
  code was not even checked), an attempt refused because the username or address is
  locked already (so a lock is not prolonged by knocking), a single unknown SSH key.
- A complete sign-in (password and code) forgives the username's failures: they count
  neither for the username nor for the address (a colleague's typo at a shared address
  stays harmless).
- A pam-admin unlocks a username or an address early (``lockout_release``, audited
  ``auth.lockout.released``); its count starts again from zero.

State lives in the database (identity.models.LoginFailure, LoginLock), so every web and
gateway process, on any host, counts together and sees the same locks. Counting takes
the row lock of the username's LoginLock row, then the address's (always in that order:
no deadlock), so concurrent failures are counted one after another and lock exactly at
the limit. ``failure_record`` runs in a transaction of its own, after the caller's audit
row is committed: it writes audit rows itself (``auth.lockout``), and taking the audit
chain's head before these row locks in one transaction and after them in another would
deadlock.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.http import HttpRequest
from django.utils import timezone

from audit.services import audit_record
from audit.timefmt import local_time
from common.net import client_ip
from common.roles import Role, require_role
from identity.models import LoginFailure, LoginLock, User

USERNAME = LoginLock.Scope.USERNAME
ADDRESS = LoginLock.Scope.ADDRESS
USERNAME_MAX = 150


def normal_username(username: str) -> str:
    """The username a failure is counted under: as typed, trimmed and lower-cased.

    The directory matches names regardless of case and pamsite keeps directory usernames
    lower-case, so "Alice" and "alice" are one account there: counting them apart would
    give a guesser LOGIN_FAILURE_LIMIT tries per spelling.
    """
    return (username or "").strip().lower()[:USERNAME_MAX]


def local_time_text(moment: datetime) -> str:
    """``14:06 CET`` in the site's TIME_ZONE (with the date when it is not today), rounded up
    to the minute, so that "until 14:06" is never a minute early."""
    if moment.second or moment.microsecond:
        moment = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    today = timezone.localtime(moment).date() == timezone.localdate()
    return local_time(moment, "%H:%M %Z" if today else "%Y-%m-%d %H:%M %Z")


@dataclass(frozen=True)
class Lockout:
    """A lock in force: on a username or on a client address, until when, and why."""

    scope: str  # LoginLock.Scope
    value: str  # the (lower-cased) username or the address
    until: datetime
    failures: int
    usernames: int

    @property
    def until_text(self) -> str:
        return local_time_text(self.until)

    @property
    def is_address(self) -> bool:
        return self.scope == ADDRESS

    def message(self) -> str:
        """What the user is told, on the web and at the gateway."""
        if self.is_address:
            return (
                f"Too many failed sign-ins for several different usernames came from {self.value}: "
                f"sign-in from this address is locked until {self.until_text}. Try again then, or ask "
                "a pam-admin to unlock the address."
            )
        return (
            f"Too many wrong passwords or codes for {self.value}: sign-in is locked until "
            f"{self.until_text}. Try again then, or ask a pam-admin to unlock it."
        )

    @classmethod
    def of(cls, row: LoginLock) -> Lockout:
        return cls(
            scope=row.scope,
            value=row.value,
            until=row.locked_until,
            failures=row.failures,
            usernames=row.usernames,
        )


def _window() -> timedelta:
    return timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)


def _address(request: HttpRequest | None) -> str | None:
    if request is None or not settings.LOGIN_LOCKOUT_BY_IP:
        return None
    return client_ip(request)


def _channel(request: HttpRequest | None) -> str:
    return getattr(request, "login_channel", None) or "web"


def _keys(username: str, address: str | None) -> Q:
    keys = Q(scope=USERNAME, value=normal_username(username))
    if address:
        keys |= Q(scope=ADDRESS, value=address)
    return keys


def lockout_for(*, request: HttpRequest | None, username: str) -> Lockout | None:
    """The lock that refuses a sign-in as ``username`` from ``request``'s address now: the
    username's, else the address's (LOGIN_LOCKOUT_BY_IP); None when neither is locked."""
    rows = LoginLock.objects.filter(_keys(username, _address(request)), locked_until__gt=timezone.now())
    found = sorted(rows, key=lambda row: row.scope != USERNAME)
    return Lockout.of(found[0]) if found else None


def _locked_row(scope: str, value: str) -> LoginLock:
    """The LoginLock row of the username or address, made if need be, locked until commit."""
    row = LoginLock.objects.select_for_update().filter(scope=scope, value=value).first()
    if row is not None:
        return row
    try:
        with transaction.atomic():
            return LoginLock.objects.create(scope=scope, value=value)
    except IntegrityError:
        # Another process made it a moment ago (and, on PostgreSQL, has committed by now).
        return LoginLock.objects.select_for_update().get(scope=scope, value=value)


def _lock(row: LoginLock, *, now: datetime, failures: int, usernames: int) -> None:
    row.locked_at = row.counted_since = now
    row.locked_until = now + _window()
    row.failures, row.usernames = failures, usernames
    row.released_at, row.released_by = None, None


def _purge(now: datetime) -> None:
    """Forget failures that no longer count, and rows of names and addresses gone quiet."""
    cutoff = now - _window()
    LoginFailure.objects.filter(at__lt=cutoff).delete()
    quiet = Q(locked_until__isnull=True) | Q(locked_until__lt=cutoff)
    stale = LoginLock.objects.filter(quiet).exclude(
        Q(scope=USERNAME, value__in=LoginFailure.objects.values("username"))
        | Q(scope=ADDRESS, value__in=LoginFailure.objects.exclude(address="").values("address"))
    )
    stale.delete()


@transaction.atomic
def failure_record(*, request: HttpRequest | None, username: str) -> Lockout | None:
    """Count one failed sign-in as ``username`` from ``request``'s address; lock if due.

    Returns the lock that now refuses this username or address, or None. Nothing is counted
    while either is locked already (that lock is returned). A username reaching
    LOGIN_FAILURE_LIMIT, or an address reaching LOGIN_ADDRESS_FAILURE_LIMIT over at least
    LOGIN_ADDRESS_USERNAMES usernames, is locked for LOGIN_LOCKOUT_MINUTES and audited
    ``auth.lockout`` (``scope``, ``until``, ``failures``; ``address`` and ``usernames`` for an
    address; ``channel`` at the gateway). Call it outside any other transaction that has
    written an audit row (see the module's docstring). Never for a throttled attempt.
    """
    now = timezone.now()
    name = normal_username(username)
    address = _address(request)
    _purge(now)
    user_row = _locked_row(USERNAME, name)
    address_row = _locked_row(ADDRESS, address) if address else None
    for row in (user_row, address_row):
        if row is not None and row.locked_until is not None and row.locked_until > now:
            return Lockout.of(row)

    LoginFailure.objects.create(username=name, address=address or "", channel=_channel(request), at=now)
    since = now - _window()
    locked: list[LoginLock] = []

    user_since = max(since, user_row.counted_since or since)
    count = LoginFailure.objects.filter(username=name, at__gte=user_since).count()
    if count >= settings.LOGIN_FAILURE_LIMIT:
        _lock(user_row, now=now, failures=count, usernames=1)
        user_row.save()
        locked.append(user_row)

    if address_row is not None:
        address_since = max(since, address_row.counted_since or since)
        seen = LoginFailure.objects.filter(address=address, at__gte=address_since).aggregate(
            failures=Count("pk"), usernames=Count("username", distinct=True)
        )
        if (
            seen["failures"] >= settings.LOGIN_ADDRESS_FAILURE_LIMIT
            and seen["usernames"] >= settings.LOGIN_ADDRESS_USERNAMES
        ):
            _lock(address_row, now=now, failures=seen["failures"], usernames=seen["usernames"])
            address_row.save()
            locked.append(address_row)

    for row in locked:
        details = {
            "reason": "too many failures",
            "scope": row.scope,
            "until": row.locked_until.isoformat(),
            "failures": row.failures,
        }
        if row.scope == ADDRESS:
            details.update(address=row.value, usernames=row.usernames)
        if request is not None and getattr(request, "login_channel", None):
            details["channel"] = request.login_channel
        audit_record(
            action="auth.lockout", request=request, actor_username=username[:USERNAME_MAX], details=details
        )
    return Lockout.of(locked[0]) if locked else None


def failures_clear(*, username: str) -> int:
    """A complete sign-in (password and code): the username's failures are forgiven, for the
    username and for the addresses they came from. Returns how many were."""
    deleted, _ = LoginFailure.objects.filter(username=normal_username(username)).delete()
    return deleted


def locked_usernames(usernames: Iterable[str]) -> dict[str, datetime]:
    """Of ``usernames``, those locked now, each with the moment its lock ends.

    Keys are the usernames as given (matched regardless of case, as sign-in counts them).
    One query, for a page of users. Address locks are not included: they are no user's.
    """
    given = {normal_username(name): name for name in usernames}
    rows = LoginLock.objects.filter(scope=USERNAME, value__in=given, locked_until__gt=timezone.now())
    return {given[row.value]: row.locked_until for row in rows}


def lockouts_for(*, acting_user: User) -> list[LoginLock]:
    """The usernames and addresses locked now, soonest unlocked first; pam-admins only."""
    require_role(acting_user, Role.PAM_ADMIN)
    return list(
        LoginLock.objects.filter(locked_until__gt=timezone.now()).order_by("locked_until", "scope", "value")
    )


def _normal_address(value: str) -> str:
    try:
        address = ipaddress.ip_address((value or "").strip())
    except ValueError:
        raise ValidationError(
            f"{(value or '')[:60]!r} is not an IP address: give it as the lockouts page shows it."
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


@transaction.atomic
def lockout_release(*, acting_user: User, scope: str, value: str, request: HttpRequest | None) -> LoginLock:
    """A pam-admin unlocks a username or an address now; audited ``auth.lockout.released``.

    Its failures counted so far no longer count. A username or address that is not locked
    (any more) raises ValidationError saying so, and nothing is recorded.
    """
    require_role(acting_user, Role.PAM_ADMIN)
    if scope not in LoginLock.Scope.values:
        raise ValidationError("Choose whether to unlock a username or an address.")
    value = normal_username(value) if scope == USERNAME else _normal_address(value)
    now = timezone.now()
    row = LoginLock.objects.select_for_update().filter(scope=scope, value=value).first()
    what = "username" if scope == USERNAME else "address"
    if row is None or row.locked_until is None or row.locked_until <= now:
        raise ValidationError(f"The {what} {value[:150]} is not locked (any more): nothing to unlock.")
    was_until = row.locked_until
    row.locked_until = row.released_at = row.counted_since = now
    row.released_by = acting_user
    row.save(update_fields=["locked_until", "released_at", "counted_since", "released_by"])
    user = User.objects.filter(username__iexact=value).first() if scope == USERNAME else None
    audit_record(
        action="auth.lockout.released",
        request=request,
        actor=acting_user,
        obj=user,
        details={"scope": scope, what: value, "was_until": was_until.isoformat(), "failures": row.failures},
    )
    return row


class LockoutBackend:
    """First of AUTHENTICATION_BACKENDS: a locked username or address is refused before any
    password is checked (or sent to the directory), whoever calls ``authenticate``.

    Raising PermissionDenied stops Django's authenticate at once. The lock is left on the
    request (``request.login_lockout``) for the caller to say until when.
    """

    def authenticate(self, request, username=None, **credentials):
        if username is None:
            return None
        lock = lockout_for(request=request, username=username)
        if lock is not None:
            if request is not None:
                request.login_lockout = lock
            raise PermissionDenied(lock.message())
        return None

    # No get_user: it logs no one in, and Django's force_login and session restore take the
    # first backend that has one.


def wait_seconds(until: datetime | None) -> int:
    """Whole seconds from now to ``until``, at least 1 (what "wait N seconds" says)."""
    if until is None:
        return 1
    return max(1, math.ceil((until - timezone.now()).total_seconds()))
