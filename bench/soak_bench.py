"""Soak: the whole stack under gateway sessions and web users at once for minutes, with zero errors.

Run from the repository root with the project's Python, as root (sshd, useradd):

    .venv/bin/python bench/soak_bench.py [--duration 300] [--gateway-sessions 50] [--web-users 100]
    .venv/bin/python bench/soak_bench.py --quick      # 20 s, 5 sessions, 10 users (development)

The target (issue 7): 50 concurrent gateway sessions and 100 concurrent web users for 5
minutes with zero errors; p95 latencies and the gateway's and web app's memory at the start
and the end are reported.

It never touches the site's own database or servers. It starts, each as its own process, and
stops and removes at the end (also on failure, Ctrl-C or SIGTERM):

- an OpenBao dev server (the venv's ``bao``), set up by ``vault_bootstrap``; the gateway, the
  web app and this script use its AppRole, as the site does;
- a private sshd (the "PACS host") trusting Vault's SSH CA, with one throwaway local user
  (the ssh-ca accounts' login);
- a throwaway database "<name>_soak_bench" on PostgreSQL: the one DATABASE_URL names, else
  the machine's (127.0.0.1:5432, trust auth), migrated, dropped at the end;
- the web app as ``make run`` serves it: ``daphne pamsite.asgi:application`` on a free port;
- the gateway, ``manage.py ssh_gateway --workers N`` (2 by default) on a free port, recording
  every session under a temporary folder.

Users are made through the services (``identity.services``, ``access.services``, so Vault
checks each checkout): for each gateway session a requester with a TOTP device, a registered
Ed25519 key and a live grant; for the web, requesters, approvers and auditors (60/20/20 %)
with a password and a TOTP device.

The load, all in this process (threads): the clients start spread over ``--ramp-up`` seconds
(60; the web users' sign-ins each cost a password hash), then all run at once for
``--duration`` seconds:

- each gateway session is a paramiko client: registered key, then the TOTP code
  (keyboard-interactive), a pty shell on the target; then one command with output about every
  second (``ls``, ``df``, ``ps``... each followed by ``echo "OK-n-$((a+b))"``, whose computed
  line must come back), every 8th command also an exec channel whose whole output and exit
  status are checked; after ``--session-life`` seconds it types ``exit`` and logs in again.
  Errors: a failed login, a session that ended unasked, output that is wrong or late (30 s);
- each web user (``requests``, its own cookies) signs in once with password + TOTP, then
  loops over the pages of their role with a pause of ``--think`` seconds between pages:
  requesters the dashboard, My access, the request form, their requests and grants, and now
  and then POST a request for access or check a grant in; approvers the approval queue
  (approving now and then, CSRF token from the page), live sessions, the session search and
  request pages; auditors the audit trail (filters, older pages), the session search (text,
  user, account) and session pages (each recording's hash and Vault signature checked).
  Errors: any response other than 2xx/3xx, a redirect to the sign-in page, a form refused,
  a request that fails or takes more than 60 s.

After the load: every session must have ended and every recording be sealed, the audit
trail's hash chain must verify, and the gateway's and web app's logs must hold no ERROR,
CRITICAL or traceback; each failure counts as an error. Memory is VmRSS from /proc/PID/status
of each gateway process (the parent and its workers) and of daphne: before the load, at its
end (clients still connected) and after (clients gone, sessions sealed). CPU: the machine's
load average and busy share during the load, and each process's CPU seconds.

Every simulated person connects from 127.0.0.1, so the gateway is given
``GATEWAY_MAX_CONNECTIONS_PER_ADDRESS`` above the session count (a site's users come from
many addresses); both servers log at info. ``--keep`` keeps the work folder (the servers'
logs, the recordings) and the database for a look at an error afterwards; a database error
inside a login that the gateway only refuses may be in PostgreSQL's log rather than its own.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pwd
import random
import re
import socket
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shared import add_output_arguments, percentile, publish, run, say, start_as_root  # bench/shared.py
from stack import (  # bench/stack.py
    Gateway,
    WebApp,
    fmt,
    gateway_env,
    kill_processes_of,
    machine_info,
    met,
    proc_memory,
    start_sshd,
    start_vault_and_database,
    table,
    total_cpu_seconds,
    totp_code,
    use_machine_postgres,
    wait_sessions_ended,
    write_ed25519,
)

SECTION = "## Soak (bench/soak_bench.py)"
TARGET = {"duration": 300, "gateway_sessions": 50, "web_users": 100}
PASSWORD = "correct horse battery staple 7"  # noqa: S105  # nosec B105 (throwaway users)
CIPHER = "aes128-gcm@openssh.com"
GATEWAY_ACCOUNT = "pacs01-soak"  # the gateway sessions' grants
WEB_ACCOUNT = "pacs01-web"  # what the web requesters ask for (the same target)
WEB_GRANT_MINUTES = 30
COMMAND_TIMEOUT = 30.0  # seconds for a command's output (or a login) before it counts as an error
HTTP_TIMEOUT = 60.0
EXEC_EVERY = 8  # every 8th command of a session also runs an exec channel
REQUESTER_POST_RATE = 0.1  # share of a requester's steps that change something (request, check in)
APPROVER_POST_RATE = 0.3  # share of an approver's steps that approve a waiting request
# What a PACS administrator types: each followed by a marker whose computed value must come back.
COMMANDS = (
    "date -u",
    "uptime",
    "ls -l /usr/bin | head -n 25",
    "df -h / /tmp",
    "ps -o pid,etime,args -u $(id -un) | head -n 10",
    "cat /etc/os-release",
    "free -m",
    "tail -n 12 /etc/services",
    "for i in 1 2 3 4 5; do echo dicom store $i ok; done",
    "id; hostname; pwd",
)
SEARCH_WORDS = ("uptime", "services", "dicom", "os-release", "hostname")
AUDIT_ACTIONS = ("", "auth.login.success", "gateway.session.", "access.", "sessions.searched", "audit.")
LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|^Traceback ", re.M)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 s, 5 sessions, 10 users (for development)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds with every client running, after the ramp-up (default 300)",
    )
    parser.add_argument("--gateway-sessions", type=int, default=None, help="concurrent sessions (default 50)")
    parser.add_argument("--web-users", type=int, default=None, help="concurrent web users (default 100)")
    parser.add_argument("--gateway-workers", type=int, default=2, help="gateway processes (default 2)")
    parser.add_argument(
        "--session-life",
        default=None,
        help="seconds a gateway session lasts before it logs out and in again, MIN-MAX (default 40-100)",
    )
    parser.add_argument(
        "--think", default="1-5", help="seconds a web user waits between pages, MIN-MAX (default 1-5)"
    )
    parser.add_argument(
        "--command-interval", type=float, default=1.0, help="seconds between a session's commands (default 1)"
    )
    parser.add_argument(
        "--ramp-up",
        type=float,
        default=None,
        help="seconds over which the clients start, before --duration at full load (default 60)",
    )
    parser.add_argument("--seed", type=int, default=4711, help="random seed of the clients' choices")
    add_output_arguments(
        parser, keep="keep the throwaway database and the work folder (servers' logs, recordings) afterwards"
    )
    args = parser.parse_args()
    quick = args.quick
    defaults = {
        "duration": 20.0 if quick else 300.0,
        "gateway_sessions": 5 if quick else 50,
        "web_users": 10 if quick else 100,
        "session_life": "5-10" if quick else "40-100",
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.ramp_up is None:
        args.ramp_up = 2.0 if quick else min(60.0, args.duration / 5)
    if args.duration <= 0 or args.gateway_sessions < 0 or args.web_users < 0:
        parser.error("--duration must be positive, the sessions and users at least 0")
    if args.gateway_sessions + args.web_users == 0:
        parser.error("nothing to run: no gateway session and no web user")
    if args.gateway_workers < 1 or args.command_interval <= 0 or args.ramp_up < 0:
        parser.error("--gateway-workers ≥ 1, --command-interval > 0, --ramp-up ≥ 0")
    for name in ("session_life", "think"):
        try:
            low, high = (float(x) for x in getattr(args, name).split("-", 1))
        except ValueError:
            parser.error(f"--{name.replace('_', '-')} takes MIN-MAX seconds, e.g. 1-5")
        if not 0 <= low <= high:
            parser.error(f"--{name.replace('_', '-')}: MIN-MAX with 0 ≤ MIN ≤ MAX")
        setattr(args, name, (low, high))
    return args


# --- Counting ---------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class Stats:
    """Latencies per kind of operation and errors per kind, from every client thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.samples: dict[str, list[float]] = {}
        self.errors: dict[str, Counter] = {}
        self.notes: Counter = Counter()  # things that are not errors (an approver beaten by another)
        self.first_errors: list[str] = []

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.samples.setdefault(kind, []).append(seconds)

    def fail(self, kind: str, message: str) -> None:
        # Numbers vary (pks, ports, sums): count the messages without them.
        shape = " ".join(re.sub(r"\d+", "N", message).split())[:240]
        with self.lock:
            self.samples.setdefault(kind, [])
            self.errors.setdefault(kind, Counter())[shape] += 1
            if len(self.first_errors) < 20:
                self.first_errors.append(f"{time.strftime('%H:%M:%S')} {kind}: {message}")
        say(f"  ERROR {kind}: {message}")

    def note(self, what: str) -> None:
        with self.lock:
            self.notes[what] += 1

    def error_count(self) -> int:
        return sum(sum(c.values()) for c in self.errors.values())

    def total_ops(self) -> int:
        return sum(len(v) for v in self.samples.values()) + self.error_count()


