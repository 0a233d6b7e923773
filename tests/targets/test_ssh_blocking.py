"""targets/ssh_blocking.py (the SSH door for synchronous callers) against a real OpenSSH sshd."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from targets import ssh, ssh_blocking
from targets.errors import AuthFailed, HostKeyMismatch, NotLoggedIn, TargetError, TargetUnreachable
from tests.fixtures.openbao import free_port
from tests.fixtures.sshd import new_log_lines


def login(sshd, user, **kwargs):
    return ssh_blocking.connect(
        host=sshd.host,
        port=sshd.port,
        username=user.name,
        host_key=sshd.host_key,
        password=user.password,
        **kwargs,
    )


def test_fetch_host_key_gives_the_key_and_the_fingerprint_ssh_keygen_prints(sshd_target):
    key = ssh_blocking.fetch_host_key(host=sshd_target.host, port=sshd_target.port)
    keygen = subprocess.run(
        ["ssh-keygen", "-lf", f"{sshd_target.host_key_path}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()

    assert key.openssh == sshd_target.host_key
    assert key.key_type == "ssh-ed25519"
    assert key.fingerprint == keygen[1]
    assert key.fingerprint.startswith("SHA256:")
    assert ssh.parse_host_key(sshd_target.host_key + " root@pacs01") == key


def test_a_pinned_key_connects_and_runs_commands_with_stdin(sshd_target):
    user = sshd_target.create_user()

    with login(sshd_target, user, target="pacs01") as conn:
        whoami = ssh_blocking.run(connection=conn, command="id -un")
        echoed = ssh_blocking.run(
            connection=conn, command="cat; echo oops >&2; exit 3", stdin=b"study 1.2.3\n"
        )

    assert whoami == (0, f"{user.name}\n".encode(), b"")
    assert echoed.exit_status == 3
    assert echoed.stdout == b"study 1.2.3\n"
    assert echoed.stderr == b"oops\n"


def test_a_wrong_pinned_key_is_refused_before_any_authentication(sshd_target, caplog):
    user = sshd_target.create_user()
    _, other_key = ssh.generate_keypair()  # a valid ed25519 key, but not the host's
    offset = len(sshd_target.log())

    with pytest.raises(HostKeyMismatch) as excinfo:
        ssh_blocking.connect(
            host=sshd_target.host,
            port=sshd_target.port,
            username=user.name,
            host_key=other_key,
            password=user.password,
            target="pacs01",
        )

    message = str(excinfo.value)
    real = ssh.parse_host_key(sshd_target.host_key).fingerprint
    assert message.startswith(
        f"The host key of target pacs01 ({sshd_target.host}:{sshd_target.port}) does not match the "
        f"pinned key (pinned {ssh.parse_host_key(other_key).fingerprint}, offered {real} ssh-ed25519)"
    )
    assert user.password not in message and user.password not in caplog.text
    # sshd saw the connection end before any authentication request.
    logged = new_log_lines(sshd_target, offset, until="[preauth]")
    assert "Connection from 127.0.0.1" in logged
    # The client says why it leaves ("Disconnected"), or the connection is "closed" or, when the
    # key exchange's last packet was still unread, "reset": all before authentication.
    assert re.search(
        r"(Disconnected from|Connection (closed|reset) by) 127\.0\.0\.1 port \d+ \[preauth\]", logged
    ), logged
    for sign_of_auth in ("Accepted", "Failed", "Invalid user", "authenticating user", user.name):
        assert sign_of_auth not in logged


def test_a_missing_pin_is_refused_without_even_connecting(sshd_target):
    user = sshd_target.create_user()
    offset = len(sshd_target.log())

    with pytest.raises(HostKeyMismatch, match="No host key is pinned for target pacs01"):
        ssh_blocking.connect(
            host=sshd_target.host,
            port=sshd_target.port,
            username=user.name,
            host_key="",
            password=user.password,
            target="pacs01",
        )

    time.sleep(0.1)
    assert "Connection from" not in sshd_target.log()[offset:]


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
    ],
    ids=["ecdsa", "rsa"],
)
def test_a_pin_of_a_key_type_the_target_lacks_is_a_mismatch(sshd_target, make_key):
    user = sshd_target.create_user()
    pinned = (
        make_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    )

    with pytest.raises(HostKeyMismatch, match="offers no host key of the pinned type"):
        ssh_blocking.connect(
            host=sshd_target.host,
            port=sshd_target.port,
            username=user.name,
            host_key=pinned,
            password=user.password,
        )


def test_a_malformed_pin_is_refused(sshd_target):
    with pytest.raises(TargetError, match="Unsupported host key type 'ssh-dss'"):
        ssh.parse_host_key("ssh-dss AAAAB3NzaC1kc3MAAACBAP")
    with pytest.raises(TargetError, match="says ssh-ed25519 but its blob holds a 'ecdsa-sha2-nistp256' key"):
        ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key()
        blob = ecdsa.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[
            1
        ]
        ssh.parse_host_key("ssh-ed25519 " + blob.decode())


def test_check_password_login_says_yes_or_no(sshd_target):
    user = sshd_target.create_user()
    common = {"host": sshd_target.host, "port": sshd_target.port, "host_key": sshd_target.host_key}

    assert ssh_blocking.check_password_login(**common, username=user.name, password=user.password) is True
    assert ssh_blocking.check_password_login(**common, username=user.name, password="not-it") is False


def test_an_unreachable_target_is_a_clear_error(sshd_target):
    port = free_port()  # nothing listens there

    with pytest.raises(TargetUnreachable) as excinfo:
        ssh_blocking.check_password_login(
            host="127.0.0.1",
            port=port,
            username="root",
            host_key=sshd_target.host_key,
            password="secret-pw",
            target="pacs01",
        )

    assert str(excinfo.value) == (
        f"target pacs01 (127.0.0.1:{port}) refused the connection: is sshd running on that port?"
    )


def test_a_wrong_password_is_an_authentication_failure(sshd_target):
    user = sshd_target.create_user()

    with pytest.raises(AuthFailed) as excinfo:
        ssh_blocking.connect(
            host=sshd_target.host,
            port=sshd_target.port,
            username=user.name,
            host_key=sshd_target.host_key,
            password="wrong-password-123",
            target="pacs01",
        )

    assert str(excinfo.value) == (
        f"Authentication as {user.name} on target pacs01 ({sshd_target.host}:{sshd_target.port}) failed "
        "(password rejected)"
    )


def test_change_password_answers_passwd_through_a_pty(sshd_target, caplog):
    caplog.set_level(logging.DEBUG)
    user = sshd_target.create_user()
    new = "Pacs-Rotated.Password-2042"
    common = {"host": sshd_target.host, "port": sshd_target.port, "host_key": sshd_target.host_key}
    offset = len(sshd_target.log())

    ssh_blocking.change_password(
        **common, username=user.name, current_password=user.password, new_password=new
    )

    assert ssh_blocking.check_password_login(**common, username=user.name, password=new) is True
    assert ssh_blocking.check_password_login(**common, username=user.name, password=user.password) is False
    assert "command on pts/" in sshd_target.log()[offset:]  # passwd ran on a pty
    assert new not in caplog.text and user.password not in caplog.text


def test_change_password_as_a_root_equivalent_feeds_chpasswd(sshd_target):
    """A uid-0 account (a second name for root) changes its password with chpasswd, no pty."""
    root = sshd_target.create_user(uid0=True)
    new = "Root-Rotated.Password-2042"
    common = {"host": sshd_target.host, "port": sshd_target.port, "host_key": sshd_target.host_key}
    offset = len(sshd_target.log())

    ssh_blocking.change_password(
        **common, username=root.name, current_password=root.password, new_password=new
    )

    assert ssh_blocking.check_password_login(**common, username=root.name, password=new) is True
    assert ssh_blocking.check_password_login(**common, username=root.name, password=root.password) is False
    logged = sshd_target.log()[offset:]
    assert f"Accepted password for {root.name}" in logged
    assert "on pts/" not in logged


def test_a_new_password_the_target_refuses_is_reported_without_secrets(sshd_target):
    user = sshd_target.create_user()
    common = {"host": sshd_target.host, "port": sshd_target.port, "host_key": sshd_target.host_key}

    with pytest.raises(TargetError) as excinfo:
        ssh_blocking.change_password(
            **common, username=user.name, current_password=user.password, new_password="abc", target="pacs01"
        )

    message = str(excinfo.value)
    assert message.startswith(
        f"target pacs01 ({sshd_target.host}:{sshd_target.port}) refused to change the password of "
        f"{user.name}: passwd said:"
    )
    assert "You must choose a longer password" in message
    assert user.password not in message
    assert not isinstance(excinfo.value, NotLoggedIn)
    assert ssh_blocking.check_password_login(**common, username=user.name, password=user.password) is True


def test_change_password_with_a_wrong_current_password_changes_nothing(sshd_target):
    user = sshd_target.create_user()
    common = {"host": sshd_target.host, "port": sshd_target.port, "host_key": sshd_target.host_key}

    with pytest.raises(AuthFailed):
        ssh_blocking.change_password(
            **common, username=user.name, current_password="not-the-password", new_password="Whatever-2042.x"
        )

    assert ssh_blocking.check_password_login(**common, username=user.name, password=user.password) is True


def test_a_caller_on_a_running_event_loop_can_block_here_too(sshd_target):
    """An async view's thread or a browser test's keeps a loop running: the facade still works there."""
    user = sshd_target.create_user()
    common = {"host": sshd_target.host, "port": sshd_target.port, "host_key": sshd_target.host_key}
    outcome = {}

    async def inside_a_loop():
        return ssh_blocking.check_password_login(**common, username=user.name, password=user.password)

    def main():
        try:
            outcome["value"] = asyncio.run(inside_a_loop())
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=main)  # a loop of its own, whatever this thread runs
    worker.start()
    worker.join(timeout=60)

    assert outcome == {"value": True}
