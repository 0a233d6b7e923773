"""One user's SSH connection to the gateway: login, the grant, the target, the channels.

Login is two steps, both always: the user's own factor (a public key registered on her
profile page, or her password) and then a TOTP or backup code through
keyboard-interactive. The SSH user name says which account she wants
(``alice:pacs01-root``); plain ``alice`` gets a menu of her live grants in her terminal.

After login the gateway finds the live grant (or tells her what is missing and where to
ask), opens the Session row and its event log, and on the first shell, exec or SFTP
channel logs in to the target with the grant's credential (a certificate signed by
Vault's SSH CA, or the static password from Vault's KV), checking the target's pinned
host key first. Each channel is relayed and recorded (``relay``, ``sessions.recorder``).
``cut()`` ends everything with a message: the grant ended, it was revoked, someone
terminated the session, or the recording failed.

Paramiko calls the ``check_*`` methods on the connection's transport thread; anything
slow (logging in to the target, relaying) runs on threads of its own. Database work on
the transport thread goes through ``_db`` so that thread never keeps a connection open.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field

import paramiko
from django.conf import settings
from django.db import connections
from django.db.models import Sum
from paramiko.auth_handler import AuthHandler
from paramiko.common import (
    AUTH_FAILED,
    AUTH_PARTIALLY_SUCCESSFUL,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_FAILED_CONNECT_FAILED,
    OPEN_SUCCEEDED,
)

from access.models import Account, Grant
from identity import gateway_auth
from identity.services import MFAError
from sessions import upstream
from sessions.gateway import limits, records, usernames
from sessions.gateway.relay import ChannelRelay, Counter, relay_socket, thread
from sessions.gateway.usernames import parse_login
from sessions.models import Session
from sessions.recorder import EventLog, ExecRecorder, RecordingError, SealDeferred, TerminalRecorder
from sessions.search import session_index
from sessions.transfers import ScpTracker, SftpTracker
from vault import sources
from vault.client import VaultError

logger = logging.getLogger(__name__)

ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
CODE_TRIES = 3
# Seconds a logged-in connection's thread waits for a channel before looking again whether
# the transport is still active (its end wakes it at once).
ACCEPT_BACKSTOP = 30
MAX_CHANNELS = 32  # channels (sessions and forwards) open at once on one connection
MAX_KEY_OFFERS = 64  # public-key queries and attempts on one connection (two per key)
FORWARD_CONNECT_TIMEOUT = 5
# Lifetime of the certificate the gateway logs in to an ssh-ca target with (seconds).
UPSTREAM_CERTIFICATE_SECONDS = 120
# Sessions whose recordings total at most this are indexed for search as they end.
INLINE_INDEX_MAX_BYTES = 8 * 1024 * 1024


def _db(fn, *args, **kwargs):
    """Run a database call in one of the process's database slots (limits.database_slot).

    The thread's connection is closed after: paramiko's threads must not keep one each.
    """
    with limits.database_slot():
        return fn(*args, **kwargs)


class _GatewayAuthHandler(AuthHandler):
    """Paramiko's server-side auth, told when a public key's signature has been checked.

    Paramiko asks ``check_auth_publickey`` before it verifies the signature (and for
    signature-less queries), so the key counts as a factor only here, where paramiko
    reports the outcome of a request whose signature verified.
    """

    def _send_auth_result(self, username, method, result):
        problem = usernames.login_name_problem(username)
        if problem is not None:
            # A login name that can never be valid (control characters, too long, an empty
            # or malformed account): told before any lookup, and the connection ends.
            limits.disconnect(self.transport, problem, usernames.DISCONNECT_ILLEGAL_USER_NAME)
            return
        if method == "publickey" and result == AUTH_PARTIALLY_SUCCESSFUL:
            result = self.transport.server_object.publickey_verified(username)
        goodbye = self.transport.server_object.goodbye
        if goodbye is not None:
            # Locked out, or at the session limit: say so (OpenSSH prints a disconnect's
            # reason whatever its LogLevel) rather than invite more attempts.
            reason, message = goodbye
            limits.disconnect(self.transport, message, reason)
            return
        super()._send_auth_result(username, method, result)


class _UserTransport(paramiko.Transport):
    """Paramiko's transport, waking ``accept()`` when its thread ends (the connection is gone).

    So the connection's thread can wait for channels without polling: with a thousand
    idle connections, a 1 s poll each was a thousand wake-ups a second.
    """

    def run(self):
        try:
            super().run()
        finally:
            with self.lock:
                self.server_accept_cv.notify_all()

    def accept(self, timeout=None):
        # As paramiko's, but no wait once the transport has ended (its end may come just
        # before the wait, and nothing would wake it then).
        with self.lock:
            if not self.server_accepts and self.active:
                self.server_accept_cv.wait(timeout)
            return self.server_accepts.pop(0) if self.server_accepts else None


@dataclass
class _Channel:
    """What the gateway knows of one of the user's session channels."""

    channel: paramiko.Channel
    term: str = ""
    width: int = 80
    height: int = 24
    pty: bool = False
    started: bool = False
    up: paramiko.Channel | None = None
    recorder: TerminalRecorder | ExecRecorder | None = None
    extra: dict = field(default_factory=dict)