class Failed(Exception):
    """An operation failed and was counted; the client starts over (logs in again, next page)."""


class Client:
    """A simulated person, run in a thread of its own: ``step()`` again and again until the stop,
    with a wait of ``pause(failed)`` seconds after each."""

    KIND = "client"  # what a bug in the client (an exception other than Failed) counts as
    SEED = 1  # its random choices: Random(args.seed * SEED + n)

    def __init__(self, n: int, person: Person, stats: Stats, stop: threading.Event, args):
        self.n = n
        self.person = person
        self.stats = stats
        self.stop = stop
        self.args = args
        self.rng = random.Random(args.seed * self.SEED + n)

    def step(self) -> None:
        raise NotImplementedError

    def pause(self, failed: bool) -> float:
        raise NotImplementedError

    def run(self, delay: float) -> None:
        if self.stop.wait(delay):
            return
        while not self.stop.is_set():
            failed = True
            try:
                self.step()
                failed = False
            except Failed:
                pass  # counted
            except Exception as exc:  # a bug in the client: counted, never silent
                self.stats.fail(self.KIND, describe(exc))
            seconds = self.pause(failed)
            if seconds:
                self.stop.wait(seconds)


# --- The site ---------------------------------------------------------------------------------


@dataclass
class Person:
    username: str
    role: str  # "gateway", "requester", "approver", "auditor"
    device_pk: int
    totp_key: bytes
    key_path: Path | None = None


@dataclass
class Site:
    gateway_people: list[Person]
    web_people: list[Person]
    smoke: Person  # an auditor for the check before the load, not one of the web users
    target_user: str
    grant_minutes: int


def add_person(username: str, role: str, hashed_password: str, groups: dict) -> tuple[object, Person]:
    """A user with the role's group and a confirmed TOTP device (made as enrolment makes it)."""
    from identity.models import User
    from identity.services import mfa_start_enrolment

    user = User.objects.create(
        username=username, email=f"{username}@hospital.example", password=hashed_password
    )
    user.groups.add(groups["requester" if role == "gateway" else role])
    device = mfa_start_enrolment(user=user)
    # Confirming needs a code typed in a browser session; the device is the one it would confirm.
    type(device).objects.filter(pk=device.pk).update(confirmed=True)
    return user, Person(username, role, device.pk, bytes.fromhex(device.key))


