"""Logging in through the SSH gateway: the same factors, audit trail and lockouts as the web.

The gateway (``manage.py ssh_gateway``) calls these from its own process, where no
HttpRequest exists. Each call builds a minimal one (gateway_request) so that
identity.lockout counts failures per username and per client address together with the
web's, and so that the audit rows carry the client's address and "channel": "ssh".

First factor: the user's password (Django's authentication backends, so a locked
username or address is refused before the password is checked and LDAP works once
its backend is added) or one of her registered public keys. Second factor, always: a
TOTP or backup code (gateway_verify_code). No password, code or key material goes into
an audit row, a log line or an exception message; a key appears only as its fingerprint.
A lock is said with until when (``Lockout.message``); the gateway tells the user.
"""

from __future__ import annotations

import base64
import ipaddress

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.services import audit_record
from identity import lockout
from identity.models import SSHPublicKey, User
from identity.services import (
    MFAError,
    login_code_step,
    login_failure_reason,
    mfa_has_confirmed_device,
    record_login_failure,
    record_password_ok,
)
from identity.ssh_keys import fingerprint_of

CHANNEL = "ssh"
GATEWAY_USER_AGENT = "pamsite-ssh-gateway"
GATEWAY_PATH = "/ssh/"

# Signature algorithms an RSA key may be offered under; the key itself is "ssh-rsa".
_KEY_TYPE_ALIASES = {"rsa-sha2-256": "ssh-rsa", "rsa-sha2-512": "ssh-rsa"}


def gateway_request(*, client_ip: str, user: User | None = None) -> HttpRequest:
    """A minimal request standing for one SSH login attempt from ``client_ip``.

    What the lockout and the audit trail read from it: REMOTE_ADDR (the client's address,
    as common.net.client_ip returns it: no X-Forwarded-For, so TRUSTED_PROXY_COUNT
    does not apply), the user agent "pamsite-ssh-gateway", the path "/ssh/", the
    method POST, ``user``
    (the user once the first factor is done, else anonymous) and ``login_channel`` =
    "ssh", which identity.services adds to the audit details. It has no session: no
    web session is created or touched by an SSH login.
    """
    address = ipaddress.ip_address(client_ip)  # ValueError for anything but an address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack listener sees ::ffff:a.b.c.d; the web sees a.b.c.d. One address, one count.
        address = address.ipv4_mapped
    request = HttpRequest()
    request.method = "POST"
    request.path = request.path_info = GATEWAY_PATH
    request.META.update(
        {
            "REMOTE_ADDR": str(address),
            "HTTP_USER_AGENT": GATEWAY_USER_AGENT,
            "PATH_INFO": GATEWAY_PATH,
            "REQUEST_METHOD": "POST",
            "SERVER_NAME": "pamsite-ssh-gateway",
            "SERVER_PORT": "22",
        }
    )
    request.user = user if user is not None else AnonymousUser()
    request.login_channel = CHANNEL
    return request


def gateway_lockout(*, username: str, client_ip: str) -> lockout.Lockout | None:
    """The lock refusing logins as this username or from this address now, or None."""
    return lockout.lockout_for(request=gateway_request(client_ip=client_ip), username=username)


def gateway_locked_out(*, username: str, client_ip: str) -> bool:
    """True while logins as this username or from this address are refused."""
    return gateway_lockout(username=username, client_ip=client_ip) is not None


def gateway_password_login(*, username: str, password: str, client_ip: str) -> User | None:
    """First factor by password: the active user, or None.

    A locked username or address is refused without the password being checked (audited
    "auth.login.failure", reason "locked_out", not counted). Otherwise the password goes
    through django.contrib.auth.authenticate (so the directory's backend works here too),
    and a failure is audited "auth.login.failure" (step "password") and counted, with the
    web's; a success is audited "auth.login.password_ok"; all with channel "ssh". The code
    step must follow. ``gateway_lockout`` says whether this failure locked.
    """
    request = gateway_request(client_ip=client_ip)
    if lockout.lockout_for(request=request, username=username) is not None:
        record_login_failure(request=request, username=username, locked_out=True)
        return None
    user = authenticate(request, username=username, password=password)
    if user is not None and not user.is_active:
        user = None  # ModelBackend refuses inactive users itself; a directory backend might not.
    if user is None:
        locked = getattr(request, "login_lockout", None) is not None  # locked a moment ago
        record_login_failure(request=request, username=username, locked_out=locked)
        if not locked:
            lockout.failure_record(request=request, username=username)
        return None
    record_password_ok(request=request, user=user)
    return user


def _normal_key_type(key_type: str) -> str:
    return _KEY_TYPE_ALIASES.get(key_type, key_type)