class GatewayConnection(paramiko.ServerInterface):
    """The server side of one user connection (paramiko ServerInterface + its threads)."""

    def __init__(
        self,
        *,
        sock: socket.socket,
        address: tuple,
        host_key: paramiko.PKey,
        node: str,
        ciphers,
        limiter: limits.Limiter | None = None,
    ):
        self.sock = sock
        self.client_ip = address[0]
        self.node = node
        self.opened = time.monotonic()
        # Hostile clients (sessions.gateway.limits): paramiko reads through a guard until
        # login, and nothing before login may take longer than the login timeout.
        self.limiter = limiter
        self.goodbye: tuple[int, str] | None = None  # disconnect with this instead of an auth answer
        self._key_offers = 0
        self._refused_key_user = ""  # offered only keys that are not this user's (counted at the end)
        self._channels_refused = False
        self.transport = _UserTransport(limits.ClientSocket(sock, logged_in=lambda: self.user is not None))
        limits.quiet(self.transport)
        self.transport.auth_handler = _GatewayAuthHandler(self.transport)
        self.transport.add_server_key(host_key)
        self.transport.local_version = limits.IDENTIFICATION
        options = self.transport.get_security_options()
        options.ciphers = tuple(ciphers)
        self.transport.banner_timeout = settings.GATEWAY_LOGIN_TIMEOUT
        self.transport.handshake_timeout = settings.GATEWAY_LOGIN_TIMEOUT
        self.lock = threading.RLock()
        self.counter = Counter()
        # Login state
        self._first: tuple[str, object] | None = None  # (ssh user name, User) after the first factor
        self._key_offered: paramiko.PKey | None = None
        self._code_tries = 0
        self.user = None
        self.method = ""
        # After login
        self.account_slug: str | None = None
        self.grant: Grant | None = None
        self.account: Account | None = None
        self.session: Session | None = None
        self.events: EventLog | None = None
        self.refusal: str = ""
        self.upstream: upstream.UpstreamConnection | None = None
        self._upstream_lock = threading.Lock()
        self.channels: dict[int, _Channel] = {}
        self.forwards: dict[int, tuple[socket.socket, str, int]] = {}
        self.cut_reason: tuple[str, str] | None = None
        # Why the session ended when nobody cut it (the target refused the login).
        self.end_reason: tuple[str, str] | None = None
        self.reported_bytes = (0, 0)
        self.finished = threading.Event()
        self.workers: list[threading.Thread] = []

    # --- Life cycle ---------------------------------------------------------------------

    def serve(self) -> None:
        """Run the connection to its end (called on its own thread)."""
        try:
            self.transport.start_server(server=self)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            # One line, whatever the client sent (paramiko's own tracebacks are silenced).
            logger.info(
                "SSH handshake with %s failed: %s", self.client_ip, limits.failure_reason(self.transport, exc)
            )
            self.transport.close()
            self.finished.set()
            return
        upstream.quiet_transport(self.transport)
        try:
            self._accept_loop()
        finally:
            self._count_refused_keys()
            self._finish()

    def _accept_loop(self) -> None:
        login_deadline = self.opened + settings.GATEWAY_LOGIN_TIMEOUT
        while self.transport.is_active():
            # Until login, wake each second for the login deadline; after it, the transport's
            # end wakes this (_UserTransport), the timeout is only a backstop.
            channel = self.transport.accept(timeout=1 if self.user is None else ACCEPT_BACKSTOP)
            if self.user is None and time.monotonic() > login_deadline:
                logger.info("Login from %s timed out", self.client_ip)
                return
            if channel is None:
                continue
            forward = self.forwards.pop(channel.get_id(), None)
            if forward is not None:
                self.workers.append(
                    thread(self._run_forward, channel, *forward, name=f"forward-{channel.get_id()}")
                )
            else:
                # Held until it closes (paramiko keeps channels weakly: one nobody holds is
                # closed), so a request that comes late still finds it and MAX_CHANNELS counts it.
                self._state(channel)

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    def cut(self, reason: str, message: str) -> None:
        """End the session now with a message to the user (grant ended, terminated, ...)."""
        with self.lock:
            if self.cut_reason is not None:
                return
            self.cut_reason = (reason, message)
        text = f"\r\n*** pamsite: {message} The session is closed. ***\r\n"
        for state in list(self.channels.values()):
            channel = state.channel
            if channel.closed:
                continue
            try:
                if state.pty:
                    if state.recorder is not None:
                        with contextlib.suppress(RecordingError):
                            state.recorder.write(text.encode())
                    channel.sendall(text.encode())
                else:
                    channel.sendall_stderr(text.encode())
                channel.send_exit_status(255)
                channel.shutdown_write()
                channel.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass
        if self.upstream is not None:
            self.upstream.close()
        # The user's client closes the connection when its channels are gone; if it does
        # not (ssh -N, a stuck client), the transport is closed shortly after.
        threading.Timer(2.0, self._close_transport).start()

    def _close_transport(self) -> None:
        upstream.close_transport(self.transport)

    def _finish(self) -> None:
        """The connection is gone: close the target, seal recordings, end the Session."""
        self._close_transport()
        if self.upstream is not None:
            self.upstream.close()
        for sock, _host, _port in self.forwards.values():
            sock.close()
        # Channel and forward threads write their last events (exit status, bytes) as they end.
        deadline = time.monotonic() + 10
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        # One database slot for all of the ending (limits.database_slot): hundreds of
        # connections ending at once take turns rather than exhaust the database.
        with limits.database_slot():
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
                reason, message = self.cut_reason or self.end_reason or (Session.EndReason.CLOSED, "")
                if failed and not self.cut_reason:
                    reason, message = Session.EndReason.ERROR, failed
                for attempt in range(3):  # a busy database (many sessions ending at once) is retried
                    try:
                        records.session_end(
                            session=self.session,
                            reason=reason,
                            message=message,
                            bytes_in=self.counter.to_target,
                            bytes_out=self.counter.to_user,
                        )
                        break
                    except Exception:
                        logger.exception(
                            "Could not end session %s (attempt %s)", self.session.pk, attempt + 1
                        )
                        connections.close_all()
                        time.sleep(1 + attempt)
                # A short session is searchable at once; indexing a large one (a 256 MiB exec
                # output) would take the gateway's CPU from live sessions for seconds, so the
                # worker's sessions_maintain indexes it, with anything missed here.
                try:
                    recorded = self.session.recordings.aggregate(total=Sum("size"))["total"] or 0
                    if recorded <= INLINE_INDEX_MAX_BYTES:
                        session_index(session=self.session)
                except Exception:
                    logger.exception("Could not index session %s for search", self.session.pk)
            if self.user is not None:
                try:
                    _db(gateway_auth.gateway_logout, user=self.user, client_ip=self.client_ip)
                except Exception:
                    logger.exception("Could not record the logout of %s", self.user.username)
        self.finished.set()

    def _close_recorder(self, state: _Channel) -> None:
        recorder, state.recorder = state.recorder, None
        if recorder is None:
            return
        try:
            with limits.database_slot():
                recorder.close()
        except SealDeferred as exc:
            logger.warning("%s", exc)  # written in full; the worker signs it once Vault is back
        except Exception:
            # The session still ends; the worker's sessions_maintain seals what is left unsealed.
            logger.exception("Sealing a recording of session %s failed", self.session and self.session.pk)

    # --- Authentication -------------------------------------------------------------

    def get_allowed_auths(self, username):
        if self._first is not None:
            return "keyboard-interactive"
        return "publickey,password"

    def check_auth_none(self, username):
        return AUTH_FAILED

    def check_auth_password(self, username, password):
        if self._first is not None:
            return AUTH_FAILED
        name, _account = parse_login(username)
        self._refused_key_user = ""  # this attempt is counted itself if it fails
        user = _db(
            gateway_auth.gateway_password_login, username=name, password=password, client_ip=self.client_ip
        )
        if user is None:
            self._goodbye_if_locked_out(name)
            return AUTH_FAILED
        self._first = (username, user)
        self.method = "password"
        return AUTH_PARTIALLY_SUCCESSFUL

    def check_auth_publickey(self, username, key):
        # Tentative: the key is looked up only once its signature has been verified
        # (publickey_verified). Answering "maybe" to every key also keeps which keys are
        # registered private. Paramiko asks twice per key (query, then signed request);
        # past MAX_KEY_OFFERS a client is only spraying keys.
        if self._first is not None:
            return AUTH_FAILED
        self._key_offers += 1
        if self._key_offers > MAX_KEY_OFFERS:
            return AUTH_FAILED
        self._key_offered = key
        return AUTH_PARTIALLY_SUCCESSFUL

    def publickey_verified(self, username) -> int:
        key, self._key_offered = self._key_offered, None
        if key is None or self._first is not None:
            return AUTH_FAILED
        name, _account = parse_login(username)
        user = _db(
            gateway_auth.gateway_key_login,
            username=name,
            key_type=key.get_name(),
            key_blob=key.asbytes(),
            client_ip=self.client_ip,
        )
        if user is None:
            self._refused_key_user = name
            self._goodbye_if_locked_out(name)
            return AUTH_FAILED
        self._first = (username, user)
        self._refused_key_user = ""
        self.method = "publickey"
        return AUTH_PARTIALLY_SUCCESSFUL

    def _goodbye_if_locked_out(self, name: str) -> None:
        """After a failed factor: once the username or address is locked, disconnect saying so."""
        if _db(gateway_auth.gateway_locked_out, username=name, client_ip=self.client_ip):
            self.goodbye = (
                limits.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
                gateway_auth.gateway_lockout_message(),
            )

    def _count_refused_keys(self) -> None:
        """A connection that offered only keys that are not the user's counts as one failure."""
        if self._first is None and self._refused_key_user:
            try:
                _db(
                    gateway_auth.gateway_keys_refused,
                    username=self._refused_key_user,
                    client_ip=self.client_ip,
                )
            except Exception:
                logger.exception("Could not count the refused keys of a connection from %s", self.client_ip)

    def _code_query(self, note: str = "") -> paramiko.InteractiveQuery:
        text = (
            note + "\n" if note else ""
        ) + "Enter the 6-digit code from your authenticator app, or a backup code."
        return paramiko.InteractiveQuery("pamsite verification", text, ("Verification code: ", False))

    def check_auth_interactive(self, username, submethods):
        if self._first is None or self._first[0] != username:
            return AUTH_FAILED
        return self._code_query()

    def check_auth_interactive_response(self, responses):
        if self._first is None or not responses:
            return AUTH_FAILED
        username, user = self._first
        name, _ = parse_login(username)
        if _db(gateway_auth.gateway_locked_out, username=name, client_ip=self.client_ip):
            self.goodbye = (
                limits.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
                gateway_auth.gateway_lockout_message(),
            )
            return AUTH_FAILED
        try:
            _db(gateway_auth.gateway_verify_code, user=user, code=responses[0], client_ip=self.client_ip)
        except MFAError as exc:
            if exc.reason == "locked_out":
                self.goodbye = (limits.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, str(exc))
                return AUTH_FAILED
            self._code_tries += 1
            if self._code_tries >= CODE_TRIES:
                return AUTH_FAILED
            return self._code_query(str(exc))
        if self.limiter is not None:
            too_many = _db(self.limiter.user_refusal, user=user, client_ip=self.client_ip)
            if too_many:
                self.goodbye = (limits.DISCONNECT_TOO_MANY_CONNECTIONS, too_many)
                return AUTH_FAILED
        self.user = user
        self._after_login(username)
        return AUTH_SUCCESSFUL

    def _after_login(self, username: str) -> None:
        _name, slug = parse_login(username)
        if slug is None:
            return  # the menu picks the account
        self._select_account(slug)

    def _select_account(self, slug: str) -> bool:
        """Find the live grant and open the Session; else remember why not. True if found."""
        self.account_slug = slug
        if not ACCOUNT_RE.match(slug):
            lookup = records.GrantLookup(
                None,
                f"'{slug[:63]}' is not an account name (lower-case letters, digits and hyphens). "
                f"Connect as {self.user.username}:ACCOUNT, e.g. {self.user.username}:pacs01-root",
            )
        else:
            lookup = _db(records.find_live_grant, user=self.user, slug=slug)
        if lookup.grant is None:
            self.refusal = lookup.message
            _db(
                records.session_refuse,
                user=self.user,
                account=slug,
                client_address=self.client_ip,
                node=self.node,
                message=lookup.message,
                reason="no-grant",
            )
            return False
        self.grant = lookup.grant
        self.account = lookup.grant.account
        try:
            self.session = _db(
                self.limiter.session_open if self.limiter is not None else records.session_open,
                user=self.user,
                grant=self.grant,
                client_address=self.client_ip,
                node=self.node,
            )
            self.events = _db(EventLog, session=self.session)
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
                _db(
                    records.session_end,
                    session=self.session,
                    reason=Session.EndReason.ERROR,
                    message=str(exc),
                )
            return False
        return True

    # --- Channels ----------------------------------------------------------------------

    def check_channel_request(self, kind, chanid):
        if kind != "session":
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        if self.cut_reason is not None or self._too_many_channels():
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        return OPEN_SUCCEEDED

    def _too_many_channels(self) -> bool:
        """True when MAX_CHANNELS (sessions and forwards) are open; the first refusal is audited.

        Paramiko's own table of the connection's channels is counted: a channel leaves it
        when it is closed. The states of channels closed before they started anything are
        forgotten here, so opening and closing channels for hours costs nothing.
        """
        for channel_id, state in list(self.channels.items()):
            if state.channel.closed and not state.started:
                self.channels.pop(channel_id, None)
        if len(self.transport._channels) < MAX_CHANNELS:
            return False
        if not self._channels_refused:
            self._channels_refused = True
            logger.info(
                "Connection from %s: more than %s channels at once refused", self.client_ip, MAX_CHANNELS
            )
            self._refused(f"more than {MAX_CHANNELS} channels open at once")
        return True

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes):
        state = self._state(channel)
        state.pty, state.term = (
            True,
            term.decode("ascii", "replace") if isinstance(term, bytes) else str(term),
        )
        state.width, state.height = _clamp(width, 80), _clamp(height, 24)
        return True

    def check_channel_window_change_request(self, channel, width, height, pixelwidth, pixelheight):
        state = self._state(channel)
        size = _clamp(width, state.width), _clamp(height, state.height)
        if size == (state.width, state.height):
            return True  # nothing changed (or nonsense clamped back): nothing to pass on or record
        state.width, state.height = size
        if state.up is not None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                state.up.resize_pty(state.width, state.height)
        if state.recorder is not None and isinstance(state.recorder, TerminalRecorder):
            try:
                state.recorder.resize(state.width, state.height)
            except RecordingError as exc:
                self.recording_failed(str(exc))
        return True

    def check_channel_shell_request(self, channel):
        return self._start(channel, "shell", "")

    def check_channel_exec_request(self, channel, command):
        text = command.decode("utf-8", "replace") if isinstance(command, bytes) else str(command)
        return self._start(channel, "exec", text)

    def check_channel_subsystem_request(self, channel, name):
        if name != "sftp":
            self._refused(f"subsystem {name[:50]}")
            return False
        return self._start(channel, "sftp", "")

    def check_channel_env_request(self, channel, name, value):
        return False

    def check_channel_x11_request(
        self, channel, single_connection, auth_protocol, auth_cookie, screen_number
    ):
        self._refused("X11 forwarding")
        return False

    def check_channel_forward_agent_request(self, channel):
        self._refused("agent forwarding")
        return False

    def check_port_forward_request(self, address, port):
        self._refused(f"remote port forwarding ({address}:{port})")
        return False

    def check_global_request(self, kind, msg):
        return False

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        host, port = destination
        if self.user is None or self.account is None or self.refusal:
            self._refused(f"port forwarding to {host}:{port} without a grant")
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        target = self.account.target
        allowed = set(target.forward_ports or [])
        if self.account.kind == Account.Kind.DATABASE:
            allowed.add(target.port)
        if host not in (target.host, target.name) or port not in allowed:
            ports = ", ".join(str(p) for p in sorted(allowed)) or "none"
            self._refused(f"port forwarding to {host}:{port} (allowed: {target.name} ports {ports})")
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        if self.cut_reason is not None or self._too_many_channels():
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        try:
            sock = socket.create_connection((target.host, port), timeout=FORWARD_CONNECT_TIMEOUT)
        except OSError as exc:
            logger.info("Forward to %s:%s for session %s failed: %s", target.host, port, self.session.pk, exc)
            return OPEN_FAILED_CONNECT_FAILED
        sock.settimeout(None)
        self.forwards[chanid] = (sock, target.host, port)
        _db(
            records.record_forward,
            session=self.session,
            user=self.user,
            client_address=self.client_ip,
            host=target.host,
            port=port,
        )
        return OPEN_SUCCEEDED

    def _state(self, channel: paramiko.Channel) -> _Channel:
        state = self.channels.get(channel.get_id())
        if state is None:
            # setdefault: the accept loop and the transport thread may both get here first.
            state = self.channels.setdefault(channel.get_id(), _Channel(channel))
        return state

    def _refused(self, what: str) -> None:
        if self.events is not None:
            with contextlib.suppress(RecordingError):
                self.events.note("refused", what=what)
        if self.user is not None:
            _db(
                records.record_refused_channel,
                session=self.session,
                user=self.user,
                client_address=self.client_ip,
                what=what,
            )

    def _start(self, channel: paramiko.Channel, kind: str, command: str) -> bool:
        state = self._state(channel)
        if state.started or self.user is None:
            return False
        state.started = True
        self.workers.append(
            thread(self._run_channel, state, kind, command, name=f"channel-{channel.get_id()}")
        )
        return True

    # --- Channel work (own thread) --------------------------------------------------

    def _say(self, state: _Channel, text: str, status: int = 1) -> None:
        """Tell the user something on a channel, then end the channel with ``status``."""
        data = (text.rstrip("\n") + "\n").replace("\n", "\r\n" if state.pty else "\n").encode()
        channel = state.channel
        try:
            if state.pty:
                channel.sendall(data)
            else:
                channel.sendall_stderr(data)
            channel.send_exit_status(status)
            channel.shutdown_write()
            channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def _run_channel(self, state: _Channel, kind: str, command: str) -> None:
        try:
            self._channel_work(state, kind, command)
        finally:
            self._close_recorder(state)
            self.channels.pop(state.channel.get_id(), None)

    def _channel_work(self, state: _Channel, kind: str, command: str) -> None:
        if self.account_slug is None:
            if kind == "shell" and state.pty:
                if not self._menu(state):
                    return
            else:
                self._say(state, self._menu_text() + f"\nConnect as {self.user.username}:ACCOUNT to use one.")
                self._close_soon()
                return
        if self.refusal:
            self._say(state, f"pamsite: {self.refusal}")
            self._close_soon()
            return
        if self.cut_reason is not None:
            return
        if self.account.kind == Account.Kind.DATABASE:
            target = self.account.target
            self._say(
                state,
                f"pamsite: {self.account.slug} is a database account: the gateway forwards its port only.\n"
                f"Connect with: ssh -N -L 15432:{target.host}:{target.port} "
                f"{self.user.username}:{self.account.slug}@{settings.GATEWAY_PUBLIC_HOST} "
                f"-p {settings.GATEWAY_PUBLIC_PORT}\nthen point your client at localhost:15432.",
            )
            return
        try:
            conn = self._upstream()
        except upstream.UpstreamError as exc:
            self.end_reason = (
                Session.EndReason.REFUSED,
                f"Cannot log in to {self.account.target.name}: {exc}",
            )
            self._say(state, f"pamsite: cannot log in to {self.account.target.name}: {exc}")
            self._close_soon()
            return
        try:
            up = conn.open_session()
            if state.pty:
                up.get_pty(term=state.term or "xterm", width=state.width, height=state.height)
            if kind == "shell":
                up.invoke_shell()
            elif kind == "exec":
                # The user's own command, run as the account she was granted: relaying it
                # is the point (recorded in the event log), not an injection.
                up.exec_command(command)  # nosec B601
            else:
                up.invoke_subsystem("sftp")
        except (upstream.UpstreamError, paramiko.SSHException, OSError, EOFError) as exc:
            self._say(
                state, f"pamsite: {self.account.target.name} refused the {kind}: {exc or type(exc).__name__}"
            )
            return
        state.up = up
        typed_ahead = state.extra.pop("typed_ahead", b"")
        if typed_ahead:
            up.sendall(typed_ahead)
        self._relay(state, kind, command)

    def _relay(self, state: _Channel, kind: str, command: str) -> None:
        channel_id = state.channel.get_id()
        events = self.events
        tracker = None
        try:
            with limits.database_slot():
                record_out, record_err = self._open_recorder(state, kind, command)
        except RecordingError as exc:
            self.recording_failed(str(exc))
            return

        def transferred(transfer) -> None:
            try:
                events.file_transfer(
                    channel=channel_id,
                    direction=transfer.direction,
                    path=transfer.path,
                    size=transfer.size,
                    sha256=transfer.sha256,
                    complete=transfer.complete,
                    note=transfer.note,
                )
            except RecordingError as exc:
                self.recording_failed(str(exc))

        observe_in = observe_out = None
        if kind == "sftp":
            tracker = SftpTracker(transferred, on_operation=lambda op: self._file_operation(channel_id, op))
        elif kind == "exec" and not state.pty:
            tracker = ScpTracker.for_command(command, transferred)
        if state.pty and isinstance(state.recorder, TerminalRecorder):
            recorder = state.recorder

            def observe_in(data: bytes) -> None:
                # Typed bytes are never recorded; Enter adds a marker to jump to in replay.
                try:
                    recorder.input(data)
                except RecordingError as exc:
                    self.recording_failed(str(exc))

        if tracker is not None:
            # The two directions are relayed on two threads; the tracker follows one conversation.
            lock = threading.Lock()

            def observe_in(data: bytes) -> None:
                with lock:
                    tracker.from_client(data)

            def observe_out(data: bytes) -> None:
                with lock:
                    tracker.from_server(data)

        relay = ChannelRelay(
            down=state.channel,
            up=state.up,
            counter=self.counter,
            record_out=record_out,
            record_err=record_err,
            observe_in=observe_in,
            observe_out=observe_out,
            on_recording_failed=self.recording_failed,
            separate_stderr=not state.pty,
        )
        status = relay.run()
        if status is None and self.cut_reason is None and self.upstream is not None and self.upstream.lost:
            self.cut(Session.EndReason.ERROR, self.upstream.lost_message())
        if tracker is not None:
            tracker.close()
            if tracker.failed:
                # A stream the tracker could not follow may be an attempt to hide a transfer.
                self._tracking_stopped(channel_id, kind, tracker.failed)
        if status is not None and self.cut_reason is None:
            try:
                events.exit_status(channel=channel_id, status=status)
            except RecordingError as exc:
                self.recording_failed(str(exc))
        if self.cut_reason is None:
            # Everything the user got is in the recorder's buffer already; the user need not
            # wait for it to be hashed and signed.
            try:
                if status is not None:
                    state.channel.send_exit_status(status)
                state.channel.shutdown_write()
                state.channel.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass
        self._close_recorder(state)

    def _open_recorder(self, state: _Channel, kind: str, command: str):
        """Start the channel's recording: (record_out, record_err), each None if not recorded."""
        channel_id = state.channel.get_id()
        if kind == "exec":
            self.events.exec_started(channel=channel_id, command=command)
        if state.pty:
            state.recorder = TerminalRecorder(
                session=self.session,
                channel=channel_id,
                width=state.width,
                height=state.height,
                term=state.term,
                title=f"{self.user.username} on {self.account.slug}" + (f": {command}" if command else ""),
            )
            return state.recorder.write, None
        if kind == "exec":
            state.recorder = ExecRecorder(session=self.session, channel=channel_id)
            return state.recorder.write, state.recorder.write_stderr
        return None, None

    def _file_operation(self, channel_id: int, operation: tuple[str, ...]) -> None:
        """An SFTP remove, rename, mkdir, rmdir or setstat, for the event log."""
        try:
            self.events.note("file-operation", channel=channel_id, operation=list(operation))
        except RecordingError as exc:
            self.recording_failed(str(exc))

    def _tracking_stopped(self, channel_id: int, kind: str, why: str) -> None:
        try:
            self.events.note("transfer-tracking-stopped", channel=channel_id, why=why[:300])
        except RecordingError as exc:
            self.recording_failed(str(exc))
        _db(
            records.record_tracking_stopped,
            session=self.session,
            user=self.user,
            client_address=self.client_ip,
            what=f"{kind} transfer tracking stopped: {why}",
        )

    def recording_failed(self, message: str) -> None:
        self.cut(
            Session.EndReason.ERROR,
            f"The session recording failed ({message}); no privileged access goes unrecorded.",
        )

    def _close_soon(self) -> None:
        threading.Timer(1.0, self._close_transport).start()

    def _upstream(self) -> upstream.UpstreamConnection:
        """Log in to the target once per connection, with the grant's credential."""
        with self._upstream_lock:
            if self.upstream is not None and self.upstream.transport.is_active():
                return self.upstream
            account, target = self.account, self.account.target
            ref = _db(_account_ref, account)
            kwargs = {}
            try:
                if account.kind == Account.Kind.SSH_CA:
                    private, public = upstream.generate_keypair()
                    # sshd checks a certificate only when it logs in: it needs to live
                    # for the login alone, whatever the grant's length (the gateway cuts
                    # the session when the grant ends). A stolen one is soon worthless.
                    certificate = sources.ssh_sign(
                        account=ref, public_key=public, ttl_seconds=UPSTREAM_CERTIFICATE_SECONDS
                    )
                    kwargs = {"private_key": private, "certificate": certificate}
                else:
                    kwargs = {"password": sources.static_login_password(account=ref)}
            except VaultError as exc:
                raise upstream.UpstreamError(f"Vault did not hand out the credential: {exc}") from None
            try:
                self.upstream = upstream.connect(
                    host=target.host,
                    port=target.port,
                    username=account.username,
                    host_key=target.host_key,
                    timeout=settings.GATEWAY_UPSTREAM_TIMEOUT,
                    target=target.name,
                    **kwargs,
                )
            except upstream.HostKeyMismatch as exc:
                _db(
                    records.record_host_key_mismatch,
                    session=self.session,
                    user=self.user,
                    client_address=self.client_ip,
                    target=target.name,
                    message=str(exc),
                )
                raise
            finally:
                kwargs.clear()
            return self.upstream

    # --- The menu (plain "alice") ---------------------------------------------------

    def _menu_text(self) -> str:
        grants = _db(records.live_grants_of, user=self.user)
        if not grants:
            return f"You have no live grants. Request access at {records.request_url()}"
        lines = ["Your live grants:"]
        for number, grant in enumerate(grants, 1):
            left = max(0, int(grant.seconds_left // 60))
            lines.append(f"  {number}) {grant.account.slug} on {grant.account.target.name} ({left} min left)")
        return "\n".join(lines)

    def _menu(self, state: _Channel) -> bool:
        """Let the user pick one of her live grants in her terminal; True once chosen."""
        grants = _db(records.live_grants_of, user=self.user)
        channel = state.channel
        if not grants:
            self._say(state, self._menu_text())
            self._close_soon()
            return False
        text = self._menu_text() + "\r\nPick a number (or q to quit): "
        channel.sendall(text.replace("\n", "\r\n").encode())
        answer, state.extra["typed_ahead"] = _read_line(channel)
        if answer is None or answer.strip().lower() in ("q", "quit", ""):
            self._say(state, "Bye.", status=0)
            self._close_soon()
            return False
        try:
            grant = grants[int(answer.strip()) - 1]
            if int(answer.strip()) < 1:
                raise IndexError
        except (ValueError, IndexError):
            self._say(state, f"'{answer.strip()[:20]}' is not one of the numbers shown.")
            self._close_soon()
            return False
        if not self._select_account(grant.account.slug):
            self._say(state, f"pamsite: {self.refusal}")
            self._close_soon()
            return False
        channel.sendall(f"Connecting to {grant.account.slug}...\r\n".encode())
        return True

    # --- Forwarded connections ------------------------------------------------------

    def _run_forward(self, channel: paramiko.Channel, sock: socket.socket, host: str, port: int) -> None:
        bytes_in, bytes_out = relay_socket(down=channel, sock=sock, counter=self.counter)
        if self.events is not None:
            try:
                self.events.forwarded_connection(
                    channel=channel.get_id(), host=host, port=port, bytes_in=bytes_in, bytes_out=bytes_out
                )
            except RecordingError as exc:
                self.recording_failed(str(exc))


def _account_ref(account: Account):
    from access.services import account_ref

    return account_ref(account)


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


def _read_line(channel: paramiko.Channel, limit: int = 32, timeout: float = 120) -> tuple[str | None, bytes]:
    """A line typed in a pty (echoed back, backspace handled) and what was typed after it.

    (None, b"") if the user left. Input typed ahead (pasted) goes to the target's shell.
    """
    channel.settimeout(timeout)
    typed = bytearray()
    try:
        while True:
            data = channel.recv(4096)
            if not data:
                return None, b""
            for index, byte in enumerate(data):
                if byte in (13, 10):
                    channel.sendall(b"\r\n")
                    channel.settimeout(None)
                    rest = data[index + 1 :]
                    if byte == 13 and rest[:1] == b"\n":
                        rest = rest[1:]
                    return typed.decode("utf-8", "replace"), bytes(rest)
                if byte in (3, 4):  # Ctrl-C, Ctrl-D
                    return None, b""
                if byte in (8, 127):
                    if typed:
                        typed.pop()
                        channel.sendall(b"\b \b")
                elif 32 <= byte < 127 and len(typed) < limit:
                    typed.append(byte)
                    channel.sendall(bytes([byte]))
    except (TimeoutError, OSError, EOFError, paramiko.SSHException):
        return None, b""