def make_site(workdir: Path, sshd, args) -> Site:
    """Target, accounts, policy and people; every gateway user's grant through request → approve."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group

    from access import services
    from access.models import AccessPolicy, Account, Target
    from identity.models import User
    from identity.services import ssh_key_add
    from vault import sources

    local = sshd.create_user()
    target = Target.objects.create(
        name="pacs01", kind=Target.Kind.PACS, host=sshd.host, port=sshd.port, host_key=sshd.host_key
    )
    accounts = []
    for slug in (GATEWAY_ACCOUNT, WEB_ACCOUNT):
        account = Account.objects.create(
            target=target, slug=slug, kind=Account.Kind.SSH_CA, username=local.name
        )
        sources.configure_ssh_role(account=services.account_ref(account))
        accounts.append(account)
    # Long enough for the whole run: no grant may end under a session.
    grant_minutes = math.ceil((args.duration + args.ramp_up) / 60) + 30
    policy = AccessPolicy.objects.create(
        name="PACS (soak)",
        approvals_required=1,
        max_duration_minutes=max(120, grant_minutes),
        ticket_required=False,
    )
    groups = {name: Group.objects.get(name=name) for name in ("requester", "approver", "auditor")}
    policy.groups.add(groups["requester"])
    policy.accounts.add(*accounts)
    seeder = User.objects.create(username="soakseeder", email="soakseeder@hospital.example")
    seeder.groups.add(groups["approver"])

    # One hash (the site's default hasher) for everyone: the web app checks it as it would any.
    hashed = make_password(PASSWORD)
    keys = workdir / "keys"
    keys.mkdir(mode=0o700)
    gateway_people = []
    for n in range(args.gateway_sessions):
        user, person = add_person(f"gwsoak{n:03d}", "gateway", hashed, groups)
        person.key_path = keys / user.username
        ssh_key_add(
            user=user,
            name="soak",
            public_key_line=write_ed25519(person.key_path, user.username),
            request=None,
        )
        req = services.request_create(
            requester=user,
            account=accounts[0],
            reason="soak: PACS maintenance",
            ticket="",
            duration_minutes=grant_minutes,
        )
        services.request_decide(access_request=req, approver=seeder, approve=True, comment="ok")
        req.refresh_from_db()
        if req.state != "fulfilled":
            raise RuntimeError(f"the grant for {user.username} was not fulfilled: {req.checkout_error}")
        gateway_people.append(person)
    web_people = [
        add_person(f"websoak{n:03d}", role, hashed, groups)[1]
        for n, role in enumerate(role_split(args.web_users))
    ]
    smoke = add_person("websmoke", "auditor", hashed, groups)[1]
    return Site(gateway_people, web_people, smoke, local.name, grant_minutes)


def reset_code(person: Person) -> str:
    """Allow the device's code again (one login per 30 s step otherwise) and compute it."""
    from django.db import connections
    from django_otp.plugins.otp_totp.models import TOTPDevice

    try:
        TOTPDevice.objects.filter(pk=person.device_pk).update(last_t=-1, drift=0, throttling_failure_count=0)
    finally:
        connections.close_all()  # this thread's: no idle connection per client thread
    return totp_code(person.totp_key)


# --- Gateway sessions -------------------------------------------------------------------------


class GatewayClient(Client):
    """One client slot: logs in, works in the shell, logs out, again, until the stop."""

    KIND = "gateway: client"
    SEED = 1000

    def __init__(self, n, person, port, host_key_blob, target_user, stats, stop, args):
        super().__init__(n, person, stats, stop, args)
        self.port = port
        self.host_key_blob = host_key_blob
        self.target_user = target_user
        self.buf = bytearray()
        self.logins = 0
        self.pkey = None

    def run(self, delay: float) -> None:
        import paramiko

        self.pkey = paramiko.Ed25519Key.from_private_key_file(str(self.person.key_path))
        super().run(delay)

    def step(self) -> None:
        self.one_session(self.pkey)

    def pause(self, failed: bool) -> float:
        return 1.0 if failed else 0.0  # after a failure a pause before logging in again

    def login(self, pkey):
        import paramiko

        code = reset_code(self.person)
        began = time.perf_counter()
        login = f"{self.person.username}:{GATEWAY_ACCOUNT}"
        transport = None
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=COMMAND_TIMEOUT)
            transport = paramiko.Transport(sock)
            transport._active_check_timeout = 2.0  # fewer wake-ups of this process's client threads
            transport.get_security_options().ciphers = (CIPHER,)
            transport.start_client(timeout=COMMAND_TIMEOUT)
            if transport.get_remote_server_key().asbytes() != self.host_key_blob:
                raise RuntimeError("the gateway's host key is not the pinned one")
            transport.auth_publickey(login, pkey)
            transport.auth_interactive(login, lambda title, instructions, prompts: [code for _ in prompts])
            channel = transport.open_session(timeout=COMMAND_TIMEOUT)
            channel.get_pty(term="xterm", width=120, height=40)
            channel.invoke_shell()
            self.buf.clear()
            channel.send(b'echo "READY-$((6*7))"\n')
            self.read_until(channel, b"READY-42\r\n")
        except Exception as exc:
            if transport is not None:
                transport.close()
            self.stats.fail("gateway: login to a shell", describe(exc))
            raise Failed from None
        self.stats.ok("gateway: login to a shell", time.perf_counter() - began)
        self.logins += 1
        return transport, channel

    def read_until(self, channel, marker: bytes, timeout: float = COMMAND_TIMEOUT) -> None:
        """Read the shell's output until ``marker``; EOF or the timeout raise."""
        deadline = time.monotonic() + timeout
        buf = self.buf
        while True:
            at = buf.find(marker)
            if at >= 0:
                del buf[: at + len(marker)]
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} within {timeout:.0f} s; last output {bytes(buf[-160:])!r}")
            channel.settimeout(min(left, 1.0))
            try:
                chunk = channel.recv(65536)
            except TimeoutError:  # socket.timeout
                continue
            if not chunk:
                raise EOFError(f"the session ended unasked; last output {bytes(buf[-160:])!r}")
            buf += chunk
            if len(buf) > 1 << 20:
                del buf[: len(buf) - 4096]

    def one_session(self, pkey) -> None:
        transport, channel = self.login(pkey)
        try:
            ends = time.monotonic() + self.rng.uniform(*self.args.session_life)
            count = 0
            next_at = time.monotonic()
            while not self.stop.is_set() and time.monotonic() < ends:
                count += 1
                self.command(channel, count)
                if count % EXEC_EVERY == 0:
                    self.exec(transport, count)
                next_at += self.args.command_interval * self.rng.uniform(0.8, 1.2)
                self.stop.wait(max(0.0, next_at - time.monotonic()))
            self.logout(channel)
        finally:
            transport.close()

    def command(self, channel, count: int) -> None:
        a, b = self.rng.randrange(1000), self.rng.randrange(1000)
        line = f'{self.rng.choice(COMMANDS)}; echo "OK-{count}-$(({a}+{b}))"\n'
        began = time.perf_counter()
        try:
            channel.send(line.encode())
            self.read_until(channel, f"OK-{count}-{a + b}\r\n".encode())
        except Exception as exc:
            self.stats.fail("gateway: command round trip", describe(exc))
            raise Failed from None
        self.stats.ok("gateway: command round trip", time.perf_counter() - began)

    def exec(self, transport, count: int) -> None:
        a, b = self.rng.randrange(1000), self.rng.randrange(1000)
        expected = f"X-{count}-{a * b}\n{self.target_user}\n".encode()
        began = time.perf_counter()
        try:
            channel = transport.open_session(timeout=COMMAND_TIMEOUT)
            try:
                channel.settimeout(COMMAND_TIMEOUT)
                channel.exec_command(f'echo "X-{count}-$(({a}*{b}))"; id -un')
                out = b""
                while chunk := channel.recv(65536):
                    out += chunk
                if not channel.status_event.wait(COMMAND_TIMEOUT):
                    raise TimeoutError("no exit status")
                status = channel.recv_exit_status()
            finally:
                channel.close()
            if out != expected or status != 0:
                raise ValueError(f"exit {status}, output {out[:160]!r}, expected {expected!r}")
        except Exception as exc:
            self.stats.fail("gateway: exec channel", describe(exc))
            raise Failed from None
        self.stats.ok("gateway: exec channel", time.perf_counter() - began)

    def logout(self, channel) -> None:
        began = time.perf_counter()
        try:
            channel.send(b"exit\n")
            if not channel.status_event.wait(COMMAND_TIMEOUT):
                raise TimeoutError(f"no exit status {COMMAND_TIMEOUT:.0f} s after exit")
            status = channel.recv_exit_status()
            if status != 0:
                raise ValueError(f"the shell exited with {status}")
        except Exception as exc:
            self.stats.fail("gateway: logout", describe(exc))
            raise Failed from None
        self.stats.ok("gateway: logout", time.perf_counter() - began)


