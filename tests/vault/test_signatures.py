"""Recording signatures checked by pamsite against the transit public keys it keeps
(vault/signatures.py): pure parts as unit tests, what OpenBao signs against the real server."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.core.management import call_command

from audit.models import AuditEvent
from tests.fixtures.openbao import point_settings_at
from vault.client import VaultClient, VaultConfig, VaultPermissionDenied, get_client
from vault.models import TransitPublicKey
from vault.signatures import (
    SignatureFormatError,
    ed25519_verifies,
    parse_signature,
    public_key_fingerprint,
    transit_keys_keep,
)

MESSAGE = b"pamsite-recording v1 id=7 session=3 kind=terminal path=2026/01/02/session-3/channel-0.cast"


def _key_pair() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.b64encode(public).decode()


def _vault_form(version: int, raw: bytes) -> str:
    return f"vault:v{version}:{base64.b64encode(raw).decode()}"


# --- Pure parts ---------------------------------------------------------------------------


@pytest.mark.unit
def test_a_vault_signature_gives_its_key_version_and_raw_bytes():
    parsed = parse_signature(_vault_form(12, b"\x01" * 64))
    assert parsed.version == 12
    assert parsed.raw == b"\x01" * 64


@pytest.mark.unit
@pytest.mark.parametrize(
    "signature",
    [
        "",
        "not a signature",
        "vault:v0:AAAA",  # versions start at 1
        "vault:vx:AAAA",
        "vault:v1:",
        "vault:v1:AAA",  # not whole base64
        "vault:v1:AA$A",
        "vault:v1:AAAA:extra",
        "VAULT:v1:AAAA",
        "vault:v1234567890:AAAA",
    ],
)
def test_anything_else_is_not_a_signature(signature):
    with pytest.raises(SignatureFormatError):
        parse_signature(signature)


@pytest.mark.unit
def test_a_signature_verifies_only_with_its_key_over_its_exact_bytes():
    private, public = _key_pair()
    _, other = _key_pair()
    raw = private.sign(MESSAGE)

    assert ed25519_verifies(public, MESSAGE, raw)
    assert not ed25519_verifies(public, MESSAGE + b" ", raw)
    assert not ed25519_verifies(public, MESSAGE.replace(b"id=7", b"id=8"), raw)
    assert not ed25519_verifies(other, MESSAGE, raw)
    assert not ed25519_verifies(public, MESSAGE, raw[:-1])
    assert not ed25519_verifies(public, MESSAGE, bytes(64))


@pytest.mark.unit
@pytest.mark.parametrize("public_key", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_a_malformed_public_key_verifies_nothing(public_key):
    private, _ = _key_pair()
    assert not ed25519_verifies(public_key, MESSAGE, private.sign(MESSAGE))


@pytest.mark.unit
def test_the_fingerprint_is_openssh_style_sha256_of_the_raw_key():
    _, public = _key_pair()
    digest = hashlib.sha256(base64.b64decode(public)).digest()
    assert public_key_fingerprint(public) == "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# --- Against the real OpenBao -------------------------------------------------------------


def test_openbao_signs_the_exact_bytes_with_pure_ed25519(approle_settings):
    """What the local check relies on: transit's ed25519 signature is over the input itself
    (no prehash), and its public key is the raw 32 bytes in base64."""
    vault = get_client()
    signature = vault.transit_sign(MESSAGE)
    parsed = parse_signature(signature)
    public = {v.version: v.public_key for v in vault.transit_public_keys()}[parsed.version]

    assert len(base64.b64decode(public)) == 32
    assert ed25519_verifies(public, MESSAGE, parsed.raw)
    assert not ed25519_verifies(public, hashlib.sha256(MESSAGE).digest(), parsed.raw)
    assert not ed25519_verifies(public, hashlib.sha512(MESSAGE).digest(), parsed.raw)


def test_the_app_policy_reads_the_public_keys_and_cannot_change_or_export_the_key(
    approle_settings, bootstrapped_vault
):
    vault = get_client()
    assert vault.auth_method == "approle"
    versions = vault.transit_public_keys()
    assert versions and all(v.key_type == "ed25519" for v in versions)

    transit, key = approle_settings.VAULT_TRANSIT_MOUNT, approle_settings.VAULT_TRANSIT_KEY
    for path, body in (
        (f"{transit}/keys/{key}/config", {"deletion_allowed": True}),
        (f"{transit}/keys/{key}/rotate", {}),
        (f"{transit}/keys/{key}", {"type": "ed25519"}),
        (f"{transit}/keys/another", {"type": "ed25519"}),
    ):
        with pytest.raises(VaultPermissionDenied):
            vault.write(path, body)
    for path in (f"{transit}/export/signing-key/{key}", f"{transit}/backup/{key}"):
        with pytest.raises(VaultPermissionDenied):
            vault.read(path)


@pytest.mark.django_db
def test_vault_bootstrap_keeps_every_version_once_and_audits_each(settings, openbao_factory, tmp_path):
    server = openbao_factory(dev=True)
    point_settings_at(settings, server)
    call_command("vault_bootstrap", stdout=io.StringIO())
    root = VaultClient(VaultConfig.from_settings())
    transit, key = settings.VAULT_TRANSIT_MOUNT, settings.VAULT_TRANSIT_KEY
    root.write(f"{transit}/keys/{key}/rotate")

    out = io.StringIO()
    call_command("vault_bootstrap", stdout=out)
    call_command("vault_bootstrap", stdout=io.StringIO())

    kept = TransitPublicKey.objects.filter(mount=transit, name=key)
    in_vault = {(v.version, v.public_key) for v in root.transit_public_keys()}
    assert {(k.version, k.public_key) for k in kept} == in_vault
    assert sorted(k.version for k in kept) == [1, 2]
    assert "kept the public key of pamsite-transit/pamsite-recordings version 2 (SHA256:" in out.getvalue()
    events = AuditEvent.objects.filter(action="vault.transit_key.kept").order_by("sequence")
    assert [e.details["version"] for e in events] == [1, 2]
    assert events[1].details["fingerprint"] == public_key_fingerprint(kept.get(version=2).public_key)
    assert transit_keys_keep(vault=root) == []  # nothing new
