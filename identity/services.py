"""Identity services: enrolment, verification and reset of the second factor, login steps.

Every state change here is one function, atomic, writing its audit event in the same
transaction. Views call these and do nothing else of substance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import user_logged_in, user_login_failed
from django.contrib.sessions.models import Session
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django_otp import devices_for_user
from django_otp import login as otp_login
from django_otp.oath import hotp
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.services import audit_record
from identity.models import User

TOTP_DEVICE_NAME = "authenticator"
BACKUP_DEVICE_NAME = "backup codes"


class MFAError(Exception):
    """A second-factor step failed; the message is safe to show to the user."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class VerifyResult:
    method: str  # "totp" or "backup_code"
    backup_codes_left: int | None = None


def mfa_has_confirmed_device(*, user: User) -> bool:
    """True when the user has finished enrolment (a confirmed TOTP device)."""
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def mfa_backup_codes_left(*, user: User) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


@transaction.atomic
def mfa_start_enrolment(*, user: User) -> TOTPDevice:
    """The unconfirmed TOTP device the user is enrolling (created on first call).

    The same device is returned until it is confirmed, so reloading the enrolment
    page does not change the secret the user may already have scanned.
    """
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=TOTP_DEVICE_NAME, confirmed=False)
    return device


def _normalise(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def _is_totp_shape(code: str) -> bool:
    return len(code) == 6 and code.isdigit()


def _was_replayed(device: TOTPDevice, code: str) -> bool:
    """True when the code is the one already accepted for this device's last step."""
    if device.last_t < 0:
        return False
    return hotp(device.bin_key, device.last_t, digits=device.digits) == int(code)


def _new_backup_codes(user: User) -> list[str]:
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name=BACKUP_DEVICE_NAME, confirmed=True)
    from django.conf import settings

    codes = []
    for _ in range(settings.MFA_BACKUP_CODES):
        token = StaticToken.random_token()
        device.token_set.create(token=token)
        codes.append(token)
    return codes


def _complete_login(request: HttpRequest, user: User, device) -> None:
    """Mark the session verified with this device and give it a new key."""
    otp_login(request, device)
    # A new session key once both factors are done (session fixation).
    request.session.cycle_key()
    from axes.utils import reset as axes_reset

    # Only a full login clears the count of failures for the username.
    axes_reset(username=user.username)


def mfa_confirm_enrolment(*, request: HttpRequest, user: User, code: str) -> list[str]:
    """Activate the user's new TOTP device with a correct code; return ten backup codes.

    The backup codes are returned once to be shown once; pamsite never shows them again.
    """
    code = _normalise(code)
    with transaction.atomic():
        device = (
            TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).order_by("pk").first()
        )
        if device is None:
            raise MFAError("There is no enrolment in progress: start again.", reason="no_enrolment")
        if _is_totp_shape(code) and device.verify_token(code):
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
            codes = _new_backup_codes(user)
            _complete_login(request, user, device)
            audit_record(
                action="mfa.enrolled",
                request=request,
                obj=user,
                details={"device": "totp", "backups_issued": len(codes)},
            )
            user_logged_in.send(sender=user.__class__, request=request, user=user)
            return codes
        audit_record(action="mfa.enrol.failure", request=request, obj=user, details={"reason": "wrong_code"})
    raise MFAError(
        "That code is not right. Enter the 6-digit code your authenticator app shows now; "
        "if it keeps failing, check that the phone sets its clock automatically.",
        reason="wrong_code",
    )


def _verify_code(user: User, code: str) -> tuple[object | None, str]:
    """Check a code against the user's devices: (device or None, failure reason)."""
    code = _normalise(code)
    if not code:
        return None, "empty"
    devices = (
        TOTPDevice.objects.filter(user=user, confirmed=True)
        if _is_totp_shape(code)
        else StaticDevice.objects.filter(user=user, confirmed=True)
    )
    reason = "wrong_code"
    for device in devices.select_for_update():
        allowed, _ = device.verify_is_allowed()
        if not allowed:
            reason = "throttled"
            continue
        if device.verify_token(code):
            return device, ""
        if isinstance(device, TOTPDevice) and _was_replayed(device, code):
            reason = "replayed"
    return None, reason


_FAILURE_MESSAGES = {
    "empty": "Enter the 6-digit code from your authenticator app, or one of your backup codes.",
    "wrong_code": (
        "That code is not right. Enter the code your authenticator app shows now, or a backup code."
    ),
    "replayed": (
        "That code has already been used. Wait for your app to show the next code and enter that one."
    ),
    "throttled": "Too many wrong codes in a row: wait a few seconds before trying again.",
}


def mfa_verify(*, request: HttpRequest, user: User, code: str) -> VerifyResult:
    """Second step of login: check a TOTP or backup code and verify the session.

    A failure is audited and counted towards the account's lockout (with wrong
    passwords), then MFAError is raised with a message for the user.
    """
    with transaction.atomic():
        device, reason = _verify_code(user, code)
        if device is not None:
            _complete_login(request, user, device)
            method = "totp" if isinstance(device, TOTPDevice) else "backup_code"
            left = mfa_backup_codes_left(user=user) if method == "backup_code" else None
            details = {"method": method}
            if left is not None:
                details["backups_left"] = left
            audit_record(action="auth.login.success", request=request, details=details)
            user_logged_in.send(sender=user.__class__, request=request, user=user)
            return VerifyResult(method=method, backup_codes_left=left)
        audit_record(action="auth.mfa.failure", request=request, details={"reason": reason})
    # Outside the transaction: axes records the failure in its own, and may lock the account.
    user_login_failed.send(sender=__name__, credentials={"username": user.username}, request=request)
    raise MFAError(_FAILURE_MESSAGES[reason], reason=reason)