# --- Web users --------------------------------------------------------------------------------

PAGE_KINDS = (
    (re.compile(r"^/$"), "dashboard"),
    (re.compile(r"^/access/$"), "my access"),
    (re.compile(r"^/access/request/$"), "request form"),
    (re.compile(r"^/access/requests/\d+/$"), "request page"),
    (re.compile(r"^/access/grants/\d+/$"), "grant page"),
    (re.compile(r"^/access/approvals/$"), "approval queue"),
    (re.compile(r"^/sessions/$"), "session search"),
    (re.compile(r"^/sessions/live/$"), "live sessions"),
    (re.compile(r"^/sessions/\d+/$"), "session page"),
    (re.compile(r"^/audit/$"), "audit trail"),
    (re.compile(r"^/login/$"), "sign-in page"),
    (re.compile(r"^/login/verify/$"), "code page"),
)
CSRF_INPUT = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


def page_kind(path: str) -> str:
    path = urllib.parse.urlsplit(path).path
    for pattern, kind in PAGE_KINDS:
        if pattern.match(path):
            return f"web: {kind}"
    return f"web: other ({path})"


class WebUser(Client):
    """One person in a browser: signs in once (password, then TOTP), then pages of their role."""

    KIND = "web: client"
    SEED = 7919

    def __init__(self, n, person: Person, base: str, stats: Stats, stop: threading.Event, args):
        import requests

        super().__init__(n, person, stats, stop, args)
        self.base = base
        self.http = requests.Session()
        self.http.trust_env = False  # no proxy from the environment between us and 127.0.0.1
        self.http.headers["User-Agent"] = "pamsite-soak/1"
        self.signed_in = False
        self.pending: int | None = None  # requester: the request waiting for approval
        self.grants: list[int] = []  # requester: live grants seen on My access
        self.requests_seen: list[int] = []
        self.sessions_seen: list[int] = []
        self.older: str | None = None  # auditor: the audit trail's "Older" link

    # Requests, timed and checked.

    def fetch(self, kind: str, method: str, path: str, data: dict | None = None, *, signing_in=False):
        import requests

        headers = {"Origin": self.base} if method == "POST" else {}
        began = time.perf_counter()
        try:
            response = self.http.request(
                method,
                self.base + path,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=HTTP_TIMEOUT,
            )
        except requests.RequestException as exc:
            self.stats.fail(kind, f"{method} {path}: {describe(exc)}")
            raise Failed from None
        took = time.perf_counter() - began
        location = urllib.parse.urlsplit(response.headers.get("Location", "")).path
        if not 200 <= response.status_code < 400:
            self.stats.fail(kind, f"{method} {path}: HTTP {response.status_code}")
            raise Failed
        if not signing_in and location.startswith("/login/"):
            self.stats.fail(kind, f"{method} {path}: sent to the sign-in page ({location}): signed out")
            self.signed_in = False
            raise Failed
        self.stats.ok(kind, took)
        return response

    def get(self, path: str, *, signing_in=False):
        return self.fetch(page_kind(path), "GET", path, signing_in=signing_in)

    def post(self, kind: str, path: str, page, fields: dict, *, signing_in=False):
        """POST a form of ``page`` (the response it is on) with the page's CSRF token."""
        found = CSRF_INPUT.search(page.content)
        if found is None:
            self.stats.fail(kind, f"no CSRF token on {page.url}")
            raise Failed
        data = {"csrfmiddlewaretoken": found.group(1).decode(), **fields}
        return self.fetch(kind, "POST", path, data, signing_in=signing_in)

    def follow(self, response):
        """Load the page a POST redirected to, as the browser would."""
        location = response.headers.get("Location", "")
        if response.status_code in (301, 302, 303) and location:
            return self.get(urllib.parse.urlsplit(location).path or "/")
        return response

    # The session.

    def sign_in(self) -> None:
        # A fresh browser session each time: after a failed attempt the old one may be half
        # signed in (password done), and /login/ would send it on to the code page.
        self.http.cookies.clear()
        page = self.get("/login/", signing_in=True)
        fields = {"username": self.person.username, "password": PASSWORD, "next": ""}
        response = self.post("web: sign in, password", "/login/", page, fields, signing_in=True)
        if response.status_code != 302 or "/login/verify/" not in response.headers.get("Location", ""):
            self.stats.fail("web: sign in, password", f"refused (HTTP {response.status_code})")
            raise Failed
        page = self.get("/login/verify/", signing_in=True)
        code = totp_code(self.person.totp_key)
        response = self.post(
            "web: sign in, code", "/login/verify/", page, {"code": code, "next": ""}, signing_in=True
        )
        if response.status_code != 302 or response.headers.get("Location", "").startswith("/login/"):
            self.stats.fail("web: sign in, code", f"refused (HTTP {response.status_code})")
            raise Failed
        self.signed_in = True
        self.follow(response)

    def step(self) -> None:
        if not self.signed_in:
            self.sign_in()
        else:
            getattr(self, f"step_{self.person.role}")()

    def pause(self, failed: bool) -> float:
        return self.rng.uniform(*self.args.think)  # after every step, failed or not

    def pick(self, weighted: list[tuple[int, object]]):
        total = sum(w for w, _ in weighted)
        x = self.rng.uniform(0, total)
        for weight, choice in weighted:
            x -= weight
            if x <= 0:
                return choice
        return weighted[-1][1]

    # Requesters.

    def step_requester(self) -> None:
        if self.rng.random() < REQUESTER_POST_RATE:
            self.requester_change()
            return
        choices = [(2, "/"), (3, "/access/"), (1, "/access/request/")]
        if self.grants:
            choices.append((1, f"/access/grants/{self.rng.choice(self.grants)}/"))
        if self.requests_seen:
            choices.append((1, f"/access/requests/{self.rng.choice(self.requests_seen)}/"))
        path = self.pick(choices)
        page = self.get(path)
        if path == "/access/":
            self.read_my_access(page)

    def read_my_access(self, page) -> None:
        text = page.text
        live = text.split("<h2>My requests</h2>", 1)[0]
        self.grants = [int(x) for x in re.findall(r'href="/access/grants/(\d+)/"', live)]
        self.requests_seen = [int(x) for x in re.findall(r'href="/access/requests/(\d+)/"', text)][:10]
        if self.pending is not None:
            row = re.search(rf'href="/access/requests/{self.pending}/".*?</tr>', text, re.S)
            if row is None or "Waiting for approval" not in row.group(0):
                self.pending = None

    def requester_change(self) -> None:
        """Check a live grant in, or ask for access when nothing is waiting."""
        if self.grants:
            grant = self.grants.pop(0)
            page = self.get(f"/access/grants/{grant}/")
            if f"/access/grants/{grant}/checkin/".encode() in page.content:
                response = self.post("web: POST check in", f"/access/grants/{grant}/checkin/", page, {})
                self.follow(response)
            return
        if self.pending is not None:
            self.read_my_access(self.get("/access/"))
            return
        page = self.get("/access/request/")
        fields = {
            "account": WEB_ACCOUNT,
            "duration_minutes": str(WEB_GRANT_MINUTES),
            "ticket": f"INC-{self.rng.randrange(10000, 99999)}",
            "reason": "Restart the DICOM router after the vendor's patch",
        }
        response = self.post("web: POST request access", "/access/request/", page, fields)
        found = re.match(
            r"^/access/requests/(\d+)/$", urllib.parse.urlsplit(response.headers.get("Location", "")).path
        )
        if response.status_code != 302 or found is None:
            self.stats.fail("web: POST request access", f"the form was refused (HTTP {response.status_code})")
            raise Failed
        self.pending = int(found.group(1))
        self.follow(response)

    # Approvers.

    def step_approver(self) -> None:
        if self.rng.random() < APPROVER_POST_RATE:
            page = self.get("/access/approvals/")
            waiting = re.findall(r'action="(/access/requests/\d+/decide/)"', page.text)
            if waiting:
                action = self.rng.choice(waiting[:10])
                fields = {"decision": "approve", "comment": "ok, within the change window"}
                response = self.post("web: POST approve", action, page, fields)
                if urllib.parse.urlsplit(response.headers.get("Location", "")).path != "/access/approvals/":
                    self.stats.note("approvals another approver had already decided")
                self.follow(response)
            return
        choices = [(1, "/"), (3, "/access/approvals/"), (1, "/sessions/live/"), (2, "search")]
        if self.requests_seen:
            choices.append((1, f"/access/requests/{self.rng.choice(self.requests_seen)}/"))
        path = self.pick(choices)
        if path == "search":
            self.session_search()
            return
        page = self.get(path)
        if path == "/access/approvals/":
            self.requests_seen = [int(x) for x in re.findall(r'href="/access/requests/(\d+)/"', page.text)][
                :20
            ]

    def session_search(self) -> None:
        query = self.pick(
            [
                (2, {}),
                (2, {"q": self.rng.choice(SEARCH_WORDS)}),
                (1, {"user": f"gwsoak{self.rng.randrange(max(1, self.args.gateway_sessions)):03d}"}),
                (1, {"account": GATEWAY_ACCOUNT}),
            ]
        )
        path = "/sessions/" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        page = self.get(path)
        found = [int(x) for x in re.findall(r'href="/sessions/(\d+)/"', page.text)]
        if found:
            self.sessions_seen = found[:20]

    # Auditors.

    def step_auditor(self) -> None:
        choices = [(1, "/"), (3, "audit"), (3, "search")]
        if self.sessions_seen:
            choices.append((2, f"/sessions/{self.rng.choice(self.sessions_seen)}/"))
        if self.older:
            choices.append((1, self.older))
        path = self.pick(choices)
        if path == "search":
            self.session_search()
            return
        if path == "audit":
            action = self.rng.choice(AUDIT_ACTIONS)
            path = "/audit/" + (f"?{urllib.parse.urlencode({'action': action})}" if action else "")
        page = self.get(path)
        if path.startswith("/audit/"):
            older = re.search(r'href="\?([^"]*before=\d+)"', page.text)
            self.older = "/audit/?" + older.group(1).replace("&amp;", "&") if older else None


