"""One user's SSH connection to the gateway: login, the grant, the target, the channels.

Login is two steps, both always: the user's own factor (a public key registered on her
profile page, or her password) and then a TOTP or backup code through
keyboard-interactive. The SSH user name says which account she wants
(``alice:pacs01-root``); plain ``alice`` gets a menu of her live grants in her terminal.

After login the gateway finds the live grant (or tells her what is missing and where to
ask), opens the GatewaySession row and its event log, and on the first shell, exec or SFTP
channel logs in to the target with the grant's credential (a certificate signed by
Vault's SSH CA, or the static password from Vault's KV), checking the target's pinned
host key first (``target``). Each channel is relayed and recorded (``relay``,
``recordings.recorder``). ``cut()`` ends everything with a message: the grant ended, it was
revoked, someone terminated the session, or the recording failed.

Everything here runs on the gateway process's event loop (asyncssh). Database and Vault
calls, which block, run on the server's small pool of threads (``GatewayServer.call``),
at most ``GATEWAY_MAX_DATABASE_CONNECTIONS`` at once, so a thousand connections ending
together take turns instead of opening a thousand database connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field

import asyncssh
from django.conf import settings
from django.db import connections

from access import rotation
from access.models import Account, Grant
from access.services import account_ref
from audit.timefmt import duration_words
from gateway.ssh import asyncssh_compat, limits, usernames
from gateway.ssh.relay import CHANNEL_GONE, Counter, ForwardSession, Pipe, streamline
from gateway.ssh.transfers import ScpTracker, SftpTracker
from gateway.ssh.usernames import parse_login
from identity import gateway_auth
from identity.services import MFAError
from recordings import sessions
from recordings.models import GatewaySession
from recordings.recorder import EventLog, ExecRecorder, RecordingError, SealDeferred, TerminalRecorder
from targets import errors
from targets import ssh as target
from vault import sources
from vault.client import VaultError

logger = logging.getLogger(__name__)

ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
CODE_TRIES = 3
MAX_CHANNELS = 32  # channels (sessions and forwards) open at once on one connection
MAX_KEY_OFFERS = 64  # public-key queries and attempts on one connection (two per key)
FORWARD_CONNECT_TIMEOUT = 5
# Lifetime of the certificate the gateway logs in to an ssh-ca target with (seconds).
UPSTREAM_CERTIFICATE_SECONDS = 120
# A menu answer longer than this is not a number from the menu.
MENU_ANSWER_MAX = 32
MENU_TIMEOUT = 120
# SSH channel open failure codes (RFC 4254, 5.1).
OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2
# After a cut, the user's client normally closes the connection itself; if not, this much later.
CUT_GRACE = 2.0
CLOSE_SOON = 1.0


class UserConnection(asyncssh_compat.ServerConnection):
    """asyncssh's server connection, with the gateway's two-factor login and its guards.

    asyncssh answers a verified public key or a right password with "success"; here a
    first factor is answered "partial success, go on with keyboard-interactive", and only
    a right code after it is a success (RFC 4252, 5.1; the hooks are
    ``asyncssh_compat.ServerConnection``'s). Before login the client's bytes pass a guard
    (``limits.PreauthGuard``). Agent and X11 forwarding are refused and audited; the
    session limit is said in a disconnect (OpenSSH prints it). Why a login cannot go on
    (locked until when, wait N seconds for the authenticator) is said in a last
    keyboard-interactive round without a prompt (OpenSSH prints its text), then in the
    disconnect too (``GatewayConnection.notice``).
    """

    @property
    def gateway(self) -> GatewayConnection | None:
        return self.get_owner()

    def data_received(self, data: bytes, datatype=None) -> None:
        if not asyncssh_compat.login_done(self):
            owner = self.get_owner()
            if owner is not None and not owner.guard.check(data):
                self.abort()
                return
        super().data_received(data, datatype)

    def auth_failure_answer(self, partial_success: bool) -> bool | None:
        owner = self.get_owner()
        if owner is not None and owner.goodbye is None and owner.notice is not None:
            if not owner.notice_offered:
                # Only keyboard-interactive is left to the client (the *_auth_supported
                # methods): its round carries the notice.
                owner.notice_offered = True
                return False
            # A client that would not take that round reads the notice in the disconnect.
            owner.goodbye = (limits.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, owner.notice)
        if owner is not None and owner.goodbye is not None:
            reason, message = owner.goodbye
            self.disconnect(reason, message)
            return None
        return partial_success

    async def auth_verdict(self, username: str) -> str | None:
        owner = self.get_owner()
        if owner is None:
            return None
        verdict = await owner.factor_passed(username)
        if owner.goodbye is not None:
            return asyncssh_compat.FAILURE  # auth_failure_answer says goodbye
        return verdict

    async def forwarding_refused(self, what: str) -> None:
        owner = self.get_owner()
        if owner is not None:
            await owner.refuse(what)


@dataclass
class ChannelState:
    """What the gateway knows of one of the user's session channels."""

    number: int
    chan: asyncssh.SSHServerChannel | None = None
    term: str = ""
    width: int = 80
    height: int = 24
    pty: bool = False
    started: bool = False
    pipe: Pipe | None = None
    recorder: TerminalRecorder | ExecRecorder | None = None
    menu: asyncio.Future | None = None  # the menu's answer, while the menu waits for it
    typed: bytearray = field(default_factory=bytearray)
    held: list = field(default_factory=list)  # input that came before the target's channel


class UserSession(asyncssh.SSHServerSession):
    """A user's session channel: its requests (pty, shell, exec, sftp) and her input."""

    def __init__(self, connection: GatewayConnection, state: ChannelState):
        self.connection = connection
        self.state = state

    def connection_made(self, chan) -> None:
        self.state.chan = chan

    def pty_requested(self, term_type, term_size, term_modes) -> bool:
        state = self.state
        state.pty, state.term = True, term_type
        state.width, state.height = _clamp(term_size[0], 80), _clamp(term_size[1], 24)
        return True

    def shell_requested(self) -> bool:
        return self.connection.start(self.state, "shell", "")

    def exec_requested(self, command: str) -> bool:
        return self.connection.start(self.state, "exec", command)

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            self.connection.refused(f"subsystem {subsystem[:50]}")
            return False
        return self.connection.start(self.state, "sftp", "")

    def terminal_size_changed(self, width, height, pixwidth, pixheight) -> None:
        self.connection.resize(self.state, width, height)

    def data_received(self, data, datatype) -> None:
        state = self.state
        if state.pipe is not None:
            state.pipe.from_user(data)
        elif state.menu is not None:
            _menu_input(state, data)
        elif len(state.held) < 64:
            state.held.append(data)  # typed before the target's channel was open
            if len(state.held) > 16 and state.chan is not None:
                state.chan.pause_reading()

    def eof_received(self) -> bool:
        state = self.state
        if state.pipe is not None:
            state.pipe.user_eof()
        elif state.menu is not None and not state.menu.done():
            state.menu.set_result(None)
        else:
            state.held.append(None)  # EOF before the target's channel was open
        return True

    def pause_writing(self) -> None:
        if self.state.pipe is not None:
            self.state.pipe.user_paused()

    def resume_writing(self) -> None:
        if self.state.pipe is not None:
            self.state.pipe.user_resumed()

    def connection_lost(self, exc) -> None:
        state = self.state
        if state.pipe is not None:
            state.pipe.user_closed()
        if state.menu is not None and not state.menu.done():
            state.menu.set_result(None)
        self.connection.channel_closed(state)


class GatewayConnection(asyncssh.SSHServer):
    """The server side of one user connection (asyncssh's SSHServer callbacks)."""

    def __init__(self, server):
        self.server = server  # gateway.ssh.server.GatewayServer
        self.node = server.node
        self.limiter: limits.Limiter = server.limiter
        self.conn: UserConnection | None = None
        self.client_ip = ""
        self.opened = time.monotonic()
        self.guard = limits.PreauthGuard()
        self.goodbye: tuple[int, str] | None = None  # disconnect with this instead of an auth answer
        # Why the login cannot go on, told in a last keyboard-interactive round, then the disconnect.
        self.notice: str | None = None
        self.notice_offered = False
        self._key_offers = 0
        self._refused_key_user = ""  # offered only keys that are not this user's (counted at the end)
        self._channels_refused = False
        self.counter = Counter()
        # Login state
        self._first: tuple[str, object] | None = None  # (ssh user name, User) after the first factor
        self._passed: tuple[str, object, str] | None = None  # a first factor asyncssh is about to accept
        self._key_offered: asyncssh.SSHKey | None = None
        self._code_tries = 0
        self.user = None
        self.method = ""
        # After login
        self.account_slug: str | None = None
        self.grant: Grant | None = None
        self.account: Account | None = None
        self.session: GatewaySession | None = None
        self.events: EventLog | None = None
        self.refusal: str = ""
        self.upstream: asyncssh.SSHClientConnection | None = None
        self._upstream_closed = False
        self._upstream_lock: asyncio.Lock | None = None
        self.channels: dict[int, ChannelState] = {}
        self._next_channel = 0
        self._forwards = 0
        self.cut_reason: tuple[str, str] | None = None
        # Why the session ended when nobody cut it (the target refused the login).
        self.end_reason: tuple[str, str] | None = None
        self.reported_bytes = (0, 0)
        self.tasks: set[asyncio.Task] = set()
        self.finished = asyncio.Event()
        self._ending = False
        self._login_timer: asyncio.TimerHandle | None = None

    # --- Life cycle ---------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    def connection_made(self, conn: UserConnection) -> None:
        self.conn = conn
        streamline(conn)
        peer = conn.get_extra_info("peername") or ("", 0)
        self.client_ip = peer[0]
        self.server.connections.add(self)
        timeout = settings.GATEWAY_LOGIN_TIMEOUT
        self._login_timer = asyncio.get_running_loop().call_later(timeout, self._login_timed_out, timeout)

    def _login_timed_out(self, timeout: int) -> None:
        if self.user is None and self.conn is not None:
            self.guard.refusal = self.guard.refusal or f"did not log in within {timeout} s"
            if not self.conn.is_closed() and self.guard.kex_done(self.conn):
                logger.info("Login from %s timed out after %s s", self.client_ip, timeout)
            self.conn.abort()

    def connection_lost(self, exc) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
        if self.user is None and not self.guard.kex_done(self.conn):
            logger.info("SSH handshake with %s failed: %s", self.client_ip, self.guard.failure_reason(exc))
        self.spawn(self._finish())

    def spawn(self, coro) -> asyncio.Task:
        """Run ``coro`` as a task of this connection (kept until done; its errors logged)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.error(
                "Gateway connection from %s: %s",
                self.client_ip,
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    async def call(self, fn, *args, **kwargs):
        """Run a blocking database or Vault call on the server's pool."""
        return await self.server.call(fn, *args, **kwargs)

    def close_soon(self, delay: float = CLOSE_SOON) -> None:
        if self.conn is not None:
            asyncio.get_running_loop().call_later(delay, self.conn.close)

    def cut(self, reason: str, message: str) -> None:
        """End the session now with a message to the user (grant ended, terminated, ...)."""
        if self.cut_reason is not None:
            return
        self.cut_reason = (reason, message)
        text = f"\r\n*** pamsite: {message} The session is closed. ***\r\n".encode()
        for state in list(self.channels.values()):
            chan = state.chan
            if chan is None or chan.is_closing():
                continue
            with contextlib.suppress(*CHANNEL_GONE):
                if state.pty:
                    if state.recorder is not None:
                        with contextlib.suppress(RecordingError):
                            state.recorder.write(text)
                    chan.write(text)
                else:
                    chan.write_stderr(text)
                chan.exit(255)
        self._close_upstream()
        # The user's client closes the connection when its channels are gone; if it does
        # not (ssh -N, a stuck client), the connection is closed shortly after.
        self.close_soon(CUT_GRACE)

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            self._upstream_closed = True
            self.upstream.close()

    async def _finish(self) -> None:
        """The connection is gone: close the target, seal recordings, end the GatewaySession."""
        if self._ending:
            return
        self._ending = True
        self._close_upstream()
        # Channel and forward tasks write their last events (exit status, bytes) as they end.
        current = asyncio.current_task()
        pending = [t for t in self.tasks if t is not current]
        if pending:
            await asyncio.wait(pending, timeout=10)
        try:
            await self.call(self._end_in_database)
        finally:
            self.server.connection_done(self)
            self.finished.set()

    def _end_in_database(self) -> None:
        """The blocking part of the end (on the server's pool, one slot for all of it)."""
        for state in list(self.channels.values()):
            self._close_recorder(state)
        failed = ""
        if self.events is not None:
            try:
                self.events.close()
            except SealDeferred as exc:
                logger.warning("%s", exc)  # written in full: not a failed session
            except RecordingError as exc:
                failed = str(exc)
        if self.session is not None and self.session.ended_at is None:
            reason, message = self.cut_reason or self.end_reason or (GatewaySession.EndReason.CLOSED, "")
            if failed and not self.cut_reason:
                reason, message = GatewaySession.EndReason.ERROR, failed
            for attempt in range(3):  # a busy database (many sessions ending at once) is retried
                try:
                    sessions.session_end(
                        session=self.session,
                        reason=reason,
                        message=message,
                        bytes_in=self.counter.to_target,
                        bytes_out=self.counter.to_user,
                    )
                    break
                except Exception:
                    logger.exception("Could not end session %s (attempt %s)", self.session.pk, attempt + 1)
                    connections.close_all()
                    time.sleep(1 + attempt)
            # Its search text is the worker's job (within SESSIONS_INDEX_SECONDS of the end):
            # the gateway's time is for live sessions.
        if self.user is not None:
            try:
                gateway_auth.gateway_logout(user=self.user, client_ip=self.client_ip)
            except Exception:
                logger.exception("Could not record the logout of %s", self.user.username)
        elif self._first is None and self._refused_key_user:
            # A connection that offered only keys that are not the user's counts as one failure.
            try:
                gateway_auth.gateway_keys_refused(username=self._refused_key_user, client_ip=self.client_ip)
            except Exception:
                logger.exception("Could not count the refused keys of a connection from %s", self.client_ip)

    def _close_recorder(self, state: ChannelState) -> None:
        """Seal a channel's recording (blocking: on the server's pool)."""
        recorder, state.recorder = state.recorder, None
        if recorder is None:
            return
        try:
            recorder.close()
        except SealDeferred as exc:
            logger.warning("%s", exc)  # written in full; the worker signs it once Vault is back
        except Exception:
            # The session still ends; the worker's sessions_maintain seals what is left unsealed.
            logger.exception("Sealing a recording of session %s failed", self.session and self.session.pk)

    # --- Authentication -------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        problem = usernames.login_name_problem(username)
        if problem is not None:
            # A login name that can never be valid (too long, an empty or malformed
            # account): told before any lookup, and the connection ends.
            self.goodbye = (usernames.DISCONNECT_ILLEGAL_USER_NAME, problem)
        return True

    def public_key_auth_supported(self) -> bool:
        return self._first is None and self.notice is None

    def password_auth_supported(self) -> bool:
        return self._first is None and self.notice is None

    def kbdint_auth_supported(self) -> bool:
        return self._first is not None or self.notice is not None

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Tentative: the key is looked up only once its signature has been verified
        # (factor_passed). Answering "maybe" to every key also keeps which keys are
        # registered private. Clients ask twice per key (query, then signed request);
        # past MAX_KEY_OFFERS a client is only spraying keys.
        if self._first is not None or self.goodbye is not None or self.notice is not None:
            return False
        self._key_offers += 1
        if self._key_offers > MAX_KEY_OFFERS:
            return False
        self._key_offered = key
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        if self._first is not None or self.goodbye is not None or self.notice is not None:
            return False
        name, _account = parse_login(username)
        self._refused_key_user = ""  # this attempt is counted itself if it fails
        user = await self.call(
            gateway_auth.gateway_password_login, username=name, password=password, client_ip=self.client_ip
        )
        if user is None:
            await self._notice_if_locked(name)
            return False
        self._passed = (username, user, "password")
        return True

    async def factor_passed(self, username: str) -> str:
        """asyncssh accepted a factor: "partial" (the first), "login" (the code) or "failed"."""
        if self.user is not None:
            return "login"
        passed, self._passed = self._passed, None
        if passed is None:
            key, self._key_offered = self._key_offered, None
            if key is None or self._first is not None:
                return "failed"
            name, _account = parse_login(username)
            user = await self.call(
                gateway_auth.gateway_key_login,
                username=name,
                key_type=key.get_algorithm(),
                key_blob=key.public_data,
                client_ip=self.client_ip,
            )
            if user is None:
                self._refused_key_user = name
                await self._notice_if_locked(name)
                return "failed"
            passed = (username, user, "publickey")
        self._first = passed[:2]
        self.method = passed[2]
        self._refused_key_user = ""
        return "partial"

    async def _notice_if_locked(self, name: str) -> None:
        """After a failed factor: once the username or address is locked, say until when."""
        lock = await self.call(gateway_auth.gateway_lockout, username=name, client_ip=self.client_ip)
        if lock is not None:
            self.notice = lock.message()

    def _code_challenge(self, note: str = ""):
        text = (
            note + "\n" if note else ""
        ) + "Enter the 6-digit code from your authenticator app, or a backup code."
        return ("pamsite verification", text, "", [("Verification code: ", False)])

    def _notice_challenge(self, message: str):
        """The last round: the notice as instructions and no prompt; its (empty) answer ends
        the connection with the notice as the disconnect's message."""
        self.notice, self.notice_offered = message, True
        return ("pamsite", message, "", [])

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str):
        if self.notice is not None:
            return self._notice_challenge(self.notice)
        if self._first is None or self._first[0] != username:
            return False
        return self._code_challenge()

    async def validate_kbdint_response(self, username: str, responses):
        if self.notice is not None:
            self.goodbye = (limits.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, self.notice)
            return False
        if self._first is None or self._first[0] != username or not responses:
            return False
        _username, user = self._first
        try:
            # A locked username or address is refused there (audited) before any code is tried.
            await self.call(
                gateway_auth.gateway_verify_code, user=user, code=responses[0], client_ip=self.client_ip
            )
        except MFAError as exc:
            if exc.reason == "throttled":
                unit = "second" if exc.wait_seconds == 1 else "seconds"
                return self._notice_challenge(
                    f"Too many wrong codes in a row: wait {exc.wait_seconds} {unit}, then connect again."
                )
            if exc.reason in ("locked_out", "inactive", "not_enrolled"):
                return self._notice_challenge(str(exc))
            self._code_tries += 1
            if self._code_tries >= CODE_TRIES:
                return self._notice_challenge(
                    f"{exc} {CODE_TRIES} codes were refused on this connection: connect again to try again."
                )
            return self._code_challenge(str(exc))
        too_many = await self.call(self.limiter.user_refusal, user=user, client_ip=self.client_ip)
        if too_many:
            self.goodbye = (limits.DISCONNECT_TOO_MANY_CONNECTIONS, too_many)
            return False
        self.user = user
        if self._login_timer is not None:
            self._login_timer.cancel()
        _name, slug = parse_login(username)
        if slug is not None:
            await self._select_account(slug)
        return True

    async def _select_account(self, slug: str) -> bool:
        """Find the live grant and open the GatewaySession; else remember why not. True if found."""
        self.account_slug = slug
        if not ACCOUNT_RE.match(slug):
            lookup = sessions.GrantLookup(
                None,
                f"'{slug[:63]}' is not an account name (lower-case letters, digits and hyphens). "
                f"Connect as {self.user.username}:ACCOUNT, e.g. {self.user.username}:pacs01-root",
            )
        else:
            lookup = await self.call(sessions.find_live_grant, user=self.user, slug=slug)
        if lookup.grant is None:
            self.refusal = lookup.message
            await self.call(
                sessions.session_refuse,
                user=self.user,
                account=slug,
                protocol=GatewaySession.Protocol.SSH,
                client_address=self.client_ip,
                node=self.node,
                message=lookup.message,
                reason="no-grant",
            )
            return False
        self.grant = lookup.grant
        self.account = lookup.grant.account
        try:
            self.session = await self.call(
                self.limiter.session_open,
                user=self.user,
                grant=self.grant,
                client_address=self.client_ip,
                node=self.node,
            )
            self.events = await self.call(EventLog, session=self.session)
        except limits.SessionLimitReached as exc:
            # Two logins raced for her last place (counted again under a lock): this one lost.
            self.refusal, self.grant, self.account = str(exc), None, None
            return False
        except RecordingError as exc:
            self.refusal = (
                f"The session cannot be recorded ({exc}), so it is refused: no privileged access goes "
                "unrecorded. Tell your pamsite administrator."
            )
            if self.session is not None:
                await self.call(
                    sessions.session_end,
                    session=self.session,
                    reason=GatewaySession.EndReason.ERROR,
                    message=str(exc),
                )
            return False
        return True

    # --- Channels ----------------------------------------------------------------------

    def _too_many_channels(self) -> bool:
        """True when MAX_CHANNELS (sessions and forwards) are open; the first refusal is audited."""
        if len(self.channels) + self._forwards < MAX_CHANNELS:
            return False
        if not self._channels_refused:
            self._channels_refused = True
            logger.info(
                "Connection from %s: more than %s channels at once refused", self.client_ip, MAX_CHANNELS
            )
            self.refused(f"more than {MAX_CHANNELS} channels open at once")
        return True

    def session_requested(self):
        if self.user is None or self.cut_reason is not None:
            raise _prohibited("The session is closed")
        if self._too_many_channels():
            raise _prohibited(f"More than {MAX_CHANNELS} channels at once")
        state = ChannelState(number=self._next_channel)
        self._next_channel += 1
        self.channels[state.number] = state
        return UserSession(self, state)

    def channel_closed(self, state: ChannelState) -> None:
        if not state.started:
            self.channels.pop(state.number, None)

    def resize(self, state: ChannelState, width: int, height: int) -> None:
        size = _clamp(width, state.width), _clamp(height, state.height)
        if size == (state.width, state.height):
            return  # nothing changed (or nonsense clamped back): nothing to pass on or record
        state.width, state.height = size
        if state.pipe is not None and state.pipe.up is not None:
            with contextlib.suppress(*CHANNEL_GONE):
                state.pipe.up.change_terminal_size(state.width, state.height)
        if isinstance(state.recorder, TerminalRecorder):
            try:
                state.recorder.resize(state.width, state.height)
            except RecordingError as exc:
                self.recording_failed(str(exc))

    def server_requested(self, listen_host: str, listen_port: int):
        return self.refuse(f"remote port forwarding ({listen_host[:100]}:{listen_port})")

    def unix_connection_requested(self, dest_path: str):
        return self.refuse(
            "forwarding to a UNIX socket", _prohibited("Forwarding to UNIX sockets is not allowed")
        )

    def unix_server_requested(self, listen_path: str):
        return self.refuse("remote forwarding of a UNIX socket")

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        host, port = dest_host, dest_port
        if self.user is None or self.account is None or self.refusal:
            return self.refuse(
                f"port forwarding to {host[:100]}:{port} without a grant",
                _prohibited("No grant for port forwarding"),
            )
        target_row = self.account.target
        allowed = set(target_row.forward_ports or [])
        if self.account.kind == Account.Kind.DATABASE:
            allowed.add(target_row.port)
        if host not in (target_row.host, target_row.name) or port not in allowed:
            ports = ", ".join(str(p) for p in sorted(allowed)) or "none"
            return self.refuse(
                f"port forwarding to {host[:100]}:{port} (allowed: {target_row.name} ports {ports})",
                _prohibited(f"Forwarding allowed only to ports {ports}"),
            )
        if self.cut_reason is not None:
            raise _prohibited("The session is closed")
        if self._too_many_channels():
            raise _prohibited(f"More than {MAX_CHANNELS} channels at once")
        return self._open_forward(target_row.host, port)

    async def _open_forward(self, host: str, port: int) -> ForwardSession:
        number = self._next_channel
        self._next_channel += 1
        self._forwards += 1

        def done(bytes_in: int, bytes_out: int) -> None:
            self._forwards -= 1
            if self.events is not None:
                try:
                    self.events.forwarded_connection(
                        channel=number, host=host, port=port, bytes_in=bytes_in, bytes_out=bytes_out
                    )
                except RecordingError as exc:
                    self.recording_failed(str(exc))

        forward = ForwardSession(counter=self.counter, on_done=done)
        try:
            await forward.connect(host, port, FORWARD_CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            self._forwards -= 1
            logger.info(
                "Forward to %s:%s for session %s failed: %s", host, port, self.session.pk, exc or "timeout"
            )
            raise asyncssh.ChannelOpenError(OPEN_CONNECT_FAILED, f"{host}:{port} cannot be reached") from None
        await self.call(
            sessions.record_forward,
            session=self.session,
            user=self.user,
            client_address=self.client_ip,
            host=host,
            port=port,
        )
        return forward

    def refused(self, what: str) -> asyncio.Task | None:
        """Something the gateway does not allow was asked for: logged and audited.

        The audit event is written on the pool; await the task returned to answer the
        client only once it is written.
        """
        if self.events is not None:
            with contextlib.suppress(RecordingError):
                self.events.note("refused", what=what)
        if self.user is None:
            return None
        return self.spawn(
            self.call(
                sessions.record_refused_channel,
                session=self.session,
                user=self.user,
                client_address=self.client_ip,
                what=what,
            )
        )

    async def refuse(self, what: str, error: Exception | None = None):
        """``refused(what)``, answered once audited: raises ``error`` if given, else False."""
        task = self.refused(what)
        if task is not None:
            await asyncio.wait([task])
        if error is not None:
            raise error
        return False

    def start(self, state: ChannelState, kind: str, command: str) -> bool:
        if state.started or self.user is None:
            return False
        state.started = True
        self.spawn(self._run_channel(state, kind, command))
        return True

    # --- Channel work -----------------------------------------------------------------

    def _say(self, state: ChannelState, text: str, status: int = 1) -> None:
        """Tell the user something on a channel, then end the channel with ``status``."""
        data = (text.rstrip("\n") + "\n").replace("\n", "\r\n" if state.pty else "\n").encode()
        chan = state.chan
        if chan is None:
            return
        with contextlib.suppress(*CHANNEL_GONE):
            if state.pty:
                chan.write(data)
            else:
                chan.write_stderr(data)
            chan.exit(status)

    async def _run_channel(self, state: ChannelState, kind: str, command: str) -> None:
        try:
            await self._channel_work(state, kind, command)
        finally:
            if state.recorder is not None:
                await self.call(self._close_recorder, state)
            self.channels.pop(state.number, None)

    async def _channel_work(self, state: ChannelState, kind: str, command: str) -> None:
        if self.account_slug is None:
            if kind == "shell" and state.pty:
                if not await self._menu(state):
                    return
            else:
                text = await self._menu_text()
                self._say(state, text + f"\nConnect as {self.user.username}:ACCOUNT to use one.")
                self.close_soon()
                return
        if self.refusal:
            self._say(state, f"pamsite: {self.refusal}")
            self.close_soon()
            return
        if self.cut_reason is not None:
            return
        if self.account.kind == Account.Kind.DATABASE:
            target_row = self.account.target
            self._say(
                state,
                f"pamsite: {self.account.slug} is a database account: the gateway forwards its port only.\n"
                f"Connect with: ssh -N -L 15432:{target_row.host}:{target_row.port} "
                f"{self.user.username}:{self.account.slug}@{settings.GATEWAY_PUBLIC_HOST} "
                f"-p {settings.GATEWAY_PUBLIC_PORT}\nthen point your client at localhost:15432.",
            )
            return
        try:
            conn = await self._upstream()
        except errors.TargetError as exc:
            self.end_reason = (
                GatewaySession.EndReason.REFUSED,
                f"Cannot log in to {self.account.target.name}: {exc}",
            )
            self._say(state, f"pamsite: cannot log in to {self.account.target.name}: {exc}")
            self.close_soon()
            return
        if self.cut_reason is not None or state.chan is None or state.chan.is_closing():
            return
        try:
            record_out, record_err, observe_in, observe_out, tracker = await self._open_recorder(
                state, kind, command
            )
        except RecordingError as exc:
            self.recording_failed(str(exc))
            return
        pipe = Pipe(
            down=state.chan,
            counter=self.counter,
            record_out=record_out,
            record_err=record_err,
            observe_in=observe_in,
            observe_out=observe_out,
            on_recording_failed=self.recording_failed,
        )
        options = {"encoding": None}
        if state.pty:
            options.update(term_type=state.term or "xterm", term_size=(state.width, state.height, 0, 0))
        if kind == "exec":
            # The user's own command, run as the account she was granted: relaying it is
            # the point (recorded in the event log), not an injection.
            options["command"] = command
        elif kind == "sftp":
            options["subsystem"] = "sftp"
        try:
            await conn.create_session(pipe.session, **options)
        except (asyncssh.Error, OSError) as exc:
            reason = getattr(exc, "reason", "") or str(exc) or "it gave no reason"
            self._say(state, f"pamsite: {self.account.target.name} refused the {kind}: {reason}")
            return
        state.pipe = pipe
        held, state.held = state.held, []
        for data in held:
            if data is None:
                pipe.user_eof()
            else:
                pipe.from_user(data)
        state.chan.resume_reading()
        status, signal = await pipe.ended
        await self._channel_ended(state, kind, status, signal, tracker)

    async def _channel_ended(self, state: ChannelState, kind: str, status, signal, tracker) -> None:
        number = state.number
        if (
            status is None
            and signal is None
            and self.cut_reason is None
            and self.upstream is not None
            and not self._upstream_closed
            and self.upstream.is_closed()
        ):
            row = self.account.target
            where = errors.describe_target(host=row.host, port=row.port, target=row.name)
            self.cut(
                GatewaySession.EndReason.ERROR,
                f"The connection to {where} was lost: the target's SSH server stopped or the host went down.",
            )
        if tracker is not None:
            tracker.close()
            if tracker.failed:
                # A stream the tracker could not follow may be an attempt to hide a transfer.
                await self._tracking_stopped(number, kind, tracker.failed)
        if self.cut_reason is not None:
            return
        if status is not None:
            try:
                self.events.exit_status(channel=number, status=status)
            except RecordingError as exc:
                self.recording_failed(str(exc))
                return
        # Everything the user got is in the recorder's buffer already; the user need not
        # wait for it to be hashed and signed.
        chan = state.chan
        with contextlib.suppress(*CHANNEL_GONE):
            if signal is not None:
                chan.exit_with_signal(*signal)
            elif status is not None:
                chan.exit(status)
            else:
                chan.close()

    async def _open_recorder(self, state: ChannelState, kind: str, command: str):
        """Start the channel's recording: (record_out, record_err, observe_in, observe_out, tracker)."""
        number = state.number
        if kind == "exec":
            self.events.exec_started(channel=number, command=command)
        if state.pty:
            title = f"{self.user.username} on {self.account.slug}" + (f": {command}" if command else "")
            state.recorder = await self.call(
                TerminalRecorder,
                session=self.session,
                channel=number,
                width=state.width,
                height=state.height,
                term=state.term,
                title=title,
            )
            record_out, record_err = state.recorder.write, None
        elif kind == "exec":
            state.recorder = await self.call(ExecRecorder, session=self.session, channel=number)
            record_out, record_err = state.recorder.write, state.recorder.write_stderr
        else:
            record_out = record_err = None
        events = self.events

        def transferred(transfer) -> None:
            try:
                events.file_transfer(
                    channel=number,
                    direction=transfer.direction,
                    path=transfer.path,
                    size=transfer.size,
                    sha256=transfer.sha256,
                    complete=transfer.complete,
                    note=transfer.note,
                )
            except RecordingError as exc:
                self.recording_failed(str(exc))

        tracker = observe_in = observe_out = None
        if kind == "sftp":
            tracker = SftpTracker(transferred, on_operation=lambda op: self._file_operation(number, op))
        elif kind == "exec" and not state.pty:
            tracker = ScpTracker.for_command(command, transferred)
        if tracker is not None:
            observe_in, observe_out = tracker.from_client, tracker.from_server
        elif isinstance(state.recorder, TerminalRecorder):
            recorder = state.recorder

            def observe_in(data: bytes) -> None:
                # Typed bytes are never recorded; Enter adds a marker to jump to in replay.
                try:
                    recorder.input(data)
                except RecordingError as exc:
                    self.recording_failed(str(exc))

        return record_out, record_err, observe_in, observe_out, tracker

    def _file_operation(self, number: int, operation: tuple[str, ...]) -> None:
        """An SFTP remove, rename, mkdir, rmdir or setstat, for the event log."""
        try:
            self.events.note("file-operation", channel=number, operation=list(operation))
        except RecordingError as exc:
            self.recording_failed(str(exc))

    async def _tracking_stopped(self, number: int, kind: str, why: str) -> None:
        try:
            self.events.note("transfer-tracking-stopped", channel=number, why=why[:300])
        except RecordingError as exc:
            self.recording_failed(str(exc))
        await self.call(
            sessions.record_tracking_stopped,
            session=self.session,
            user=self.user,
            client_address=self.client_ip,
            what=f"{kind} transfer tracking stopped: {why}",
        )

    def recording_failed(self, message: str) -> None:
        self.cut(
            GatewaySession.EndReason.ERROR,
            f"The session recording failed ({message}); no privileged access goes unrecorded.",
        )

    async def _upstream(self) -> asyncssh.SSHClientConnection:
        """Log in to the target once per connection, with the grant's credential."""
        if self._upstream_lock is None:
            self._upstream_lock = asyncio.Lock()
        async with self._upstream_lock:
            if self.upstream is not None and not self.upstream.is_closed():
                return self.upstream
            account, target_row = self.account, self.account.target
            try:
                credential = await self.call(_credential, account)
            except VaultError as exc:
                raise errors.TargetError(f"Vault did not hand out the credential: {exc}") from None
            try:
                self.upstream = await target.connect(
                    host=target_row.host,
                    port=target_row.port,
                    username=account.username,
                    host_key=target_row.host_key,
                    timeout=settings.GATEWAY_UPSTREAM_TIMEOUT,
                    target=target_row.name,
                    **credential,
                )
                streamline(self.upstream)
            except errors.HostKeyMismatch as exc:
                await self.call(
                    sessions.record_host_key_mismatch,
                    session=self.session,
                    user=self.user,
                    client_address=self.client_ip,
                    target=target_row.name,
                    message=str(exc),
                )
                raise
            finally:
                credential.clear()
            if self.cut_reason is not None:
                self._close_upstream()
            return self.upstream

    # --- The menu (plain "alice") ---------------------------------------------------

    async def _menu_text(self, grants: list | None = None) -> str:
        if grants is None:
            grants = await self.call(sessions.live_grants_of, user=self.user)
        if not grants:
            return f"You have no live grants. Request access at {sessions.request_url()}"
        lines = ["Your live grants:"]
        for number, grant in enumerate(grants, 1):
            left = duration_words(grant.seconds_left)
            lines.append(f"  {number}) {grant.account.slug} on {grant.account.target.name} ({left} left)")
        return "\n".join(lines)

    async def _menu(self, state: ChannelState) -> bool:
        """Let the user pick one of her live grants in her terminal; True once chosen."""
        grants = await self.call(sessions.live_grants_of, user=self.user)
        chan = state.chan
        if not grants:
            self._say(state, await self._menu_text(grants))
            self.close_soon()
            return False
        text = await self._menu_text(grants) + "\r\nPick a number (or q to quit): "
        state.menu = asyncio.get_running_loop().create_future()
        with contextlib.suppress(*CHANNEL_GONE):
            chan.write(text.replace("\n", "\r\n").encode())
        held, state.held = state.held, []
        for data in held:
            if data is not None and not state.menu.done():
                _menu_input(state, data)
        try:
            answer = await asyncio.wait_for(state.menu, MENU_TIMEOUT)
        except TimeoutError:
            answer = None
        state.menu = None
        if answer is None or answer.strip().lower() in ("q", "quit", ""):
            self._say(state, "Bye.", status=0)
            self.close_soon()
            return False
        try:
            choice = int(answer.strip())
            if choice < 1:
                raise IndexError
            grant = grants[choice - 1]
        except (ValueError, IndexError):
            self._say(state, f"'{answer.strip()[:20]}' is not one of the numbers shown.")
            self.close_soon()
            return False
        if not await self._select_account(grant.account.slug):
            self._say(state, f"pamsite: {self.refusal}")
            self.close_soon()
            return False
        with contextlib.suppress(*CHANNEL_GONE):
            chan.write(f"Connecting to {grant.account.slug}...\r\n".encode())
        return True


def _menu_input(state: ChannelState, data: bytes) -> None:
    """Bytes typed at the menu: echoed, backspace handled; Enter answers, the rest goes on."""
    chan, typed = state.chan, state.typed
    for index, byte in enumerate(data):
        if byte in (13, 10):
            with contextlib.suppress(*CHANNEL_GONE):
                chan.write(b"\r\n")
            rest = data[index + 1 :]
            if byte == 13 and rest[:1] == b"\n":
                rest = rest[1:]
            if rest:
                state.held.append(bytes(rest))  # typed ahead: goes to the target's shell
            state.menu.set_result(typed.decode("utf-8", "replace"))
            return
        if byte in (3, 4):  # Ctrl-C, Ctrl-D
            state.menu.set_result(None)
            return
        if byte in (8, 127):
            if typed:
                typed.pop()
                with contextlib.suppress(*CHANNEL_GONE):
                    chan.write(b"\b \b")
        elif 32 <= byte < 127 and len(typed) < MENU_ANSWER_MAX:
            typed.append(byte)
            with contextlib.suppress(*CHANNEL_GONE):
                chan.write(bytes([byte]))


def _prohibited(message: str) -> asyncssh.ChannelOpenError:
    return asyncssh.ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, message)


