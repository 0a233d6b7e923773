"""The asyncio gateway's logins to targets: ``targets.upstream.connect`` for asyncssh.

``connect()`` opens an authenticated ``asyncssh.SSHClientConnection`` with the same
contract, the same exception classes and the same messages as the paramiko client in
``targets.upstream`` (which stays for password rotation and fetching host keys):

- The target's host key is checked against the pinned OpenSSH public key line during the
  key exchange, BEFORE any authentication is sent. Only the pinned key's type is
  negotiated, and ``_PinnedHostKey.validate_host_public_key`` compares the offered key's
  blob with the pin. Nothing else is trusted: no known_hosts file, no host CA, no X.509.
- Credentials come from the arguments only: no agent, no ~/.ssh keys, no ssh_config. A
  password is also given to a keyboard-interactive prompt when the target asks that way
  (as paramiko's ``auth_password(fallback=True)`` does). A private key is presented with
  its certificate (signed by Vault's SSH CA) when one is given, never bare as well.
- Failures raise ``UpstreamUnreachable``, ``HostKeyMismatch``, ``UpstreamAuthFailed``,
  ``UpstreamAuthUnsupported`` or ``UpstreamError``. Passwords and keys never appear in a
  message or a log line; the password is dropped as soon as it has been sent.

asyncssh builds its connection options (``SSHClientConnectionOptions``) on the default
executor, on every ``asyncssh.connect`` call, even when given ready-made options; nothing
is gained by caching them, so each call passes its options as keyword arguments.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import struct

import asyncssh

from targets.upstream import (
    _HOST_KEY_ALGORITHMS,
    HostKey,
    HostKeyMismatch,
    UpstreamAuthFailed,
    UpstreamAuthUnsupported,
    UpstreamError,
    UpstreamUnreachable,
    check_login,
)

logger = logging.getLogger(__name__)

# AES-GCM first: it relays fastest (no separate MAC); asyncssh's defaults follow ("^").
ENCRYPTION_ALGS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
KEEPALIVE_INTERVAL = 30  # seconds between keepalives on an idle connection
# The private key types targets.upstream accepts (its _PRIVATE_KEY_CLASSES).
_PRIVATE_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
# Methods in the order tried. All three whatever the credential, so that the first request
# for a credential sees the target's list of methods (for UpstreamAuthUnsupported's
# message); _PinnedHostKey hands out only the credential it was given, so nothing else is
# ever sent.
_AUTH_METHODS = ("publickey", "keyboard-interactive", "password")


class _PinnedHostKey(asyncssh.SSHClient):
    """Accepts only the pinned host key, and hands out the one credential it was given.

    Records what happened for ``connect`` to explain a failure: the key the target
    offered, whether the host key was accepted, whether the credential was sent, and the
    authentication methods the target allows.
    """

    def __init__(
        self,
        pinned: HostKey,
        *,
        password: str | None,
        keypair: asyncssh.SSHKeyPair | None,
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
        self.offered = HostKey(
            key_type=key.get_algorithm(), base64=base64.b64encode(key.public_data).decode()
        )
        self.host_key_accepted = key.public_data == self.pinned.blob
        return self.host_key_accepted

    def validate_host_ca_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        return False  # host certificates are never trusted: only the pinned key

    def server_host_key_algorithms(self) -> list[str] | None:
        """The host key algorithms the target listed in its KEXINIT, None if it sent none.

        asyncssh's client does not compare them with its own (OpenSSH's sshd just drops the
        connection when none is in common), so the raw KEXINIT it keeps is read here:
        message type, 16-byte cookie, then the kex and host key algorithm name-lists.
        """
        payload = getattr(self._connection, "_server_kexinit", b"")
        offset, names = 17, b""
        try:
            for _ in range(2):
                (length,) = struct.unpack_from(">I", payload, offset)
                names, offset = payload[offset + 4 : offset + 4 + length], offset + 4 + length
            return names.decode("ascii").split(",")
        except (struct.error, UnicodeDecodeError):
            return None

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
    """The key (with its certificate, if any) as asyncssh presents it; same errors as upstream."""
    try:
        key = asyncssh.import_private_key(private_key)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        key = None
    if key is None or key.get_algorithm() not in _PRIVATE_KEY_TYPES:
        raise UpstreamError(
            "The private key is not an unencrypted Ed25519, ECDSA or RSA key in OpenSSH or PEM form"
        )
    if not certificate:
        return asyncssh.load_keypairs(key)[0]
    try:
        cert = asyncssh.import_certificate(certificate.strip())
        if cert.is_x509 or cert.key.public_data != key.public_data:
            raise ValueError("not this key's OpenSSH certificate")
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise UpstreamError(
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


async def connect(
    *,
    host: str,
    port: int,
    username: str,
    host_key: str,
    password: str | None = None,
    private_key: str | None = None,
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
    ``UpstreamUnreachable``, ``UpstreamAuthFailed``, ``UpstreamAuthUnsupported`` or
    ``UpstreamError``, with the messages of ``targets.upstream.connect``.
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
            server_host_key_algs=list(_HOST_KEY_ALGORITHMS[pinned.key_type]),
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
    except BaseException as exc:
        sock.close()  # asyncssh closes it too once it took it; closing twice is harmless
        if isinstance(exc, Exception):
            raise _failure(exc, client, where=where, username=username, what=what, timeout=timeout) from None
        raise
    finally:
        client.forget_credentials()


async def _open_socket(host: str, port: int, *, timeout: float, where: str) -> socket.socket:
    """A connected TCP socket, tried address by address; same errors as upstream._open_transport.

    asyncssh sets TCP_NODELAY (and SO_KEEPALIVE) on it when it takes it over.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _connect_any(host, port)
    except ConnectionRefusedError:
        raise UpstreamUnreachable(f"{where} refused the connection: is sshd running on that port?") from None
    except TimeoutError:
        raise UpstreamUnreachable(f"{where} did not answer within {timeout:g} s") from None
    except socket.gaierror as exc:
        raise UpstreamUnreachable(f"{where}: cannot resolve the host name ({exc.strerror})") from None
    except OSError as exc:
        raise UpstreamUnreachable(f"{where} cannot be reached: {exc.strerror or exc}") from None


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
) -> UpstreamError:
    """The UpstreamError that explains why asyncssh.connect failed, by how far it got."""
    if not client.host_key_accepted or isinstance(exc, asyncssh.KeyExchangeFailed):
        if client.offered is not None and not client.host_key_accepted:
            return _mismatch(where, client.pinned, client.offered)
        algorithms = _HOST_KEY_ALGORITHMS[client.pinned.key_type]
        offered_algorithms = client.server_host_key_algorithms()
        if offered_algorithms is not None and not set(algorithms) & set(offered_algorithms):
            return HostKeyMismatch(
                f"{where} offers no host key of the pinned type ({algorithms[0]}): the pinned "
                "key cannot be checked, so the connection is refused. A pam-admin must fetch and confirm "
                "the target's current key"
            )
        return UpstreamUnreachable(f"SSH handshake with {where} failed: {_detail(exc, timeout)}")
    if isinstance(exc, asyncssh.PermissionDenied):
        if client.wants_second_factor:
            return UpstreamAuthUnsupported(
                f"{where} wants more authentication for {username} (keyboard-interactive): "
                "pamsite logs in with one factor only"
            )
        if client.credential_sent:
            return UpstreamAuthFailed(f"Authentication as {username} on {where} failed ({what} rejected)")
        allowed = ", ".join(client.allowed) or "none"
        return UpstreamAuthUnsupported(
            f"{where} does not accept {what} authentication for {username} (it allows: {allowed})"
        )
    return UpstreamUnreachable(
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


def _detail(exc: Exception, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    # In words the user can act on; a class name would say nothing to her.
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason or "it disconnected without a reason"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or "the connection failed without a reason"
    return str(exc) or "it failed without a reason"
