"""Benchmark the SSH gateway against direct ssh to the same sshd: throughput, latency, memory.

Run from the repository root with the project's Python, as root (sshd, useradd):

    .venv/bin/python bench/gateway_bench.py [--quick] [--idle-sessions 1000] [--only 1,4,6]

It never touches the site's own database or servers. It makes, and removes at the end
(also on failure, Ctrl-C or SIGTERM):

- a throwaway database (SQLite: var/bench/gateway_bench.sqlite3; PostgreSQL when
  DATABASE_URL names one: "<name>_gateway_bench"), migrated;
- an OpenBao dev server (the venv's ``bao``), set up by ``vault_bootstrap``; the gateway and
  this script use its AppRole, as the site does;
- a private sshd (the "PACS host") trusting Vault's SSH CA, with one throwaway local user
  (the ssh-ca account) and MaxStartups raised for the concurrent logins;
- the gateway itself as its own process, ``manage.py ssh_gateway --listen 127.0.0.1:PORT``
  (and with its default GATEWAY_WORKERS=auto for one run), pointed at all of the above by its environment
  (DATABASE_URL, VAULT_ADDR + AppRole, RECORDINGS_ROOT, GATEWAY_HOST_KEY_FILE);
- pamsite users with a TOTP device, a registered Ed25519 key and a live grant (request →
  approve through ``access.services``).

Every gateway figure is measured against direct ``ssh`` to the same sshd in the same run
(an OpenSSH user certificate signed by the bench's Vault CA). Clients are the real OpenSSH
``ssh`` (password or key, then the TOTP code, answered by an SSH_ASKPASS script with a code
the script computes just before; the device's last_t is reset before every login), both
ways with ``-o Ciphers=aes128-gcm@openssh.com``, except for the idle sessions, where the
clients are paramiko Transports in this process (one thread each).

1. Bulk: ``cat`` of a 256 MiB text file and of a 256 MiB random file (non-pty exec), and the
   text through a pty (``ssh -tt``: the asciicast path); whole command timed, and the
   recording's size against the data.
2. Steady state: 1 GiB of log lines (``yes LINE | head -c 1G``), MB/s from the first byte to the last.
3. 20 concurrent streams of 64 MiB (log lines), aggregate MB/s; the gateway as one process, and as
   it runs by default (GATEWAY_WORKERS=auto: one process per CPU), which the target is for.
   After every gateway run the bench waits until the gateway is idle again and reports the CPU it
   spent after the session ended (sealing the recordings, indexing the session for search), so
   that this work does not overlap the next run.
4. Echo round trip in a pty (``stty raw -echo; cat`` on the target), 1000 one-byte round
   trips after a warm-up, through ``ssh -tt`` on a local pty (os.openpty).
5. Time to a shell prompt: from starting ``ssh ... echo READY`` to reading READY.
6. Gateway memory (VmRSS, PSS) and threads with ``--idle-sessions`` idle pty shells.

MB = 10^6 bytes; MiB = 2^20 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pwd
import random
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shared import add_output_arguments, percentile, publish, run, say, start_as_root  # bench/shared.py
from stack import (  # bench/stack.py
    Gateway,
    cpu_seconds,
    fmt,
    gateway_env,
    kill_processes_of,
    last_session_pk,
    machine_info,
    median,
    met,
    proc_memory,
    start_sshd,
    start_vault_and_database,
    table,
    totp_code,
    wait_sessions_ended,
    write_ed25519,
)

from pamsite.env import usable_cpus  # after stack: the project is on sys.path

SECTION = "## Gateway"
# The gateway as it runs by default (GATEWAY_WORKERS=auto): one process per usable CPU.
DEFAULT_WORKERS = usable_cpus()
DEFAULT_WORKERS_LABEL = f"gateway, GATEWAY_WORKERS=auto ({DEFAULT_WORKERS} processes)"
ACCOUNT = "pacs01-bench"
PASSWORD = "correct horse battery staple 7"  # noqa: S105  # nosec B105 (throwaway users)
CIPHER = "aes128-gcm@openssh.com"
# The gateway (asyncssh, both legs) offers no sntrup761x25519, OpenSSH 9.2 no mlkem768x25519:
# the gateway's legs use curve25519. OpenSSH's default (sntrup761x25519) costs more per login, so
# both ways use curve25519 here; 5. also times direct ssh with OpenSSH's default.
KEX = "curve25519-sha256@libssh.org"
GRANT_MINUTES = 50  # the gateway asks Vault for a certificate of the grant's time left + 60 s
MiB = 1024 * 1024
GiB = 1024 * MiB
MB = 1_000_000
LOG_LINE = '2026-11-28T01:02:03.456Z pacs01 dicomd[4711]: C-STORE-RQ from AE "CT1_MODALITY" status=0x0000 ok'


def text_stream(size: int) -> str:
    """A remote command writing `size` bytes of log lines (text: the search indexer stops early)."""
    return f"yes '{LOG_LINE}' | head -c {size}"


F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

TARGETS = {
    "bulk_text_ratio": 0.5,
    "recording_ratio": 1.1,
    "steady_ratio": 0.35,
    "concurrent_ratio": 0.4,
    "echo_p50_ms": 0.3,
    "echo_p99_ms": 1.0,
    "kb_per_session": 150,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small version of everything (~1 min)")
    parser.add_argument("--idle-sessions", type=int, default=None, help="idle sessions (default 1000)")
    parser.add_argument("--bulk-mib", type=int, default=None, help="bulk file size in MiB (default 256)")
    parser.add_argument("--steady-mib", type=int, default=None, help="steady stream in MiB (default 1024)")
    parser.add_argument("--streams", type=int, default=None, help="concurrent streams (default 20)")
    parser.add_argument("--stream-mib", type=int, default=None, help="MiB per stream (default 64)")
    parser.add_argument("--round-trips", type=int, default=None, help="echo round trips (default 1000)")
    parser.add_argument("--runs", type=int, default=None, help="time-to-prompt runs per way (default 20)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each bulk/steady case (default 3)")
    parser.add_argument("--only", default="1,2,3,4,5,6", help="measurements to run, e.g. 1,4 (default all)")
    add_output_arguments(parser)
    args = parser.parse_args()
    quick = args.quick
    defaults = {
        "idle_sessions": 50 if quick else 1000,
        "bulk_mib": 32 if quick else 256,
        "steady_mib": 128 if quick else 1024,
        "streams": 4 if quick else 20,
        "stream_mib": 16 if quick else 64,
        "round_trips": 200 if quick else 1000,
        "runs": 4 if quick else 20,
        "repeats": 1 if quick else 3,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        args.only = {int(x) for x in args.only.split(",") if x.strip()}
    except ValueError:
        parser.error("--only takes measurement numbers 1-6, comma-separated")
    if not args.only <= {1, 2, 3, 4, 5, 6}:
        parser.error("--only takes measurement numbers 1-6")
    return args


def signed(value: float, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:+,.{digits}f}"


# --- Environment, Django, servers -------------------------------------------------------------


# --- The site ---------------------------------------------------------------------------------


@dataclass
class BenchUser:
    user: object
    key_path: Path
    device_pk: int
    totp_key: bytes

    @property
    def login(self) -> str:
        return f"{self.user.username}:{ACCOUNT}"


def fresh_code(user: BenchUser) -> str:
    """Allow the device's next code again (a code counts once per 30 s step) and compute it."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    TOTPDevice.objects.filter(pk=user.device_pk).update(last_t=-1, drift=0, throttling_failure_count=0)
    return totp_code(user.totp_key)