def mfa_check_fresh_code(*, request: HttpRequest, user: User, purpose: str, code: str) -> None:
    """Require a fresh TOTP code from an already signed-in user before a sensitive step.

    Backup codes are not accepted here. A failure is audited, counted towards the
    lockout, and raises MFAError.
    """
    normalised = _normalise(code)
    with transaction.atomic():
        if _is_totp_shape(normalised):
            device, reason = _verify_code(user, normalised)
        else:
            device, reason = None, "wrong_code"
        if device is not None:
            return
        audit_record(
            action="auth.mfa.failure", request=request, details={"reason": reason, "purpose": purpose}
        )
    user_login_failed.send(sender=__name__, credentials={"username": user.username}, request=request)
    raise MFAError(_FAILURE_MESSAGES[reason], reason=reason)


def end_user_sessions(*, user: User, keep_session_key: str | None = None) -> int:
    """Delete every web session of the user (but the one named); returns how many."""
    ended = 0
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if session.session_key == keep_session_key:
            continue
        if str(session.get_decoded().get("_auth_user_id")) == str(user.pk):
            session.delete()
            ended += 1
    return ended


def _delete_devices(user: User) -> None:
    for device in devices_for_user(user, confirmed=None):
        device.delete()


def mfa_self_reset(*, request: HttpRequest, user: User, password: str, code: str) -> None:
    """Remove the user's own authenticator after a fresh password and code.

    The user stays signed in with the password only and is sent to enrol a new one.
    """
    if not user.check_password(password):
        audit_record(
            action="mfa.reset.failure", request=request, obj=user, details={"reason": "bad_password"}
        )
        user_login_failed.send(sender=__name__, credentials={"username": user.username}, request=request)
        raise MFAError("Your password is not right; nothing was changed.", reason="bad_password")
    with transaction.atomic():
        device, reason = _verify_code(user, code)
        if device is None:
            audit_record(action="mfa.reset.failure", request=request, obj=user, details={"reason": reason})
        else:
            _delete_devices(user)
            end_user_sessions(user=user, keep_session_key=request.session.session_key)
            audit_record(action="mfa.reset", request=request, obj=user, details={"by": "self"})
            return
    user_login_failed.send(sender=__name__, credentials={"username": user.username}, request=request)
    raise MFAError(_FAILURE_MESSAGES[reason] + " Nothing was changed.", reason=reason)


@transaction.atomic
def mfa_admin_reset(*, request: HttpRequest, acting_user: User, user: User, reason: str) -> int:
    """A pam-admin removes another user's authenticator (lost phone); audited.

    All of the user's web sessions end; at next login they enrol a new device.
    Returns the number of sessions ended.
    """
    _delete_devices(user)
    ended = end_user_sessions(user=user)
    audit_record(
        action="mfa.reset",
        request=request,
        obj=user,
        details={"by": "pam-admin", "reason": reason, "sessions_ended": ended},
    )
    return ended


def mfa_regenerate_backup_codes(*, request: HttpRequest, user: User, code: str) -> list[str]:
    """Replace the user's backup codes after a fresh TOTP code (the old ones stop working)."""
    code = _normalise(code)
    with transaction.atomic():
        device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).first()
        if device is not None and _is_totp_shape(code) and device.verify_token(code):
            codes = _new_backup_codes(user)
            audit_record(
                action="mfa.backup_codes.issued", request=request, obj=user, details={"count": len(codes)}
            )
            return codes
        audit_record(
            action="mfa.backup_codes.failure", request=request, obj=user, details={"reason": "wrong_code"}
        )
    raise MFAError(_FAILURE_MESSAGES["wrong_code"], reason="wrong_code")


def login_failure_reason(*, username: str, locked_out: bool) -> str:
    """Why a password login failed, for the audit trail only (never shown to the user)."""
    if locked_out:
        return "locked_out"
    user = User.objects.filter(username=username).first()
    if user is None:
        return "unknown_user"
    if not user.is_active:
        return "inactive"
    return "bad_password"


def record_login_failure(*, request: HttpRequest, username: str, locked_out: bool) -> None:
    audit_record(
        action="auth.login.failure",
        request=request,
        actor_username=username[:150],
        details={
            "reason": login_failure_reason(username=username, locked_out=locked_out),
            "step": "password",
        },
    )


def record_password_ok(*, request: HttpRequest, user: User) -> None:
    audit_record(action="auth.login.password_ok", request=request, actor=user)


def record_logout(*, request: HttpRequest, user: User) -> None:
    audit_record(action="auth.logout", request=request, actor=user)


def record_lockout(*, request: HttpRequest | None, username: str | None, at: datetime | None = None) -> None:
    audit_record(
        action="auth.lockout",
        request=request,
        actor_username=(username or "")[:150],
        details={"reason": "too many failures"},
    )
