"""targets/ssh.py (the asyncssh client to targets, the gateway's) against a real OpenSSH sshd."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from targets import ssh as target
from targets.errors import AuthFailed, AuthUnsupported, HostKeyMismatch, TargetError, TargetUnreachable
from tests.fixtures.openbao import free_port
from tests.fixtures.pacs import account_ref_on
from tests.fixtures.sshd import SSHD, SshdTarget, new_log_lines
from tests.secrets_registry import remember_secret
from vault import sources
from vault.client import get_client


def run(coroutine):
    """asyncio.run on a thread of its own (the browser tests keep an event loop in this one)."""
    outcome = {}

    def main():
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=main)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the coroutine did not finish within 60 s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


async def login_and_run(command: str, **kwargs) -> str:
    """Log in with target.connect, run one command, close; its stdout."""
    async with await target.connect(**kwargs) as conn:
        result = await conn.run(command, check=True)
    return result.stdout


def on(sshd: SshdTarget, user=None, **kwargs) -> dict:
    """connect()'s arguments for sshd (and user's name and password)."""
    common = {"host": sshd.host, "port": sshd.port, "host_key": sshd.host_key, "target": "pacs01"}
    if user is not None:
        common.update(username=user.name, password=user.password)
    return common | kwargs


def where(sshd: SshdTarget) -> str:
    return f"target pacs01 ({sshd.host}:{sshd.port})"


@pytest.fixture
def vault_app(approle_settings):
    """The client the app uses: AppRole, the pamsite-app policy."""
    return get_client()


@pytest.fixture(scope="module")
def sshd_variant(sshd_target, tmp_path_factory):
    """``variant(Option=value, ...)``: another sshd like sshd_target, its config changed so."""
    started: list[SshdTarget] = []

    def variant(**options: str) -> SshdTarget:
        sshd = SshdTarget(tmp_path_factory.mktemp("sshd-variant"), ca_public_key=sshd_target.ca_public_key)
        started.append(sshd.start())
        sshd.stop()
        config = sshd.config_path.read_text()
        for option, value in options.items():
            config = re.sub(rf"(?m)^{option} .*$", f"{option} {value}", config)
        sshd.config_path.write_text(config)
        sshd.process = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(sshd.config_path), "-E", str(sshd.log_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sshd._wait_until_ready()
        return sshd

    yield variant
    for sshd in started:
        sshd.stop()


def test_a_password_login_runs_a_command(sshd_target):
    user = sshd_target.create_user()

    assert run(login_and_run("id -un", **on(sshd_target, user))) == f"{user.name}\n"


def test_a_certificate_signed_by_vaults_ca_logs_in_as_its_principal_only(sshd_target, vault_app):
    user, other = sshd_target.create_user(), sshd_target.create_user()
    account = account_ref_on(sshd_target, user, "ssh-ca")
    sources.configure_ssh_role(account=account, vault=vault_app)
    private_key, public_key = target.generate_keypair()
    certificate = sources.ssh_sign(account=account, public_key=public_key, ttl_seconds=60, vault=vault_app)
    offset = len(sshd_target.log())
    common = on(sshd_target, private_key=private_key, certificate=certificate)

    assert run(login_and_run("id -un", username=user.name, **common)) == f"{user.name}\n"
    assert "Accepted publickey for" in sshd_target.log()[offset:]
    assert "ED25519-CERT" in sshd_target.log()[offset:]
    with pytest.raises(AuthFailed) as excinfo:
        run(target.connect(username=other.name, **common))
    assert str(excinfo.value) == (
        f"Authentication as {other.name} on {where(sshd_target)} failed (certificate rejected)"
    )
    with pytest.raises(AuthFailed, match=r"\(key rejected\)$"):  # the key without the certificate
        run(target.connect(username=user.name, **on(sshd_target, private_key=private_key)))


def test_a_wrong_pinned_key_is_refused_before_any_authentication(sshd_target, caplog):
    caplog.set_level(logging.DEBUG)
    user = sshd_target.create_user()
    _, other_key = target.generate_keypair()  # a valid ed25519 key, but not the host's
    offset = len(sshd_target.log())

    with pytest.raises(HostKeyMismatch) as excinfo:
        run(target.connect(**on(sshd_target, user, host_key=other_key)))

    pinned = target.parse_host_key(other_key).fingerprint
    offered = target.parse_host_key(sshd_target.host_key).fingerprint
    assert str(excinfo.value) == (
        f"The host key of {where(sshd_target)} does not match the pinned key (pinned {pinned}, "
        f"offered {offered} ssh-ed25519): the connection is refused. If the target's key was changed "
        "on purpose, a pam-admin must confirm and pin the new one"
    )
    assert f"Host key mismatch for {where(sshd_target)}: pinned {pinned}, offered {offered}" in caplog.text
    assert user.password not in caplog.text
    # sshd saw the connection end before any authentication request.
    logged = new_log_lines(sshd_target, offset, until="[preauth]")
    assert "Connection from 127.0.0.1" in logged
    assert re.search(
        r"(Disconnected from|Connection (closed|reset) by) 127\.0\.0\.1 port \d+ \[preauth\]", logged
    )
    for sign_of_auth in ("Accepted", "Failed", "Invalid user", "authenticating user", "Postponed", user.name):
        assert sign_of_auth not in logged


def test_a_missing_pin_is_refused_without_even_connecting(sshd_target):
    user = sshd_target.create_user()
    offset = len(sshd_target.log())

    with pytest.raises(HostKeyMismatch, match=r"^No host key is pinned for target pacs01 \("):
        run(target.connect(**on(sshd_target, user, host_key="")))

    time.sleep(0.1)
    assert "Connection from" not in sshd_target.log()[offset:]


def test_a_pin_of_a_key_type_the_target_lacks_is_a_mismatch(sshd_target):
    user = sshd_target.create_user()
    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key()
    pinned = ecdsa.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()

    with pytest.raises(HostKeyMismatch) as excinfo:
        run(target.connect(**on(sshd_target, user, host_key=pinned)))

    assert str(excinfo.value).startswith(
        f"{where(sshd_target)} offers no host key of the pinned type (ecdsa-sha2-nistp256): "
    )


def test_an_unreachable_target_is_a_clear_error(sshd_target):
    port = free_port()  # nothing listens there

    with pytest.raises(TargetUnreachable) as excinfo:
        run(target.connect(**on(sshd_target, port=port), username="root", password="secret-pw"))

    assert str(excinfo.value) == (
        f"target pacs01 (127.0.0.1:{port}) refused the connection: is sshd running on that port?"
    )


def test_a_wrong_password_is_an_authentication_failure_and_never_shown(sshd_target, caplog):
    caplog.set_level(logging.DEBUG)
    user = sshd_target.create_user()
    wrong = "Wrong-Password.For-The-Gateway-7"
    remember_secret(wrong, "target account password")

    with pytest.raises(AuthFailed) as excinfo:
        run(target.connect(**on(sshd_target, user, password=wrong)))

    assert (
        str(excinfo.value)
        == f"Authentication as {user.name} on {where(sshd_target)} failed (password rejected)"
    )
    assert wrong not in str(excinfo.value) and wrong not in caplog.text
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


def test_a_password_goes_to_a_keyboard_interactive_prompt_when_the_target_wants_that(
    sshd_target, sshd_variant
):
    sshd = sshd_variant(PasswordAuthentication="no", KbdInteractiveAuthentication="yes", UsePAM="yes")
    user = sshd_target.create_user()
    offset = len(sshd.log())

    assert run(login_and_run("id -un", **on(sshd, user))) == f"{user.name}\n"
    assert f"Accepted keyboard-interactive/pam for {user.name}" in sshd.log()[offset:]
    with pytest.raises(AuthFailed, match=r"\(password rejected\)$"):
        run(target.connect(**on(sshd, user, password="Not-The-Password-42")))


def test_a_target_that_takes_no_passwords_says_what_it_allows(sshd_target, sshd_variant):
    sshd = sshd_variant(PasswordAuthentication="no")
    user = sshd_target.create_user()
    offset = len(sshd.log())

    with pytest.raises(AuthUnsupported) as excinfo:
        run(target.connect(**on(sshd, user)))

    assert str(excinfo.value) == (
        f"{where(sshd)} does not accept password authentication for {user.name} (it allows: publickey)"
    )
    assert "Failed" not in new_log_lines(sshd, offset, until="[preauth]")


def certificate_for(public_key: str) -> str:
    """An OpenSSH user certificate for public_key, signed by a throwaway CA."""
    builder = (
        serialization.SSHCertificateBuilder()
        .public_key(serialization.load_ssh_public_key(public_key.encode()))
        .type(serialization.SSHCertificateType.USER)
        .valid_principals([b"x"])
        .valid_after(int(time.time()) - 60)
        .valid_before(int(time.time()) + 60)
    )
    return builder.sign(ed25519.Ed25519PrivateKey.generate()).public_bytes().decode()


def test_bad_credentials_are_refused_before_connecting(sshd_target):
    private_key, _ = target.generate_keypair()
    _, other_public = target.generate_keypair()
    cases = [
        ({}, "No credential to log in to target pacs01"),
        ({"password": "pw", "certificate": certificate_for(other_public)}, "needs its private key"),
        ({"private_key": "not a key"}, "The private key is not an unencrypted Ed25519, ECDSA or RSA key"),
        (
            {"private_key": private_key, "certificate": certificate_for(other_public)},
            "The certificate is not an OpenSSH certificate for this private key",
        ),
        (
            {"private_key": private_key, "certificate": "ssh-ed25519-cert-v01@openssh.com AAAA"},
            "The certificate is not an OpenSSH certificate for this private key",
        ),
    ]
    offset = len(sshd_target.log())

    for arguments, message in cases:
        with pytest.raises(TargetError, match=re.escape(message)) as excinfo:
            run(target.connect(**on(sshd_target), username="x", **arguments))
        assert private_key not in str(excinfo.value)

    time.sleep(0.1)
    assert "Connection from" not in sshd_target.log()[offset:]
