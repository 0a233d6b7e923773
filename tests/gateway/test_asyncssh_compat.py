"""The contract between the gateway and asyncssh's internals (gateway/ssh/asyncssh_compat.py).

Each test checks one thing the compatibility module relies on, by name and signature and
then by behaviour through a real asyncssh connection over loopback (an asyncssh server
built as the gateway builds it, and an asyncssh or paramiko client): an asyncssh upgrade
that renames, moves or changes any of it fails here first. No external server is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import socket
from pathlib import Path

import asyncssh
import paramiko
import pytest
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_DISCONNECT, MSG_IGNORE, MSG_SERVICE_REQUEST
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.packet import String, UInt32

from gateway.ssh import asyncssh_compat
from gateway.ssh.asyncssh_compat import LOGIN, PARTIAL
from gateway.ssh.relay import RECEIVE_STEP, streamline

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
USERNAME = "alice"
PASSWORD = "right password"
CODE = "123456"
TIMEOUT = 10
GCM = "aes128-gcm@openssh.com"


# --- What the module relies on, by name and signature -----------------------------------


def test_asyncssh_is_the_pinned_release_the_module_was_checked_against():
    pins = re.findall(r"(?m)^asyncssh==(\S+)", (REPO / "requirements.txt").read_text())
    assert pins == [asyncssh_compat.ASYNCSSH_VERSION]
    assert asyncssh.__version__ == asyncssh_compat.ASYNCSSH_VERSION
    assert asyncssh_compat.version_problem() is None


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_connection_methods_the_hooks_stand_in_for_exist_with_their_signatures():
    server = asyncssh.SSHServerConnection
    assert _parameters(server.__init__)[:3] == ["self", "loop", "options"]
    assert _parameters(server.send_userauth_failure) == ["self", "partial_success"]
    assert inspect.iscoroutinefunction(server.send_userauth_success)
    assert _parameters(server.send_userauth_success) == ["self"]
    assert _parameters(server._process_service_request) == ["self", "_pkttype", "_pktid", "packet"]
    assert (
        server._packet_handlers[MSG_SERVICE_REQUEST]
        is asyncssh.connection.SSHConnection._process_service_request
    )
    assert inspect.iscoroutinefunction(server.create_agent_listener)
    assert _parameters(server.create_agent_listener) == ["self"]
    assert inspect.iscoroutinefunction(server.attach_x11_listener)
    assert _parameters(server.attach_x11_listener) == ["self", "chan", "auth_proto", "auth_data", "screen"]
    # The subclass's handler table is asyncssh's with one entry replaced.
    ours = asyncssh_compat.ServerConnection._packet_handlers
    assert set(ours) == set(server._packet_handlers)
    assert ours[MSG_SERVICE_REQUEST] is asyncssh_compat.ServerConnection._process_service_request


def test_the_packet_paths_the_relay_hooks_into_exist_with_their_signatures():
    connection = asyncssh.connection.SSHConnection
    assert _parameters(connection._send) == ["self", "data"]
    assert _parameters(connection._force_close) == ["self", "exc"]
    assert _parameters(connection.send_packet) == ["self", "pkttype", "args", "handler"]
    assert _parameters(connection.data_received) == ["self", "data", "datatype"]
    # asyncssh calls these through the instance (self.send_packet, self._send,
    # self._force_close), so an instance attribute takes their place.
    send_packet = inspect.getsource(connection.send_packet)
    assert "self.send_packet(MSG_IGNORE, String(b''))" in send_packet
    assert "self._send(packet + mac)" in send_packet
    assert "self._force_close(exc)" in inspect.getsource(connection._recv_data)
    assert "while self._inpbuf and self._recv_handler()" in inspect.getsource(connection._recv_data)
    assert "self._force_close(exc)" in inspect.getsource(connection._process_disconnect)


def test_asyncssh_gcm_cipher_is_as_the_aead_reuse_expects():
    assert _parameters(GCMCipher.__init__) == ["self", "cipher_name", "key", "iv"]
    assert _parameters(GCMCipher._update_iv) == ["self"]
    assert _parameters(GCMCipher.encrypt_and_sign) == ["self", "header", "data"]
    assert _parameters(GCMCipher.verify_and_decrypt) == ["self", "header", "data", "mac"]
    encryption = inspect.getsource(asyncssh.encryption.GCMEncryption)
    assert "self._cipher.encrypt_and_sign(header, packet)" in encryption
    assert "self._cipher.verify_and_decrypt(" in encryption


def test_reused_aead_seals_and_opens_as_asyncssh_does():
    """Packets sealed with one AESGCM per key are the bytes asyncssh's own code makes."""
    key, iv = bytes(range(16)), bytes(range(12))
    header, packet = b"\x00\x00\x00\x20", bytes(range(32))
    theirs = GCMCipher("aes128-gcm", key, iv)
    theirs_sealed = [_original_encrypt(theirs, header, packet) for _ in range(3)]
    asyncssh_compat.reuse_gcm_contexts()
    ours = GCMCipher("aes128-gcm", key, iv)
    assert [ours.encrypt_and_sign(header, packet) for _ in range(3)] == theirs_sealed
    opener = GCMCipher("aes128-gcm", key, iv)
    for sealed, mac in theirs_sealed:
        assert opener.verify_and_decrypt(header, sealed[4:], mac) == packet
    assert (
        opener.verify_and_decrypt(header, theirs_sealed[0][0][4:], theirs_sealed[0][1]) is None
    )  # IV moved on
    start = int.from_bytes(iv[4:], "big")
    assert int.from_bytes(ours._iv[4:], "big") == start + 3  # one step per packet, as asyncssh's
    assert int.from_bytes(opener._iv[4:], "big") == start + 4  # a failed open moves it on too


