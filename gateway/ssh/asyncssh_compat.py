"""Everything the gateway relies on inside asyncssh that asyncssh does not offer publicly.

asyncssh is pinned (``ASYNCSSH_VERSION``, requirements.txt). What the gateway needs
beyond its documented API is here and nowhere else, each piece checked against the
installed asyncssh by ``tests/gateway/test_asyncssh_compat.py`` (names, signatures, and
behaviour through a real loopback connection): an upgrade that changes any of it fails
those tests before it can change what the gateway does.

- ``ServerConnection``: the server connection with the hooks the two-step login needs.
  asyncssh answers a verified first factor with SSH_MSG_USERAUTH_SUCCESS and has no
  public way to answer "partial success" (RFC 4252, 5.1) or to disconnect instead; it
  also refuses a second ssh-userauth service request, which some clients (paramiko) send
  before each method, and its agent and X11 forwarding refusals cannot be observed.
- ``accept``: an accepted socket served by ``ServerConnection`` (asyncssh's ``listen()``
  takes no connection class).
- ``kex_done``, ``login_done``, ``is_open``, ``transport``: connection state asyncssh keeps
  in private attributes. ``is_open`` turns False the moment asyncssh decides to close
  (a protocol error, an abort), where the public ``is_closed()`` waits for the clean-up.
- ``route_output``, ``end_input_at_close``, ``skip_empty_ignore``, ``receive_through``: where
  ``gateway.ssh.relay.streamline`` changes how packets reach the socket and how reads reach
  asyncssh. Framing, sequence numbers, encryption and rekeying stay asyncssh's.
- ``reuse_gcm_contexts``: one AES-GCM object per key on asyncssh's own GCM cipher objects,
  instead of one per packet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncssh
from asyncssh.constants import MSG_IGNORE, MSG_SERVICE_ACCEPT, MSG_SERVICE_REQUEST
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.packet import String
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

logger = logging.getLogger(__name__)

# The asyncssh release this module was written and tested against (requirements.txt).
ASYNCSSH_VERSION = "2.24.1"
USERAUTH_SERVICE = b"ssh-userauth"
EMPTY_STRING = String(b"")  # the payload of asyncssh's CBC countermeasure, SSH_MSG_IGNORE ""
# What ServerConnection.auth_verdict may answer (see there).
LOGIN, PARTIAL, FAILURE = "login", "partial", "failed"


def version_problem() -> str | None:
    """Why the installed asyncssh is not the one this module was checked against, if it is not."""
    if asyncssh.__version__ != ASYNCSSH_VERSION:
        return (
            f"asyncssh {asyncssh.__version__} is installed; the gateway's compatibility code "
            f"was checked against {ASYNCSSH_VERSION} (run tests/gateway/test_asyncssh_compat.py)"
        )
    return None


class ServerConnection(asyncssh.SSHServerConnection):
    """asyncssh's server connection, with public hooks for the two-step login.

    Subclasses override the hooks, never asyncssh's methods:

    - ``auth_verdict(username)``: asyncssh accepted a factor (a verified key, a right
      password, right keyboard-interactive answers). Answer LOGIN (send success),
      PARTIAL (send failure with partial success: go on with another method), FAILURE,
      or None (the hook disconnected the client; nothing is sent).
    - ``auth_failure_answer(partial_success)``: a failure is about to be sent (asyncssh
      refused a factor, or ``auth_verdict`` said so). Answer the partial-success flag to
      send, or None (the hook disconnected the client instead).
    - ``forwarding_refused(what)``: the client asked for agent or X11 forwarding, which
      the gateway never allows; what: "agent forwarding" or "X11 forwarding".
    """

    async def auth_verdict(self, username: str) -> str | None:
        return LOGIN

    def auth_failure_answer(self, partial_success: bool) -> bool | None:
        return partial_success

    async def forwarding_refused(self, what: str) -> None:
        return None

    # --- asyncssh's methods the hooks stand in for --------------------------------------

    def send_userauth_failure(self, partial_success: bool) -> None:
        answer = self.auth_failure_answer(partial_success)
        if answer is not None:
            super().send_userauth_failure(answer)

    async def send_userauth_success(self) -> None:
        verdict = await self.auth_verdict(self._username)
        if self._owner is None or self._transport is None:
            return  # the client left meanwhile
        if verdict == LOGIN:
            await super().send_userauth_success()
        elif verdict is not None:
            self.send_userauth_failure(verdict == PARTIAL)

    def _process_service_request(self, pkttype: int, pktid: int, packet) -> None:
        # Some clients (paramiko) ask for the ssh-userauth service again before each
        # method; OpenSSH's sshd accepts that, asyncssh would disconnect.
        if self._next_service is None and self._auth_in_progress and not self._auth_complete:
            service = packet.get_string()
            packet.check_end()
            if service != USERAUTH_SERVICE:
                raise asyncssh.ServiceNotAvailable("Unexpected service in service request")
            self.send_packet(MSG_SERVICE_ACCEPT, String(service))
            return
        super()._process_service_request(pkttype, pktid, packet)

    _packet_handlers = {
        **asyncssh.SSHServerConnection._packet_handlers,
        MSG_SERVICE_REQUEST: _process_service_request,
    }

    async def create_agent_listener(self) -> bool:
        await self.forwarding_refused("agent forwarding")
        return False

    async def attach_x11_listener(self, chan, auth_proto, auth_data, screen):
        await self.forwarding_refused("X11 forwarding")
        return None


async def accept(
    sock, connection_class: type[ServerConnection], options: asyncssh.SSHServerConnectionOptions
) -> None:
    """Serve an accepted socket as a ``connection_class`` connection.

    asyncssh's ``listen()`` accepts by itself and takes no connection class; the gateway
    accepts (its limits refuse before any key exchange, its workers share one socket) and
    needs its own class, so it builds the connection as ``listen()`` does inside."""
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: connection_class(loop, options), sock)


# --- Connection state -------------------------------------------------------------------


def kex_done(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection | None) -> bool:
    """Whether the connection got past its first key exchange."""
    return bool(
        conn is not None and (getattr(conn, "_kex_complete", False) or getattr(conn, "_auth_complete", False))
    )


def login_done(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> bool:
    """Whether the user has logged in (asyncssh sent or received SSH_MSG_USERAUTH_SUCCESS)."""
    return conn._auth_complete


def transport(conn) -> asyncio.WriteTransport | None:
    """The connection's socket transport; None from the moment asyncssh decided to close."""
    return conn._transport