def gateway_key_login(*, username: str, key_type: str, key_blob: bytes, client_ip: str) -> User | None:
    """First factor by public key: the active user named ``username`` who registered this key, or None.

    Call it only once the client's signature over the session has been verified
    with this key: a match is taken as proof that the client holds the private key.
    ``key_type`` and ``key_blob`` are asyncssh's ``key.get_algorithm()`` and ``key.public_data`` (an
    RSA signature algorithm such as rsa-sha2-256 is taken as the key type ssh-rsa).

    A locked-out username or address is refused. A match updates the key's
    last_used_at and is audited "auth.login.key_ok". A key that matches no key of
    this user is audited "auth.login.failure" (reason "unknown_key") but not counted
    towards the lockout: OpenSSH clients offer every key in the agent in turn.
    """
    request = gateway_request(client_ip=client_ip)
    key_type = _normal_key_type(key_type)
    fingerprint = fingerprint_of(key_blob)
    if lockout.lockout_for(request=request, username=username) is not None:
        _key_failure(request, username, login_failure_reason(username=username, locked_out=True), fingerprint)
        return None
    with transaction.atomic():
        key = (
            # Only the key's row: locking the user's too (the join) deadlocks with a
            # transaction that holds the audit trail's head and then updates the user.
            SSHPublicKey.objects.select_for_update(of=("self",))
            .select_related("user")
            .filter(
                key_type=key_type,
                key_base64=base64.b64encode(key_blob).decode("ascii"),
                user__username=username,
                user__is_active=True,
            )
            .first()
        )
        if key is None:
            reason = login_failure_reason(username=username, locked_out=False)
            _key_failure(
                request, username, "unknown_key" if reason == "bad_password" else reason, fingerprint
            )
            return None
        key.last_used_at = timezone.now()
        key.save(update_fields=["last_used_at"])
        audit_record(
            action="auth.login.key_ok",
            request=request,
            actor=key.user,
            obj=key,
            details={"channel": CHANNEL, "step": "publickey", "fingerprint": key.fingerprint},
        )
    return key.user


def _key_failure(request: HttpRequest, username: str, reason: str, fingerprint: str) -> None:
    audit_record(
        action="auth.login.failure",
        request=request,
        actor_username=username[:150],
        details={"reason": reason, "step": "publickey", "channel": CHANNEL, "fingerprint": fingerprint},
    )


def gateway_keys_refused(*, username: str, client_ip: str) -> None:
    """A connection ended having offered only keys that are not ``username``'s: one failure.

    Each unknown key is audited but not counted (an agent offers all its keys in turn);
    a connection that never got past the first factor with them is counted once towards
    the lockout, as one wrong password would be, so that trying keys over and over from one
    address or against one username is locked out too. Audited "auth.login.failure"
    (reason "keys_refused"). Nothing is counted while the username or address is locked.
    """
    request = gateway_request(client_ip=client_ip)
    if lockout.lockout_for(request=request, username=username) is not None:
        return
    audit_record(
        action="auth.login.failure",
        request=request,
        actor_username=username[:150],
        details={"reason": "keys_refused", "step": "publickey", "channel": CHANNEL},
    )
    lockout.failure_record(request=request, username=username)


def _refusal(request: HttpRequest, user: User) -> MFAError | None:
    """Why no code may be tried now for this user (disabled, locked, not enrolled), or None."""
    if not User.objects.filter(pk=user.pk, is_active=True).exists():
        return MFAError("This account is disabled. Ask a pam-admin if you need access.", reason="inactive")
    lock = lockout.lockout_for(request=request, username=user.username)
    if lock is not None:
        return MFAError(lock.message(), reason="locked_out", lockout=lock)
    if User.objects.filter(pk=user.pk, must_change_password=True).exists():
        # An invitation's or a reset's one-time password: it is for choosing a new one on the
        # web, never a way into a target.
        return MFAError(
            "You must choose a new password first: sign in to pamsite on the web at "
            f"{settings.PAMSITE_BASE_URL.rstrip('/')}/ (with the one-time password or link you were "
            "given), then connect again.",
            reason="password_change_required",
        )
    if not mfa_has_confirmed_device(user=user):
        return MFAError(
            "You have not set up an authenticator app yet: sign in to pamsite on the web to set one up, "
            "then connect again.",
            reason="not_enrolled",
        )
    return None


def gateway_logout(*, user: User, client_ip: str) -> None:
    """An SSH connection that had logged in has ended: audited "auth.logout" (channel "ssh"),
    so every gateway login has its logout, whether or not a session was opened."""
    request = gateway_request(client_ip=client_ip, user=user)
    audit_record(action="auth.logout", request=request, actor=user, details={"channel": CHANNEL})


def gateway_verify_code(*, user: User, code: str, client_ip: str) -> str:
    """Second factor, always: a TOTP or backup code; returns "totp" or "backup_code".

    The same check as the web's code step (identity.services.login_code_step): a
    code already used is refused, a wrong one is audited "auth.mfa.failure" and
    counted towards the lockout with wrong passwords, and MFAError is raised with
    the web's message ("locked_out" with the lock when this one locked). A code tried
    while the authenticator is throttled is refused as "throttled" (with wait_seconds),
    audited, never counted. A disabled, locked or not enrolled user gets MFAError
    (reason "inactive", "locked_out", "not_enrolled") without a code being tried or
    counted. Success is audited "auth.login.success" and clears the username's
    failure count, as a full web login does.
    """
    request = gateway_request(client_ip=client_ip, user=user)
    refusal = _refusal(request, user)
    if refusal is not None:
        audit_record(
            action="auth.mfa.failure",
            request=request,
            actor=user,
            details={"reason": refusal.reason, "channel": CHANNEL},
        )
        raise refusal

    # No user_logged_in signal: it means "this request's session is now logged in",
    # and its receivers act on that (django-otp stores the device in request.session),
    # while an SSH login has no session. The one receiver's work that applies here,
    # last_login (the users page's "last sign-in"), is done directly; login_code_step
    # clears the failure count as it does for the web.
    def complete(device) -> None:
        User.objects.filter(pk=user.pk).update(last_login=timezone.now())

    return login_code_step(request=request, user=user, code=code, complete=complete).method