def _original_encrypt(cipher: GCMCipher, header: bytes, data: bytes) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    sealed = AESGCM(cipher._key).encrypt(cipher._iv, data, header)
    cipher._update_iv()
    return header + sealed[:-16], sealed[-16:]


# --- A loopback asyncssh server built as the gateway builds it --------------------------


class Session(asyncssh.SSHServerSession):
    def __init__(self, server: Server):
        self.server = server
        self.chan = None

    def connection_made(self, chan) -> None:
        self.chan = chan
        self.server.chans.append(chan)

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command) -> bool:
        return True

    def data_received(self, data, datatype) -> None:
        self.server.received.extend(data)
        if self.server.echo:
            self.chan.write(data)
        if data.startswith(b"ABORT"):
            self.server.conn.abort()  # as the gateway's relay may, for a failed recording

    def eof_received(self) -> bool:
        self.chan.exit(0)
        return False


class Server(asyncssh.SSHServer):
    """Password, then a code by keyboard-interactive (as the gateway's two-step login)."""

    def __init__(self, harness: Harness):
        self.harness = harness
        self.conn = None
        self.factors = 0
        self.received = bytearray()
        self.echo = harness.echo
        self.chans: list = []
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, conn) -> None:
        self.conn = conn
        self.harness.servers.append(self)
        self.harness.states.append(("made", asyncssh_compat.kex_done(conn), asyncssh_compat.is_open(conn)))
        if self.harness.streamlined:
            streamline(conn)

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def begin_auth(self, username) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return self.factors == 0

    def validate_password(self, username, password) -> bool:
        return password == PASSWORD

    def kbdint_auth_supported(self) -> bool:
        return self.factors == 1 or not self.harness.two_step

    def get_kbdint_challenge(self, username, lang, submethods):
        return ("", "", "", [("Verification code: ", False)])

    def validate_kbdint_response(self, username, responses) -> bool:
        return list(responses) == [CODE]

    def session_requested(self):
        return Session(self)


