"""OpenSSH public keys: reading and checking the line a user pastes from a ``.pub`` file.

asyncssh's key parser checks that the key data is a real key of its type (the gateway,
an asyncssh server, verifies the same keys' signatures); nothing in identity opens an
SSH connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

import asyncssh

# Security-key (FIDO) SSH keys: the gateway verifies their signatures like any other
# (the user's security key signs on her side; nothing of FIDO is needed on the server).
FIDO_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
# The key types the gateway can verify a signature for, and their size in bits (RSA's is
# read from the key).
KEY_TYPES: dict[str, int] = {
    "ssh-ed25519": 256,
    "ecdsa-sha2-nistp256": 256,
    "ecdsa-sha2-nistp384": 384,
    "ecdsa-sha2-nistp521": 521,
    "ssh-rsa": 0,
    "sk-ssh-ed25519@openssh.com": 256,
    "sk-ecdsa-sha2-nistp256@openssh.com": 256,
}
RSA_MIN_BITS = 2048
# 16384-bit keys exist but are rare; above 8192 bits the key's text would no longer
# fit a unique index on PostgreSQL (about 2.7 kB per entry).
RSA_MAX_BITS = 8192
# Longer than any accepted key line (an 8192-bit RSA key with a long comment).
MAX_LINE_CHARS = 4000

_NEW_KEY_HINT = "Make one with: ssh-keygen -t ed25519"


class PublicKeyError(ValueError):
    """The pasted text is not an acceptable public key; the message is safe to show."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ParsedPublicKey:
    """A checked OpenSSH public key: its type, its data (the "blob") and its comment."""

    key_type: str
    blob: bytes
    comment: str
    bits: int

    @property
    def key_base64(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.blob)


def fingerprint_of(blob: bytes) -> str:
    """The key's fingerprint as ``ssh-keygen -l`` prints it: ``SHA256:`` and unpadded base64."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _embedded_type(blob: bytes) -> str | None:
    """The key type written at the start of the key data (an SSH string), or None."""
    try:
        (length,) = struct.unpack(">I", blob[:4])
    except struct.error:
        return None
    raw = blob[4 : 4 + length]
    if length > 64 or len(raw) != length:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def _rsa_bits(blob: bytes) -> int:
    """The size of an ssh-rsa key's modulus: the key data is the type, then mpints e and n."""
    offset = 0
    fields = []
    for _ in range(3):
        (length,) = struct.unpack_from(">I", blob, offset)
        fields.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return int.from_bytes(fields[2], "big").bit_length()


def _refuse_by_type(key_type: str, tokens: list[str]) -> None:
    """Raise the clearest error for a first word that is not an accepted key type."""
    if key_type.endswith("-cert-v01@openssh.com"):
        raise PublicKeyError(
            "This is an SSH certificate, not a public key. Paste the plain public key "
            "(for example id_ed25519.pub, not id_ed25519-cert.pub).",
            code="certificate",
        )
    if key_type == "ssh-dss":
        raise PublicKeyError(
            f"DSA keys are obsolete and no longer safe: use an ed25519 key instead. {_NEW_KEY_HINT}",
            code="unsupported_type",
        )
    if any(token in KEY_TYPES or token.endswith("-cert-v01@openssh.com") for token in tokens[1:]):
        raise PublicKeyError(
            "Paste the key without the options in front of it (as in authorized_keys): "
            "the line must start with the key type, e.g. ssh-ed25519.",
            code="options",
        )
    raise PublicKeyError(
        "This is not an OpenSSH public key. Paste the contents of your .pub file: one line "
        "that starts with ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa or (a security key) "
        "sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com.",
        code="not_a_key",
    )


def parse_public_key(text: str) -> ParsedPublicKey:
    """Check one pasted OpenSSH public key line and return the key; PublicKeyError if not acceptable.

    The line is ``<type> <base64 key data> [comment]``. The data must decode, start
    with the same type, load as a key of that type and hold nothing more. Private
    keys, certificates, other formats and weak or unsupported keys are refused, each
    with a message that tells the user what to paste instead. No part of the text is
    ever repeated in a message.
    """
    text = (text or "").strip()
    if not text:
        raise PublicKeyError("Paste your public key (the contents of the .pub file).", code="empty")
    upper = text.upper()
    if "PRIVATE KEY" in upper or text.startswith("PuTTY-User-Key-File"):
        raise PublicKeyError(
            "That is a private key, which must never leave your computer; pamsite did not keep it. "
            "Paste the public key instead: the contents of the .pub file "
            "(for example ~/.ssh/id_ed25519.pub).",
            code="private_key",
        )
    if "BEGIN SSH2 PUBLIC KEY" in upper:
        raise PublicKeyError(
            "This key is in the SSH2 (RFC 4716, PuTTY) format. Convert it to OpenSSH's with "
            "ssh-keygen -i -f key.pub (or PuTTYgen's 'public key for OpenSSH authorized_keys') "
            "and paste that line.",
            code="wrong_format",
        )
    if text.startswith("-----BEGIN"):
        raise PublicKeyError(
            "This is a PEM block, not an OpenSSH public key. Paste the contents of the .pub file "
            "(one line starting with ssh-ed25519, ecdsa-sha2-… or ssh-rsa).",
            code="wrong_format",
        )
    if len(text) > MAX_LINE_CHARS:
        raise PublicKeyError("This is too long to be one public key.", code="too_long")
    if len(text.splitlines()) > 1:
        raise PublicKeyError(
            "Paste one key, on one line. If the key was split over several lines when you "
            "copied it, copy it again straight from the .pub file.",
            code="several_lines",
        )

    tokens = text.split()
    key_type = tokens[0]
    if key_type not in KEY_TYPES:
        _refuse_by_type(key_type, tokens)
    if len(tokens) < 2:
        raise PublicKeyError(
            "The key data is missing after the key type: copy the whole line from the .pub file.",
            code="incomplete",
        )
    try:
        blob = base64.b64decode(tokens[1], validate=True)
    except (binascii.Error, ValueError):
        raise PublicKeyError(
            "The key data is not valid: it may have been cut short or changed when you copied it. "
            "Copy the whole line again from the .pub file.",
            code="bad_data",
        ) from None
    embedded = _embedded_type(blob)
    if embedded != key_type:
        raise PublicKeyError(
            f"The line says {key_type}, but the key data that follows is not a {key_type} key: "
            "copy the whole line again from the .pub file.",
            code="type_mismatch",
        )
    try:
        key = asyncssh.import_public_key(f"{key_type} {tokens[1]}")
        bits = KEY_TYPES[key_type] or _rsa_bits(blob)
    except Exception:  # untrusted bytes: whatever asyncssh or cryptography raise means "not a key"
        key = None
    if key is None or key.get_algorithm() != key_type or key.public_data != blob:
        raise PublicKeyError(
            "The key data is damaged or incomplete: copy the whole line again from the .pub file.",
            code="bad_data",
        )
    if key_type == "ssh-rsa" and bits < RSA_MIN_BITS:
        raise PublicKeyError(
            f"This RSA key has only {bits} bits, which is too weak: pamsite accepts RSA keys of "
            f"{RSA_MIN_BITS} bits or more. {_NEW_KEY_HINT}",
            code="weak_key",
        )
    if key_type == "ssh-rsa" and bits > RSA_MAX_BITS:
        raise PublicKeyError(
            f"RSA keys larger than {RSA_MAX_BITS} bits are not accepted. {_NEW_KEY_HINT}",
            code="too_long",
        )
    comment = " ".join(tokens[2:])
    return ParsedPublicKey(key_type=key_type, blob=blob, comment=comment, bits=bits)
