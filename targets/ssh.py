"""The SSH door to targets (asyncssh): host-key pinning, logins, commands, password changes.

One client for everything that talks SSH to a target: the gateway's relay logs in through
``connect``; the pam-admin pages, the rotation and the worker use the same coroutines
through the synchronous facade ``targets.ssh_blocking``.

- The target's host key is checked against the pinned OpenSSH public key line during the
  key exchange, BEFORE any authentication is sent. Only the pinned key's type is
  negotiated, and ``_PinnedHostKey.validate_host_public_key`` compares the offered key's
  blob with the pin. Nothing else is trusted: no known_hosts file, no host CA, no X.509,
  no first-use pinning.
- Credentials come from the arguments only: no agent, no ~/.ssh keys, no ssh_config. A
  password is also given to a keyboard-interactive prompt when the target asks that way.
  A private key is presented with its certificate (signed by Vault's SSH CA) when one is
  given, never bare as well.
- Failures raise the ``targets.errors`` classes with a message a person can act on.
  Passwords, keys and certificates never appear in a message or a log line; the password
  is dropped as soon as it has been sent.

asyncssh builds its connection options (``SSHClientConnectionOptions``) on the default
executor, on every ``asyncssh.connect`` call, even when given ready-made options; nothing
is gained by caching them, so each call passes its options as keyword arguments.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.views.decorators.debug import sensitive_variables

from targets.errors import (
    AuthFailed,
    AuthUnsupported,
    HostKeyMismatch,
    TargetError,
    TargetUnreachable,
    describe_target,
    scrub,
)

__all__ = [
    "HostKey",
    "RunResult",
    "change_password",
    "check_password_login",
    "connect",
    "describe_target",
    "fetch_host_key",
    "generate_keypair",
    "parse_host_key",
    "run",
]

logger = logging.getLogger(__name__)

# Host key algorithms pamsite checks, by the key type of an OpenSSH public key line. An RSA
# key is one key type but several signature algorithms; SHA-1 "ssh-rsa" signatures are not
# taken, so a target that offers nothing newer cannot be checked.
HOST_KEY_ALGORITHMS = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}
# The order in which fetch_host_key asks for a key when the target has several.
FETCH_PREFERENCE = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
# AES-GCM first: it relays fastest (no separate MAC); asyncssh's defaults follow ("^").
ENCRYPTION_ALGS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
KEEPALIVE_INTERVAL = 30  # seconds between keepalives on an idle connection
MAX_OUTPUT = 1024 * 1024  # bytes kept of a command's stdout, and of its stderr
# The private key types pamsite logs in with.
_PRIVATE_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
# Methods in the order tried. All three whatever the credential, so that the first request
# for a credential sees the target's list of methods (for AuthUnsupported's message);
# _PinnedHostKey hands out only the credential it was given, so nothing else is ever sent.
_AUTH_METHODS = ("publickey", "keyboard-interactive", "password")
# How a key exchange without a common host key algorithm ends: OpenSSH's sshd just drops
# the connection (closed, or reset when our last packet was still unread).
_DROPPED_IN_KEY_EXCHANGE = (asyncssh.KeyExchangeFailed, asyncssh.ConnectionLost, ConnectionError)


# --- Host keys ---------------------------------------------------------------------------


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

    Raises ``TargetError`` if the line is not a key type pamsite can check or its blob
    does not decode to a key of that type.
    """
    parts = (line or "").strip().split()
    if len(parts) < 2:
        raise TargetError(
            "Not an OpenSSH public key line: expected 'type base64', e.g. 'ssh-ed25519 AAAA...'"
        )
    key_type, b64 = parts[0], parts[1]
    if key_type not in HOST_KEY_ALGORITHMS:
        raise TargetError(
            f"Unsupported host key type {key_type[:40]!r}: use one of {', '.join(HOST_KEY_ALGORITHMS)}"
        )
    try:
        blob = base64.b64decode(b64, validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        embedded = blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise TargetError(f"The {key_type} host key's base64 part does not decode to an SSH key") from None
    if embedded != key_type:
        raise TargetError(f"The host key line says {key_type} but its blob holds a {embedded[:40]!r} key")
    return HostKey(key_type=key_type, base64=base64.b64encode(blob).decode("ascii"))


def _host_key_of(key: asyncssh.SSHKey) -> HostKey:
    return HostKey(key_type=key.get_algorithm(), base64=base64.b64encode(key.public_data).decode("ascii"))


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


# --- The asyncssh client: pinned host key, one credential ---------------------------------


class _PinnedHostKey(asyncssh.SSHClient):
    """Accepts only the pinned host key, and hands out the one credential it was given.

    Records what happened for ``connect`` to explain a failure: the key the target
    offered, whether the host key was accepted, whether the credential was sent, and the
    authentication methods the target allows. With no pin (``fetch_host_key``) it keeps
    the offered key and refuses it, so the handshake ends before any authentication.
    """

    def __init__(
        self,
        pinned: HostKey | None,
        *,
        password: str | None = None,
        keypair: asyncssh.SSHKeyPair | None = None,
    ) -> None:
        self.pinned = pinned
        self.offered: HostKey | None = None
        self.host_key_accepted = False
        self.credential_sent = False
        self.wants_second_factor = False
        self.allowed: list[str] = []
        self._connection: asyncssh.SSHClientConnection | None = None
        self._password = password
        self._keypair = keypair

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._connection = conn

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.offered = _host_key_of(key)
        self.host_key_accepted = self.pinned is not None and key.public_data == self.pinned.blob
        return self.host_key_accepted

    def validate_host_ca_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        return False  # host certificates are never trusted: only the pinned key

    def _note_methods(self) -> None:
        if not self.allowed and self._connection is not None:
            self.allowed = list(self._connection.get_server_auth_methods())

    def public_key_auth_requested(self) -> asyncssh.SSHKeyPair | None:
        self._note_methods()
        keypair, self._keypair = self._keypair, None
        self.credential_sent |= keypair is not None
        return keypair

    def password_auth_requested(self) -> str | None:
        self._note_methods()
        return self._take_password()

    def kbdint_auth_requested(self) -> str | None:
        self._note_methods()
        return "" if self._password is not None else None  # "": any submethods

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: list[tuple[str, bool]]
    ) -> list[str] | None:
        if not prompts:
            return []  # a message only
        if len(prompts) == 1 and self._password is not None:
            return [self._take_password()]
        # A second prompt (a one-time code after the password) or several at once.
        self.wants_second_factor = True
        return None

    def forget_credentials(self) -> None:
        """Drop what was not sent: this object lives as long as the connection."""
        self._password = self._keypair = None

    def _take_password(self) -> str | None:
        password, self._password = self._password, None
        self.credential_sent |= password is not None
        return password


