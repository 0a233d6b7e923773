"""Static passwords kept consistent in two systems: Vault's KV and the target's own login.

The rotation changes the password on the target (``targets.ssh_blocking``) and records it
in Vault (``vault.sources``' KV operations); neither layer below knows of the other, so the
orchestration lives here. The invariant: KV and the target never disagree without KV
holding both candidates (``pending_password``), and a finished or failed rotation leaves
KV's ``password`` equal to the one the target takes.

Reading a static password to hand it out (the gateway's login, a show-once reveal) goes
through here too: a rotation left half done by a crash is settled first, by asking the
target which of the two passwords it takes.
"""

from __future__ import annotations

import logging
import secrets
import string
from datetime import UTC, datetime, timedelta
from typing import Any

from django.views.decorators.debug import sensitive_variables

from targets import errors, ssh_blocking
from vault import sources
from vault.client import VaultClient, VaultConflict, VaultError, get_client
from vault.sources import STATIC, AccountRef, CredentialError, RevealedSecret

logger = logging.getLogger(__name__)

# A pending_password younger than this belongs to a rotation that may still be running (its
# logins and passwd each time out well within it); older, it is a crashed one to reconcile.
ROTATION_RUNNING_SECONDS = 300
PASSWORD_LENGTH = 32
# The symbols generated passwords draw from (an alphabet, not a password): no ':' (chpasswd's
# separator), no quotes, backslash, space or control characters.
PASSWORD_SYMBOLS = "-_.,+=@%^*!#~"  # noqa: S105  # nosec B105
PASSWORD_ALPHABET = string.ascii_letters + string.digits + PASSWORD_SYMBOLS
SETTLED_LATER = "the next checkout or password rotation tries both on the target and keeps the one that works"


class RotationError(CredentialError):
    """A static password rotation failed; Vault's KV and the target still agree (see message)."""


# --- Handing a static password out -------------------------------------------------------


def static_login_password(*, account: AccountRef, vault: VaultClient | None = None) -> str:
    """The static account's current password, for the gateway to log in with (never shown).

    A rotation left half done is settled first (``static_reconcile``).
    """
    vault = vault or get_client()
    _settle_pending(account, vault)
    return sources.static_login_password(account=account, vault=vault)


def reveal(*, account: AccountRef, grant_ref: str, vault: VaultClient | None = None) -> RevealedSecret:
    """``vault.sources.reveal``, a static account's half-done rotation settled first."""
    vault = vault or get_client()
    if account.kind == STATIC:
        _settle_pending(account, vault)
    return sources.reveal(account=account, grant_ref=grant_ref, vault=vault)


def _settle_pending(account: AccountRef, vault: VaultClient) -> None:
    """Reconcile a pending rotation, so that reading KV's password gives the one the target takes.

    When it cannot be settled (still running, or neither password works) the read that
    follows raises ``sources.RotationPending``, which says so.
    """
    data, _ = sources.static_secret(account=account, vault=vault)
    if data.get("pending_password"):
        static_reconcile(account=account, vault=vault)


# --- Rotation ------------------------------------------------------------------------------


def generate_password(*, length: int = PASSWORD_LENGTH, unlike: str = "") -> str:
    """A random password with every character class, safe for chpasswd and passwd.

    ``unlike``: the password it replaces. PAM's ``obscure`` check refuses a new password
    that shares more than half its characters with the old one, so such draws are redone.
    """
    while True:
        password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        if (
            any(c.islower() for c in password)
            and any(c.isupper() for c in password)
            and any(c.isdigit() for c in password)
            and any(c in PASSWORD_SYMBOLS for c in password)
            and not _too_similar(unlike, password)
        ):
            return password


def _too_similar(old: str, new: str) -> bool:
    """pam_unix's ``obscure`` similarity rule (as in Debian's pam_unix and shadow's obscure.c)."""
    n = min(len(old), len(new))
    shared = sum(1 for c in old[:n] if c in new)
    return n > 0 and n < shared * 2


