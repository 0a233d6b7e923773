"""Identity services: enrolment, verification and reset of the second factor, login steps,
the users' SSH public keys.

Every state change here is one function, atomic, writing its audit event in the same
transaction. Views call these and do nothing else of substance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth import logout as auth_logout
from django.contrib.auth import user_logged_in
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from django_otp import devices_for_user
from django_otp import login as otp_login
from django_otp.oath import hotp
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.services import audit_record
from identity import lockout
from identity.models import SSHPublicKey, User
from identity.selectors import get_ssh_key_for
from identity.ssh_keys import PublicKeyError, parse_public_key

TOTP_DEVICE_NAME = "authenticator"
BACKUP_DEVICE_NAME = "backup codes"
SSH_KEYS_PER_USER = 20


class MFAError(Exception):
    """A second-factor step failed; the message is safe to show to the user.

    ``reason`` says why ("wrong_code", "throttled", "locked_out", ...); ``wait_seconds`` how
    long a throttled authenticator refuses codes; ``lockout`` the lock a "locked_out" is.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        wait_seconds: int | None = None,
        lockout: lockout.Lockout | None = None,
    ):
        super().__init__(message)
        self.reason = reason
        self.wait_seconds = wait_seconds
        self.lockout = lockout


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


def _channel(request: HttpRequest | None) -> dict[str, str]:
    """Audit details naming the login channel of a request that is not the web's.

    The SSH gateway marks its synthetic requests (identity.gateway_auth); the web's
    audit rows stay as they are. Read from the request so that rows written by
    receivers (the lockout) carry it too.
    """
    channel = getattr(request, "login_channel", None)
    return {"channel": channel} if channel else {}


def _reset_login_failures(username: str) -> None:
    """Forgive the username's counted failures: only a full login does this."""
    lockout.failures_clear(username=username)


def _complete_login(request: HttpRequest, user: User, device) -> None:
    """Mark the session verified with this device and give it a new key."""
    otp_login(request, device)
    # A new session key once both factors are done (session fixation).
    request.session.cycle_key()


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
        allowed, throttle = device.verify_is_allowed()
        if not allowed:
            # Checked first: a throttled device's verify_token says False even for the
            # right code, which would be answered "not right, check the phone's clock".
            wait = lockout.wait_seconds((throttle or {}).get("locked_until"))
            audit_record(
                action="mfa.enrol.failure", request=request, obj=user, details={"reason": "throttled"}
            )
            failure = MFAError(_throttled_message(wait), reason="throttled", wait_seconds=wait)
        elif _is_totp_shape(code) and device.verify_token(code):
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
            codes = _new_backup_codes(user)
            _complete_login(request, user, device)
            _reset_login_failures(user.username)
            audit_record(
                action="mfa.enrolled",
                request=request,
                obj=user,
                details={"device": "totp", "backups_issued": len(codes)},
            )
            user_logged_in.send(sender=user.__class__, request=request, user=user)
            return codes
        else:
            audit_record(
                action="mfa.enrol.failure", request=request, obj=user, details={"reason": "wrong_code"}
            )
            failure = MFAError(
                "That code is not right. Enter the 6-digit code your authenticator app shows now; "
                "if it keeps failing, check that the phone sets its clock automatically.",
                reason="wrong_code",
            )
    raise failure


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
}


def _throttled_message(wait: int) -> str:
    unit = "second" if wait == 1 else "seconds"
    return f"Too many wrong codes in a row: wait {wait} {unit}, then enter the code your app shows."


def _throttle_wait(user: User) -> int:
    """Seconds until the user's throttled authenticator takes codes again (django-otp's delay,
    which doubles with each wrong code in a row)."""
    untils = []
    for model in (TOTPDevice, StaticDevice):
        for device in model.objects.filter(user=user, confirmed=True):
            allowed, throttle = device.verify_is_allowed()
            if not allowed and throttle and throttle.get("locked_until"):
                untils.append(throttle["locked_until"])
    return lockout.wait_seconds(max(untils) if untils else None)


