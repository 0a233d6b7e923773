"""Lockouts at the SSH gateway, driven with the real OpenSSH client: one user's wrong codes lock
only that user, throttled retries never count, spraying locks the address, and the client is
told until when (or how long to wait) in a keyboard-interactive round before the gateway closes.

The client runs with ssh's default LogLevel (INFO), as a person's does: OpenSSH prints a
keyboard-interactive round's name and instructions at that level (the fixture's ERROR hides
them), and a disconnect's message at any level.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from identity.lockout import local_time_text
from identity.models import LoginFailure, LoginLock
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

USER_ADDRESS = "127.0.0.1"
SPRAYER = "127.0.0.6"


def ssh(gateway, user, login: str, *, source: str = USER_ADDRESS, **kw) -> subprocess.CompletedProcess:
    """``ssh login@gateway true`` from ``source``; the password and code answered by the askpass
    program (``code=`` a fixed one). Returns the result with stderr as text, lines ending in LF."""
    options = [o.replace("LogLevel=ERROR", "LogLevel=INFO") for o in gateway.client_options()]
    argv = ["ssh", *options, "-p", str(gateway.port), "-T", "-b", source, f"{login}@{gateway.host}", "true"]
    result = subprocess.run(
        argv, env=gateway.env(user, **kw), capture_output=True, timeout=60, start_new_session=True
    )
    # OpenSSH ends its log lines with CR LF.
    stderr = result.stderr.decode().replace("\r\n", "\n")
    return subprocess.CompletedProcess(argv, result.returncode, result.stdout, stderr)


def unthrottle(user) -> None:
    """What waiting out django-otp's growing delay between connections would do."""
    TOTPDevice.objects.get(user=user, confirmed=True).throttle_reset()


def wrong_code(user) -> str:
    from tests.totp import totp_code

    good = totp_code(TOTPDevice.objects.get(user=user, confirmed=True).bin_key)
    return f"{(int(good) + 500_000) % 1_000_000:06d}"


def told_in_the_round_and_the_disconnect(stderr: str, message: str) -> None:
    """The message came as a keyboard-interactive round's instructions (after its name,
    "pamsite", on a line of its own) and again as the disconnect's message."""
    assert f"pamsite\n{message}" in stderr, stderr
    assert re.search(r"Received disconnect from \S+ port \d+:14: " + re.escape(message), stderr), stderr
    assert "Permission denied" not in stderr


def logged_in(user) -> bool:
    return AuditEvent.objects.filter(action="auth.login.success", actor=user, details__channel="ssh").exists()


def test_five_wrong_codes_for_one_user_do_not_lock_another_user_on_the_same_address(
    gateway, alice, bob, settings
):
    limit = settings.LOGIN_FAILURE_LIMIT
    for n in range(limit):
        unthrottle(alice)
        result = ssh(gateway, alice, "alice", code=wrong_code(alice))
        assert result.returncode == 255
        assert LoginFailure.objects.filter(username="alice").count() == n + 1, result.stderr
    # The fifth wrong code locked her, and that connection was told until when.
    lock = LoginLock.objects.get(scope="username", value="alice")
    assert lock.failures == limit
    assert "alice: sign-in is locked until" in result.stderr
    # Bob, from the same address, with his right password and code, logs in.
    result = ssh(gateway, bob, "bob")
    assert logged_in(bob), result.stderr
    assert not LoginLock.objects.filter(scope="address", locked_until__isnull=False).exists()


def test_a_locked_user_is_told_until_when(gateway, alice, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        unthrottle(alice)
        ssh(gateway, alice, "alice", password="wrong " + PASSWORD)
    lock = LoginLock.objects.get(scope="username", value="alice")
    until = local_time_text(lock.locked_until)
    assert re.fullmatch(r"(\d{4}-\d\d-\d\d )?\d\d:\d\d CES?T", until), until
    # Her right password and code, from another address: refused, and told until when.
    gateway.askpass_log.unlink(missing_ok=True)
    result = ssh(gateway, alice, "alice", source="127.0.0.7")
    assert result.returncode == 255 and not logged_in(alice)
    told_in_the_round_and_the_disconnect(
        result.stderr,
        f"Too many wrong passwords or codes for alice: sign-in is locked until {until}. "
        "Try again then, or ask a pam-admin to unlock it.",
    )
    # Never asked for a code; the refusal audited, not counted.
    assert "code" not in gateway.askpass_log.read_text().lower()
    assert AuditEvent.objects.filter(
        action="auth.login.failure", actor_username="alice", details__reason="locked_out"
    ).exists()
    assert LoginLock.objects.get(pk=lock.pk).failures == settings.LOGIN_FAILURE_LIMIT


def test_a_throttled_retry_is_not_counted_and_the_user_is_told_to_wait(gateway, alice, settings):
    """A wrong code, then the client's retry while the authenticator is throttled: the retry
    is not checked, not counted, and the client is told how long to wait."""
    # 30 s instead of 1 s after a wrong code: the retries below come well within it.
    settings.OTP_TOTP_THROTTLE_FACTOR = 30
    result = ssh(gateway, alice, "alice", code=wrong_code(alice))
    assert result.returncode == 255
    assert "That code is not right." in result.stderr  # the second round's instructions
    match = re.search(
        r"Too many wrong codes in a row: wait (\d+) seconds?, then connect again\.", result.stderr
    )
    assert match, result.stderr
    told_in_the_round_and_the_disconnect(result.stderr, match.group(0))
    reasons = AuditEvent.objects.filter(action="auth.mfa.failure", actor_username="alice").order_by(
        "sequence"
    )
    assert [e.details["reason"] for e in reasons] == ["wrong_code", "throttled"]
    assert LoginFailure.objects.filter(username="alice").count() == 1
    # Many more throttled tries: still one failure counted, never locked.
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        result = ssh(gateway, alice, "alice", code=wrong_code(alice))
        assert "wait" in result.stderr
    assert LoginFailure.objects.filter(username="alice").count() == 1
    assert not LoginLock.objects.filter(locked_until__isnull=False).exists()
    unthrottle(alice)
    ssh(gateway, alice, "alice")
    assert logged_in(alice)


def test_spraying_from_one_address_locks_the_address_and_the_client_is_told(gateway, alice, settings):
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 6
    settings.LOGIN_ADDRESS_USERNAMES = 3
    for n in range(settings.LOGIN_ADDRESS_FAILURE_LIMIT):
        result = ssh(gateway, alice, f"user{n % 3}", source=SPRAYER, password="Winter2026!")
        assert result.returncode == 255
    assert f"came from {SPRAYER}: sign-in from this address is locked until" in result.stderr
    lock = LoginLock.objects.get(scope="address", value=SPRAYER)
    assert (lock.failures, lock.usernames) == (6, 3)
    event = AuditEvent.objects.get(action="auth.lockout")
    assert event.details["scope"] == "address" and event.details["channel"] == "ssh"
    # Alice from that address is refused, told so; from her own she logs in.
    result = ssh(gateway, alice, "alice", source=SPRAYER)
    assert not logged_in(alice)
    assert f"several different usernames came from {SPRAYER}" in result.stderr
    assert "Received disconnect" in result.stderr
    ssh(gateway, alice, "alice", source=USER_ADDRESS)
    assert logged_in(alice)
