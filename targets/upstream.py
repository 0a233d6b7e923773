"""The blocking SSH client to targets: host-key pinning, password checks and rotation.

The pam-admin pages and the worker (fetching a host key to pin, checking a static
password, rotating it) log in to targets through here, with paramiko; the gateway's
relay uses the asyncio client in ``targets.ssh_async``, with the same rules and
the same errors. Every connection checks the target's host key against the key a pam-admin pinned
(the OpenSSH public key line stored on the Target) right after the key exchange and
BEFORE any authentication is sent: a missing pin or a different key refuses the
connection. There is no first-use pinning and no AutoAddPolicy.

Failures are raised as ``UpstreamError`` (or a subclass) with a message a person can act
on. Passwords, private keys and certificates never appear in a message or a log line.

``UpstreamNotLoggedIn`` and its subclasses (``UpstreamUnreachable``, ``HostKeyMismatch``,
``UpstreamAuthFailed``, ``UpstreamAuthUnsupported``) mean no session was opened on the
target, so nothing ran there: password rotation relies on that distinction.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import logging
import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.views.decorators.debug import sensitive_variables

logger = logging.getLogger(__name__)

# Host key algorithms paramiko can check, by the key type of an OpenSSH public key line.
# An RSA key is one key type but several signature algorithms; paramiko (5.x) dropped SHA-1
# "ssh-rsa" signatures, so a target that offers nothing newer cannot be checked.
_HOST_KEY_ALGORITHMS = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}
# The order in which fetch_host_key asks for a key when the target has several.
_FETCH_PREFERENCE = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
_PRIVATE_KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
IDLE_POLL_SECONDS = 2.0  # how often an idle transport's thread wakes (see quiet_transport)
MAX_OUTPUT = 1024 * 1024  # bytes kept of a command's stdout, and of its stderr


class UpstreamError(Exception):
    """The target could not be reached, refused us, or a command on it failed.

    The message says what happened to which target and never holds a secret.
    """


class UpstreamNotLoggedIn(UpstreamError):
    """No login session was established on the target: nothing ran there."""


class UpstreamUnreachable(UpstreamNotLoggedIn):
    """No SSH conversation with the target: refused, timed out, unknown host, not SSH."""


class HostKeyMismatch(UpstreamNotLoggedIn):
    """The target's host key is not the pinned one (or no key is pinned). Nothing was sent."""


class UpstreamAuthFailed(UpstreamNotLoggedIn):
    """The target rejected the credentials (wrong password, key or certificate)."""


class UpstreamAuthUnsupported(UpstreamNotLoggedIn):
    """The target does not take this kind of credential at all, or wants a second factor."""


@dataclass(frozen=True)
class HostKey:
    """An SSH host key, as pam-admins confirm it: type, base64 blob, line and fingerprint."""

    key_type: str
    base64: str

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.base64)

    @property
    def openssh(self) -> str:
        """The OpenSSH public key line ("ssh-ed25519 AAAA..."), which is what gets pinned."""
        return f"{self.key_type} {self.base64}"

    @property
    def fingerprint(self) -> str:
        """The SHA256 fingerprint exactly as ``ssh-keygen -lf`` prints it ("SHA256:...")."""
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode("ascii").rstrip("=")
        return f"SHA256:{digest}"

    def __str__(self) -> str:
        return self.openssh


