"""Recording signatures, checked by pamsite against the transit public keys it keeps.

Vault's transit engine signs a recording's manifest with the ed25519 key
``VAULT_TRANSIT_KEY`` and returns ``vault:v<N>:<base64 signature>``. For ed25519 OpenBao
signs the exact bytes given (pure Ed25519, RFC 8032: no prehash; checked against the real
server by tests/vault/test_signatures.py), so ``cryptography`` verifies the signature with
the public key of version N alone. pamsite keeps every version's public key
(``TransitPublicKey``): fetched when a recording is signed with a version it does not keep
yet (``transit_key_keep_for``) and by ``vault_bootstrap`` (``transit_keys_keep``). A check
(``KeyRing.check``) therefore needs no Vault, and a Vault that was replaced (the embedded
dev server of old kept everything in memory) cannot turn old recordings into false alarms.

Verdicts: ``valid``; ``invalid`` (TAMPERED: a key pamsite keeps, which existed when the
recording was sealed, does not verify it); ``key_not_found`` (signed by a key neither
pamsite nor Vault has: cannot be checked, never called tampered); ``uncheckable`` (no kept
key for that version and Vault cannot be asked now).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import logging
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.db import IntegrityError, transaction

from audit.services import audit_record
from vault.client import VaultClient, VaultError, VaultNotFound, get_client
from vault.models import TransitPublicKey

logger = logging.getLogger(__name__)

_SIGNATURE = re.compile(r"^vault:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]+={0,2})$")
ED25519_SIGNATURE_BYTES = 64


class SignatureFormatError(ValueError):
    """A signature that is not of Vault's form ``vault:v<N>:<base64>``."""


@dataclass(frozen=True)
class ParsedSignature:
    """A transit signature taken apart: the key version that made it and the raw signature bytes."""

    version: int
    raw: bytes


def parse_signature(signature: str) -> ParsedSignature:
    """``vault:v3:...`` → version 3 and the decoded signature; SignatureFormatError otherwise."""
    match = _SIGNATURE.match(signature or "")
    if not match:
        raise SignatureFormatError('not of the form "vault:v<version>:<base64>"')
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureFormatError("its signature part is not valid base64") from None
    return ParsedSignature(version=int(match.group(1)), raw=raw)


def ed25519_verifies(public_key: str, data: bytes, raw_signature: bytes) -> bool:
    """Whether raw_signature is the Ed25519 signature of data by the base64 public key."""
    if len(raw_signature) != ED25519_SIGNATURE_BYTES:
        return False
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
    except (binascii.Error, ValueError):
        return False  # not a 32-byte ed25519 key: it verifies nothing
    try:
        key.verify(raw_signature, data)
    except InvalidSignature:
        return False
    return True