@dataclass
class Site:
    account: object
    users: list[BenchUser]
    direct_key: Path
    target_user: str


def make_site(workdir: Path, sshd, people: int) -> Site:
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from access import services
    from access.models import AccessPolicy, Account, Target
    from identity.models import User
    from identity.services import ssh_key_add
    from vault import sources

    local = sshd.create_user()
    target = Target.objects.create(
        name="pacs01", kind=Target.Kind.PACS, host=sshd.host, port=sshd.port, host_key=sshd.host_key
    )
    account = Account.objects.create(
        target=target, slug=ACCOUNT, kind=Account.Kind.SSH_CA, username=local.name
    )
    sources.configure_ssh_role(account=services.account_ref(account))
    policy = AccessPolicy.objects.create(
        name="PACS (gateway bench)", approvals_required=1, max_duration_minutes=120, ticket_required=False
    )
    policy.groups.add(Group.objects.get(name="requester"))
    policy.accounts.add(account)
    approver = User.objects.create(username="gwapprover", email="gwapprover@hospital.example")
    approver.groups.add(Group.objects.get(name="approver"))

    # One hash (the site's default hasher) for everyone: the gateway checks it as it would any.
    hashed = make_password(PASSWORD)
    keys = workdir / "keys"
    keys.mkdir(mode=0o700)
    users = []
    for n in range(people):
        user = User.objects.create(
            username=f"gwbench{n:02d}", email=f"gwbench{n:02d}@hospital.example", password=hashed
        )
        user.groups.add(Group.objects.get(name="requester"))
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)
        key_path = keys / user.username
        ssh_key_add(
            user=user, name="bench", public_key_line=write_ed25519(key_path, user.username), request=None
        )
        req = services.request_create(
            requester=user, account=account, reason="gateway bench", ticket="", duration_minutes=GRANT_MINUTES
        )
        services.request_decide(access_request=req, approver=approver, approve=True, comment="ok")
        req.refresh_from_db()
        if req.state != "fulfilled":
            raise RuntimeError(f"the grant for {user.username} was not fulfilled: {req.checkout_error}")
        users.append(BenchUser(user, key_path, device.pk, bytes.fromhex(device.key)))

    # Direct ssh: an OpenSSH user certificate from the same Vault CA, for the same target user.
    direct_key = keys / "direct"
    public = write_ed25519(direct_key, "direct")
    cert = sources.ssh_sign(account=services.account_ref(account), public_key=public, ttl_seconds=3600)
    Path(f"{direct_key}-cert.pub").write_text(cert.strip() + "\n")
    return Site(account=account, users=users, direct_key=direct_key, target_user=local.name)


# --- The gateway process ----------------------------------------------------------------------


# --- OpenSSH clients --------------------------------------------------------------------------

ASKPASS = """#!/bin/sh
case "$1" in
  *[Cc]ode*) printf '%s\\n' "$BENCH_CODE" ;;
  *yes/no*) echo no ;;
  *) printf '%s\\n' "$BENCH_PASSWORD" ;;
esac
"""


@dataclass
class Clients:
    workdir: Path
    site: Site
    sshd_host: str
    sshd_port: int
    sshd_host_key: str
    gateway_host_key: str
    gateway_port: int = 0
    known_hosts: Path = field(init=False)
    askpass: Path = field(init=False)

    def __post_init__(self) -> None:
        self.known_hosts = self.workdir / "known_hosts"
        self.askpass = self.workdir / "askpass"
        self.askpass.write_text(ASKPASS)
        self.askpass.chmod(0o700)
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "BENCH_"))}
        self.base_env.update(SSH_ASKPASS=str(self.askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")

    def set_gateway_port(self, port: int) -> None:
        self.gateway_port = port
        self.known_hosts.write_text(
            f"[{self.sshd_host}]:{self.sshd_port} {self.sshd_host_key}\n"
            f"[127.0.0.1]:{port} {self.gateway_host_key}\n"
        )

    def _common(self) -> list[str]:
        return [
            "ssh",
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "UpdateHostKeys=no",
            "-o", "ControlMaster=no",
            "-o", "ConnectTimeout=20",
            "-o", "LogLevel=ERROR",
            "-o", f"Ciphers={CIPHER}",
            "-o", "IdentitiesOnly=yes",
        ]  # fmt: skip

    def kex(self, default: bool) -> list[str]:
        return [] if default else ["-o", f"KexAlgorithms={KEX}"]

    def direct(
        self, *command: str, tty: bool = False, default_kex: bool = False
    ) -> tuple[list[str], dict[str, str]]:
        key = self.site.direct_key
        argv = self._common() + self.kex(default_kex) + [
            "-o", "PreferredAuthentications=publickey",
            "-o", "BatchMode=yes",
            "-i", str(key),
            "-o", f"CertificateFile={key}-cert.pub",
            "-p", str(self.sshd_port),
            "-tt" if tty else "-T",
            f"{self.site.target_user}@{self.sshd_host}",
            *command,
        ]  # fmt: skip
        return argv, dict(self.base_env)

    def gateway(
        self, user: BenchUser, *command: str, tty: bool = False, password: bool = False
    ) -> tuple[list[str], dict[str, str]]:
        """argv and env for one gateway login; the user's next TOTP code is made usable and put in env."""
        if password:
            auth = [
                "-o", "PreferredAuthentications=password,keyboard-interactive",
                "-o", "PubkeyAuthentication=no",
                "-o", "IdentityFile=none",
            ]  # fmt: skip
        else:
            auth = ["-o", "PreferredAuthentications=publickey,keyboard-interactive", "-i", str(user.key_path)]
        argv = self._common() + self.kex(False) + auth + [
            "-o", "NumberOfPasswordPrompts=1",
            "-p", str(self.gateway_port),
            "-tt" if tty else "-T",
            f"{user.login}@127.0.0.1",
            *command,
        ]  # fmt: skip
        env = dict(self.base_env, BENCH_PASSWORD=PASSWORD, BENCH_CODE=fresh_code(user))
        return argv, env


@dataclass
class Run:
    ok: bool
    started: float
    first: float | None
    last: float | None
    ended: float
    nbytes: int
    returncode: int
    stderr: str

    @property
    def total_s(self) -> float:
        return self.ended - self.started

    @property
    def transfer_s(self) -> float:
        return (self.last - self.first) if self.first is not None and self.last is not None else float("nan")


def run_reader(argv, env, *, expect: int | None = None, tty_stdin: bool = False, timeout: float = 600) -> Run:
    """Run a client, read (and drop) its stdout, timing the first and the last byte."""
    errfile = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, after the process)
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE if tty_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=errfile,
        start_new_session=True,
        bufsize=0,
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    fd = proc.stdout.fileno()
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, MiB)
    buf = bytearray(4 * MiB)
    first = last = None
    nbytes = 0
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            last = time.perf_counter()
            if first is None:
                first = last
            nbytes += n
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin:
            proc.stdin.close()
        proc.stdout.close()
    ended = time.perf_counter()
    errfile.seek(0)
    stderr = errfile.read().decode(errors="replace").strip()
    errfile.close()
    ok = proc.returncode == 0 and (expect is None or nbytes >= expect)
    return Run(ok, started, first, last, ended, nbytes, proc.returncode, stderr[-500:])


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / MB if seconds and seconds == seconds and seconds > 0 else float("nan")


# --- Sessions and recordings in the database --------------------------------------------------


