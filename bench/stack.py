"""What the benchmarks that start the real stack share: servers as their own processes, users' logins.

Moved here from gateway_bench.py so that gateway_bench.py and soak_bench.py start the same
OpenBao, sshd, gateway and web app the same way:

- ``start_vault_and_database``: what every bench here starts first, in a work folder: a private
  OpenBao dev server (``start_openbao``), this process's settings pointed at it
  (``prepare_environment``, ``setup_django_with``), the throwaway database (bench/shared.py),
  ``vault_bootstrap`` run with the root token, then the AppRole as the site uses it
  (``bootstrap_vault``); access_bench.py starts OpenBao and sshd this way too;
- ``start_sshd`` / ``make_sshd_class``: the test fixture's private sshd ("the PACS host"), by
  default with room for many concurrent logins; ``kill_processes_of`` ends what its throwaway
  user still runs;
- ``Gateway`` (``manage.py ssh_gateway``) and ``WebApp`` (daphne, what ``make run`` serves),
  each its own process group (``ServerProcess``), given ``server_env`` (``gateway_env``: with
  the gateway's host key and a recordings folder);
- ``use_machine_postgres``: the machine's PostgreSQL (127.0.0.1:5432, trust auth) as the
  database the throwaway one is made on (bench/shared.py); ``raise_open_files_limit``;
- TOTP codes and Ed25519 keys for the bench's users; /proc readings (VmRSS, CPU seconds);
  the Markdown helpers of the reports (``say`` and ``percentile`` are in bench/shared.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import os
import platform
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple

from shared import ROOT, database_version, percentile, say, throwaway_database  # bench/shared.py

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the project's packages and tests.fixtures

MACHINE_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/pamsite"


# --- Output and figures ----------------------------------------------------------------------


def median(samples: list[float]) -> float:
    return percentile(samples, 50)


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


# --- Environment, Django, servers -------------------------------------------------------------


class Started(NamedTuple):
    workdir: Path  # var/bench/<label>-XXXXXXXX: the servers' files and logs
    bao: object  # the OpenBao dev server (tests.fixtures.openbao.BaoServer)
    database: str  # the throwaway database's name
    bootstrap: object  # what vault_bootstrap returned (ssh_ca_public_key, ...)
    role_id: str  # the AppRole, for the servers' environment
    secret_id: str


def start_vault_and_database(
    stack: contextlib.ExitStack, label: str, *, keep: bool, keep_folder: bool = False, open_files: int = 0
) -> Started:
    """A work folder, OpenBao, Django pointed at it, the throwaway database ``label``, Vault
    bootstrapped and the AppRole in use; all undone by ``stack``.

    ``keep``: the database stays; ``keep_folder``: the work folder too (and is named at the end).
    ``open_files``: first raise this process's limit of open files up to it (raise_open_files_limit),
    for the servers started here and later, which inherit it.
    """
    if open_files:
        raise_open_files_limit(open_files)
    bench_dir = ROOT / "var" / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=bench_dir))
    if keep_folder:
        stack.callback(say, f"Kept: the servers' logs and the recordings in {workdir}")
    else:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    bao = start_openbao(stack, workdir)
    setup_django_with(bao)
    database = stack.enter_context(throwaway_database(label, keep=keep))
    bootstrap, role_id, secret_id = bootstrap_vault(workdir)
    return Started(workdir, bao, database, bootstrap, role_id, secret_id)


def start_openbao(stack: contextlib.ExitStack, workdir: Path):
    """An OpenBao dev server (tests/fixtures/openbao.py) in ``workdir``/openbao, stopped by ``stack``."""
    from tests.fixtures.openbao import BaoServer

    server = BaoServer(workdir / "openbao")
    stack.callback(server.stop)
    return server.start()


def prepare_environment(vault_addr: str, root_token: str) -> None:
    """Settings for this process before Django reads them: its own Vault, no broker, mail in memory."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "pamsite.settings"
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("PAMSITE_VAR_DIR", str(ROOT / "var"))
    os.environ.setdefault("LOG_LEVEL", "warning")
    for name in ("VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)
        os.environ.pop(f"{name}_FILE", None)
    for name in ("VAULT_CACERT", "VAULT_NAMESPACE"):
        os.environ.pop(name, None)
    os.environ["VAULT_ADDR"] = vault_addr
    os.environ["VAULT_TOKEN"] = root_token  # for vault_bootstrap only; then the AppRole
    os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"


def setup_django_with(bao) -> None:
    """prepare_environment for the OpenBao server ``bao`` (its root token), then django.setup()."""
    prepare_environment(bao.addr, bao.root_token)
    import django

    django.setup()


def bootstrap_vault(workdir: Path) -> tuple[object, str, str]:
    """vault_bootstrap with the root token, then the AppRole it wrote (for this process and the gateway)."""
    from django.conf import settings

    from vault.bootstrap import privileged_client, vault_bootstrap
    from vault.client import get_client, reset_client

    approle_dir = workdir / "approle"
    result = vault_bootstrap(vault=privileged_client(), approle_dir=approle_dir)
    role_id = (approle_dir / "role_id").read_text().strip()
    secret_id = (approle_dir / "secret_id").read_text().strip()
    settings.VAULT_ROLE_ID, settings.VAULT_SECRET_ID, settings.VAULT_TOKEN = role_id, secret_id, ""
    reset_client()
    auth_method = get_client().auth_method
    assert auth_method == "approle", auth_method
    return result, role_id, secret_id


def use_machine_postgres() -> str:
    """Point DATABASE_URL at PostgreSQL before Django reads it: the one set, else the machine's.

    The throwaway database (shared.create_throwaway_database) is then made on that server,
    beside the named database, which need not exist. Stops with what to do when the server
    does not answer.
    """
    import psycopg

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = MACHINE_POSTGRES_URL
    os.environ["DATABASE_URL"] = url
    os.environ.pop("DATABASE_URL_FILE", None)
    parts = urllib.parse.urlsplit(url)
    maintenance = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(maintenance, connect_timeout=5) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.OperationalError as exc:
        raise SystemExit(
            f"PostgreSQL is not reachable at {parts.hostname}:{parts.port or 5432} ({exc}): start it "
            "(on this kind of machine: pg_ctlcluster <version> main start), or set DATABASE_URL"
        ) from None


def raise_open_files_limit(wanted: int = 65536) -> None:
    """This process's soft limit of open files up to ``wanted`` (within the hard limit); the
    servers it starts (gateway, sshd) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, wanted)), hard))


def start_sshd(stack: contextlib.ExitStack, started: Started, sshd_class=None):
    """A private sshd in the work folder trusting the bootstrapped Vault's SSH CA, stopped (its
    throwaway users removed) by ``stack``; ``sshd_class`` by default make_sshd_class()'s."""
    ca_public_key = started.bootstrap.ssh_ca_public_key
    sshd = (sshd_class or make_sshd_class())(started.workdir / "sshd", ca_public_key=ca_public_key)
    stack.callback(sshd.remove_users)
    stack.callback(sshd.stop)
    return sshd.start()


