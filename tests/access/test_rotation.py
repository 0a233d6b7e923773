"""Static password rotation and reconciliation against a real sshd and OpenBao.

The invariant under test: Vault's KV and the target never disagree without KV holding
both candidates (``pending_password``), and a finished or failed rotation leaves KV's
``password`` equal to the one the target takes.
"""

from __future__ import annotations

import logging
import string
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from access import rotation
from access.rotation import RotationError
from targets import ssh_blocking
from tests.fixtures.openbao import free_port
from tests.fixtures.pacs import account_ref_on
from vault import sources
from vault.client import get_client
from vault.sources import AccountRef


@pytest.fixture
def vault_app(approle_settings):
    """The client the app (the worker, here) uses: AppRole, the pamsite-app policy."""
    return get_client()


@pytest.fixture
def static_account(sshd_target, vault_app):
    """A factory: a throwaway user on the sshd, onboarded as a static account (KV holds its password)."""

    def make(*, uid0: bool = False, stored_password: str | None = None):
        user = sshd_target.create_user(uid0=uid0)
        account = account_ref_on(sshd_target, user, "static")
        password = user.password if stored_password is None else stored_password
        sources.static_set_password(account=account, password=password, vault=vault_app)
        return account, user

    return make


def logs_in(sshd, name: str, password: str) -> bool:
    return ssh_blocking.check_password_login(
        host=sshd.host, port=sshd.port, username=name, host_key=sshd.host_key, password=password
    )


def test_rotation_through_passwd_leaves_only_the_new_password_working(
    static_account, vault_app, sshd_target, caplog
):
    caplog.set_level(logging.DEBUG)
    account, user = static_account()
    offset = len(sshd_target.log())

    version = rotation.static_rotate(account=account, vault=vault_app)

    data, current_version = vault_app.kv_read_version(account.secret_path)
    assert version == current_version
    assert set(data) == {"username", "password"}  # no pending_password left
    assert data["password"] != user.password
    assert logs_in(sshd_target, user.name, data["password"])
    assert not logs_in(sshd_target, user.name, user.password)
    assert "command on pts/" in sshd_target.log()[offset:]  # passwd, through a pty
    assert data["password"] not in caplog.text and user.password not in caplog.text
    assert f"Rotated the password of {account.slug} (KV version {version})" in caplog.text
    # The revealed secret is the new one.
    assert rotation.reveal(account=account, grant_ref="1", vault=vault_app).password == data["password"]


def test_rotation_of_a_root_equivalent_account_uses_chpasswd(static_account, vault_app, sshd_target):
    """uid 0 (a second name for root: the real root's password is never touched here)."""
    account, user = static_account(uid0=True)
    offset = len(sshd_target.log())

    rotation.static_rotate(account=account, vault=vault_app)

    data = vault_app.kv_read(account.secret_path)
    assert "pending_password" not in data
    assert logs_in(sshd_target, user.name, data["password"])
    assert not logs_in(sshd_target, user.name, user.password)
    assert "on pts/" not in sshd_target.log()[offset:]  # chpasswd on stdin, no pty


def test_two_rotations_in_a_row_each_change_the_password(static_account, vault_app, sshd_target):
    account, user = static_account()

    first = rotation.static_rotate(account=account, vault=vault_app)
    password_one = vault_app.kv_read(account.secret_path)["password"]
    second = rotation.static_rotate(account=account, vault=vault_app)
    password_two = vault_app.kv_read(account.secret_path)["password"]

    assert second > first
    assert len({user.password, password_one, password_two}) == 3
    assert logs_in(sshd_target, user.name, password_two)
    assert not logs_in(sshd_target, user.name, password_one)


def test_an_unreachable_target_fails_the_rotation_and_changes_nothing(static_account, vault_app, sshd_target):
    account, user = static_account()
    unreachable = AccountRef(**{**account.__dict__, "port": free_port()})

    with pytest.raises(RotationError) as excinfo:
        rotation.static_rotate(account=unreachable, vault=vault_app)

    assert str(excinfo.value).startswith(
        f"Rotation of {account.slug} failed; the password was not changed: target {account.slug} "
        f"(127.0.0.1:{unreachable.port}) refused the connection"
    )
    assert vault_app.kv_read(account.secret_path) == {"username": user.name, "password": user.password}
    assert logs_in(sshd_target, user.name, user.password)