def _load_keypair(private_key: str | bytes, certificate: str | None) -> asyncssh.SSHKeyPair:
    """The key (with its certificate, if any) as asyncssh presents it."""
    try:
        key = asyncssh.import_private_key(private_key)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        key = None
    if key is None or key.get_algorithm() not in _PRIVATE_KEY_TYPES:
        raise TargetError(
            "The private key is not an unencrypted Ed25519, ECDSA or RSA key in OpenSSH or PEM form"
        )
    if not certificate:
        return asyncssh.load_keypairs(key)[0]
    try:
        cert = asyncssh.import_certificate(certificate.strip())
        if cert.is_x509 or cert.key.public_data != key.public_data:
            raise ValueError("not this key's OpenSSH certificate")
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise TargetError(
            "The certificate is not an OpenSSH certificate for this private key "
            "(expected 'ssh-ed25519-cert-v01@openssh.com AAAA...')"
        ) from None
    # load_keypairs gives the certified key first, then the bare key: present only the first.
    return asyncssh.load_keypairs([(key, cert)])[0]


def _trust_nothing(host: str, addr: str, port: int | None) -> tuple[list, list, list]:
    """asyncssh's known_hosts: no key trusted up front, so each offered key is validated.

    (``known_hosts=None`` would turn host key checking off, and the default reads
    ~/.ssh/known_hosts; this sends every key to ``validate_host_public_key``.)
    """
    return [], [], []  # trusted host keys, trusted CA keys, revoked keys