@sensitive_variables("data", "current", "new")
def static_rotate(*, account: AccountRef, vault: VaultClient | None = None) -> int:
    """Give a static account a new random password on its target; returns the new KV version.

    KV and the target never disagree without KV knowing both candidates: first a KV
    version holds the current password and the new one as ``pending_password``; then the
    target changes it (logged in with the current one); then a fresh login with the new
    one must work and one with the old must not; only then a KV version holds just the
    new password. Any failure raises ``RotationError`` after settling KV to what the
    target takes (or, when that cannot be known, keeping the pending state for
    ``static_reconcile``, which runs first here to repair an earlier crashed rotation).
    A rotation younger than ``ROTATION_RUNNING_SECONDS`` is taken to be still running:
    a second one is refused rather than racing it.
    """
    vault = vault or get_client()
    _check_kind(account)
    _check_rotatable(account)
    slug = account.slug
    try:
        data, _ = sources.static_secret(account=account, vault=vault)
        if _rotation_running(data):
            raise RotationError(
                f"A rotation of {slug} started at {data.get('pending_since')} is still running: retry later"
            )
        if static_reconcile(account=account, vault=vault) == "unknown":
            raise RotationError(
                f"Cannot rotate {slug}: an earlier rotation was interrupted and neither the old nor the "
                "new password logs in (or the target is unreachable): check the target, then retry"
            )
        data, version = sources.static_secret(account=account, vault=vault)
        current = data["password"]
        new = generate_password(unlike=current)
        try:
            pending_version = sources.static_write_pending(
                account=account, data=data, version=version, new_password=new, since=_now(), vault=vault
            )
        except VaultConflict:
            raise RotationError(f"The password of {slug} changed in Vault while rotating: retry") from None
    except RotationError:
        raise
    except VaultError as exc:
        raise RotationError(f"Rotation of {slug} failed before the target was touched: {exc}") from exc
    outcome = _Outcome(vault, account, data, pending_version)

    target = _target_kwargs(account)
    try:
        ssh_blocking.change_password(**target, current_password=current, new_password=new)
    except errors.NotLoggedIn as exc:
        # The login failed: nothing ran on the target, the current password is still the one.
        outcome.settle(current, verified=False)
        raise RotationError(f"Rotation of {slug} failed; the password was not changed: {exc}") from exc
    except errors.TargetError as exc:
        # passwd or chpasswd failed, or the connection dropped: ask the target what it takes now.
        said = outcome.settle_by_probing(target, current, new)
        raise RotationError(f"Rotation of {slug} failed ({exc}); {said}") from exc

    try:
        new_works = ssh_blocking.check_password_login(**target, password=new)
        old_works = ssh_blocking.check_password_login(**target, password=current)
    except errors.TargetError as exc:
        raise RotationError(
            f"Rotation of {slug}: the target changed the password but the check failed ({exc}); Vault "
            f"keeps both passwords until {SETTLED_LATER}"
        ) from exc
    if new_works and not old_works:
        final = outcome.settle(new, verified=True)
        logger.info("Rotated the password of %s (KV version %d)", slug, final)
        return final
    if new_works:
        outcome.settle(new, verified=True)
        raise RotationError(
            f"Rotation of {slug}: the new password works but the old one still logs in too; Vault now "
            "holds the new one. Check the target's authentication (another password source?)"
        )
    if old_works:
        outcome.settle(current, verified=True)
        raise RotationError(
            f"Rotation of {slug}: the target said the password was changed but still takes only the old "
            "one; Vault keeps the old one"
        )
    raise RotationError(
        f"Rotation of {slug}: neither the old nor the new password logs in after the change; Vault "
        f"keeps both until {SETTLED_LATER}. Check the target"
    )