def make_sshd_class():
    from tests.fixtures.sshd import SFTP_SERVER, SSHD, USER_PREFIX, SshdTarget

    class BenchSshd(SshdTarget):
        """The fixture's sshd with room for many concurrent logins and sessions."""

        def start(self):
            self.workdir.mkdir(parents=True, exist_ok=True)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(self.host_key_path)],
                check=True,
            )
            key_type, b64 = Path(f"{self.host_key_path}.pub").read_text().split()[:2]
            self.host_key = f"{key_type} {b64}"
            ca_path = self.workdir / "trusted_user_ca_keys.pub"
            ca_path.write_text(self.ca_public_key.strip() + "\n")
            self.config_path.write_text(
                f"""\
Port {self.port}
ListenAddress {self.host}
HostKey {self.host_key_path}
PidFile {self.workdir / "sshd.pid"}
LogLevel INFO
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
PubkeyAuthentication yes
AuthorizedKeysFile none
TrustedUserCAKeys {ca_path}
AllowUsers {USER_PREFIX}*
PermitRootLogin no
PermitEmptyPasswords no
UseDNS no
PrintMotd no
PrintLastLog no
# The bench opens many connections at once (concurrent streams, idle sessions).
MaxStartups 400:30:800
MaxAuthTries 10
Subsystem sftp {SFTP_SERVER}
"""
            )
            subprocess.run([str(SSHD), "-t", "-f", str(self.config_path)], check=True)
            self.process = subprocess.Popen(
                [str(SSHD), "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                self._wait_until_ready()
            except BaseException:
                self.stop()
                raise
            return self

    return BenchSshd


def kill_processes_of(uid: int) -> int:
    """SIGKILL, one pid at a time, what still runs as the throwaway target user (its sessions)."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if int(line.split()[1]) == uid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(entry.name), signal.SIGKILL)
                        killed += 1
                break
    return killed


# --- Users' logins ---------------------------------------------------------------------------


def totp_code(key: bytes, at: float | None = None) -> str:
    counter = int(at if at is not None else time.time()) // 30
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{value:06d}"


def ed25519_public_line() -> str:
    """The public key line of a fresh Ed25519 key (its private half dropped): a key to have signed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def write_ed25519(path: Path, comment: str) -> str:
    """A fresh Ed25519 key in OpenSSH's file format at ``path`` (0600), its public line beside it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = f"{public.decode()} {comment}"
    Path(f"{path}.pub").write_text(line + "\n")
    return line


# --- The gateway and web processes ---------------------------------------------------------


def gateway_database_url(name: str) -> str:
    from django.db import connection

    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(name).resolve()}"
    original = os.environ["DATABASE_URL"]
    parts = urllib.parse.urlsplit(original)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(name)))


def server_env(
    *, database_name: str, vault_addr: str, role_id: str, secret_id: str, recordings: Path, **extra: str
) -> dict[str, str]:
    """The environment of a gateway or web process: the bench's database, Vault (AppRole), recordings.

    This process's environment without any VAULT_/BAO_/DATABASE_/GATEWAY_/CELERY_ variable, so
    that nothing of the site's own is reached; ``extra`` adds or overrides settings.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "BAO_", "DATABASE_", "GATEWAY_", "CELERY_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="pamsite.settings",
        DEBUG="false",
        LOG_LEVEL="warning",
        DATABASE_URL=gateway_database_url(database_name),
        VAULT_ADDR=vault_addr,
        VAULT_ROLE_ID=role_id,
        VAULT_SECRET_ID=secret_id,
        RECORDINGS_ROOT=str(recordings),
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    )
    env.update(extra)
    return env


def gateway_env(started: Started, *, node: str, **extra: str):
    """The gateway's host key (made on first use; an asyncssh key) and the recordings folder, in
    the work folder, and server_env for what start_vault_and_database started, with both and the
    gateway's node name: (host key, recordings folder, environment).

    This process's settings.RECORDINGS_ROOT is the folder too (it reads the recordings).
    ``extra`` adds or overrides settings, as for server_env.
    """
    import asyncssh
    from django.conf import settings

    # Made here, in the file format the gateway reads (OpenSSH's), so that the bench does not
    # depend on where the gateway's own key helper lives (it has moved between releases).
    host_key_path = started.workdir / "gateway_host_key"
    if not host_key_path.exists():
        write_ed25519(host_key_path, "pamsite-gateway")
    host_key = asyncssh.read_private_key(str(host_key_path))
    recordings = started.workdir / "recordings"
    recordings.mkdir()
    settings.RECORDINGS_ROOT = recordings
    env = server_env(
        database_name=started.database,
        vault_addr=started.bao.addr,
        role_id=started.role_id,
        secret_id=started.secret_id,
        recordings=recordings,
        GATEWAY_HOST_KEY_FILE=str(host_key_path),
        GATEWAY_NODE=node,
        GATEWAY_PUBLIC_HOST="127.0.0.1",
        **extra,
    )
    return host_key, recordings, env


class ServerProcess:
    """A server as its own process (process group) in ``root`` (ROOT: this tree), logging to
    ``workdir``/``log_name`` (LOG_NAME), stopped by its pid: SIGTERM, then SIGKILL to its group
    after STOP_TIMEOUT seconds."""

    LABEL = "the server"  # in errors
    LOG_NAME = "server.log"
    STOP_TIMEOUT = 20

    def __init__(self, workdir: Path, env: dict[str, str], *, root: Path = ROOT, log_name: str = ""):
        self.workdir = workdir
        self.root = Path(root)
        self.env = env
        if self.root != ROOT:  # another checkout: its own packages first (its manage.py runs from it)
            self.env = dict(env, PYTHONPATH=str(self.root))
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.log_path = workdir / (log_name or self.LOG_NAME)

    def _spawn(self, argv: list[str], log) -> None:
        self.process = subprocess.Popen(
            argv,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    def _wait_until_ready(self, answers, interval: float, timeout: float = 60) -> None:
        """Until ``answers()`` is true (an OSError counts as not yet); raises if the process
        exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.LABEL} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if answers():
                    return
            except OSError:  # not listening yet; urllib.error.URLError and HTTPError are OSErrors
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.LABEL} did not answer on port {self.port}:\n{self.log_tail()}")
            time.sleep(interval)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # its own group: itself and its children
            self.process.wait()

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


class Gateway(ServerProcess):
    """``manage.py ssh_gateway`` as its own process (process group), stopped by its pid.

    ``root``: the checkout whose gateway runs (its own manage.py, its packages on PYTHONPATH),
    this tree by default; ``python``: the interpreter (this one by default).
    """

    LABEL = "the gateway"
    LOG_NAME = "gateway.log"
    STOP_TIMEOUT = 40

    def __init__(
        self, workdir: Path, env: dict[str, str], *, root: Path = ROOT, python: str = "", log_name: str = ""
    ):
        super().__init__(workdir, env, root=root, log_name=log_name)
        self.python = python or sys.executable
        self.workers = 1

    def start(self, *, workers: int = 1) -> None:
        from tests.fixtures.openbao import free_port

        self.port = free_port()
        self.workers = workers
        argv = [
            self.python,
            str(self.root / "manage.py"),
            "ssh_gateway",
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        argv += ["--workers", str(workers)]  # always said: GATEWAY_WORKERS defaults to one per CPU
        log = self.log_path.open("ab")
        log.write(f"\n=== start {' '.join(argv[2:])}\n".encode())
        log.flush()
        self._spawn(argv, log)
        log.close()

        def answers() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")

        self._wait_until_ready(answers, 0.05)
        if workers > 1:  # every worker listening
            deadline = time.monotonic() + 30
            while len(self.pids()) < workers + 1 and time.monotonic() < deadline:
                time.sleep(0.05)

    def pids(self) -> list[int]:
        """The gateway process and, with workers, its children."""
        if self.process is None:
            return []
        pids = [self.process.pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            pids += [int(p) for p in children]
        return pids

    def cpu_seconds(self) -> float:
        return total_cpu_seconds(self.pids())

    def settle(self, since: float, timeout: float = 180) -> float:
        """Wait until the gateway is idle (two 0.5 s windows under 3 % of a core); the CPU
        seconds it used from ``since`` (a cpu_seconds() reading) until then."""
        quiet, deadline = 0, time.monotonic() + timeout
        while quiet < 2 and time.monotonic() < deadline:
            c0 = self.cpu_seconds()
            time.sleep(0.5)
            quiet = quiet + 1 if self.cpu_seconds() - c0 < 0.015 else 0
        return self.cpu_seconds() - since


class WebApp(ServerProcess):
    """The web app as ``make run`` serves it (daphne, ASGI) as its own process group, stopped by its pid."""

    LABEL = "daphne"
    LOG_NAME = "web.log"
    STOP_TIMEOUT = 20

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start daphne on a free port and wait until /healthz answers (the database reached)."""
        from tests.fixtures.openbao import free_port

        self.port = free_port()
        daphne = Path(sys.executable).parent / "daphne"
        argv = [str(daphne), "-b", "127.0.0.1", "-p", str(self.port), "pamsite.asgi:application"]
        with self.log_path.open("ab") as log:
            self._spawn(argv, log)

        def answers() -> bool:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:  # noqa: S310
                return response.status == 200

        self._wait_until_ready(answers, 0.1)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None and self.process.poll() is None else []


# --- Sessions in the database ------------------------------------------------------------------


# ``using``: the database alias; "baseline" is an older checkout's copy (add_baseline_database).
# Only the few fields read here are selected, so that an older schema with the same tables serves.


def last_session_pk(using: str = "default") -> int:
    from recordings.models import GatewaySession

    return GatewaySession.objects.using(using).order_by("-pk").values_list("pk", flat=True).first() or 0


def wait_sessions_ended(after_pk: int, timeout: float = 120, using: str = "default") -> list:
    """The sessions opened after after_pk, once all have ended and their recordings are sealed
    (pk and gateway_node loaded)."""
    from recordings.models import GatewaySession, Recording

    sessions = GatewaySession.objects.using(using)
    recordings = Recording.objects.using(using)
    deadline = time.monotonic() + timeout
    while True:
        live = sessions.filter(pk__gt=after_pk, ended_at__isnull=True).count()
        unsealed = recordings.filter(session__pk__gt=after_pk, finalized_at__isnull=True).count()
        if not live and not unsealed:
            return list(sessions.filter(pk__gt=after_pk).order_by("pk").only("pk", "gateway_node"))
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{live} sessions still live, {unsealed} recordings unsealed after {timeout:.0f} s"
            )
        time.sleep(0.1)


# --- An older checkout beside this tree (before/after in one run) --------------------------------


def checkout_label(root: Path) -> str:
    """A checkout's short commit ("98f9764"; "+changes" when its work tree differs), else its folder name."""
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return Path(root).name
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


def checkout_python(root: Path) -> str:
    """The checkout's own venv interpreter when it has one (its pinned packages), else this one."""
    own = Path(root) / ".venv" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


def add_baseline_database(stack: contextlib.ExitStack, root: Path, *, keep: bool) -> str:
    """A second database ("baseline" alias), migrated by the older checkout ``root`` with its own
    manage.py, then given every row of this process's database (the site the bench made) for
    the columns both schemas have; dropped by ``stack`` unless ``keep``. Returns its name.

    The older gateway so reads the same users, keys, TOTP devices, targets and grants from a
    schema of its own (a newer schema's NOT NULL columns would refuse its inserts).
    """
    from django.db import connection, connections

    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        name = str(
            Path(settings_dict["NAME"]).with_name(Path(settings_dict["NAME"]).stem + "_baseline.sqlite3")
        )
        Path(name).unlink(missing_ok=True)
    else:
        name = f"{settings_dict['NAME']}_baseline"
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cursor.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        connections["baseline"].close()
        if keep:
            return
        if connection.vendor == "sqlite":
            Path(name).unlink(missing_ok=True)
        else:
            with connection.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')

    stack.callback(drop)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PYTHONPATH"))}
    env.update(DATABASE_URL=gateway_database_url(name), PYTHONPATH=str(root), DEBUG="false")
    migrate = subprocess.run(
        [checkout_python(root), str(Path(root) / "manage.py"), "migrate", "--no-input", "-v", "0"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if migrate.returncode != 0:
        raise RuntimeError(f"migrate in {root} failed:\n{migrate.stdout[-2000:]}{migrate.stderr[-2000:]}")
    connections.databases["baseline"] = dict(
        settings_dict, NAME=name, TEST=dict(settings_dict.get("TEST", {}))
    )
    copy_rows(connections["default"], connections["baseline"])
    return name


def copy_rows(source, target) -> None:
    """Every row of every table both databases have (django_migrations aside), for the columns
    both have, into ``target`` in one transaction (its rows of those tables replaced); the
    sequences moved past the ids copied. Foreign keys are checked at the commit (Django's are
    deferred), so the order of the tables does not matter."""
    from django.db import transaction

    with source.cursor() as cursor:
        source_tables = set(source.introspection.table_names(cursor))
    with transaction.atomic(using=target.alias), target.cursor() as out:
        tables = sorted(set(target.introspection.table_names(out)) & source_tables - {"django_migrations"})
        for table in tables:
            with source.cursor() as cursor:
                have = [c.name for c in source.introspection.get_table_description(cursor, table)]
            wanted = {c.name for c in target.introspection.get_table_description(out, table)}
            columns = [c for c in have if c in wanted]
            quoted = ", ".join(target.ops.quote_name(c) for c in columns)
            with source.cursor() as cursor:
                cursor.execute(f"SELECT {quoted} FROM {source.ops.quote_name(table)}")
                rows = cursor.fetchall()
            out.execute(f"DELETE FROM {target.ops.quote_name(table)}")
            if rows:
                marks = ", ".join(["%s"] * len(columns))
                out.executemany(
                    f"INSERT INTO {target.ops.quote_name(table)} ({quoted}) VALUES ({marks})",
                    rows,
                )
            if target.vendor == "postgresql":
                for sequence in target.introspection.get_sequences(out, table):
                    column = target.ops.quote_name(sequence["column"])
                    out.execute(
                        "SELECT setval(pg_get_serial_sequence(%s, %s), "
                        f"COALESCE(MAX({column}), 0) + 1, false) FROM {target.ops.quote_name(table)}",
                        [table, sequence["column"]],
                    )


# --- /proc and the machine ---------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, Pss (kB) and Threads of a process."""
    out = {"rss_kb": 0, "pss_kb": 0, "threads": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss_kb"] = int(line.split()[1])
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def total_cpu_seconds(pids) -> float:
    """The CPU seconds of ``pids`` together; a process gone (or unreadable) counts 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
    return total


def machine_info(bao_version: str) -> dict:
    import asyncssh
    import paramiko

    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal:")))
    model = ""
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    sshd_version = (
        subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True).stderr.split(",")[0].strip()
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": total_kb / 1024 / 1024,
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "paramiko": paramiko.__version__,
        "ssh": ssh_version,
        "sshd": sshd_version,
        "bao": bao_version,
        "database": database_version(),
    }