def check_login(
    *, host: str, port: int, target: str, host_key: str, password, private_key, certificate
) -> tuple[str, HostKey]:
    """What every login to a target checks before connecting: (how to name it, the pinned key).

    Raises ``HostKeyMismatch`` for a missing pin and ``TargetError`` for a missing
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
        raise TargetError(f"No credential to log in to {where} with: give a password or a private key")
    if certificate and private_key is None:
        raise TargetError(f"A certificate for {where} needs its private key")
    return where, pinned


async def _handshake(
    client: _PinnedHostKey,
    *,
    host: str,
    port: int,
    username: str,
    algorithms: tuple[str, ...],
    timeout: float,
    where: str,
) -> asyncssh.SSHClientConnection:
    """TCP, the key exchange with only ``algorithms`` for the host key, then the login."""
    sock = await _open_socket(host, port, timeout=timeout, where=where)
    try:
        return await asyncssh.connect(
            host,
            port,
            sock=sock,
            client_factory=lambda: client,
            username=username,
            config=None,  # no ssh_config
            known_hosts=_trust_nothing,
            server_host_key_algs=list(algorithms),
            x509_trusted_certs=None,
            x509_trusted_cert_paths=[],
            encryption_algs=ENCRYPTION_ALGS,
            client_keys=None,  # no ~/.ssh keys, and (with that) no agent and no PKCS#11
            agent_path=None,
            gss_kex=False,
            gss_auth=False,
            host_based_auth=False,
            preferred_auth=_AUTH_METHODS,
            connect_timeout=timeout,
            login_timeout=timeout,
            keepalive_interval=KEEPALIVE_INTERVAL,
        )
    except BaseException:
        sock.close()  # asyncssh closes it too once it took it; closing twice is harmless
        raise


@sensitive_variables("password", "private_key", "keypair")
async def connect(
    *,
    host: str,
    port: int,
    username: str,
    host_key: str,
    password: str | None = None,
    private_key: str | bytes | None = None,
    certificate: str | None = None,
    timeout: float = 10,
    target: str = "",
) -> asyncssh.SSHClientConnection:
    """Log in to a target over SSH, its host key checked against the pinned ``host_key`` first.

    ``host_key`` is the OpenSSH public key line a pam-admin confirmed. Authenticate with
    ``private_key`` (OpenSSH/PEM text), optionally presented with its ``certificate``
    (the line Vault's SSH CA signed), or with ``password`` (also answering a
    keyboard-interactive password prompt). ``target`` names the target in error messages.
    ``timeout`` bounds the TCP connect, and again the SSH handshake and login.

    Raises ``HostKeyMismatch`` (no pin, or a different key: nothing is sent),
    ``TargetUnreachable``, ``AuthFailed``, ``AuthUnsupported`` or ``TargetError``.
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
    keypair = _load_keypair(private_key, certificate) if private_key is not None else None
    what = "certificate" if keypair is not None and certificate else "key" if keypair else "password"
    client = _PinnedHostKey(pinned, password=None if keypair else password, keypair=keypair)
    del password, private_key, keypair
    algorithms = HOST_KEY_ALGORITHMS[pinned.key_type]
    try:
        return await _handshake(
            client,
            host=host,
            port=port,
            username=username,
            algorithms=algorithms,
            timeout=timeout,
            where=where,
        )
    except TargetError:
        raise
    except Exception as exc:
        failure = _failure(exc, client, where=where, username=username, what=what, timeout=timeout)
        if failure is None:
            failure = await _no_key_of_the_pinned_type(
                exc, host=host, port=port, timeout=timeout, where=where, pinned=pinned
            )
        raise failure from None
    finally:
        client.forget_credentials()


async def fetch_host_key(*, host: str, port: int, timeout: float = 10, target: str = "") -> HostKey:
    """The target's SSH host key (ed25519 preferred), for a pam-admin to confirm and pin.

    Only the key exchange is done; nothing is authenticated. Compare ``fingerprint``
    with what the target's own ``ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`` prints.
    """
    where = describe_target(host=host, port=port, target=target)
    key = await _offered_key(host=host, port=port, algorithms=FETCH_PREFERENCE, timeout=timeout, where=where)
    if key is None:
        raise HostKeyMismatch(
            f"{where} offers no host key of a type pamsite can check ({', '.join(HOST_KEY_ALGORITHMS)})"
        )
    return key