def recordings_of(sessions: list, kind: str) -> list:
    from recordings.models import Recording

    return list(Recording.objects.filter(session__in=sessions, kind=kind).order_by("pk"))


def file_size(root: Path, relative: str) -> int:
    return (root / relative).stat().st_size if relative else 0


def drop_recording_files(root: Path, sessions: list) -> None:
    """Free the disk between measurements (the rows stay)."""
    from recordings.models import Recording

    for recording in Recording.objects.filter(session__in=sessions):
        for name in (recording.path, recording.index_path):
            if name:
                with contextlib.suppress(OSError):
                    (root / name).unlink()


# --- Test data on the target ------------------------------------------------------------------


def make_files(directory: Path, size: int) -> tuple[Path, Path]:
    """A text file (log lines, some quotes, tabs and UTF-8) and a random one, readable by the target user."""
    directory.mkdir(mode=0o755)
    rng = random.Random(4711)
    blocks = []
    for _ in range(8):
        lines = []
        length = 0
        while length < MiB:
            line = (
                f"2026-11-28T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}."
                f"{rng.randrange(1000):03d}Z pacs01 dicomd[{rng.randrange(1000, 40000)}]: "
                f'C-STORE-RQ from AE "CT{rng.randrange(1, 9)}_MODALITY" '
                f'study=1.2.840.{rng.randrange(10**9)}.{rng.randrange(10**6)} patient="Müller^Jörg"\t'
                f"size={rng.randrange(10**7)} status=0x{rng.choice(['0000', 'A700', 'B000', 'C001'])} "
                f"{'ok' if rng.random() < 0.95 else 'retry: association aborted by peer'}\n"
            )
            lines.append(line)
            length += len(line.encode())
        blocks.append("".join(lines).encode()[:MiB])
    text = directory / "text.log"
    with text.open("wb") as f:
        for n in range(size // MiB):
            f.write(blocks[n % len(blocks)])
    rand = directory / "random.bin"
    with rand.open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    for path in (text, rand):
        path.chmod(0o644)
    return text, rand


# --- 1. Bulk ----------------------------------------------------------------------------------


@dataclass
class BulkCase:
    name: str
    data_bytes: int
    direct: list[Run] = field(default_factory=list)
    gateway: list[Run] = field(default_factory=list)
    recording_bytes: list[int] = field(default_factory=list)  # .bin/.cast
    index_bytes: list[int] = field(default_factory=list)
    after_cpu: list[float] = field(default_factory=list)  # gateway CPU s after the session ended
    errors: list[str] = field(default_factory=list)

    def rate(self, runs: list[Run], *, whole: bool = True) -> float:
        rates = [mbps(r.nbytes, r.total_s if whole else r.transfer_s) for r in runs if r.ok]
        return median(rates)

    def phase(self, runs: list[Run], which: str) -> float:
        values = []
        for r in runs:
            if not r.ok or r.first is None:
                continue
            values.append({"setup": r.first - r.started, "close": r.ended - r.last}[which])
        return median(values)


def measure_bulk(clients: Clients, gateway: Gateway, site: Site, root: Path, files, args) -> list[BulkCase]:
    from recordings.models import Recording

    text, rand = files
    size = args.bulk_mib * MiB
    cases = [
        ("text", "exec", text, Recording.Kind.EXEC, False),
        ("random", "exec", rand, Recording.Kind.EXEC, False),
        ("text", "pty", text, Recording.Kind.TERMINAL, True),
    ]
    results = []
    user = site.users[0]
    for name, _mode, path, kind, tty in cases:
        case = BulkCase(f"{args.bulk_mib} MiB {name}, {'pty (ssh -tt)' if tty else 'non-pty exec'}", size)
        for n in range(args.repeats):
            argv, env = clients.direct("cat", str(path), tty=tty)
            run = run_reader(argv, env, expect=size, tty_stdin=tty)
            case.direct.append(run)
            if not run.ok:
                case.errors.append(f"direct: exit {run.returncode}, {run.nbytes} bytes: {run.stderr}")
            before = last_session_pk()
            argv, env = clients.gateway(user, "cat", str(path), tty=tty)
            run = run_reader(argv, env, expect=size, tty_stdin=tty)
            case.gateway.append(run)
            case.after_cpu.append(gateway.settle(gateway.cpu_seconds()))  # from the client's exit
            if not run.ok:
                case.errors.append(f"gateway: exit {run.returncode}, {run.nbytes} bytes: {run.stderr}")
            try:
                sessions = wait_sessions_ended(before)
                for rec in recordings_of(sessions, kind):
                    case.recording_bytes.append(rec.size or file_size(root, rec.path))
                    case.index_bytes.append(file_size(root, rec.index_path))
                drop_recording_files(root, sessions)
            except RuntimeError as exc:
                case.errors.append(str(exc))
            say(
                f"  {case.name} #{n + 1}: "
                f"direct {fmt(mbps(case.direct[-1].nbytes, case.direct[-1].total_s))} MB/s, "
                f"gateway {fmt(mbps(run.nbytes, run.total_s))} MB/s"
                + (f" (recording {case.recording_bytes[-1] / size:.3f}x)" if case.recording_bytes else "")
                + f"; gateway CPU after the session {case.after_cpu[-1]:.1f} s"
            )
        results.append(case)
    return results


# --- 2. Steady state --------------------------------------------------------------------------


@dataclass
class SteadyResult:
    data_bytes: int
    direct: list[Run] = field(default_factory=list)
    gateway: list[Run] = field(default_factory=list)
    during_cpu: list[float] = field(default_factory=list)  # gateway CPU s while the command ran
    after_cpu: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def measure_steady(clients: Clients, gateway: Gateway, site: Site, root: Path, args) -> SteadyResult:
    size = args.steady_mib * MiB
    command = text_stream(size)
    result = SteadyResult(size)
    user = site.users[0]
    for n in range(args.repeats):
        argv, env = clients.direct(command)
        run = run_reader(argv, env, expect=size)
        result.direct.append(run)
        if not run.ok:
            result.errors.append(f"direct: exit {run.returncode}, {run.nbytes} bytes: {run.stderr}")
        before = last_session_pk()
        argv, env = clients.gateway(user, command)
        cpu_before = gateway.cpu_seconds()
        run = run_reader(argv, env, expect=size)
        cpu_after = gateway.cpu_seconds()
        result.gateway.append(run)
        result.during_cpu.append(cpu_after - cpu_before)
        result.after_cpu.append(gateway.settle(cpu_after))
        if not run.ok:
            result.errors.append(f"gateway: exit {run.returncode}, {run.nbytes} bytes: {run.stderr}")
        with contextlib.suppress(RuntimeError):
            drop_recording_files(root, wait_sessions_ended(before))
        say(
            f"  #{n + 1}: direct {fmt(mbps(size, result.direct[-1].transfer_s))} MB/s, "
            f"gateway {fmt(mbps(size, run.transfer_s))} MB/s (first byte to last); gateway CPU "
            f"{result.during_cpu[-1] / (size / GiB):.2f} s per GiB relayed, "
            f"{result.after_cpu[-1]:.1f} s after"
        )
    return result


# --- 3. Concurrent streams --------------------------------------------------------------------


@dataclass
class ConcurrentResult:
    label: str
    streams: int
    stream_bytes: int
    runs: list[Run] = field(default_factory=list)
    wall_s: float = float("nan")
    per_process: list[int] = field(default_factory=list)  # gateway sessions per worker process
    after_cpu: float = float("nan")  # gateway CPU s from the last client's exit until idle

    @property
    def ok(self) -> int:
        return sum(r.ok for r in self.runs)

    @property
    def window_s(self) -> float:
        firsts = [r.first for r in self.runs if r.first is not None]
        lasts = [r.last for r in self.runs if r.last is not None]
        return (max(lasts) - min(firsts)) if firsts and lasts else float("nan")

    @property
    def aggregate(self) -> float:
        return mbps(sum(r.nbytes for r in self.runs), self.window_s)

    @property
    def aggregate_wall(self) -> float:
        return mbps(sum(r.nbytes for r in self.runs), self.wall_s)

    def errors(self) -> list[str]:
        return [f"exit {r.returncode}, {r.nbytes} bytes: {r.stderr}" for r in self.runs if not r.ok]


def measure_concurrent(label: str, make_command, streams: int, stream_bytes: int) -> ConcurrentResult:
    """Start `streams` clients at once (each its own user for the gateway) and read them all."""
    result = ConcurrentResult(label, streams, stream_bytes)
    commands = [make_command(i) for i in range(streams)]  # logins made usable before the start
    runs: list[Run | None] = [None] * streams
    barrier = threading.Barrier(streams)

    def worker(i: int) -> None:
        argv, env = commands[i]
        barrier.wait()
        runs[i] = run_reader(argv, env, expect=stream_bytes)

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - began
    result.runs = [r for r in runs if r is not None]
    return result


# --- 4. Echo latency --------------------------------------------------------------------------


@dataclass
class EchoResult:
    label: str
    samples_ms: list[float] = field(default_factory=list)
    error: str = ""


ECHO_COMMAND = "stty raw -echo; echo READY; exec cat"


def measure_echo(label: str, argv, env, round_trips: int, warmup: int) -> EchoResult:
    """Type one byte at a time into ssh -tt on a local pty and wait for the target's cat to echo it."""
    result = EchoResult(label)
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    poller = select.poll()
    poller.register(master, select.POLLIN)

    def read_until(marker: bytes, timeout: float) -> bytes:
        seen = b""
        deadline = time.monotonic() + timeout
        while marker not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError(f"waited {timeout:.0f} s for {marker!r}; got {seen[-300:]!r}")
            try:
                chunk = os.read(master, 4096)
            except OSError:
                raise EOFError(f"the client ended; got {seen[-300:]!r}") from None
            if not chunk:
                raise EOFError(f"the client ended; got {seen[-300:]!r}")
            seen += chunk
        return seen

    try:
        read_until(b"READY", 60)
        time.sleep(0.2)
        with contextlib.suppress(BlockingIOError):
            while poller.poll(0):
                os.read(master, 4096)
        alphabet = b"abcdefghijklmnopqrstuvwxyz"
        for n in range(warmup + round_trips):
            byte = alphabet[n % 26 : n % 26 + 1]
            t0 = time.perf_counter_ns()
            os.write(master, byte)
            got = b""
            while not got:
                if not poller.poll(5000):
                    raise TimeoutError(f"no echo within 5 s (round trip {n})")
                got = os.read(master, 64)
            t1 = time.perf_counter_ns()
            if got != byte:
                raise RuntimeError(f"sent {byte!r}, got {got!r}")
            if n >= warmup:
                result.samples_ms.append((t1 - t0) / 1e6)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)
    return result