class TwoStepConnection(asyncssh_compat.ServerConnection):
    """The hooks as the gateway uses them, each call noted on the harness."""

    async def auth_verdict(self, username: str) -> str | None:
        server = self.get_owner()
        harness = server.harness
        harness.verdicts.append(username)
        server.factors += 1
        if harness.two_step and server.factors == 1:
            return PARTIAL
        return LOGIN

    def auth_failure_answer(self, partial_success: bool) -> bool | None:
        harness = self.get_owner().harness
        harness.failures.append(partial_success)
        if harness.goodbye and len(harness.failures) > 1:
            self.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, harness.goodbye)
            return None
        return partial_success

    async def forwarding_refused(self, what: str) -> None:
        self.get_owner().harness.refused.append(what)


class Harness:
    """A listening socket served with ``asyncssh_compat.accept`` on the running loop."""

    def __init__(
        self, *, two_step=True, goodbye="", echo=False, streamlined=True, ciphers=None, rekey_bytes=None
    ):
        self.two_step, self.goodbye, self.echo, self.streamlined = two_step, goodbye, echo, streamlined
        self.ciphers, self.rekey_bytes = ciphers, rekey_bytes
        self.servers: list[Server] = []
        self.states: list = []
        self.verdicts: list[str] = []
        self.failures: list[bool] = []
        self.refused: list[str] = []

    async def __aenter__(self) -> Harness:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        options = {
            "server_factory": lambda: Server(self),
            "server_host_keys": [asyncssh.generate_private_key("ssh-ed25519")],
            "password_auth": True,
            "kbdint_auth": True,
            "public_key_auth": False,
            "agent_forwarding": False,
            "x11_forwarding": False,
            "compression_algs": ["zlib@openssh.com", "none"],
            "encoding": None,
            "line_editor": False,
        }
        if self.ciphers:
            options["encryption_algs"] = self.ciphers
        if self.rekey_bytes:
            options["rekey_bytes"] = self.rekey_bytes
        self.options = asyncssh.SSHServerConnectionOptions(**options)
        self.task = asyncio.get_running_loop().create_task(self._accept())
        return self

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(self.sock)
            client.setblocking(False)
            await asyncssh_compat.accept(client, TwoStepConnection, self.options)

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        for server in self.servers:
            if server.conn is not None:
                server.conn.abort()
        self.sock.close()
        await asyncio.sleep(0)

    async def connect(self, **options) -> asyncssh.SSHClientConnection:
        defaults = {
            "username": USERNAME,
            "known_hosts": None,
            "client_keys": None,
            "agent_path": None,
            "preferred_auth": "password,keyboard-interactive",
            "client_factory": CodeClient,
        }
        return await asyncio.wait_for(
            asyncssh.connect("127.0.0.1", self.port, **(defaults | options)), TIMEOUT
        )

    @property
    def server(self) -> Server:
        return self.servers[-1]


class CodeClient(asyncssh.SSHClient):
    def password_auth_requested(self) -> str:
        return PASSWORD

    def kbdint_auth_requested(self) -> str:
        return ""

    def kbdint_challenge_received(self, name, instructions, lang, prompts):
        return [CODE for _ in prompts]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 3 * TIMEOUT))


# --- Behaviour ------------------------------------------------------------------------------


def test_a_first_factor_is_answered_with_partial_success_and_only_the_code_logs_in():
    async def scenario():
        async with Harness() as harness:
            conn = await harness.connect()
            assert asyncssh_compat.login_done(harness.server.conn)
            assert conn.get_extra_info("username") == USERNAME
            conn.close()
            # "none" refused (no partial success), the password: partial success, the code: login.
            assert harness.failures == [False, True]
            assert harness.verdicts == [USERNAME, USERNAME]

    run(scenario())


def test_a_failure_answer_may_disconnect_with_a_message_instead():
    async def scenario():
        async with Harness(goodbye="Locked until 10:00.") as harness:
            with pytest.raises(asyncssh.DisconnectError) as raised:
                await harness.connect()
            assert raised.value.code == asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE
            assert raised.value.reason == "Locked until 10:00."
            assert not asyncssh_compat.login_done(harness.server.conn)

    run(scenario())