def _credential(account: Account) -> dict:
    """The grant's credential from Vault (blocking): a fresh key + certificate, or the password."""
    ref = account_ref(account)
    if account.kind == Account.Kind.SSH_CA:
        private, public = target.generate_keypair()
        # sshd checks a certificate only when it logs in: it needs to live for the login
        # alone, whatever the grant's length (the gateway cuts the session when the grant
        # ends). A stolen one is soon worthless.
        certificate = sources.ssh_sign(
            account=ref, public_key=public, ttl_seconds=UPSTREAM_CERTIFICATE_SECONDS
        )
        return {"private_key": private, "certificate": certificate}
    return {"password": rotation.static_login_password(account=ref)}


MAX_TERMINAL_SIZE = 1000  # columns or rows


def _clamp(value: int, default: int) -> int:
    """A terminal dimension from the client, made sane: 1..MAX_TERMINAL_SIZE.

    0 (or anything not a number) means "unknown": ``default``. SSH sends uint32, so a
    client's -1 arrives as 4294967295; like 2^31 or any size past the limit it becomes
    MAX_TERMINAL_SIZE, which the target and the recording's player can take.
    """
    try:
        value = int(value)
    except (TypeError, ValueError):
        return default
    if value < 1:
        return default
    return min(value, MAX_TERMINAL_SIZE)
