"""The SSH door's pure parts: pins, fingerprints, passwd's prompts, scrubbed messages (no server)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from targets import ssh, ssh_blocking
from targets.errors import HostKeyMismatch, TargetError, scrub

pytestmark = pytest.mark.unit


def test_a_generated_keypair_pins_with_the_fingerprint_of_its_blob():
    private, public = ssh.generate_keypair()

    key = ssh.parse_host_key(public + " comment@host")

    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.openssh == public
    assert key.key_type == "ssh-ed25519"
    digest = base64.b64encode(hashlib.sha256(key.blob).digest()).decode().rstrip("=")
    assert key.fingerprint == f"SHA256:{digest}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "Not an OpenSSH public key line"),
        ("ssh-ed25519", "Not an OpenSSH public key line"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "Unsupported host key type 'ssh-dss'"),
        ("ssh-ed25519 not*base64", "base64 part does not decode to an SSH key"),
    ],
)
def test_a_malformed_pin_is_refused_in_words(line, message):
    with pytest.raises(TargetError, match=message):
        ssh.parse_host_key(line)


def test_a_pin_whose_blob_is_another_type_is_refused():
    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key()
    blob = ecdsa.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]

    with pytest.raises(TargetError, match="says ssh-ed25519 but its blob holds a 'ecdsa-sha2-nistp256' key"):
        ssh.parse_host_key("ssh-ed25519 " + blob.decode())


def test_a_login_without_a_pin_or_a_credential_is_refused_before_connecting():
    _, public = ssh.generate_keypair()
    common = {"host": "192.0.2.1", "port": 22, "target": "pacs01", "certificate": None}

    with pytest.raises(
        HostKeyMismatch, match=r"^No host key is pinned for target pacs01 \(192\.0\.2\.1:22\)"
    ):
        ssh.check_login(**common, host_key="", password="pw", private_key=None)
    with pytest.raises(TargetError, match="No credential to log in to target pacs01"):
        ssh.check_login(**common, host_key=public, password=None, private_key=None)


@pytest.mark.parametrize(
    ("prompts", "answers"),
    [
        # As an ordinary user: PAM asks for the current password first.
        (
            [b"Current password: ", b"New password: ", b"Retype new password: "],
            ["current", "new", "again"],
        ),
        # shadow-utils' wording, and as root (no current password asked).
        ([b"Enter new UNIX password: ", b"Retype new UNIX password: "], ["new", "again"]),
        # The new password refused: passwd asks for it again, and we stop rather than loop.
        ([b"Current password: ", b"New password: ", b"New password: "], ["current", "new", None]),
    ],
)
def test_passwds_prompts_are_answered_in_order_and_never_twice(prompts, answers):
    answered: list[str] = []
    given = []
    for prompt in prompts:
        step = ssh._passwd_step(prompt, answered)
        given.append(step)
        if step is None:
            break
        answered.append(step)

    assert given == answers


def test_what_a_target_says_is_scrubbed_of_the_passwords_sent_and_kept_short():
    said = b"passwd: Authentication token manipulation error for Old-Pw-1\r\nNew-Pw-2 is too simple\n" * 10

    text = scrub(said, ("Old-Pw-1", "New-Pw-2", ""))

    assert "Old-Pw-1" not in text and "New-Pw-2" not in text and "***" in text
    assert "\n" not in text and len(text) <= 300


def test_the_facade_refuses_to_block_its_own_loop():
    """A coroutine on the private loop that called the facade would wait for itself forever."""
    loop = ssh_blocking._private_loop()
    outcome = {}

    async def on_the_private_loop():
        try:
            ssh_blocking.fetch_host_key(host="192.0.2.1", port=22)
        except RuntimeError as exc:
            outcome["error"] = str(exc)

    done = threading.Event()
    future = asyncio.run_coroutine_threadsafe(on_the_private_loop(), loop)
    future.add_done_callback(lambda _: done.set())

    assert done.wait(10)
    assert "await targets.ssh instead" in outcome["error"]