# --- 5. Time to a prompt ----------------------------------------------------------------------


@dataclass
class PromptResult:
    label: str
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def time_to_ready(argv, env) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    seen = b""
    ready = None
    try:
        while b"READY" not in seen:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
            if not chunk:
                break
            seen += chunk
        if b"READY" in seen:
            ready = time.perf_counter() - started
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if ready is None:
        raise RuntimeError(f"no READY (exit {proc.returncode}): {err.decode(errors='replace')[-300:]}")
    return ready


def measure_prompt(clients: Clients, site: Site, runs: int) -> list[PromptResult]:
    results = {
        "direct": PromptResult(f"direct ssh (certificate, {KEX})"),
        "direct-default": PromptResult("direct ssh (certificate, OpenSSH's default key exchange)"),
        "password": PromptResult("gateway: password + TOTP"),
        "key": PromptResult("gateway: registered key + TOTP"),
    }
    user = site.users[1 % len(site.users)]
    for n in range(runs + 1):  # the first round warms up
        for way, result in results.items():
            before = last_session_pk()
            if way.startswith("direct"):
                argv, env = clients.direct("echo READY", default_kex=way == "direct-default")
            else:
                argv, env = clients.gateway(user, "echo READY", password=way == "password")
            try:
                took = time_to_ready(argv, env)
                if n:
                    result.samples.append(took)
            except Exception as exc:
                result.errors.append(f"{type(exc).__name__}: {exc}")
            if not way.startswith("direct"):
                with contextlib.suppress(RuntimeError):
                    wait_sessions_ended(before, timeout=30)
        if n and (n % 5 == 0 or n == runs):
            say(
                f"  {n}/{runs}: "
                + ", ".join(f"{w} p50 {fmt(median(r.samples) * 1000, 0)} ms" for w, r in results.items())
            )
    return list(results.values())