def test_a_client_asking_for_the_userauth_service_before_each_method_logs_in():
    """paramiko sends SSH_MSG_SERVICE_REQUEST "ssh-userauth" again for each method."""

    def paramiko_login(port: int) -> bool:
        transport = paramiko.Transport(("127.0.0.1", port))
        try:
            transport.start_client(timeout=TIMEOUT)
            remaining = transport.auth_password(USERNAME, PASSWORD)
            assert remaining == ["keyboard-interactive"]
            transport.auth_interactive(USERNAME, lambda title, instructions, prompts: [CODE for _ in prompts])
            return transport.is_authenticated()
        finally:
            transport.close()

    async def scenario():
        async with Harness() as harness:
            assert await asyncio.to_thread(paramiko_login, harness.port)
            assert harness.verdicts == [USERNAME, USERNAME]

    run(scenario())


def test_agent_and_x11_forwarding_requests_reach_the_refusal_hook(tmp_path):
    async def scenario():
        async with Harness(two_step=False) as harness:
            conn = await harness.connect(
                agent_path=str(tmp_path / "no-agent"),
                agent_forwarding=True,
                preferred_auth="keyboard-interactive",
            )
            chan, _session = await conn.create_session(asyncssh.SSHClientSession, "true", encoding=None)
            await _until(lambda: harness.refused)
            chan.close()
            conn.close()
            assert harness.refused == ["agent forwarding"]

    run(scenario())
    # X11 needs a display on the client: its request reaches the hook by the same way.
    channel = "".join(inspect.getsource(asyncssh.channel.SSHServerChannel).split())
    assert "awaitself._conn.attach_x11_listener(self,auth_proto,auth_data,screen)" in channel
    assert "awaitself._conn.create_agent_listener()" in channel


def test_connection_state_is_read_where_asyncssh_keeps_it():
    async def scenario():
        async with Harness(two_step=False) as harness:
            conn = await harness.connect(preferred_auth="keyboard-interactive")
            server = harness.server.conn
            assert harness.states == [("made", False, True)]  # before the key exchange
            assert asyncssh_compat.kex_done(server) and asyncssh_compat.login_done(server)
            assert asyncssh_compat.kex_done(conn) and asyncssh_compat.login_done(conn)
            assert not asyncssh_compat.kex_done(None)
            transport = asyncssh_compat.transport(server)
            assert isinstance(transport, asyncio.Transport)
            assert asyncssh_compat.is_open(server)
            server.abort()
            # Closed for asyncssh at once, before its clean-up makes is_closed() true.
            assert not asyncssh_compat.is_open(server) and not server.is_closed()
            assert asyncssh_compat.transport(server) is None
            await _until(server.is_closed)
            conn.close()

    run(scenario())


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes128-ctr", "aes128-cbc"])
def test_the_empty_ignore_packet_is_asked_for_through_send_packet_and_left_out(cipher):
    """asyncssh asks for SSH_MSG_IGNORE "" before each encrypted packet; skip_empty_ignore
    sees every such request and, unless wanted, no packet is made (fewer packets sent)."""

    async def scenario():
        async with Harness(two_step=False, streamlined=False, ciphers=[cipher]) as harness:
            conn = await harness.connect(preferred_auth="keyboard-interactive", encryption_algs=[cipher])
            server = harness.server.conn
            assert server.get_extra_info("send_cipher") == cipher
            written: list[bytes] = []
            asked: list[bool] = []
            wire = asyncssh_compat.transport(server)

            def send(packet: bytes) -> None:
                written.append(packet)
                wire.write(packet)

            asyncssh_compat.route_output(server, send, before_close=lambda: None)
            chan, _session = await conn.create_session(asyncssh.SSHClientSession, "true", encoding=None)
            await _until(lambda: harness.server.chans)
            down = harness.server.chans[-1]

            def packets_for_ten_writes(want: bool) -> int:
                asked.clear()
                before = len(written)
                for _ in range(10):
                    down.write(b"x")
                assert len(asked) == 10  # one request per encrypted packet
                return len(written) - before

            asyncssh_compat.skip_empty_ignore(server, lambda: asked.append(True) or wanted["now"])
            wanted = {"now": True}
            assert packets_for_ten_writes(True) == 20
            wanted["now"] = False
            assert packets_for_ten_writes(False) == 10
            chan.close()
            conn.close()

    run(scenario())