def test_a_wrong_password_in_vault_fails_the_rotation_and_changes_nothing(
    static_account, vault_app, sshd_target
):
    account, user = static_account(stored_password="Not-The-Real-Password-1")

    with pytest.raises(RotationError) as excinfo:
        rotation.static_rotate(account=account, vault=vault_app)

    message = str(excinfo.value)
    assert message.startswith(
        f"Rotation of {account.slug} failed; the password was not changed: Authentication"
    )
    assert "Not-The-Real-Password-1" not in message and user.password not in message
    assert vault_app.kv_read(account.secret_path) == {
        "username": user.name,
        "password": "Not-The-Real-Password-1",
    }
    assert logs_in(sshd_target, user.name, user.password)


def test_a_target_that_refuses_the_change_keeps_the_old_password_in_vault(
    static_account, vault_app, sshd_target
):
    """passwd refuses (minimum password age): the target still takes the old one, and so does KV."""
    account, user = static_account()
    subprocess.run(["chage", "-m", "7", user.name], check=True)

    with pytest.raises(RotationError) as excinfo:
        rotation.static_rotate(account=account, vault=vault_app)

    message = str(excinfo.value)
    assert "refused to change the password" in message
    assert "the target still takes the old password, which Vault keeps" in message
    assert vault_app.kv_read(account.secret_path) == {"username": user.name, "password": user.password}
    assert logs_in(sshd_target, user.name, user.password)


def test_rotation_needs_a_pinned_host_key(static_account, vault_app):
    account, _ = static_account()
    unpinned = AccountRef(**{**account.__dict__, "host_key": ""})

    with pytest.raises(
        RotationError, match="cannot be rotated: its target has no host or no pinned host key"
    ):
        rotation.static_rotate(account=unpinned, vault=vault_app)


# --- Reconciliation of an interrupted rotation --------------------------------------------------


def interrupted(vault, account, user, pending: str, *, minutes_ago: int = 30) -> None:
    """KV as a rotation that crashed (or is still running) after its first write leaves it."""
    since = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    vault.kv_write(
        account.secret_path,
        {
            "username": user.name,
            "password": user.password,
            "pending_password": pending,
            "pending_since": since.isoformat(),
        },
    )


def test_reconcile_keeps_the_pending_password_when_the_target_took_it(static_account, vault_app, sshd_target):
    account, user = static_account()
    interrupted(vault_app, account, user, "Pending-Password-42.x")
    sshd_target.set_password(user.name, "Pending-Password-42.x")  # the crash came after the change

    assert rotation.static_reconcile(account=account, vault=vault_app) == "rotated"
    assert vault_app.kv_read(account.secret_path) == {
        "username": user.name,
        "password": "Pending-Password-42.x",
    }


def test_reconcile_drops_the_pending_password_when_the_target_kept_the_old(static_account, vault_app):
    account, user = static_account()
    interrupted(vault_app, account, user, "Pending-Password-42.y")  # the crash came before the change

    assert rotation.static_reconcile(account=account, vault=vault_app) == "current"
    assert vault_app.kv_read(account.secret_path) == {"username": user.name, "password": user.password}


def test_reconcile_leaves_kv_alone_when_neither_password_works(static_account, vault_app, sshd_target):
    account, user = static_account()
    interrupted(vault_app, account, user, "Pending-Password-42.z")
    sshd_target.set_password(user.name, "Someone-Else-Set-This-1")
    before = vault_app.kv_read(account.secret_path)

    assert rotation.static_reconcile(account=account, vault=vault_app) == "unknown"
    assert vault_app.kv_read(account.secret_path) == before
    with pytest.raises(RotationError, match="an earlier rotation was interrupted and neither"):
        rotation.static_rotate(account=account, vault=vault_app)
    with pytest.raises(
        sources.CredentialError, match="is running or was interrupted, and pamsite cannot tell"
    ):
        rotation.reveal(account=account, grant_ref="1", vault=vault_app)