# --- Sampling ---------------------------------------------------------------------------------


def cpu_times() -> tuple[float, float]:
    """The machine's (busy, total) CPU time so far, from /proc/stat."""
    values = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    total = sum(values[:8])
    return total - idle, total


@dataclass
class Snapshot:
    at: float
    load: float
    cpu: tuple[float, float]
    rss: dict[str, int]  # process label -> VmRSS kB
    cpu_s: dict[str, float]  # process group label -> CPU seconds so far
    pg_connections: int = -1


class Sampler:
    """Readings of the machine and the processes every few seconds, in a thread of its own."""

    def __init__(self, gateway: Gateway, web: WebApp, bao_pid: int, database: str, interval: float):
        self.gateway = gateway
        self.web = web
        self.bao_pid = bao_pid
        self.database = database
        self.interval = interval
        self.snapshots: list[Snapshot] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def processes(self) -> dict[str, int]:
        pids = self.gateway.pids()
        labels = {"gateway": pids[0]} if pids else {}
        labels.update({f"gateway worker {i}": pid for i, pid in enumerate(pids[1:], 1)})
        for pid in self.web.pids():
            labels["web (daphne)"] = pid
        return labels

    def snapshot(self) -> Snapshot:
        return Snapshot(
            at=time.monotonic(),
            load=os.getloadavg()[0],
            cpu=cpu_times(),
            rss={label: proc_memory(pid)["rss_kb"] for label, pid in self.processes().items()},
            cpu_s={
                "gateway": total_cpu_seconds(self.gateway.pids()),
                "web (daphne)": total_cpu_seconds(self.web.pids()),
                "OpenBao": total_cpu_seconds([self.bao_pid]),
                "clients (this process)": total_cpu_seconds([os.getpid()]),
            },
            pg_connections=self.pg_connections(),
        )

    def pg_connections(self) -> int:
        import psycopg

        url = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
        try:
            with psycopg.connect(
                urllib.parse.urlunsplit(url._replace(path="/postgres")), connect_timeout=5
            ) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.database]
                ).fetchone()
                return int(row[0])
        except psycopg.Error:
            return -1

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a reading missed is not worth stopping the run
                self.snapshots.append(self.snapshot())

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)


