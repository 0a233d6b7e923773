"""The one exception hierarchy of every door to a target (SSH, PostgreSQL, and next HTTP).

Callers (the access workflow, the rotation, the gateway) catch these and show the message:
it says what happened to which target in words a person can act on, and never holds a
password, a key or a certificate.

``NotLoggedIn`` and its subclasses mean no session was opened on the target, so nothing
ran there: password rotation relies on that distinction (a failed login changed nothing;
a failure after the login may have changed the password, and is settled by probing).
"""

from __future__ import annotations


class TargetError(Exception):
    """The target could not be reached, refused us, or a command on it failed."""


class NotLoggedIn(TargetError):
    """No login session was established on the target: nothing ran there."""


class TargetUnreachable(NotLoggedIn):
    """No conversation with the target: refused, timed out, unknown host, not the protocol."""


class HostKeyMismatch(NotLoggedIn):
    """The target's SSH host key is not the pinned one (or no key is pinned). Nothing was sent."""


class AuthFailed(NotLoggedIn):
    """The target rejected the credentials (wrong password, key or certificate, role refused)."""


class AuthUnsupported(NotLoggedIn):
    """The target does not take this kind of credential at all, or wants a second factor."""


class TlsError(NotLoggedIn):
    """pamsite's TLS mode and the target's TLS do not agree, or its certificate fails; nothing was sent."""


def describe_target(*, host: str, port: int, target: str) -> str:
    """How messages name a target: "target pacs01 (10.0.0.5:22)"."""
    return f"target {target} ({host}:{port})" if target else f"target {host}:{port}"


def scrub(data: bytes, secrets: tuple[str, ...]) -> str:
    """What a target said, on one line, short, with every secret we sent it replaced by ***."""
    text = data.decode("utf-8", "replace")
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip())
    return text[:300]