def is_open(conn) -> bool:
    """False as soon as asyncssh has decided to close the connection (a protocol error, an
    abort, a disconnect), before ``is_closed()`` says so after its clean-up."""
    return conn._transport is not None


# --- Where streamline hooks in ----------------------------------------------------------


def route_output(conn, send: Callable[[bytes], None], *, before_close: Callable[[], None]) -> None:
    """Make ``send`` take every byte asyncssh writes to the socket (each packet, whole),
    and call ``before_close`` just before asyncssh drops the transport (so what ``send``
    still holds is written first)."""
    force_close = conn._force_close

    def close_now(exc) -> None:
        before_close()
        force_close(exc)

    conn._send = send
    conn._force_close = close_now


def end_input_at_close(conn) -> None:
    """Drop what asyncssh has read but not yet parsed the moment it decides to close.

    asyncssh parses its input buffer packet after packet until it is empty, also after a
    packet that closed the connection (an SSH_MSG_DISCONNECT, a handler that called
    ``abort()``): channel data behind it in the same read would still reach its channel
    before the clean-up. Emptying the buffer there ends that loop (the clean-up empties
    it anyway, a moment later)."""
    force_close = conn._force_close

    def close_and_stop_reading(exc) -> None:
        force_close(exc)
        conn._inpbuf = b""

    conn._force_close = close_and_stop_reading


def skip_empty_ignore(conn, wanted: Callable[[], bool]) -> None:
    """Leave out the empty SSH_MSG_IGNORE asyncssh sends before each encrypted packet
    unless ``wanted()``. asyncssh calls ``conn.send_packet`` for it, so the packet is never
    made: no sequence number, no bytes counted towards rekeying."""
    send_packet = conn.send_packet

    def send_packet_lean(pkttype: int, *args: bytes, **kwargs) -> None:
        if pkttype == MSG_IGNORE and args == (EMPTY_STRING,) and not kwargs and not wanted():
            return
        send_packet(pkttype, *args, **kwargs)

    conn.send_packet = send_packet_lean


def receive_through(conn, receive: Callable[[Callable[[bytes], None], bytes], None]) -> None:
    """Hand each read to ``receive(asyncssh_data_received, data)`` instead of asyncssh."""
    data_received = conn.data_received

    def data_received_through(data: bytes, datatype=None) -> None:
        receive(data_received, data)

    conn.data_received = data_received_through


# --- GCM ----------------------------------------------------------------------------------


def reuse_gcm_contexts() -> None:
    """Give each of asyncssh's GCM cipher objects (one per key and direction) one AESGCM
    object, made at its first packet, instead of one per packet (asyncssh's GCMCipher
    makes ``AESGCM(self._key)`` in every call). The IV and its update, the header as
    associated data and the tag stay asyncssh's; for every process using asyncssh."""
    if getattr(GCMCipher, "_pamsite_reuses_aead", False):
        return

    def aead(cipher: GCMCipher) -> AESGCM:
        found = cipher.__dict__.get("_pamsite_aead")
        if found is None:
            found = cipher.__dict__["_pamsite_aead"] = AESGCM(cipher._key)
        return found

    def encrypt_and_sign(self, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = aead(self).encrypt(self._iv, data, header)
        self._update_iv()
        return header + sealed[:-16], sealed[-16:]

    def verify_and_decrypt(self, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        try:
            opened = aead(self).decrypt(self._iv, data + mac, header)
        except InvalidTag:
            opened = None
        self._update_iv()
        return opened

    GCMCipher.encrypt_and_sign = encrypt_and_sign
    GCMCipher.verify_and_decrypt = verify_and_decrypt
    GCMCipher._pamsite_reuses_aead = True