def parse_host_key(line: str) -> HostKey:
    """A HostKey from an OpenSSH public key line ("type base64 [comment]").

    Raises ``UpstreamError`` if the line is not a key type pamsite can check or its blob
    does not decode to a key of that type.
    """
    parts = (line or "").strip().split()
    if len(parts) < 2:
        raise UpstreamError(
            "Not an OpenSSH public key line: expected 'type base64', e.g. 'ssh-ed25519 AAAA...'"
        )
    key_type, b64 = parts[0], parts[1]
    if key_type not in _HOST_KEY_ALGORITHMS:
        raise UpstreamError(
            f"Unsupported host key type {key_type[:40]!r}: use one of {', '.join(_HOST_KEY_ALGORITHMS)}"
        )
    try:
        blob = base64.b64decode(b64, validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        embedded = blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise UpstreamError(f"The {key_type} host key's base64 part does not decode to an SSH key") from None
    if embedded != key_type:
        raise UpstreamError(f"The host key line says {key_type} but its blob holds a {embedded[:40]!r} key")
    return HostKey(key_type=key_type, base64=base64.b64encode(blob).decode("ascii"))


def _host_key_of(key: paramiko.PKey) -> HostKey:
    blob = key.asbytes()
    (length,) = struct.unpack(">I", blob[:4])
    return HostKey(
        key_type=blob[4 : 4 + length].decode("ascii"), base64=base64.b64encode(blob).decode("ascii")
    )


def describe_target(*, host: str, port: int, target: str) -> str:
    """How messages name a target: "target pacs01 (10.0.0.5:22)"."""
    return f"target {target} ({host}:{port})" if target else f"target {host}:{port}"


def _open_transport(*, host: str, port: int, timeout: float, target: str, key_types: tuple[str, ...]):
    """A TCP connection and a finished key exchange, with the host key types restricted."""
    where = describe_target(host=host, port=port, target=target)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise UpstreamUnreachable(f"{where} refused the connection: is sshd running on that port?") from None
    except TimeoutError:
        raise UpstreamUnreachable(f"{where} did not answer within {timeout:g} s") from None
    except socket.gaierror as exc:
        raise UpstreamUnreachable(f"{where}: cannot resolve the host name ({exc.strerror})") from None
    except OSError as exc:
        raise UpstreamUnreachable(f"{where} cannot be reached: {exc.strerror or exc}") from None
    # Keystrokes and small replies go out at once (Nagle would hold them for an ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    transport.auth_timeout = timeout
    options = transport.get_security_options()
    options.key_types = key_types
    # AES-GCM first: it relays fastest (no separate MAC); CTR modes remain for older targets.
    preferred = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
    options.ciphers = preferred + tuple(c for c in options.ciphers if c not in preferred)
    try:
        transport.start_client(timeout=timeout)
    except paramiko.SSHException as exc:
        transport.close()
        text = str(exc)
        if "no acceptable host key" in text.lower():
            raise HostKeyMismatch(
                f"{where} offers no host key of the pinned type ({key_types[0]}): the pinned key "
                "cannot be checked, so the connection is refused. A pam-admin must fetch and confirm "
                "the target's current key"
            ) from None
        raise UpstreamUnreachable(
            f"SSH handshake with {where} failed: {text or type(exc).__name__}"
        ) from None
    except (EOFError, OSError) as exc:
        transport.close()
        detail = "it closed the connection" if isinstance(exc, EOFError) else (exc.strerror or str(exc))
        raise UpstreamUnreachable(f"SSH handshake with {where} failed: {detail}") from None
    return transport


def quiet_transport(transport: paramiko.Transport, *, poll: float = IDLE_POLL_SECONDS) -> None:
    """Let an idle transport's thread sleep in recv() for ``poll`` s instead of paramiko's 0.1 s.

    Paramiko's thread wakes at each socket timeout only to see whether it was closed; with
    hundreds of idle sessions at 0.1 s that alone kept a core busy. ``close_transport``
    wakes it at once instead.
    """
    transport.sock.settimeout(poll)


def close_transport(transport: paramiko.Transport) -> None:
    """Close a transport and wake its thread now (shutdown ends a recv() in progress)."""
    with contextlib.suppress(OSError):
        transport.sock.shutdown(socket.SHUT_RDWR)
    transport.close()


def fetch_host_key(*, host: str, port: int, timeout: float = 10, target: str = "") -> HostKey:
    """The target's SSH host key (ed25519 preferred), for a pam-admin to confirm and pin.

    Only the key exchange is done; nothing is authenticated. Compare ``fingerprint``
    with what the target's own ``ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`` prints.
    """
    transport = _open_transport(
        host=host, port=port, timeout=timeout, target=target, key_types=_FETCH_PREFERENCE
    )
    try:
        return _host_key_of(transport.get_remote_server_key())
    finally:
        transport.close()


class UpstreamConnection:
    """An authenticated SSH connection to a target (its host key checked against the pin).

    ``transport`` is the paramiko Transport for the gateway to open channels on (session,
    direct-tcpip, SFTP). Close it when done; it is also a context manager.
    """

    def __init__(self, transport: paramiko.Transport, *, host: str, port: int, username: str, target: str):
        self.transport = transport
        self.host = host
        self.port = port
        self.username = username
        self.target = target
        self._closed = False

    def __repr__(self) -> str:
        state = "open" if self.transport.is_active() else "closed"
        return f"<UpstreamConnection {self.username}@{self.host}:{self.port} {state}>"

    @property
    def where(self) -> str:
        return describe_target(host=self.host, port=self.port, target=self.target)

    def open_session(self, *, timeout: float = 10) -> paramiko.Channel:
        """A new session channel (for a shell, an exec or a subsystem such as sftp)."""
        try:
            return self.transport.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise UpstreamError(
                f"{self.where} refused to open a session channel: {exc or type(exc).__name__}"
            ) from None

    @property
    def lost(self) -> bool:
        """True when the target's side ended the connection (sshd killed, host gone), not us."""
        return not self._closed and not self.transport.is_active()

    def lost_message(self) -> str:
        """What to tell the user when the connection is ``lost``."""
        return (
            f"The connection to {self.where} was lost: the target's SSH server stopped or the host went down."
        )

    def close(self) -> None:
        self._closed = True
        close_transport(self.transport)

    def __enter__(self) -> UpstreamConnection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _load_private_key(private_key: str | bytes | paramiko.PKey) -> paramiko.PKey:
    if isinstance(private_key, paramiko.PKey):
        return private_key
    text = private_key.decode("ascii") if isinstance(private_key, bytes) else private_key
    for cls in _PRIVATE_KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    raise UpstreamError(
        "The private key is not an unencrypted Ed25519, ECDSA or RSA key in OpenSSH or PEM form"
    )


def _attach_certificate(key: paramiko.PKey, certificate: str) -> None:
    """Make the key present itself with an OpenSSH certificate ("type-cert-v01@openssh.com base64")."""
    parts = certificate.strip().split()
    try:
        blob = base64.b64decode(parts[1], validate=True)
        # A Message, not the string: load_certificate would otherwise probe the filesystem for it.
        key.load_certificate(paramiko.Message(blob))
    except (IndexError, binascii.Error, ValueError, paramiko.SSHException):
        raise UpstreamError(
            "The certificate is not an OpenSSH certificate for this private key "
            "(expected 'ssh-ed25519-cert-v01@openssh.com AAAA...')"
        ) from None


def check_login(
    *, host: str, port: int, target: str, host_key: str, password, private_key, certificate
) -> tuple[str, HostKey]:
    """What every login to a target checks before connecting: (how to name it, the pinned key).

    Raises ``HostKeyMismatch`` for a missing pin and ``UpstreamError`` for a missing
    credential or a certificate without its key; never says what a credential is.
    """
    where = describe_target(host=host, port=port, target=target)
    if not (host_key or "").strip():
        raise HostKeyMismatch(
            f"No host key is pinned for {where}: a pam-admin must fetch the target's key, check its "
            "fingerprint and pin it before anyone connects"
        )
    pinned = parse_host_key(host_key)
    if password is None and private_key is None:
        raise UpstreamError(f"No credential to log in to {where} with: give a password or a private key")
    if certificate and private_key is None:
        raise UpstreamError(f"A certificate for {where} needs its private key")
    return where, pinned


@sensitive_variables("password", "private_key", "key")
def connect(
    *,
    host: str,
    port: int,
    username: str,
    host_key: str,
    password: str | None = None,
    private_key: str | bytes | paramiko.PKey | None = None,
    certificate: str | None = None,
    timeout: float = 10,
    target: str = "",
) -> UpstreamConnection:
    """Log in to a target over SSH, its host key checked against the pinned ``host_key`` first.

    ``host_key`` is the OpenSSH public key line a pam-admin confirmed. Authenticate with
    ``private_key`` (OpenSSH/PEM text or a paramiko key), optionally presented with its
    ``certificate`` (the line Vault's SSH CA signed), or with ``password`` (falling back
    to keyboard-interactive when the target allows only that). ``target`` names the
    target in error messages.

    Raises ``HostKeyMismatch`` (no pin, or a different key: nothing is sent),
    ``UpstreamUnreachable``, ``UpstreamAuthFailed`` or ``UpstreamError``.
    """
    where, pinned = check_login(
        host=host,
        port=port,
        target=target,
        host_key=host_key,
        password=password,
        private_key=private_key,
        certificate=certificate,
    )
    key = None
    if private_key is not None:
        key = _load_private_key(private_key)
        if certificate:
            _attach_certificate(key, certificate)
    transport = _open_transport(
        host=host, port=port, timeout=timeout, target=target, key_types=_HOST_KEY_ALGORITHMS[pinned.key_type]
    )
    try:
        offered = _host_key_of(transport.get_remote_server_key())
        if offered.blob != pinned.blob:
            logger.warning(
                "Host key mismatch for %s: pinned %s, offered %s",
                where,
                pinned.fingerprint,
                offered.fingerprint,
            )
            raise HostKeyMismatch(
                f"The host key of {where} does not match the pinned key (pinned {pinned.fingerprint}, "
                f"offered {offered.fingerprint} {offered.key_type}): the connection is refused. If the "
                "target's key was changed on purpose, a pam-admin must confirm and pin the new one"
            )
        _authenticate(transport, username=username, password=password, key=key, where=where)
    except BaseException:
        transport.close()
        raise
    quiet_transport(transport)
    return UpstreamConnection(transport, host=host, port=port, username=username, target=target)


@sensitive_variables("password", "key")
def _authenticate(
    transport: paramiko.Transport,
    *,
    username: str,
    password: str | None,
    key: paramiko.PKey | None,
    where: str,
) -> None:
    what = "certificate" if key is not None and key.public_blob is not None else "key" if key else "password"
    try:
        if key is not None:
            remaining = transport.auth_publickey(username, key)
        else:
            remaining = transport.auth_password(username, password, fallback=True)
    except paramiko.BadAuthenticationType as exc:
        allowed = ", ".join(exc.allowed_types) or "none"
        raise UpstreamAuthUnsupported(
            f"{where} does not accept {what} authentication for {username} (it allows: {allowed})"
        ) from None
    except paramiko.AuthenticationException:
        raise UpstreamAuthFailed(
            f"Authentication as {username} on {where} failed ({what} rejected)"
        ) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise UpstreamUnreachable(
            f"{where} dropped the connection while authenticating {username}: {exc or type(exc).__name__}"
        ) from None
    if remaining or not transport.is_authenticated():
        raise UpstreamAuthUnsupported(
            f"{where} wants more authentication for {username} ({', '.join(remaining or ()) or 'unknown'}): "
            "pamsite logs in with one factor only"
        )


class RunResult(NamedTuple):
    """What a command on a target returned."""

    exit_status: int
    stdout: bytes
    stderr: bytes


@sensitive_variables("stdin")
def run(
    *, connection: UpstreamConnection, command: str, stdin: bytes | str | None = None, timeout: float = 30
) -> RunResult:
    """Run a command on the target (no pty) with optional stdin; its exit status and output.

    At most ``MAX_OUTPUT`` bytes of each stream are kept. Raises ``UpstreamError`` if the
    command does not finish within ``timeout`` seconds or the connection drops.
    """
    where = connection.where
    channel = connection.open_session(timeout=timeout)
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    try:
        channel.settimeout(timeout)
        # The command line is the caller's on purpose (this is the remote-exec helper); pamsite
        # passes only fixed commands here, never text from a request.
        channel.exec_command(command)  # nosec B601
        if stdin is not None:
            channel.sendall(stdin.encode() if isinstance(stdin, str) else stdin)
        channel.shutdown_write()
        while True:
            busy = False
            if channel.recv_ready():
                _keep(out, channel.recv(65536))
                busy = True
            if channel.recv_stderr_ready():
                _keep(err, channel.recv_stderr(65536))
                busy = True
            if not busy:
                if (
                    channel.exit_status_ready()
                    and not channel.recv_ready()
                    and not channel.recv_stderr_ready()
                ):
                    break
                if time.monotonic() > deadline:
                    raise UpstreamError(f"A command on {where} did not finish within {timeout:g} s")
                time.sleep(0.005)
        return RunResult(channel.recv_exit_status(), bytes(out), bytes(err))
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise UpstreamError(
            f"The connection to {where} failed while a command ran: {exc or type(exc).__name__}"
        ) from None
    finally:
        channel.close()


def _keep(buffer: bytearray, data: bytes) -> None:
    if len(buffer) < MAX_OUTPUT:
        buffer.extend(data[: MAX_OUTPUT - len(buffer)])


@sensitive_variables("password")
def check_password_login(
    *,
    host: str,
    port: int,
    username: str,
    host_key: str,
    password: str,
    timeout: float = 10,
    target: str = "",
) -> bool:
    """True if the password logs in as username on the target, False if it is rejected.

    Raises ``UpstreamError`` for anything else (unreachable, host key mismatch, the target
    not accepting passwords at all), so that "no" always means "this password is wrong".
    """
    try:
        connection = connect(
            host=host,
            port=port,
            username=username,
            host_key=host_key,
            password=password,
            timeout=timeout,
            target=target,
        )
    except UpstreamAuthFailed:
        return False
    connection.close()
    return True


# passwd's prompts, as PAM and shadow-utils word them (LC_ALL=C); the last line of output.
_PROMPT = re.compile(rb"(?im)^[^\n]*password[^\n]*:\s*$")
_CURRENT = re.compile(rb"(?i)current|old|\(current\)")
_AGAIN = re.compile(rb"(?i)retype|again|re-enter|repeat|confirm")


@sensitive_variables("current_password", "new_password", "line")
def change_password(
    *,
    host: str,
    port: int,
    username: str,
    host_key: str,
    current_password: str,
    new_password: str,
    timeout: float = 30,
    target: str = "",
) -> None:
    """Change username's password on the target, logging in with the current one.

    Run as uid 0 (root, or a root-equivalent account) it feeds ``user:new`` to ``chpasswd``
    on stdin; as anyone else it answers ``passwd``'s current/new/retype prompts through a
    pty. Raises ``UpstreamError`` with the target's reason when it refuses (passwords
    scrubbed from anything it said); the ``UpstreamNotLoggedIn`` subclasses mean the
    login itself failed and nothing was changed.
    """
    if any(c in new_password for c in ":\n\r\0"):
        raise UpstreamError(
            "The new password holds a character chpasswd/passwd cannot take (':', newline, NUL)"
        )
    with connect(
        host=host,
        port=port,
        username=username,
        host_key=host_key,
        password=current_password,
        timeout=timeout,
        target=target,
    ) as connection:
        uid = run(connection=connection, command="id -u", timeout=timeout)
        secrets = (current_password, new_password)
        if uid.exit_status == 0 and uid.stdout.strip() == b"0":
            line = f"{username}:{new_password}\n"
            result = run(connection=connection, command="chpasswd", stdin=line, timeout=timeout)
            if result.exit_status != 0:
                said = _scrub(result.stderr + result.stdout, secrets)
                raise UpstreamError(
                    f"{connection.where} refused the new password for {username}: chpasswd exited with "
                    f"{result.exit_status}: {said or 'no message'}"
                )
        else:
            _passwd_through_pty(connection, current_password, new_password, timeout=timeout)
    logger.info(
        "Changed the password of %s on %s", username, describe_target(host=host, port=port, target=target)
    )


@sensitive_variables("current_password", "new_password")
def _passwd_through_pty(
    connection: UpstreamConnection, current_password: str, new_password: str, *, timeout: float
) -> None:
    where, username = connection.where, connection.username
    secrets = (current_password, new_password)
    channel = connection.open_session(timeout=timeout)
    deadline = time.monotonic() + timeout
    output = bytearray()
    answered: list[str] = []
    try:
        channel.settimeout(timeout)
        channel.get_pty(term="dumb", width=200, height=24)
        # A constant command line: nothing of the caller's reaches the target's shell.
        channel.exec_command("env LC_ALL=C passwd")  # nosec B601
        pending = b""  # output since the last answer
        while not channel.exit_status_ready() or channel.recv_ready():
            if channel.recv_ready():
                chunk = channel.recv(4096)
                _keep(output, chunk)
                pending += chunk
                last_line = pending.replace(b"\r", b"").split(b"\n")[-1]
                if _PROMPT.search(last_line):
                    step = _passwd_step(last_line, answered)
                    if step is None:
                        # Asked again (the new password was refused) or out of order: stop, never loop.
                        break
                    answered.append(step)
                    channel.sendall(
                        (current_password if step == "current" else new_password).encode() + b"\n"
                    )
                    pending = b""
                continue
            if time.monotonic() > deadline:
                raise UpstreamError(f"passwd on {where} did not finish within {timeout:g} s")
            time.sleep(0.005)
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise UpstreamError(
            f"The connection to {where} failed while passwd ran: {exc or type(exc).__name__}"
        ) from None
    finally:
        channel.close()
    if status != 0 or answered[-2:] != ["new", "again"]:
        said = _scrub(bytes(output), secrets)
        raise UpstreamError(
            f"{where} refused to change the password of {username}: passwd said: {said or 'nothing'}"
        )


def _passwd_step(prompt: bytes, answered: list[str]) -> str | None:
    """Which answer a passwd prompt wants ("current", "new", "again"), or None to give up."""
    if _CURRENT.search(prompt):
        return None if answered else "current"
    if _AGAIN.search(prompt):
        return "again" if answered[-1:] == ["new"] else None
    return "new" if "new" not in answered else None


def _scrub(data: bytes, secrets: tuple[str, ...]) -> str:
    """The target's words on one line, short, with any secret we sent removed."""
    text = data.decode("utf-8", "replace")
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip())
    return text[:300]