async def _offered_key(
    *, host: str, port: int, algorithms: tuple[str, ...], timeout: float, where: str
) -> HostKey | None:
    """The host key the target offers for ``algorithms`` (refused at once: nothing is authenticated).

    None when the key exchange fails for want of a common host key algorithm; raises
    ``TargetUnreachable`` for anything else.
    """
    client = _PinnedHostKey(None)
    try:
        conn = await _handshake(
            client,
            host=host,
            port=port,
            username="pamsite",
            algorithms=algorithms,
            timeout=timeout,
            where=where,
        )
    except TargetError:
        raise
    except Exception as exc:
        if client.offered is not None:
            return client.offered
        if isinstance(exc, _DROPPED_IN_KEY_EXCHANGE):
            return None  # OpenSSH's sshd just drops the connection when no algorithm is in common
        raise TargetUnreachable(f"SSH handshake with {where} failed: {_detail(exc, timeout)}") from None
    conn.close()  # cannot happen: the client refuses every key
    raise TargetError(f"{where} accepted a connection without its host key being checked")


async def _no_key_of_the_pinned_type(
    exc: Exception, *, host: str, port: int, timeout: float, where: str, pinned: HostKey
) -> TargetError:
    """The key exchange failed before any host key was offered: a key type the target lacks?

    asyncssh's client does not compare host key algorithms with the target's (OpenSSH's
    sshd just drops the connection when none is in common), so the target is asked once
    more, the pinned type first and then any other: if it shows another type, the pinned
    one is what it lacks.
    """
    handshake_failed = TargetUnreachable(f"SSH handshake with {where} failed: {_detail(exc, timeout)}")
    pinned_algorithms = HOST_KEY_ALGORITHMS[pinned.key_type]
    algorithms = pinned_algorithms + tuple(a for a in FETCH_PREFERENCE if a not in pinned_algorithms)
    try:
        offered = await _offered_key(
            host=host, port=port, algorithms=algorithms, timeout=timeout, where=where
        )
    except TargetError:
        return handshake_failed
    if offered is None or offered.key_type == pinned.key_type:
        return handshake_failed
    return HostKeyMismatch(
        f"{where} offers no host key of the pinned type ({pinned_algorithms[0]}): the "
        "pinned key cannot be checked, so the connection is refused. A pam-admin must fetch and confirm "
        "the target's current key"
    )


async def _open_socket(host: str, port: int, *, timeout: float, where: str) -> socket.socket:
    """A connected TCP socket, tried address by address.

    asyncssh sets TCP_NODELAY (and SO_KEEPALIVE) on it when it takes it over.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _connect_any(host, port)
    except ConnectionRefusedError:
        raise TargetUnreachable(f"{where} refused the connection: is sshd running on that port?") from None
    except TimeoutError:
        raise TargetUnreachable(f"{where} did not answer within {timeout:g} s") from None
    except socket.gaierror as exc:
        raise TargetUnreachable(f"{where}: cannot resolve the host name ({exc.strerror})") from None
    except OSError as exc:
        raise TargetUnreachable(f"{where} cannot be reached: {exc.strerror or exc}") from None


async def _connect_any(host: str, port: int) -> socket.socket:
    """Like socket.create_connection: each address in turn, raising the last one's error."""
    loop = asyncio.get_running_loop()
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    raise error