def terminate_backends(database: str) -> None:
    """End any connection still open to the throwaway database (a client thread cut short), so
    that it can be dropped."""
    import psycopg
    from django.db import connections

    connections.close_all()  # this thread's own first
    url = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(urllib.parse.urlunsplit(url._replace(path="/postgres")), autocommit=True) as conn,
    ):
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [database],
        )


# --- The run ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    stats: Stats
    started: float = 0.0  # monotonic
    stopped: float = 0.0
    start: Snapshot | None = None  # before the load
    end: Snapshot | None = None  # the load's last moment
    after: Snapshot | None = None  # clients gone, sessions sealed
    during: list[Snapshot] = field(default_factory=list)
    stuck_threads: int = 0
    sessions: int = 0
    recordings: int = 0
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (what, ok, detail)
    load_before: float = 0.0


def smoke_check(site: Site, gateway: Gateway, web: WebApp, host_key_blob: bytes, args) -> None:
    """One gateway session and one web sign-in before the load: a broken set-up stops here, clearly."""
    import paramiko

    stats, stop = Stats(), threading.Event()
    if site.gateway_people:
        session = GatewayClient(
            -1, site.gateway_people[0], gateway.port, host_key_blob, site.target_user, stats, stop, args
        )
        pkey = paramiko.Ed25519Key.from_private_key_file(str(site.gateway_people[0].key_path))
        with contextlib.suppress(Failed):
            transport, channel = session.login(pkey)
            try:
                session.command(channel, 1)
                session.exec(transport, 1)
                session.logout(channel)
            finally:
                transport.close()
    user = WebUser(-1, site.smoke, web.url, stats, stop, args)
    with contextlib.suppress(Failed):
        user.sign_in()
        user.step_auditor()
    if stats.error_count():
        raise SystemExit(
            "The check before the load failed:\n  "
            + "\n  ".join(stats.first_errors)
            + f"\ngateway log:\n{gateway.log_tail(15)}\nweb log:\n{web.log_tail(15)}"
        )


def run_load(
    site: Site, gateway: Gateway, web: WebApp, host_key_blob: bytes, sampler: Sampler, args
) -> Outcome:
    stats = Stats()
    outcome = Outcome(stats)
    stop = threading.Event()
    sessions = [
        GatewayClient(n, person, gateway.port, host_key_blob, site.target_user, stats, stop, args)
        for n, person in enumerate(site.gateway_people)
    ]
    users = [WebUser(n, person, web.url, stats, stop, args) for n, person in enumerate(site.web_people)]
    threads = []
    for i, client in enumerate(sessions):
        delay = args.ramp_up * i / max(1, len(sessions))
        threads.append(threading.Thread(target=client.run, args=(delay,), name=f"gateway-{i}", daemon=True))
    for i, client in enumerate(users):
        delay = args.ramp_up * i / max(1, len(users))
        threads.append(threading.Thread(target=client.run, args=(delay,), name=f"web-{i}", daemon=True))

    outcome.load_before = os.getloadavg()[0]
    outcome.start = sampler.snapshot()
    sampler.start()
    outcome.started = time.monotonic()
    say(
        f"Load: {len(sessions)} gateway sessions, {len(users)} web users, started over "
        f"{args.ramp_up:.0f} s, then {args.duration:.0f} s all at once"
    )
    try:
        for thread in threads:
            thread.start()
        deadline = outcome.started + args.ramp_up + args.duration
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 10.0))
            elapsed = time.monotonic() - outcome.started
            with stats.lock:
                ops = sum(len(v) for v in stats.samples.values())
            say(
                f"  {elapsed:5.0f} s: {ops:,} operations, {stats.error_count()} errors, "
                f"load {os.getloadavg()[0]:.1f}"
            )
        outcome.end = sampler.snapshot()
    finally:
        stop.set()
        outcome.stopped = time.monotonic()
        for thread in threads:
            thread.join(timeout=max(1.0, outcome.stopped + COMMAND_TIMEOUT * 2 - time.monotonic()))
        outcome.stuck_threads = sum(t.is_alive() for t in threads)
        sampler.finish()
    outcome.during = [s for s in sampler.snapshots if outcome.started <= s.at <= outcome.stopped]
    say(f"Stopped: {stats.total_ops():,} operations, {stats.error_count()} errors")
    return outcome


def after_checks(outcome: Outcome, gateway: Gateway, web: WebApp, sampler: Sampler) -> None:
    """Sessions ended and sealed, the audit chain intact, no error in the servers' logs."""
    from audit.chain import verify_chain
    from recordings.models import GatewaySession, Recording

    checks = outcome.checks
    if outcome.stuck_threads:
        checks.append(
            ("every client stopped", False, f"{outcome.stuck_threads} client threads still running")
        )
    try:
        ended = wait_sessions_ended(0, timeout=120)
        checks.append(
            ("every gateway session ended, every recording sealed", True, f"{len(ended):,} sessions")
        )
    except RuntimeError as exc:
        checks.append(("every gateway session ended, every recording sealed", False, str(exc)))
    outcome.sessions = GatewaySession.objects.count()
    outcome.recordings = Recording.objects.count()
    gateway.settle(gateway.cpu_seconds(), timeout=60)
    outcome.after = sampler.snapshot()
    result = verify_chain()
    checks.append(
        ("the audit trail's hash chain verifies", result.ok, f"{result.checked:,} events; {result.summary}")
    )
    for label, server in (("gateway", gateway), ("web app", web)):
        text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        problems = [line for line in text.splitlines() if LOG_PROBLEM.search(line)]
        detail = f"{len(problems)} lines" + (f"; first: {problems[0][:200]}" if problems else "")
        checks.append((f"no ERROR, CRITICAL or traceback in the {label}'s log", not problems, detail))
    from django.db import connections

    connections.close_all()