def generate_keypair() -> tuple[str, str]:
    """A fresh Ed25519 key pair: (private key in OpenSSH form, public key line) for one login.

    The gateway has the public key signed by Vault's SSH CA (``vault.sources.ssh_sign``) and
    logs in with ``connect(private_key=..., certificate=...)``; the key lives in memory only.
    """
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode("ascii")


# --- PostgreSQL targets ----------------------------------------------------------------------
# A database account's connection test logs in to the target's PostgreSQL as a client coming
# through the gateway's port forward would, with a short-lived user from Vault.


class UpstreamTlsError(UpstreamNotLoggedIn):
    """pamsite's TLS mode (sslmode) and the target's TLS do not agree; nothing was sent."""


@sensitive_variables("password")
def check_database_login(
    *,
    host: str,
    port: int,
    database: str,
    username: str,
    password: str,
    sslmode: str,
    timeout: float = 10,
    target: str = "",
) -> str:
    """Log in to a PostgreSQL target and run one query; returns the server's version.

    Raises ``UpstreamUnreachable``, ``UpstreamTlsError`` (sslmode against what the server
    offers or its certificate), ``UpstreamAuthFailed`` (password or role refused, no
    CONNECT privilege) or ``UpstreamError`` (no such database, anything else), each with
    libpq's reason in words and never the password.
    """
    import psycopg

    where = describe_target(host=host, port=port, target=target)
    try:
        with psycopg.connect(
            host=host,
            port=port,
            dbname=database,
            user=username,
            password=password,
            sslmode=sslmode,
            connect_timeout=max(1, round(timeout)),
            application_name="pamsite connection test",
        ) as conn:
            conn.execute("SELECT 1")
            return str(conn.info.parameter_status("server_version") or "")
    except psycopg.Error as exc:
        said = _scrub(str(exc).encode(), (password,))
        raise _database_failure(
            said, where=where, database=database, username=username, sslmode=sslmode
        ) from None