def _code_failure(request: HttpRequest, user: User, reason: str, *, suffix: str = "") -> MFAError:
    """The error for a code refused for ``reason``, counted towards the lockout unless it was
    throttled (django-otp did not even check it). Call it outside the transaction that audited
    the failure (identity.lockout's lock order). A failure that locks, or meets a lock, is
    "locked_out" with the lock's message."""
    if reason == "throttled":
        wait = _throttle_wait(user)
        return MFAError(_throttled_message(wait) + suffix, reason=reason, wait_seconds=wait)
    lock = lockout.failure_record(request=request, username=user.username)
    if lock is not None:
        return MFAError(lock.message(), reason="locked_out", lockout=lock)
    return MFAError(_FAILURE_MESSAGES[reason] + suffix, reason=reason)


def login_code_step(
    *, request: HttpRequest, user: User, code: str, complete: Callable[[object], None]
) -> VerifyResult:
    """The second step of a login, on the web or through the SSH gateway.

    A right code runs ``complete(device)`` (what the channel does on login), clears
    the username's failure count and audits the success, in one transaction. A wrong
    one is audited, counted towards the lockout (with wrong passwords), and MFAError
    is raised with a message for the user: reason "locked_out" (and the lock) when this
    failure locked the username or address. A code refused because the authenticator is
    throttled is audited ("throttled") but never counted: MFAError says how long to wait.
    """
    with transaction.atomic():
        device, reason = _verify_code(user, code)
        if device is not None:
            complete(device)
            _reset_login_failures(user.username)
            method = "totp" if isinstance(device, TOTPDevice) else "backup_code"
            left = mfa_backup_codes_left(user=user) if method == "backup_code" else None
            details = {"method": method, **_channel(request)}
            if left is not None:
                details["backups_left"] = left
            audit_record(action="auth.login.success", request=request, actor=user, details=details)
            return VerifyResult(method=method, backup_codes_left=left)
        audit_record(
            action="auth.mfa.failure",
            request=request,
            actor=user,
            details={"reason": reason, **_channel(request)},
        )
    # Outside the transaction: the lockout counts in its own (identity.lockout's lock order).
    raise _code_failure(request, user, reason)


def mfa_verify(*, request: HttpRequest, user: User, code: str) -> VerifyResult:
    """Second step of the web login: check a TOTP or backup code and verify the session.

    A failure is audited and counted towards the account's lockout (with wrong
    passwords), then MFAError is raised with a message for the user.
    """

    def complete(device) -> None:
        _complete_login(request, user, device)
        user_logged_in.send(sender=user.__class__, request=request, user=user)

    return login_code_step(request=request, user=user, code=code, complete=complete)