def _failure(
    exc: Exception, client: _PinnedHostKey, *, where: str, username: str, what: str, timeout: float
) -> TargetError | None:
    """The error that explains why asyncssh.connect failed, by how far it got.

    None: the key exchange failed before the target offered a key (the caller finds out
    whether the target lacks the pinned key type).
    """
    if not client.host_key_accepted or isinstance(exc, asyncssh.KeyExchangeFailed):
        if client.offered is not None and not client.host_key_accepted:
            return _mismatch(where, client.pinned, client.offered)
        if isinstance(exc, _DROPPED_IN_KEY_EXCHANGE):
            return None
        return TargetUnreachable(f"SSH handshake with {where} failed: {_detail(exc, timeout)}")
    if isinstance(exc, asyncssh.PermissionDenied):
        if client.wants_second_factor:
            return AuthUnsupported(
                f"{where} wants more authentication for {username} (keyboard-interactive): "
                "pamsite logs in with one factor only"
            )
        if client.credential_sent:
            return AuthFailed(f"Authentication as {username} on {where} failed ({what} rejected)")
        allowed = ", ".join(client.allowed) or "none"
        return AuthUnsupported(
            f"{where} does not accept {what} authentication for {username} (it allows: {allowed})"
        )
    return TargetUnreachable(
        f"{where} dropped the connection while authenticating {username}: {_detail(exc, timeout)}"
    )


def _mismatch(where: str, pinned: HostKey, offered: HostKey) -> HostKeyMismatch:
    logger.warning(
        "Host key mismatch for %s: pinned %s, offered %s", where, pinned.fingerprint, offered.fingerprint
    )
    return HostKeyMismatch(
        f"The host key of {where} does not match the pinned key (pinned {pinned.fingerprint}, "
        f"offered {offered.fingerprint} {offered.key_type}): the connection is refused. If the "
        "target's key was changed on purpose, a pam-admin must confirm and pin the new one"
    )