def _database_failure(said: str, *, where: str, database: str, username: str, sslmode: str) -> UpstreamError:
    """libpq's error text as the exception a person can act on."""
    text = said.lower()
    if "server does not support ssl" in text:
        return UpstreamTlsError(
            f"{where} does not offer TLS, but this account's TLS mode is {sslmode}: turn TLS on in "
            "the server, or choose prefer or disable for the account"
        )
    if any(
        s in text
        for s in ("certificate verify failed", "root certificate", "ssl error", "server certificate")
    ):
        return UpstreamTlsError(f"TLS with {where} failed with TLS mode {sslmode}: {said}")
    if "no pg_hba.conf entry" in text:
        return UpstreamTlsError(
            f"{where} has no rule (pg_hba.conf) for this client with TLS mode {sslmode}: if the server "
            "accepts only TLS, choose require or stricter; otherwise its DBA must allow pamsite's address. "
            f"PostgreSQL said: {said}"
        )
    if "connection refused" in text:
        return UpstreamUnreachable(f"{where} refused the connection: is PostgreSQL listening on that port?")
    if "timeout expired" in text or "timed out" in text:
        return UpstreamUnreachable(f"{where} did not answer in time")
    if "could not translate host name" in text or "name or service not known" in text:
        return UpstreamUnreachable(f"{where}: cannot resolve the host name")
    if f'database "{database.lower()}" does not exist' in text:
        return UpstreamError(
            f"The database {database} does not exist on {where}: correct the account's database"
        )
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return UpstreamAuthFailed(f"{where} refused the login of {username}: {said}")
    if "permission denied for database" in text or "connect privilege" in text:
        return UpstreamAuthFailed(
            f"{username} may not connect to {database} on {where}: grant CONNECT on it to the "
            "account's group role"
        )
    if "could not connect" in text or ("connection to server" in text and "failed" in text):
        return UpstreamUnreachable(f"{where} cannot be reached: {said}")
    return UpstreamError(f"{where} refused the connection: {said}")