def test_streamlined_connections_carry_data_both_ways_through_compression_and_rekeying():
    """route_output, receive_through and skip_empty_ignore on both sides; new keys every
    64 KiB from each side, compressed: 3 MB each way arrives whole."""

    async def scenario():
        async with Harness(two_step=False, echo=True, rekey_bytes=64 * 1024) as harness:
            conn = await harness.connect(
                preferred_auth="keyboard-interactive",
                compression_algs=["zlib@openssh.com"],
                rekey_bytes=64 * 1024,
            )
            streamline(conn)
            server = harness.server.conn
            assert conn.get_extra_info("send_compression") == "zlib@openssh.com"
            assert server.get_extra_info("recv_compression") == "zlib@openssh.com"
            data = bytes(range(256)) * 12_000
            chan, session = await conn.create_session(Collect, "cat", encoding=None)
            chan.write(data)
            await _until(lambda: len(session.data) >= len(data), timeout=30)
            assert bytes(session.data) == data
            assert bytes(harness.server.received) == data
            chan.close()
            conn.close()

    run(scenario())


class Collect(asyncssh.SSHClientSession):
    def __init__(self):
        self.data = bytearray()

    def data_received(self, data, datatype) -> None:
        self.data.extend(data)


@pytest.mark.parametrize("closing", ["protocol error", "disconnect", "abort"])
def test_nothing_after_a_packet_that_closes_the_connection_in_one_large_read_is_dispatched(closing):
    """Channel data, then a packet that ends the connection (data for a channel that does
    not exist: a protocol error; a disconnect; data on which the server aborts), then more
    channel data, all in one write of several RECEIVE_STEPs: what came before reaches the
    channel, nothing after it. With AES-GCM (the gateway's cipher), asyncssh would go on
    decrypting and dispatching what follows; with ChaCha20 it stumbles on the sequence
    number it stopped counting."""

    async def scenario():
        async with Harness(two_step=False, ciphers=[GCM]) as harness:
            conn = await harness.connect(preferred_auth="keyboard-interactive", encryption_algs=[GCM])
            assert harness.server.conn.get_extra_info("recv_cipher") == GCM
            chan, _session = await conn.create_session(asyncssh.SSHClientSession, "cat", encoding=None)
            await _until(lambda: harness.server.chans)
            held: list[bytes] = []
            wire = asyncssh_compat.transport(conn)
            asyncssh_compat.route_output(conn, held.append, before_close=lambda: None)
            chan.write(b"A" * 100_000)
            expected = b"A" * 100_000
            if closing == "protocol error":
                conn.send_packet(MSG_CHANNEL_DATA, UInt32(4242), String(b"to nowhere"))
            elif closing == "disconnect":
                conn.send_packet(
                    MSG_DISCONNECT, UInt32(asyncssh.DISC_BY_APPLICATION), String(b"bye"), String(b"")
                )
            else:
                chan.write(b"ABORT")
                expected += b"ABORT"
            for _ in range(4):
                chan.write(b"C" * 30_000)
            blob = b"".join(held)
            assert len(blob) > 3 * RECEIVE_STEP
            wire.write(blob)
            lost = await asyncio.wait_for(harness.server.lost, TIMEOUT)
            assert bytes(harness.server.received) == expected
            if closing == "protocol error":
                assert isinstance(lost, asyncssh.ProtocolError)
                assert "Invalid channel number" in str(lost)
            conn.abort()

    run(scenario())


async def _until(condition, timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def test_the_ignore_packet_type_is_the_one_asyncssh_sends():
    assert MSG_IGNORE == 2
    assert String(b"") == asyncssh_compat.EMPTY_STRING