def component_timings(site: Site, samples: int = 10) -> dict[str, float]:
    """The two costly steps of a gateway login, timed in this process: the password hash, Vault's signing."""
    from django.contrib.auth.hashers import check_password

    from access.services import account_ref
    from targets.ssh import generate_keypair
    from vault import sources

    encoded = site.users[0].user.password
    hashing = []
    for _ in range(max(3, samples // 3)):
        t0 = time.perf_counter()
        check_password(PASSWORD, encoded)
        hashing.append(time.perf_counter() - t0)
    signing = []
    ref = account_ref(site.account)
    for _ in range(samples):
        _private, public = generate_keypair()
        t0 = time.perf_counter()
        sources.ssh_sign(account=ref, public_key=public, ttl_seconds=600)
        signing.append(time.perf_counter() - t0)
    return {"password_hash_ms": median(hashing) * 1000, "vault_sign_ms": median(signing) * 1000}


# --- 6. Idle sessions -------------------------------------------------------------------------


def cpu_share(pid: int, seconds: float) -> float:
    """The process's CPU use over `seconds`, as a share of one core."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


@dataclass
class IdleResult:
    wanted: int
    opened: int = 0
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    cpu_before: float = float("nan")
    cpu_after: float = float("nan")
    open_s: float = float("nan")
    close_s: float = float("nan")
    machine_used_kb: int = 0
    errors: list[str] = field(default_factory=list)
    stopped_early: str = ""
    open_marks: list[tuple[int, float]] = field(default_factory=list)  # (sessions open, seconds)
    close_busy_s: float = float("nan")  # until the gateway was back to its threads before
    left_live: int = 0  # sessions still not ended in the database after the close
    left_unsealed: int = 0
    log_problems: dict = field(default_factory=dict)  # gateway log: message kind -> count

    def per_session(self, key: str) -> float:
        return (self.after[key] - self.before[key]) / self.opened if self.opened else float("nan")


def open_idle_session(port: int, host_key_blob: bytes, user: BenchUser, pkey):
    """A paramiko client: key, then the TOTP code, then a pty shell on the target; (transport, channel)."""
    import paramiko

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    transport = paramiko.Transport(sock)
    transport._active_check_timeout = 2.0  # this client side only: fewer wake-ups of the bench's threads
    transport.get_security_options().ciphers = (CIPHER,)
    try:
        transport.start_client(timeout=60)
        if transport.get_remote_server_key().asbytes() != host_key_blob:
            raise RuntimeError("the gateway's host key is not the pinned one")
        transport.auth_publickey(user.login, pkey)
        code = fresh_code(user)
        transport.auth_interactive(user.login, lambda title, instructions, prompts: [code for _ in prompts])
        channel = transport.open_session(timeout=60)
        channel.get_pty(term="xterm", width=120, height=40)
        channel.invoke_shell()
        channel.settimeout(60)
        if not channel.recv(4096):  # the target shell's prompt
            raise RuntimeError("the shell ended at once")
        channel.settimeout(None)
        return transport, channel
    except BaseException:
        transport.close()
        raise


IDLE_OPEN_BUDGET = 240  # seconds of opening before the bench stops and measures what it has
IDLE_CLOSE_BUDGET = 240
LOG_PROBLEMS = {
    "database is locked": "database is locked",
    "Could not end session": "Could not end session",
    "Sealing a recording": "Sealing a recording ... failed",
    "Gateway thread": "Gateway thread ... failed",
}


def measure_idle(
    gateway: Gateway, site: Site, host_key_blob: bytes, wanted: int, workers: int = 16
) -> IdleResult:
    import paramiko
    from django.db import connections

    result = IdleResult(wanted)
    pid = gateway.process.pid
    log_offset = gateway.log_path.stat().st_size if gateway.log_path.exists() else 0
    time.sleep(2)
    result.before = proc_memory(pid)
    result.cpu_before = cpu_share(pid, 3)
    available0 = mem_available_kb()
    say(
        f"  gateway before: VmRSS {result.before['rss_kb']:,} kB, Pss {result.before['pss_kb']:,} kB, "
        f"{result.before['threads']} threads, CPU {result.cpu_before * 100:.1f}% of a core"
    )
    users = site.users[: min(workers, len(site.users))]
    keys = [paramiko.Ed25519Key.from_private_key_file(str(u.key_path)) for u in users]
    open_sessions: list[tuple] = []
    lock = threading.Lock()
    counter = iter(range(wanted))
    stop = threading.Event()

    def worker(i: int) -> None:
        try:
            while not stop.is_set():
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                if time.perf_counter() - began > IDLE_OPEN_BUDGET:
                    result.stopped_early = f"the {IDLE_OPEN_BUDGET} s budget for opening was used up"
                    stop.set()
                    return
                if mem_available_kb() < 2 * 1024 * 1024:
                    result.stopped_early = "less than 2 GiB of memory left on the machine"
                    stop.set()
                    return
                try:
                    pair = open_idle_session(gateway.port, host_key_blob, users[i], keys[i])
                except Exception as exc:
                    with lock:
                        result.errors.append(f"{type(exc).__name__}: {exc}")
                        if len(result.errors) >= 20:
                            result.stopped_early = "20 sessions failed to open"
                            stop.set()
                    continue
                with lock:
                    open_sessions.append(pair)
                    done = len(open_sessions)
                if done % 100 == 0:
                    result.open_marks.append((done, time.perf_counter() - began))
                    say(f"  {done} idle sessions open ({time.perf_counter() - began:.0f} s)")
        finally:
            connections.close_all()

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.open_s = time.perf_counter() - began
    result.opened = len(open_sessions)
    try:
        from recordings.models import GatewaySession

        live = GatewaySession.objects.filter(ended_at__isnull=True).count()
        say(
            f"  {result.opened} sessions open in {result.open_s:.0f} s ({live} live in the database); "
            "settling"
        )
        time.sleep(5)
        result.after = proc_memory(pid)
        result.cpu_after = cpu_share(pid, 5)
        result.machine_used_kb = available0 - mem_available_kb()
        say(
            f"  gateway after: VmRSS {result.after['rss_kb']:,} kB, Pss {result.after['pss_kb']:,} kB, "
            f"{result.after['threads']} threads, CPU {result.cpu_after * 100:.1f}% of a core"
        )
    finally:
        from recordings.models import GatewaySession, Recording

        before = time.perf_counter()
        for transport, _channel in open_sessions:
            transport.close()
        # Until every session has ended, or the gateway is back to its threads of before (it has
        # finished with every connection) and the database has stopped changing for 15 s.
        baseline = result.before.get("threads", 2) + 2
        deadline = time.monotonic() + IDLE_CLOSE_BUDGET
        last, stable_since = None, time.monotonic()
        while time.monotonic() < deadline:
            live = GatewaySession.objects.filter(ended_at__isnull=True).count()
            threads = proc_memory(pid)["threads"]
            if threads <= baseline and result.close_busy_s != result.close_busy_s:
                result.close_busy_s = time.perf_counter() - before
            if live != last:
                last, stable_since = live, time.monotonic()
                if live == 0:
                    result.close_s = time.perf_counter() - before
                    break
            elif threads <= baseline and time.monotonic() - stable_since > 15:
                break
            time.sleep(0.5)
        result.left_live = GatewaySession.objects.filter(ended_at__isnull=True).count()
        result.left_unsealed = Recording.objects.filter(finalized_at__isnull=True).count()
        with contextlib.suppress(OSError):
            with gateway.log_path.open(errors="replace") as log:
                log.seek(log_offset)
                text = log.read()
            for needle, label in LOG_PROBLEMS.items():
                if text.count(needle):
                    result.log_problems[label] = text.count(needle)
        say(
            f"  closed: gateway done with the connections after {fmt(result.close_busy_s, 1)} s, "
            f"every session ended after {fmt(result.close_s, 1)} s; {result.left_live} sessions left live, "
            f"{result.left_unsealed} recordings unsealed; gateway log: {result.log_problems or 'no errors'}"
        )
    return result


# --- Report -----------------------------------------------------------------------------------


AFTER_CPU_NOTE = (
    "Gateway CPU after the session = CPU seconds the gateway process used from the client's exit until "
    "it was idle again (sealing the recordings: sha256 and Vault signature; indexing the session for "
    "search: `recordings.search.session_index`, called from the connection's `_finish`); the bench waits "
    "for it before the next run"
)


def ratio_of(a: float, b: float) -> float:
    return a / b if a == a and b == b and b else float("nan")


def verdict(value: float, ok) -> str:
    return met(None if value != value else ok(value))


def report_bulk(args, bulk: list[BulkCase], summary: list[str]) -> list[str]:
    rows = []
    for case in bulk:
        d, g = case.rate(case.direct), case.rate(case.gateway)
        case.ratio = ratio_of(g, d)
        case.recording_ratio = float("nan")
        if case.recording_bytes:
            total = median([a + b for a, b in zip(case.recording_bytes, case.index_bytes, strict=False)])
            case.recording_ratio = total / case.data_bytes
        rows.append(
            [
                case.name,
                fmt(d),
                fmt(g),
                fmt(case.ratio, 2),
                fmt(case.phase(case.direct, "setup"), 2),
                fmt(case.phase(case.gateway, "setup"), 2),
                fmt(case.rate(case.gateway, whole=False)),
                fmt(case.phase(case.direct, "close"), 2),
                fmt(case.phase(case.gateway, "close"), 2),
                "-" if case.recording_ratio != case.recording_ratio else f"{case.recording_ratio:.3f}x",
                fmt(median(case.after_cpu), 1),
            ]
        )
    lines = [
        "",
        f"**1. Bulk transfer**: `ssh ... cat FILE` ({args.bulk_mib} MiB), the whole command timed from "
        f"starting ssh to its exit; median of {args.repeats} run(s) each, direct and gateway alternating. "
        "Recording = the channel's recording files (.bin + .idx, or .cast) against the file's size. "
        + AFTER_CPU_NOTE
        + ":",
        "",
        *table(
            [
                "Case",
                "Direct MB/s",
                "Gateway MB/s",
                "Ratio",
                "Direct start → 1st byte (s)",
                "Gateway start → 1st byte (s)",
                "Gateway 1st → last byte MB/s",
                "Direct last byte → exit (s)",
                "Gateway last byte → exit (s)",
                "Recording / data",
                "Gateway CPU after the session (s)",
            ],
            rows,
        ),
    ]
    lines.append("- Each run, whole command MB/s (the spread shows how noisy the machine was):")
    for case in bulk:
        lines.append(
            f"  {case.name}: direct {', '.join(fmt(mbps(x.nbytes, x.total_s)) for x in case.direct)}; "
            f"gateway {', '.join(fmt(mbps(x.nbytes, x.total_s)) for x in case.gateway)}"
        )
    for case in bulk:
        lines += [f"- error ({case.name}): {e}" for e in case.errors[:3]]
    target = TARGETS["bulk_text_ratio"]
    text = bulk[0]
    summary.append(
        f"Bulk text (non-pty) throughput ≥ {target}x direct: {fmt(text.ratio, 2)}x — "
        f"{verdict(text.ratio, lambda v: v >= target)}"
    )
    target = TARGETS["recording_ratio"]
    random_case = bulk[1] if len(bulk) > 1 else None
    if random_case is not None and random_case.recording_bytes:
        summary.append(
            f"Recording of random data ≤ {target}x the data: {random_case.recording_ratio:.3f}x "
            f"(.bin {median(random_case.recording_bytes):,.0f} B + .idx "
            f"{median(random_case.index_bytes):,.0f} B) — "
            f"{verdict(random_case.recording_ratio, lambda v: v <= target)}"
        )
    else:
        summary.append(f"Recording of random data ≤ {target}x the data: {met(None)}")
    if len(bulk) > 2:
        summary.append(
            f"(no target) Text through a pty: gateway {fmt(bulk[2].ratio, 2)}x direct; asciicast "
            f"{fmt(bulk[2].recording_ratio, 3)}x the file's size"
        )
    return lines


def report_steady(steady: SteadyResult, summary: list[str]) -> list[str]:
    def rate(runs: list[Run], whole: bool) -> float:
        return median([mbps(steady.data_bytes, x.total_s if whole else x.transfer_s) for x in runs if x.ok])

    d, g = rate(steady.direct, False), rate(steady.gateway, False)
    dw, gw = rate(steady.direct, True), rate(steady.gateway, True)
    ratio = ratio_of(g, d)
    lines = [
        "",
        f"**2. Steady state**: {steady.data_bytes // MiB} MiB of log lines (`yes LINE | head -c N`), non-pty "
        "exec; MB/s from the first byte to the last (no login, no sealing of the recording), median of "
        f"{len(steady.direct)} run(s) each:",
        "",
        *table(
            ["", "Direct", "Gateway", "Ratio"],
            [
                ["First → last byte MB/s", fmt(d), fmt(g), fmt(ratio, 2)],
                ["Whole command MB/s", fmt(dw), fmt(gw), fmt(ratio_of(gw, dw), 2)],
                [
                    "Gateway CPU while relaying (s per GiB, login included)",
                    "",
                    fmt(median(steady.during_cpu) / (steady.data_bytes / GiB), 2),
                    "",
                ],
                ["Gateway CPU after the session (s)", "", fmt(median(steady.after_cpu), 1), ""],
            ],
        ),
    ]
    lines.append(
        "- Each run, first → last byte MB/s: direct "
        + ", ".join(fmt(mbps(steady.data_bytes, x.transfer_s)) for x in steady.direct)
        + "; gateway "
        + ", ".join(fmt(mbps(steady.data_bytes, x.transfer_s)) for x in steady.gateway)
    )
    lines += [f"- error: {e}" for e in steady.errors[:3]]
    target = TARGETS["steady_ratio"]
    summary.append(
        f"Steady-state throughput ≥ {target}x direct: {fmt(ratio, 2)}x — "
        f"{verdict(ratio, lambda v: v >= target)}"
    )
    return lines


def report_concurrent(args, concurrent: list[ConcurrentResult], summary: list[str]) -> list[str]:
    direct = next((c for c in concurrent if c.label == "direct"), None)
    rows = []
    for c in concurrent:
        c.ratio = ratio_of(c.aggregate, direct.aggregate if direct else float("nan"))
        rows.append(
            [
                c.label,
                f"{c.ok}/{c.streams}",
                fmt(c.aggregate),
                fmt(c.ratio, 2),
                fmt(c.aggregate_wall),
                fmt(c.wall_s, 1),
                "-" if c.label == "direct" else fmt(c.after_cpu, 1),
            ]
        )
    lines = [
        "",
        f"**3. {args.streams} concurrent streams** of {args.stream_mib} MiB of log lines each (non-pty "
        "exec, all started at once; through the gateway one user per stream). Aggregate MB/s over "
        "the window from the first stream's first byte to the last stream's last byte, and over the whole "
        "wall time (with the logins):",
        "",
        *table(
            [
                "Way",
                "Streams OK",
                "Aggregate MB/s",
                "Ratio",
                "Aggregate MB/s (wall)",
                "Wall (s)",
                "Gateway CPU after the sessions (s)",
            ],
            rows,
        ),
    ]
    for c in concurrent:
        if c.per_process:
            lines.append(
                f"- {c.label}: the worker processes took "
                f"{' and '.join(map(str, c.per_process))} of the {c.streams} connections."
            )
        lines += [f"- error ({c.label}): {e}" for e in c.errors()[:2]]
    lines.append(
        f"- The target is for the gateway as it runs by default ({DEFAULT_WORKERS_LABEL}); one "
        "process, which relays on one core, is shown for comparison."
    )
    target = TARGETS["concurrent_ratio"]
    for c in concurrent:
        if c.label == DEFAULT_WORKERS_LABEL:
            summary.append(
                f"{args.streams} concurrent streams ≥ {target}x direct, {c.label}: {fmt(c.ratio, 2)}x — "
                f"{verdict(c.ratio, lambda v: v >= target)}"
            )
    return lines


def report_echo(args, echo: tuple[EchoResult, EchoResult], summary: list[str]) -> list[str]:
    direct, gateway = echo
    rows = []
    for e in echo:
        s = e.samples_ms
        rows.append(
            [
                e.label,
                fmt(percentile(s, 50), 3),
                fmt(percentile(s, 90), 3),
                fmt(percentile(s, 99), 3),
                fmt(max(s, default=float("nan")), 3),
                str(len(s)),
            ]
        )
    added50 = percentile(gateway.samples_ms, 50) - percentile(direct.samples_ms, 50)
    added99 = percentile(gateway.samples_ms, 99) - percentile(direct.samples_ms, 99)
    rows.append(["added by the gateway", signed(added50), "", signed(added99), "", ""])
    lines = [
        "",
        "**4. Echo round trip** in a pty: the OpenSSH client `ssh -tt` on a local pty (os.openpty), the "
        f"target running `{ECHO_COMMAND}`; one byte written, its echo read back, one at a time; "
        f"{args.round_trips} round trips each way (two sessions of half as many, direct and gateway "
        "alternating, each after 100 of warm-up):",
        "",
        *table(["Way", "p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)", "Samples"], rows),
    ]
    lines += [f"- error ({e.label}): {e.error}" for e in echo if e.error]
    p50, p99 = TARGETS["echo_p50_ms"], TARGETS["echo_p99_ms"]
    summary.append(
        f"Added echo latency p50 ≤ +{p50} ms: {signed(added50)} ms — {verdict(added50, lambda v: v <= p50)}"
    )
    summary.append(
        f"Added echo latency p99 ≤ +{p99} ms: {signed(added99)} ms — {verdict(added99, lambda v: v <= p99)}"
    )
    return lines


def report_prompt(args, prompt: list[PromptResult], parts: dict, summary: list[str]) -> list[str]:
    base = median(prompt[0].samples) * 1000
    rows = []
    for p in prompt:
        p50 = median(p.samples) * 1000
        rows.append(
            [
                p.label,
                fmt(p50, 0),
                fmt(percentile(p.samples, 95) * 1000, 0),
                "-" if p is prompt[0] else signed(p50 - base, 0),
                str(len(p.errors)),
            ]
        )
    lines = [
        "",
        "**5. Time to a prompt**: from starting `ssh ... echo READY` to reading READY; "
        f"{args.runs} runs each after one warm-up, the ways interleaved, each gateway run once the previous "
        "session has ended. "
        "Through the gateway: login, grant lookup, session row and event log, Vault signs a certificate, "
        "login to the target, exec, recording opened:",
        "",
        *table(["Way", "p50 (ms)", "p95 (ms)", f"p50 vs direct with {KEX} (ms)", "Errors"], rows),
    ]
    if parts:
        lines.append(
            "- Timed in the bench process with the same settings: checking a password against its hash "
            f"(the site's default hasher) {fmt(parts['password_hash_ms'], 0)} ms; Vault signing a "
            f"certificate {fmt(parts['vault_sign_ms'], 1)} ms (medians)."
        )
    for p in prompt:
        lines += [f"- error ({p.label}): {e}" for e in p.errors[:2]]
    summary.append(
        "(no target) Time to a prompt p50: "
        + "; ".join(f"{p.label} {fmt(median(p.samples) * 1000, 0)} ms" for p in prompt)
    )
    return lines


def report_idle(idle: IdleResult, summary: list[str]) -> list[str]:
    rss = idle.per_session("rss_kb")
    pss = idle.per_session("pss_kb") if idle.after.get("pss_kb") else float("nan")
    cpu_each = (idle.cpu_after - idle.cpu_before) * 100 / idle.opened if idle.opened else float("nan")
    b, a = idle.before, idle.after
    lines = [
        "",
        f"**6. Idle sessions**: {idle.opened:,} of {idle.wanted:,} wanted idle pty shells on the target "
        "through one gateway process (paramiko clients in the bench process, 16 logging in at a time: key, "
        f"TOTP code, pty, shell, its prompt read), opened in {fmt(idle.open_s, 0)} s; measured 5 s after "
        "the last one opened:",
        "",
        *table(
            ["Gateway process", "Before", "With the sessions", "Per session"],
            [
                ["VmRSS (kB)", f"{b.get('rss_kb', 0):,}", f"{a.get('rss_kb', 0):,}", fmt(rss)],
                ["Pss (kB, smaps_rollup)", f"{b.get('pss_kb', 0):,}", f"{a.get('pss_kb', 0):,}", fmt(pss)],
                [
                    "Threads",
                    f"{b.get('threads', 0):,}",
                    f"{a.get('threads', 0):,}",
                    fmt(idle.per_session("threads"), 1),
                ],
                [
                    "CPU while idle (% of one core)",
                    fmt(idle.cpu_before * 100),
                    fmt(idle.cpu_after * 100),
                    fmt(cpu_each, 3),
                ],
            ],
        ),
        "",
        f"- The machine's MemAvailable dropped by {idle.machine_used_kb / 1024:,.0f} MiB in all (gateway, "
        "sshd's processes and shells, the bench's clients).",
        "- Opening, sessions open after so many seconds: "
        + (", ".join(f"{n:,} after {t:.0f} s" for n, t in idle.open_marks) or "-")
        + ".",
        "- Closing every client at once: "
        + (
            f"the gateway was done with the connections (back to its threads of before) after "
            f"{fmt(idle.close_busy_s, 1)} s"
            if idle.close_busy_s == idle.close_busy_s
            else "the gateway was still busy with the connections when the bench stopped waiting"
        )
        + "; "
        + (
            f"every session had ended in the database after {fmt(idle.close_s, 1)} s"
            if not idle.left_live
            else f"{idle.left_live:,} sessions were still live in the database when the bench stopped waiting"
        )
        + (
            f"; {idle.left_unsealed:,} recordings were left unsealed (no sha256, no signature)"
            if idle.left_unsealed
            else "; every recording was sealed"
        )
        + ". Gateway log during this part: "
        + (", ".join(f"{n:,} x “{k}”" for k, n in idle.log_problems.items()) or "no errors")
        + ".",
    ]
    if idle.stopped_early:
        lines.append(f"- Stopped early: {idle.stopped_early}.")
    if idle.errors:
        lines.append(f"- {len(idle.errors)} sessions failed to open; first: {idle.errors[0]}")
    if idle.left_live or idle.left_unsealed:
        summary.append(
            f"(no target) After {idle.opened:,} clients disconnected at once: {idle.left_live:,} sessions "
            f"left live and {idle.left_unsealed:,} recordings left unsealed in the database — **a defect**"
        )
    target = TARGETS["kb_per_session"]
    summary.append(
        f"Memory per idle session ≤ {target} KB: {fmt(rss)} kB RSS ({fmt(pss)} kB PSS) with "
        f"{idle.opened:,} sessions — {verdict(rss, lambda v: v <= target)}"
    )
    return lines


def report(args, info, r) -> str:
    lines = [
        SECTION,
        "",
        f"`bench/gateway_bench.py{' --quick' if args.quick else ''}`: every gateway figure against direct "
        "`ssh` to the same private sshd in the same run.",
        "",
        f"- Date: {info['date']}",
        f"- Machine: `{info['platform']}`, {info['cpus']} CPUs ({info['cpu_model'] or 'unknown model'}), "
        f"{info['memory_gib']:.1f} GiB memory; Python {info['python']}, "
        f"asyncssh {info['asyncssh']} (the gateway), paramiko {info['paramiko']} (the bench's idle clients)",
        f"- Servers: {info['sshd']} (private, on this machine); OpenBao {info['bao']} (dev server, AppRole); "
        f"{info['database']} (throwaway database)",
        f"- Clients: {info['ssh']} with `-o Ciphers={CIPHER} -o KexAlgorithms={KEX}` both ways (the gateway "
        "uses AES-GCM towards the target too; it offers no sntrup761x25519). Through the gateway: a "
        "registered Ed25519 key and a TOTP code (SSH_ASKPASS) unless a password is named. Direct: an OpenSSH "
        "user certificate from the same Vault CA, for the same target user.",
        "- The gateway runs as its own process (`manage.py ssh_gateway`) and records every session "
        "(non-pty exec: raw .bin + .idx; pty: asciicast). The client, the gateway, sshd and the remote "
        "command share the machine's cores. MB = 10^6 bytes; MiB = 2^20 bytes.",
        "- Load average (1 min) at the start of each part: "
        + ", ".join(f"{n}. {v:.1f}" for n, v in info["loads"].items())
        + f" (on {info['cpus']} CPUs; whatever else runs on the machine shares them with the bench).",
    ]
    summary: list[str] = []
    if r.get("bulk"):
        lines += report_bulk(args, r["bulk"], summary)
    if r.get("steady") is not None:
        lines += report_steady(r["steady"], summary)
    if r.get("concurrent"):
        lines += report_concurrent(args, r["concurrent"], summary)
    if r.get("echo"):
        lines += report_echo(args, r["echo"], summary)
    if r.get("prompt"):
        lines += report_prompt(args, r["prompt"], r.get("components", {}), summary)
    if r.get("idle") is not None:
        lines += report_idle(r["idle"], summary)
    if r.get("failures"):
        lines += ["", "Measurements that failed:", ""] + [f"- {f}" for f in r["failures"]]
    lines += ["", "Targets:", ""] + [f"- {s}" for s in summary]
    return "\n".join(lines) + "\n"


# --- Main -------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    if not start_as_root("gateway_bench"):
        return 2
    began = time.perf_counter()
    loads: dict[int, float] = {}
    results: dict = {"failures": []}
    with contextlib.ExitStack() as stack:
        # open_files: the gateway and sshd inherit the limit (concurrent logins, idle sessions).
        started = start_vault_and_database(stack, "gateway_bench", keep=args.keep, open_files=65536)
        workdir = started.workdir
        from django.db import connection

        say(f"OpenBao dev server at {started.bao.addr}")
        say(f"Throwaway {connection.vendor} database: {started.database}")
        sshd = start_sshd(stack, started)
        say(f"sshd at {sshd.host}:{sshd.port}")

        people = max(args.streams, 16, 2)
        site = make_site(workdir, sshd, people)
        target_uid = pwd.getpwnam(site.target_user).pw_uid
        # Runs before remove_users (LIFO): the target user's last sessions, by pid.
        stack.callback(kill_processes_of, target_uid)
        say(f"{people} pamsite users with keys, TOTP devices and live grants for {ACCOUNT}")

        files_dir = Path(tempfile.mkdtemp(prefix="gateway_bench-data-", dir="/tmp"))
        files_dir.rmdir()
        stack.callback(shutil.rmtree, files_dir, ignore_errors=True)
        files = None
        if args.only & {1}:
            files = make_files(files_dir, args.bulk_mib * MiB)
            say(f"Test files on the target: {files[0]}, {files[1]} ({args.bulk_mib} MiB each)")

        # Every client of the bench connects from 127.0.0.1 and the idle sessions belong to a
        # few users: the gateway's per-address, per-user and total limits are raised above them
        # (a site's users come from many addresses).
        many = str(max(1000, 2 * args.idle_sessions))
        gateway_key, recordings, env = gateway_env(
            started,
            node="gateway-bench",
            GATEWAY_MAX_CONNECTIONS=many,
            GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=many,
            GATEWAY_MAX_SESSIONS_PER_USER=many,
        )
        gateway_host_key = " ".join(gateway_key.export_public_key("openssh").decode().split()[:2])
        gateway = Gateway(workdir, env)
        stack.callback(gateway.stop)
        gateway.start()
        say(f"Gateway (pid {gateway.process.pid}) on 127.0.0.1:{gateway.port}")
        clients = Clients(workdir, site, sshd.host, sshd.port, sshd.host_key, gateway_host_key)
        clients.set_gateway_port(gateway.port)

        # A first login through each way: catches a broken set-up before the measurements.
        for argv, env_ in (clients.direct("true"), clients.gateway(site.users[0], "true")):
            check = subprocess.run(argv, env=env_, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            if check.returncode != 0:
                raise SystemExit(
                    f"A first login failed ({argv[-2]}): {check.stderr.decode(errors='replace')}\n"
                    f"gateway log:\n{gateway.log_tail()}"
                )

        def attempt(number: int, label: str, function):
            if number not in args.only:
                return None
            loads[number] = os.getloadavg()[0]
            say(f"{number}. {label}")
            try:
                return function()
            except Exception as exc:
                results["failures"].append(f"{number}. {label}: {type(exc).__name__}: {exc}")
                say(f"  failed: {type(exc).__name__}: {exc}\n{gateway.log_tail(10)}")
                return None

        results["bulk"] = attempt(
            1, "Bulk transfer", lambda: measure_bulk(clients, gateway, site, recordings, files, args)
        )
        results["steady"] = attempt(
            2, "Steady state", lambda: measure_steady(clients, gateway, site, recordings, args)
        )

        def concurrent():
            size = args.stream_mib * MiB
            command = text_stream(size)
            out = []

            def streams(label: str, through_gateway: bool) -> None:
                """``args.streams`` streams at once, direct or each its own user through the gateway."""

                def make_command(i: int):
                    return (
                        clients.gateway(site.users[i], command)
                        if through_gateway
                        else clients.direct(command)
                    )

                out.append(measure_concurrent(label, make_command, args.streams, size))
                if through_gateway:
                    out[-1].after_cpu = gateway.settle(gateway.cpu_seconds())
                say(f"  {label}: {out[-1].ok}/{args.streams} OK, {fmt(out[-1].aggregate)} MB/s aggregate")

            streams("direct", through_gateway=False)
            before = last_session_pk()
            streams("gateway, 1 process", through_gateway=True)
            with contextlib.suppress(RuntimeError):
                drop_recording_files(recordings, wait_sessions_ended(before))
            gateway.stop()
            gateway.start(workers=DEFAULT_WORKERS)
            clients.set_gateway_port(gateway.port)
            before = last_session_pk()
            try:
                streams(DEFAULT_WORKERS_LABEL, through_gateway=True)
                with contextlib.suppress(RuntimeError):
                    ended = wait_sessions_ended(before)
                    out[-1].per_process = sorted(
                        Counter(x.gateway_node for x in ended).values(), reverse=True
                    )
                    drop_recording_files(recordings, ended)
            finally:
                gateway.stop()
                gateway.start()
                clients.set_gateway_port(gateway.port)
            return out

        results["concurrent"] = attempt(3, f"{args.streams} concurrent streams", concurrent)

        def echo():
            # Two halves each way, alternated, so that a slow spell of the machine hits both.
            warmup, half = 100, max(1, args.round_trips // 2)
            direct, through = EchoResult("direct ssh"), EchoResult("gateway")
            for _ in range(2):
                for merged, make in ((direct, clients.direct), (through, None)):
                    if make is None:
                        argv, env_ = clients.gateway(site.users[0], ECHO_COMMAND, tty=True)
                    else:
                        argv, env_ = make(ECHO_COMMAND, tty=True)
                    part = measure_echo(merged.label, argv, env_, half, warmup)
                    merged.samples_ms += part.samples_ms
                    merged.error = merged.error or part.error
            for e in (direct, through):
                say(
                    f"  {e.label}: p50 {fmt(percentile(e.samples_ms, 50), 3)} ms, "
                    f"p99 {fmt(percentile(e.samples_ms, 99), 3)} ms {e.error}"
                )
            return direct, through

        results["echo"] = attempt(4, "Echo round trip", echo)

        def prompt():
            out = measure_prompt(clients, site, args.runs)
            results["components"] = component_timings(site)
            return out

        results["prompt"] = attempt(5, "Time to a prompt", prompt)
        blob = gateway_key.public_data
        results["idle"] = attempt(
            6,
            f"{args.idle_sessions} idle sessions",
            lambda: measure_idle(gateway, site, blob, args.idle_sessions),
        )

        from vault.client import get_client

        info = machine_info(get_client().health().version)
        info["loads"] = loads
        publish(args, SECTION, report(args, info, results))
    say(f"Done in {time.perf_counter() - began:.0f} s (servers stopped, throwaway data removed)")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    run(main)