def public_key_fingerprint(public_key: str) -> str:
    """``SHA256:<base64>`` of the raw public key, as OpenSSH prints key fingerprints."""
    digest = hashlib.sha256(base64.b64decode(public_key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def transit_keys_keep(*, vault: VaultClient | None = None) -> list[TransitPublicKey]:
    """Ask Vault for every version of the signing key and keep the public keys not kept yet.

    Returns the rows added (each audited as ``vault.transit_key.kept``). Raises VaultError
    when Vault cannot be asked (VaultNotFound when it has no such key).
    """
    vault = vault or get_client()
    versions = [v for v in vault.transit_public_keys() if v.key_type == "ed25519"]
    mount, name = vault.config.transit_mount, vault.config.transit_key
    kept = set(TransitPublicKey.objects.filter(mount=mount, name=name).values_list("version", "public_key"))
    new = [v for v in versions if (v.version, v.public_key) not in kept]
    if not new:
        return []
    try:
        cluster_id = vault.seal_status().cluster_id
    except VaultError:
        cluster_id = ""  # only informative: which Vault the key came from
    return _keep(mount=mount, name=name, versions=new, addr=vault.config.addr, cluster_id=cluster_id)


@transaction.atomic
def _keep(*, mount: str, name: str, versions, addr: str, cluster_id: str) -> list[TransitPublicKey]:
    added = []
    for version in versions:
        try:
            # A savepoint per row: two gateway threads sealing at once may both try to keep it.
            with transaction.atomic():
                row = TransitPublicKey.objects.create(
                    mount=mount,
                    name=name,
                    version=version.version,
                    key_type=version.key_type,
                    public_key=version.public_key,
                    vault_created_at=version.created_at,
                    vault_addr=addr,
                    vault_cluster_id=cluster_id,
                )
        except IntegrityError:
            continue  # kept meanwhile by another process
        audit_record(
            action="vault.transit_key.kept",
            obj=row,
            details={
                "mount": mount,
                "name": name,
                "version": version.version,
                "fingerprint": public_key_fingerprint(version.public_key),
                "created_in_vault": version.created_at.isoformat(),
                "vault": addr,
                "cluster_id": cluster_id,
            },
        )
        logger.info("Kept the public key of %s/%s version %s from %s", mount, name, version.version, addr)
        added.append(row)
    return added


def transit_key_keep_for(
    *, data: bytes, signature: str, vault: VaultClient | None = None
) -> TransitPublicKey:
    """The kept public key that verifies a signature Vault just made, fetched from Vault if needed.

    Called right after signing, so that every sealed recording's key is kept: a VaultError
    when Vault cannot be asked for it now (the caller seals again later), or when the
    signature verifies with no public key Vault lists (something is badly wrong).
    """
    vault = vault or get_client()
    parsed = parse_signature(signature)
    mount, name = vault.config.transit_mount, vault.config.transit_key

    def kept_match() -> TransitPublicKey | None:
        rows = TransitPublicKey.objects.filter(mount=mount, name=name, version=parsed.version)
        return next((r for r in rows if ed25519_verifies(r.public_key, data, parsed.raw)), None)

    if (row := kept_match()) is not None:
        return row
    transit_keys_keep(vault=vault)
    if (row := kept_match()) is not None:
        return row
    raise VaultError(
        f"Vault's signature (version {parsed.version} of {mount}/{name}) does not verify with the public "
        "key Vault lists for that version: check that VAULT_TRANSIT_KEY is an ed25519 key"
    )


VALID, INVALID, KEY_NOT_FOUND, UNCHECKABLE = "valid", "invalid", "key_not_found", "uncheckable"


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of checking one signature: ``verdict`` is valid, invalid, key_not_found or uncheckable."""

    verdict: str
    message: str
    key: TransitPublicKey | None = None
    vault_error: VaultError | None = None

    @property
    def valid(self) -> bool:
        return self.verdict == VALID


class KeyRing:
    """The kept public keys for a run of checks (one page, one command): read from the database
    once, and Vault asked at most once for keys pamsite does not keep yet."""

    def __init__(self, *, vault: VaultClient | None = None):
        self._vault = vault
        self._rows: list[TransitPublicKey] | None = None
        self._asked_vault = False
        self._vault_answered = False
        self._vault_error: VaultError | None = None

    def check(self, *, data: bytes, signature: str, signed_at: datetime.datetime) -> SignatureCheck:
        """Check a signature over data made at or before ``signed_at`` (when the recording was sealed)."""
        try:
            parsed = parse_signature(signature)
        except SignatureFormatError as exc:
            return SignatureCheck(INVALID, f"the signature is not one Vault makes ({exc})")
        match, keys = self._match(parsed, data)
        if match is None and not self._asked_vault:
            self._ask_vault()
            match, keys = self._match(parsed, data)
        if match is not None:
            return SignatureCheck(VALID, f"signature by version {parsed.version} of the signing key", match)
        existed = [k for k in keys if k.vault_created_at <= signed_at]
        if existed:
            key = existed[0]
            return SignatureCheck(
                INVALID,
                f"the signature does not match (version {parsed.version} of {key.mount}/{key.name}, "
                f"{public_key_fingerprint(key.public_key)})",
                key,
            )
        if keys or self._vault_answered:
            return SignatureCheck(
                KEY_NOT_FOUND,
                f"signed by version {parsed.version} of a key that neither pamsite nor Vault has "
                "(a Vault that was replaced, or a key deleted)",
            )
        return SignatureCheck(
            UNCHECKABLE,
            f"pamsite does not keep version {parsed.version} of the signing key yet and cannot ask "
            f"Vault: {self._vault_error}",
            vault_error=self._vault_error,
        )

    def _match(self, parsed: ParsedSignature, data: bytes):
        if self._rows is None:
            self._rows = list(TransitPublicKey.objects.all())
        # Any of pamsite's signing keys: VAULT_TRANSIT_KEY may have been renamed since.
        keys = [k for k in self._rows if k.version == parsed.version and k.key_type == "ed25519"]
        return next((k for k in keys if ed25519_verifies(k.public_key, data, parsed.raw)), None), keys

    def _ask_vault(self) -> None:
        self._asked_vault = True
        try:
            transit_keys_keep(vault=self._vault)
            self._vault_answered = True
        except VaultNotFound:
            self._vault_answered = True  # Vault has no such key at all: an answer
        except VaultError as exc:
            self._vault_error = exc
            logger.info("Could not ask Vault for the signing key's public keys: %s", exc)
        self._rows = None  # read again, with what was just kept