def mfa_check_fresh_code(*, request: HttpRequest, user: User, purpose: str, code: str) -> None:
    """Require a fresh TOTP code from an already signed-in user before a sensitive step.

    Backup codes are not accepted here. A failure is audited, counted towards the
    lockout (unless throttled), and raises MFAError; one that locks the username signs
    this session out, as a sign-in would be refused from then on.
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
    raise _signed_out_if_locked(request, _code_failure(request, user, reason))


def _signed_out_if_locked(request: HttpRequest, error: MFAError) -> MFAError:
    """A signed-in user who locked her own username stays signed in no longer."""
    if error.reason == "locked_out" and hasattr(request, "session"):
        auth_logout(request)
    return error


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
        lock = lockout.failure_record(request=request, username=user.username)
        if lock is not None:
            raise _signed_out_if_locked(request, MFAError(lock.message(), reason="locked_out", lockout=lock))
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
    raise _signed_out_if_locked(request, _code_failure(request, user, reason, suffix=" Nothing was changed."))


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
        allowed, throttle = device.verify_is_allowed() if device is not None else (True, None)
        if not allowed:
            wait = lockout.wait_seconds((throttle or {}).get("locked_until"))
            failure = MFAError(_throttled_message(wait), reason="throttled", wait_seconds=wait)
        elif device is not None and _is_totp_shape(code) and device.verify_token(code):
            codes = _new_backup_codes(user)
            audit_record(
                action="mfa.backup_codes.issued", request=request, obj=user, details={"count": len(codes)}
            )
            return codes
        else:
            failure = MFAError(_FAILURE_MESSAGES["wrong_code"], reason="wrong_code")
        audit_record(
            action="mfa.backup_codes.failure", request=request, obj=user, details={"reason": failure.reason}
        )
    raise failure


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
            **_channel(request),
        },
    )


def record_password_ok(*, request: HttpRequest, user: User) -> None:
    audit_record(action="auth.login.password_ok", request=request, actor=user, details=_channel(request))


def record_logout(*, request: HttpRequest, user: User) -> None:
    audit_record(action="auth.logout", request=request, actor=user)


def _public_key_error(message: str, *, code: str) -> ValidationError:
    return ValidationError({"public_key": ValidationError(message, code=code)})


@transaction.atomic
def ssh_key_add(*, user: User, name: str, public_key_line: str, request: HttpRequest | None) -> SSHPublicKey:
    """Register an OpenSSH public key for the user to log in to the SSH gateway with.

    ``public_key_line`` is the line of the user's .pub file; ``name`` her label for
    it (blank: the key's comment). A key that is not acceptable (see
    identity.ssh_keys.parse_public_key), already registered (to her or to anyone
    else: a key belongs to one person), a name she already uses or a 21st key raise
    ValidationError on "public_key" or "name" with a message for the user. The audit
    row holds the name, fingerprint and algorithm, never the key.
    """
    try:
        parsed = parse_public_key(public_key_line)
    except PublicKeyError as exc:
        raise _public_key_error(str(exc), code=exc.code) from None
    name = " ".join((name or "").split()) or " ".join(parsed.comment.split()) or parsed.key_type
    name = name[:100]
    # One add at a time per user, so the limit holds when two forms are sent at once.
    User.objects.select_for_update(no_key=True).filter(pk=user.pk).first()
    mine = SSHPublicKey.objects.filter(user=user)
    existing = SSHPublicKey.objects.filter(key_base64=parsed.key_base64).first()
    if existing is not None and existing.user_id == user.pk:
        raise _public_key_error(f"You have already added this key, as “{existing.name}”.", code="duplicate")
    if existing is not None:
        raise _public_key_error(
            "This key is already registered to another account, and a key belongs to one person. "
            "Make a new key for this account (ssh-keygen -t ed25519) and add that one.",
            code="taken",
        )
    if mine.count() >= SSH_KEYS_PER_USER:
        raise _public_key_error(
            f"You already have {SSH_KEYS_PER_USER} keys, the most one account may have: "
            "remove one you no longer use first.",
            code="too_many",
        )
    if mine.filter(name=name).exists():
        raise ValidationError(
            {
                "name": ValidationError(
                    "You already have a key with this name: choose another.", code="name_taken"
                )
            }
        )
    try:
        with transaction.atomic():
            key = SSHPublicKey.objects.create(
                user=user,
                name=name,
                key_type=parsed.key_type,
                key_base64=parsed.key_base64,
                fingerprint=parsed.fingerprint,
            )
    except IntegrityError:
        # Someone registered the same key a moment ago.
        raise _public_key_error("This key is already registered to an account.", code="taken") from None
    audit_record(
        action="identity.ssh_key.added",
        request=request,
        actor=user,
        obj=key,
        details={"name": key.name, "fingerprint": key.fingerprint, "algorithm": key.key_type},
    )
    return key


@transaction.atomic
def ssh_key_remove(*, user: User, key_pk: int, request: HttpRequest | None) -> SSHPublicKey:
    """Remove one of the user's own SSH keys (another's, or none: 404); returns it, deleted.

    The gateway refuses the key from then on; sessions already open stay open.
    """
    key = get_ssh_key_for(user=user, pk=key_pk)
    pk, label = key.pk, str(key)
    key.delete()
    audit_record(
        action="identity.ssh_key.removed",
        request=request,
        actor=user,
        object_type=SSHPublicKey._meta.label_lower,
        object_id=str(pk),
        object_repr=label,
        details={"name": key.name, "fingerprint": key.fingerprint, "algorithm": key.key_type},
    )
    return key