def test_rotation_repairs_an_interrupted_rotation_first(static_account, vault_app, sshd_target):
    account, user = static_account()
    interrupted(vault_app, account, user, "Pending-Password-42.w")
    sshd_target.set_password(user.name, "Pending-Password-42.w")

    rotation.static_rotate(account=account, vault=vault_app)

    data = vault_app.kv_read(account.secret_path)
    assert set(data) == {"username", "password"}
    assert data["password"] not in (user.password, "Pending-Password-42.w")
    assert logs_in(sshd_target, user.name, data["password"])
    assert not logs_in(sshd_target, user.name, "Pending-Password-42.w")


def test_a_rotation_still_running_is_left_alone(static_account, vault_app, sshd_target):
    """A pending password written a minute ago may belong to a rotation in progress elsewhere."""
    account, user = static_account()
    interrupted(vault_app, account, user, "Pending-Password-42.v", minutes_ago=1)
    before = vault_app.kv_read(account.secret_path)
    offset = len(sshd_target.log())

    assert rotation.static_reconcile(account=account, vault=vault_app) == "unknown"
    with pytest.raises(RotationError, match=f"A rotation of {account.slug} started at .* is still running"):
        rotation.static_rotate(account=account, vault=vault_app)

    assert vault_app.kv_read(account.secret_path) == before
    assert "Connection from" not in sshd_target.log()[offset:]


def test_reconcile_without_a_pending_password_does_not_touch_the_target(
    static_account, vault_app, sshd_target
):
    account, _ = static_account()
    offset = len(sshd_target.log())

    assert rotation.static_reconcile(account=account, vault=vault_app) == "current"
    assert "Connection from" not in sshd_target.log()[offset:]


# --- Generated passwords ------------------------------------------------------------------------------


def test_generated_passwords_are_strong_and_safe_for_chpasswd():
    old = rotation.generate_password()
    for _ in range(200):
        password = rotation.generate_password(unlike=old)
        assert len(password) == 32
        assert not set(password) & set(":\n\r\0 '\"\\")
        assert set(password) & set(string.ascii_lowercase)
        assert set(password) & set(string.ascii_uppercase)
        assert set(password) & set(string.digits)
        assert set(password) & set(rotation.PASSWORD_SYMBOLS)
        assert not rotation._too_similar(old, password)
    assert rotation._too_similar("abcdefgh", "hgfedcbaXYZ")  # pam_unix's "too similar" rule


def test_the_login_password_settles_an_interrupted_rotation_first(static_account, vault_app, sshd_target):
    """The gateway's read: the target took the pending password before the crash, so that one."""
    account, user = static_account()
    interrupted(vault_app, account, user, "Pending-Password-42.u")
    sshd_target.set_password(user.name, "Pending-Password-42.u")

    assert rotation.static_login_password(account=account, vault=vault_app) == "Pending-Password-42.u"
    assert vault_app.kv_read(account.secret_path) == {
        "username": user.name,
        "password": "Pending-Password-42.u",
    }


def test_vault_alone_never_hands_out_a_password_while_a_rotation_is_pending(
    static_account, vault_app, sshd_target
):
    """vault.sources cannot ask the target: it refuses, and leaves the settling to access.rotation."""
    account, user = static_account()
    interrupted(vault_app, account, user, "Pending-Password-42.t")
    offset = len(sshd_target.log())

    with pytest.raises(
        sources.RotationPending, match="is running or was interrupted, and pamsite cannot tell"
    ):
        sources.static_login_password(account=account, vault=vault_app)
    with pytest.raises(sources.RotationPending):
        sources.reveal(account=account, grant_ref="1", vault=vault_app)

    assert "Connection from" not in sshd_target.log()[offset:]
    assert vault_app.kv_read(account.secret_path)["pending_password"] == "Pending-Password-42.t"