# --- Report -----------------------------------------------------------------------------------

KIND_ORDER = (
    "gateway: login to a shell",
    "gateway: command round trip",
    "gateway: exec channel",
    "gateway: logout",
    "web: sign-in page",
    "web: sign in, password",
    "web: code page",
    "web: sign in, code",
    "web: dashboard",
    "web: my access",
    "web: request form",
    "web: request page",
    "web: grant page",
    "web: approval queue",
    "web: live sessions",
    "web: session search",
    "web: session page",
    "web: audit trail",
    "web: POST request access",
    "web: POST approve",
    "web: POST check in",
)


def ms(seconds: float) -> str:
    return fmt(seconds * 1000, 0 if seconds >= 0.1 else 1)


def report(args, info: dict, outcome: Outcome, pg_version: str) -> tuple[str, bool]:
    stats = outcome.stats
    window = outcome.stopped - outcome.started
    full = window - args.ramp_up  # every client running
    kinds = sorted(stats.samples, key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else 99, k))
    rows = []
    for kind in kinds:
        samples = stats.samples[kind]
        errors = sum(stats.errors.get(kind, Counter()).values())
        rows.append(
            [
                kind,
                f"{len(samples) + errors:,}",
                str(errors),
                ms(percentile(samples, 50)),
                ms(percentile(samples, 95)),
                ms(percentile(samples, 99)),
                ms(max(samples, default=float("nan"))),
            ]
        )
    gateway_ops = sum(len(stats.samples.get(k, [])) for k in kinds if k.startswith("gateway:"))
    web_ops = sum(len(stats.samples.get(k, [])) for k in kinds if k.startswith("web:"))
    client_errors = stats.error_count()
    failed_checks = [c for c in outcome.checks if not c[1]]
    total_errors = client_errors + len(failed_checks)

    during = outcome.during or [s for s in (outcome.end,) if s]
    loads = [s.load for s in during]
    busy = []
    for a, b in zip([outcome.start, *during], during, strict=False):
        total = b.cpu[1] - a.cpu[1]
        if a and total > 0:
            busy.append((b.cpu[0] - a.cpu[0]) / total * 100)
    first, last = outcome.start, outcome.end or (during[-1] if during else outcome.start)
    cpu_rows = []
    for label in first.cpu_s:
        used = last.cpu_s.get(label, 0.0) - first.cpu_s.get(label, 0.0)
        cpu_rows.append(f"{label} {used:,.1f} s ({used / window * 100:.0f} % of a core)")
    labels = list(
        dict.fromkeys(
            [*first.rss, *(last.rss if last else {}), *(outcome.after.rss if outcome.after else {})]
        )
    )
    readings = [s for s in (first, *during, outcome.end, outcome.after) if s is not None]
    peak = {label: max(s.rss.get(label, 0) for s in readings) for label in labels}
    mem_rows = []
    for label in labels:
        mem_rows.append(
            [
                label,
                f"{first.rss.get(label, 0):,}",
                f"{last.rss.get(label, 0):,}" if last else "-",
                f"{outcome.after.rss.get(label, 0):,}" if outcome.after else "-",
                f"{peak[label]:,}",
            ]
        )
    gw = [label for label in labels if label.startswith("gateway")]
    if len(gw) > 1:

        def total(snap):
            return f"{sum(snap.rss.get(label, 0) for label in gw):,}" if snap else "-"

        peak_total = max(sum(s.rss.get(label, 0) for label in gw) for s in readings)
        mem_rows.append(
            ["gateway, all processes", total(first), total(last), total(outcome.after), f"{peak_total:,}"]
        )
    pg = [s.pg_connections for s in during if s.pg_connections >= 0]

    size_ok = (
        args.duration >= TARGET["duration"]
        and args.gateway_sessions >= TARGET["gateway_sessions"]
        and args.web_users >= TARGET["web_users"]
    )
    verdict = met(False) if total_errors else (met(True) if size_ok else met(None))
    roles = Counter(role_split(args.web_users))
    command = "bench/soak_bench.py" + (" --quick" if args.quick else "")
    if not args.quick and (
        args.duration != TARGET["duration"]
        or args.gateway_sessions != TARGET["gateway_sessions"]
        or args.web_users != TARGET["web_users"]
    ):
        command += (
            f" --duration {args.duration:g} --gateway-sessions {args.gateway_sessions}"
            f" --web-users {args.web_users}"
        )
    lines = [
        SECTION,
        "",
        f"`{command}`: the whole stack, each server its own process, under gateway sessions and web "
        "users at once.",
        "",
        f"- Date: {info['date']}",
        f"- Machine: `{info['platform']}`, {info['cpus']} CPUs ({info['cpu_model'] or 'unknown model'}), "
        f"{info['memory_gib']:.1f} GiB memory; Python {info['python']}, paramiko {info['paramiko']}",
        "- Servers: web app `daphne pamsite.asgi:application` (as `make run`); gateway "
        f"`manage.py ssh_gateway --workers {args.gateway_workers}`; OpenBao {info['bao']} (dev server, "
        f"AppRole); {info['sshd']} "
        f"(private, the target); PostgreSQL {pg_version} (the machine's, a throwaway database). Every "
        "session recorded; no worker or broker (a check-in's release runs in the web process).",
        f"- Load: {args.gateway_sessions} gateway sessions (paramiko: registered key + TOTP, pty shell, a "
        f"command with output every ~{args.command_interval:g} s checked by a computed marker, an exec "
        f"channel every {EXEC_EVERY} commands checked whole, `exit` after "
        f"{args.session_life[0]:g}-{args.session_life[1]:g} s and a new login) and {args.web_users} web "
        f"users ({roles['requester']} requesters, {roles['approver']} approvers, {roles['auditor']} "
        "auditors; `requests`, password + TOTP once, then a page of their role every "
        f"{args.think[0]:g}-{args.think[1]:g} s; POSTs with the page's CSRF token: requests for access, "
        "approvals, check-ins): the clients started over the first "
        f"{args.ramp_up:.0f} s, then all ran at once for {full:.0f} s ({window:.0f} s of load in all). "
        "All clients are threads of the bench's process, on the same machine as the servers.",
        "- CPU during the load: load average (1 min) "
        f"{fmt(sum(loads) / len(loads) if loads else float('nan'))} mean, "
        f"{fmt(max(loads, default=float('nan')))} max (before: {outcome.load_before:.1f}; "
        f"{info['cpus']} CPUs, shared with whatever else runs on the machine); the machine's CPUs "
        f"{fmt(sum(busy) / len(busy) if busy else float('nan'), 0)} % busy on average, "
        f"{fmt(max(busy, default=float('nan')), 0)} % in the busiest {sampler_interval(args):.0f} s. "
        f"CPU used over the load: {'; '.join(cpu_rows)}.",
        "",
        f"{stats.total_ops():,} operations: {gateway_ops:,} through the gateway, {web_ops:,} web requests "
        f"({web_ops / window:.1f} per second); {client_errors} errors. Latency per operation (gateway login "
        "= TCP connect to the shell's first computed output; command round trip = Enter to the "
        "marker's line; web = one HTTP request, redirects not followed):",
        "",
        *table(["Operation", "Count", "Errors", "p50 (ms)", "p95 (ms)", "p99 (ms)", "max (ms)"], rows),
        "",
        "Memory (VmRSS, kB) of the servers' processes: before the load; at its end, clients still "
        "connected; after, clients gone and every session sealed; and the highest reading "
        f"(read every {sampler_interval(args):.0f} s):",
        "",
        *table(["Process", "Start", "End (under load)", "After", "Peak"], mem_rows),
        "",
        "After the load:",
        "",
    ]
    for what, ok, detail in outcome.checks:
        lines.append(f"- {what}: {'yes' if ok else '**no**'} ({detail})")
    lines.append(
        f"- {outcome.sessions:,} gateway sessions and {outcome.recordings:,} recordings in all; "
        + (
            f"PostgreSQL connections to the throwaway database during the load: at most {max(pg)}"
            if pg
            else ""
        )
        + (
            f"; {stats.notes['approvals another approver had already decided']} approvals found the "
            "request already decided by another approver (not an error)"
            if stats.notes
            else ""
        )
    )
    if client_errors:
        lines += ["", "Errors (numbers replaced by N):", ""]
        for kind in kinds:
            for message, count in stats.errors.get(kind, Counter()).most_common(5):
                lines.append(f"- {count} x {kind}: {message}")
    target = (
        f"zero errors over {TARGET['duration']} s with {TARGET['gateway_sessions']} gateway sessions + "
        f"{TARGET['web_users']} web users"
    )
    this = (
        f"{total_errors} errors ({client_errors} in the clients' operations, {len(failed_checks)} checks "
        f"after the load failed) over {full:.0f} s with {args.gateway_sessions} + {args.web_users} "
        f"(after a {args.ramp_up:.0f} s ramp-up)"
    )
    if not size_ok and not total_errors:
        this += " (a smaller run than the target's)"
    lines += ["", "Target:", "", f"- Soak: {target}: {this} — {verdict}"]
    return "\n".join(lines) + "\n", total_errors == 0