def _detail(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    # In words the user can act on; a class name would say nothing to her.
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason or "it disconnected without a reason"
    if isinstance(exc, asyncssh.ChannelOpenError):
        return exc.reason or "it refused without a reason"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or "the connection failed without a reason"
    return str(exc) or "it failed without a reason"


# --- Commands, password checks and changes ------------------------------------------------


class RunResult(NamedTuple):
    """What a command on a target returned."""

    exit_status: int
    stdout: bytes
    stderr: bytes


async def _read_capped(stream: asyncssh.SSHReader) -> bytes:
    """Everything the stream gives until its end, of which the first ``MAX_OUTPUT`` bytes are kept."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        _keep(kept, chunk)
    return bytes(kept)


def _keep(buffer: bytearray, data: bytes) -> None:
    if len(buffer) < MAX_OUTPUT:
        buffer.extend(data[: MAX_OUTPUT - len(buffer)])


@sensitive_variables("stdin")
async def run(
    conn: asyncssh.SSHClientConnection,
    *,
    command: str,
    stdin: bytes | str | None = None,
    timeout: float = 30,
    where: str = "the target",
) -> RunResult:
    """Run a command on the target (no pty) with optional stdin; its exit status and output.

    At most ``MAX_OUTPUT`` bytes of each stream are kept. Raises ``TargetError`` if the
    command does not finish within ``timeout`` seconds or the connection drops.
    """
    process = None
    try:
        async with asyncio.timeout(timeout):
            # The command line is the caller's on purpose (this is the remote-exec helper);
            # pamsite passes only fixed commands here, never text from a request.
            process = await conn.create_process(command, encoding=None)
            if stdin is not None:
                process.stdin.write(stdin.encode() if isinstance(stdin, str) else stdin)
            process.stdin.write_eof()
            out, err = await asyncio.gather(_read_capped(process.stdout), _read_capped(process.stderr))
            await process.wait_closed()
        status = process.exit_status
        return RunResult(-1 if status is None else status, out, err)
    except TimeoutError:
        raise TargetError(f"A command on {where} did not finish within {timeout:g} s") from None
    except asyncssh.ChannelOpenError as exc:
        raise TargetError(f"{where} refused to open a session channel: {_detail(exc, timeout)}") from None
    except (asyncssh.Error, OSError, EOFError) as exc:
        raise TargetError(
            f"The connection to {where} failed while a command ran: {_detail(exc, timeout)}"
        ) from None
    finally:
        if process is not None:
            process.close()


@sensitive_variables("password")
async def check_password_login(
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

    Raises ``TargetError`` for anything else (unreachable, host key mismatch, the target
    not accepting passwords at all), so that "no" always means "this password is wrong".
    """
    try:
        conn = await connect(
            host=host,
            port=port,
            username=username,
            host_key=host_key,
            password=password,
            timeout=timeout,
            target=target,
        )
    except AuthFailed:
        return False
    conn.close()
    await conn.wait_closed()
    return True


# passwd's prompts, as PAM and shadow-utils word them (LC_ALL=C); the last line of output.
_PROMPT = re.compile(rb"(?im)^[^\n]*password[^\n]*:\s*$")
_CURRENT = re.compile(rb"(?i)current|old|\(current\)")
_AGAIN = re.compile(rb"(?i)retype|again|re-enter|repeat|confirm")


@sensitive_variables("current_password", "new_password", "line")
async def change_password(
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
    pty. Raises ``TargetError`` with the target's reason when it refuses (passwords
    scrubbed from anything it said); the ``NotLoggedIn`` subclasses mean the login itself
    failed and nothing was changed.
    """
    if any(c in new_password for c in ":\n\r\0"):
        raise TargetError(
            "The new password holds a character chpasswd/passwd cannot take (':', newline, NUL)"
        )
    where = describe_target(host=host, port=port, target=target)
    conn = await connect(
        host=host,
        port=port,
        username=username,
        host_key=host_key,
        password=current_password,
        timeout=timeout,
        target=target,
    )
    try:
        uid = await run(conn, command="id -u", timeout=timeout, where=where)
        secrets = (current_password, new_password)
        if uid.exit_status == 0 and uid.stdout.strip() == b"0":
            line = f"{username}:{new_password}\n"
            result = await run(conn, command="chpasswd", stdin=line, timeout=timeout, where=where)
            if result.exit_status != 0:
                said = scrub(result.stderr + result.stdout, secrets)
                raise TargetError(
                    f"{where} refused the new password for {username}: chpasswd exited with "
                    f"{result.exit_status}: {said or 'no message'}"
                )
        else:
            await _passwd_through_pty(
                conn, current_password, new_password, timeout=timeout, where=where, username=username
            )
    finally:
        conn.close()
        await conn.wait_closed()
    logger.info("Changed the password of %s on %s", username, where)


@sensitive_variables("current_password", "new_password")
async def _passwd_through_pty(
    conn: asyncssh.SSHClientConnection,
    current_password: str,
    new_password: str,
    *,
    timeout: float,
    where: str,
    username: str,
) -> None:
    secrets = (current_password, new_password)
    output = bytearray()
    answered: list[str] = []
    status = -1
    process = None
    try:
        async with asyncio.timeout(timeout):
            # A constant command line: nothing of the caller's reaches the target's shell.
            process = await conn.create_process(
                "env LC_ALL=C passwd", term_type="dumb", term_size=(200, 24), encoding=None
            )
            pending = b""  # output since the last answer
            gave_up = False
            while chunk := await process.stdout.read(4096):
                _keep(output, chunk)
                pending += chunk
                last_line = pending.replace(b"\r", b"").split(b"\n")[-1]
                if _PROMPT.search(last_line):
                    step = _passwd_step(last_line, answered)
                    if step is None:
                        # Asked again (the new password was refused) or out of order: stop, never loop.
                        gave_up = True
                        break
                    answered.append(step)
                    process.stdin.write(
                        (current_password if step == "current" else new_password).encode() + b"\n"
                    )
                    pending = b""
            if not gave_up:
                await process.wait_closed()
                status = -1 if process.exit_status is None else process.exit_status
    except TimeoutError:
        raise TargetError(f"passwd on {where} did not finish within {timeout:g} s") from None
    except (asyncssh.Error, OSError, EOFError) as exc:
        raise TargetError(
            f"The connection to {where} failed while passwd ran: {_detail(exc, timeout)}"
        ) from None
    finally:
        if process is not None:
            process.close()
    if status != 0 or answered[-2:] != ["new", "again"]:
        said = scrub(bytes(output), secrets)
        raise TargetError(
            f"{where} refused to change the password of {username}: passwd said: {said or 'nothing'}"
        )


def _passwd_step(prompt: bytes, answered: list[str]) -> str | None:
    """Which answer a passwd prompt wants ("current", "new", "again"), or None to give up."""
    if _CURRENT.search(prompt):
        return None if answered else "current"
    if _AGAIN.search(prompt):
        return "again" if answered[-1:] == ["new"] else None
    return "new" if "new" not in answered else None