class _Outcome:
    """Records in KV which password the target takes at the end of a rotation."""

    def __init__(self, vault: VaultClient, account: AccountRef, data: dict[str, Any], pending_version: int):
        self.vault = vault
        self.account = account
        self.data = data
        self.pending_version = pending_version

    @sensitive_variables("password")
    def settle(self, password: str, *, verified: bool) -> int | None:
        """Write a KV version holding only ``password``; the new version (None: left to another writer).

        ``verified``: the target was just asked, so its answer wins over whatever was written
        to KV meanwhile. Otherwise (nothing was done on the target) a later write stands.
        """
        slug = self.account.slug

        def write(cas: int | None) -> int:
            return sources.static_write_settled(
                account=self.account, data=self.data, password=password, cas=cas, vault=self.vault
            )

        try:
            try:
                return write(self.pending_version)
            except VaultConflict:
                if not verified:
                    logger.warning("Rotation of %s: KV changed meanwhile; the target was not touched", slug)
                    return None
                logger.warning("Rotation of %s: KV changed meanwhile; recording what the target takes", slug)
                return write(None)
        except VaultError as exc:
            raise RotationError(
                f"Rotation of {slug}: Vault could not record the outcome ({exc}); it keeps both passwords "
                f"until {SETTLED_LATER}"
            ) from exc

    @sensitive_variables("current", "new")
    def settle_by_probing(self, target: dict[str, Any], current: str, new: str) -> str:
        """After a change that may or may not have happened: ask the target, record what works."""
        try:
            if ssh_blocking.check_password_login(**target, password=new):
                self.settle(new, verified=True)
                return "the target took the new password anyway, and Vault now holds it"
            if ssh_blocking.check_password_login(**target, password=current):
                self.settle(current, verified=True)
                return "the target still takes the old password, which Vault keeps"
        except errors.TargetError:
            pass
        return f"Vault keeps both passwords until {SETTLED_LATER}"


@sensitive_variables("data", "current", "pending")
def static_reconcile(*, account: AccountRef, vault: VaultClient | None = None) -> str:
    """Settle a static account whose rotation was left half done; "current", "rotated" or "unknown".

    Without a ``pending_password`` in KV there is nothing to do ("current"). Otherwise the
    target is asked which of the two logs in: the pending one → KV holds it ("rotated");
    the current one → the pending one is dropped ("current"); neither, or the target is
    unreachable → KV is left as it is ("unknown"). So is a rotation that started less than
    ``ROTATION_RUNNING_SECONDS`` ago: it may still be running, and is left alone ("unknown").
    """
    vault = vault or get_client()
    _check_kind(account)
    data, version = sources.static_secret(account=account, vault=vault)
    pending = data.get("pending_password")
    if not pending:
        return "current"
    if _rotation_running(data):
        logger.info(
            "Reconcile %s: a rotation started at %s may still run", account.slug, data["pending_since"]
        )
        return "unknown"
    _check_rotatable(account)
    current = data["password"]
    target = _target_kwargs(account)
    try:
        if ssh_blocking.check_password_login(**target, password=pending):
            password, state = pending, "rotated"
        elif ssh_blocking.check_password_login(**target, password=current):
            password, state = current, "current"
        else:
            logger.warning("Reconcile %s: neither the current nor the pending password logs in", account.slug)
            return "unknown"
    except errors.TargetError as exc:
        logger.warning("Reconcile %s: cannot ask the target: %s", account.slug, exc)
        return "unknown"
    try:
        sources.static_write_settled(account=account, data=data, password=password, cas=version, vault=vault)
    except VaultConflict:
        raise RotationError(
            f"The password of {account.slug} changed in Vault while reconciling: retry"
        ) from None
    logger.info("Reconciled %s: %s", account.slug, state)
    return state


def _rotation_running(data: dict[str, Any]) -> bool:
    """Whether KV shows a rotation that started so recently it may still be running."""
    if not data.get("pending_password"):
        return False
    try:
        since = datetime.fromisoformat(str(data.get("pending_since")))
    except ValueError:
        return False  # no usable time: treat it as an old, crashed rotation
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return _now() - since < timedelta(seconds=ROTATION_RUNNING_SECONDS)


def _now() -> datetime:
    return datetime.now(UTC)


def _check_kind(account: AccountRef) -> None:
    if account.kind != STATIC:
        raise CredentialError(f"{account.slug} is a {account.kind} account, not {STATIC}")


def _check_rotatable(account: AccountRef) -> None:
    if not account.host or not account.host_key:
        raise RotationError(
            f"{account.slug} cannot be rotated: its target has no host or no pinned host key "
            "(a pam-admin must fetch and confirm it)"
        )


def _target_kwargs(account: AccountRef) -> dict[str, Any]:
    return {
        "host": account.host,
        "port": account.port,
        "username": account.username,
        "host_key": account.host_key,
        "target": account.slug,
    }