def role_split(web_users: int) -> list[str]:
    """The web users' roles: 20 % approvers, 20 % auditors, the rest requesters."""
    m = web_users
    approvers = max(1, round(m * 0.2)) if m >= 3 else 0
    auditors = max(1, round(m * 0.2)) if m >= 3 else 0
    return ["approver"] * approvers + ["auditor"] * auditors + ["requester"] * (m - approvers - auditors)


def sampler_interval(args) -> float:
    return 2.0 if args.duration < 60 else 5.0


# --- Main -------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    if not start_as_root("soak_bench"):
        return 2
    began = time.perf_counter()
    pg_version = use_machine_postgres()
    with contextlib.ExitStack() as stack:
        started = start_vault_and_database(
            stack, "soak_bench", keep=args.keep, keep_folder=args.keep, open_files=65536
        )
        workdir, bao, name = started.workdir, started.bao, started.database
        stack.callback(terminate_backends, name)  # before the database is dropped: a client thread cut short
        say(f"OpenBao dev server (pid {bao.process.pid}) at {bao.addr}")
        say(f"Throwaway PostgreSQL {pg_version} database: {name}; work folder {workdir}")
        sshd = start_sshd(stack, started)
        seeding = time.perf_counter()
        site = make_site(workdir, sshd, args)
        # Runs before remove_users (LIFO): the target user's last sessions, by pid.
        stack.callback(kill_processes_of, pwd.getpwnam(site.target_user).pw_uid)
        say(f"sshd (pid {sshd.process.pid}) at {sshd.host}:{sshd.port}, target user {site.target_user}")
        say(
            f"{len(site.gateway_people)} gateway users with keys, TOTP and live grants; "
            f"{len(site.web_people)} web users ({time.perf_counter() - seeding:.0f} s)"
        )

        host_key, _recordings, env = gateway_env(
            started,
            node="soak",
            # Every simulated user connects from 127.0.0.1, where a site's come from many addresses.
            GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=str(max(20, 2 * args.gateway_sessions)),
            # Info: a line per refused or failed login, to find the cause of an error afterwards.
            LOG_LEVEL="info",
        )
        gateway = Gateway(workdir, env)
        stack.callback(gateway.stop)
        gateway.start(workers=args.gateway_workers)
        say(f"Gateway (pids {', '.join(map(str, gateway.pids()))}) on 127.0.0.1:{gateway.port}")
        web = WebApp(workdir, env)
        stack.callback(web.stop)
        web.start()
        say(f"Web app (daphne, pid {web.process.pid}) at {web.url}")

        smoke_check(site, gateway, web, host_key.public_data, args)
        say("Check before the load: a gateway session and a web sign-in work")
        sampler = Sampler(gateway, web, bao.process.pid, name, sampler_interval(args))
        outcome = run_load(site, gateway, web, host_key.public_data, sampler, args)
        say("After the load: waiting for the sessions to end and their recordings to be sealed")
        after_checks(outcome, gateway, web, sampler)

        from vault.client import get_client

        info = machine_info(get_client().health().version)
        text, ok = report(args, info, outcome, pg_version)
        publish(args, SECTION, text)
    say(f"Done in {time.perf_counter() - began:.0f} s (servers stopped, throwaway data removed)")
    return 0 if ok else 1


if __name__ == "__main__":
    run(main)
