"""The secrets the test suite creates, and a scan of the run's log files for them.

Fixtures register each secret they make with ``remember_secret(value, kind)``: Vault root
tokens and secret_ids, the static accounts' and the directory's passwords, the personas'
password. Observers installed for the whole session register what the code under test
makes or fetches: TOTP seeds and backup codes (on save), AppRole tokens, and passwords
read from or written to Vault (through ``vault.client.VaultClient``, the one way to Vault).
Private key files written under the run's temporary folder are found at the end.

This module is also a pytest plugin (listed in ``tests/conftest.py``). For the whole run,
pamsite's own log records go at DEBUG level to ``var/test-logs/pamsite-<pid>.log`` (the
console keeps LOG_LEVEL). At the end of the run every log file written during it (that
file, and the ``*.log`` and ``*.jsonl`` files under the run's temporary folder: the
servers' logs, those of the gateway, worker and forwarder processes the tests start, the
recordings' event logs) is scanned. A secret in any of them fails the run, with a line
naming the file, the line and the kind of secret; the secret itself is never printed.
Under pytest-xdist each worker hands its secrets, tolerated lines and log files to the
controller at its end, and the controller scans every worker's files for every worker's
secrets (one worker's secret in another's log is found too).

A value is found where it stands apart from other letters and digits, as a logged value
does (``token=...``, quoted, on its own); its URL- and JSON-escaped forms count too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from base64 import b32encode
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

# Shorter values (a six-digit TOTP code, a port) would be found everywhere by chance.
MIN_LENGTH = 8
LOG_PATTERNS = ("*.log", "*.log.[0-9]*", "*.jsonl")
# Files the code under test writes a secret to (vault_bootstrap --write-approle, bao -dev).
SECRET_FILES = {"secret_id": "Vault AppRole secret_id", ".vault-token": "Vault token"}
SECRET_FILE_MAX_BYTES = 64 * 1024
KEEP_FINISHED_LOGS = 5

_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
# Keys of Vault data whose values are secrets (KV secrets, dynamic credentials, stashes).
_SECRET_FIELD = re.compile(r"password|secret|token|private", re.IGNORECASE)


@dataclass(frozen=True)
class Leak:
    """A registered secret found in a log file; says where and what, never the value."""

    path: Path
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}"


@dataclass
class SecretRegistry:
    """Secrets by value (with their escaped forms), the kind of each, and known benign lines."""

    secrets: dict[str, str] = field(default_factory=dict)
    # Each value's longest run of letters and digits: a set lookup in the text rules out
    # nearly every secret before any search (a logged value stands apart, so its runs do).
    anchors: dict[str, str] = field(default_factory=dict, repr=False)
    # (file name, line start): where a registered value is expected, e.g. a dev server's banner.
    tolerated: dict[tuple[str, str], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def remember(self, value, kind: str):
        """Register a secret; returns ``value`` unchanged (``pw = remember_secret(make(), "...")``)."""
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not isinstance(text, str) or len(text.strip()) < MIN_LENGTH:
            return value
        forms = {text, quote_plus(text), quote(text, safe=""), json.dumps(text)[1:-1]}
        with self._lock:
            for form in forms:
                if form not in self.secrets:
                    self.secrets[form] = kind
                    self.anchors[form] = max(_ALNUM_RUN.findall(form), key=len, default="")
        return value

    def remember_private_key(self, pem: str | bytes, kind: str) -> None:
        """A PEM/OpenSSH private key: its base64 body, whole and line by line.

        The first line is left out: it is mostly the format's fixed header, the same in
        every key of a type.
        """
        text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-----")]
        self.remember("".join(lines), kind)
        for line in lines[1:]:
            if len(line) >= 24:
                self.remember(line, kind)

    def tolerate(self, file_name: str, line_start: str, reason: str) -> None:
        """A registered value on a line starting with ``line_start`` in files named ``file_name``
        is expected there (``reason``), not a leak."""
        self.tolerated[(file_name, line_start)] = reason

    def scan_file(self, path: Path) -> list[Leak]:
        """Every registered secret in the file, once each, at its first line that is not tolerated."""
        try:
            text = Path(path).read_bytes().decode("utf-8", "replace")
        except OSError:
            return []
        with self._lock:
            secrets, anchors = dict(self.secrets), dict(self.anchors)
        starts = [start for name, start in self.tolerated if name == Path(path).name]
        runs = set(_ALNUM_RUN.findall(text))
        leaks: dict[str, Leak] = {}
        for value, kind in secrets.items():
            anchor = anchors[value]
            if len(anchor) >= 4 and anchor not in runs:
                continue
            line = _first_untolerated_line(text, value, starts)
            if line and kind not in leaks:
                leaks[kind] = Leak(Path(path), line, kind)
        return sorted(leaks.values(), key=lambda leak: leak.line)

    def scan(self, paths) -> list[Leak]:
        return [leak for path in paths for leak in self.scan_file(path)]

    def export(self) -> dict:
        """What another registry needs to find these secrets (plain data, for pytest-xdist)."""
        with self._lock:
            return {
                "secrets": dict(self.secrets),
                "tolerated": [[name, start, reason] for (name, start), reason in self.tolerated.items()],
            }

    def merge(self, exported: dict) -> None:
        """Add the secrets and tolerated lines of ``export()`` from another registry."""
        with self._lock:
            for form, kind in exported["secrets"].items():
                if form not in self.secrets:
                    self.secrets[form] = kind
                    self.anchors[form] = max(_ALNUM_RUN.findall(form), key=len, default="")
            for name, start, reason in exported["tolerated"]:
                self.tolerated.setdefault((name, start), reason)


def _first_untolerated_line(text: str, value: str, tolerated_starts: list[str]) -> int:
    at = text.find(value)
    while at >= 0:
        line_start = text.rfind("\n", 0, at) + 1
        line_end = text.find("\n", at)
        line = text[line_start : line_end if line_end >= 0 else len(text)]
        if not any(line.startswith(start) for start in tolerated_starts):
            return text.count("\n", 0, at) + 1
        at = text.find(value, at + 1)
    return 0


def log_files(root: Path) -> list[Path]:
    """The log files under a folder (the run's temporary folder)."""
    found = {path for pattern in LOG_PATTERNS for path in Path(root).rglob(pattern) if path.is_file()}
    return sorted(found)


def remember_secret_files(root: Path, registry: SecretRegistry | None = None) -> None:
    """Register the private keys (PEM, OpenSSH) and the SECRET_FILES found under a folder."""
    registry = registry or _registry
    for path in Path(root).rglob("*"):
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_size > SECRET_FILE_MAX_BYTES:
                continue
            content = path.read_bytes()
        except OSError:
            continue
        first_line = content.split(b"\n", 1)[0]
        if first_line.startswith(b"-----BEGIN") and first_line.endswith(b"PRIVATE KEY-----"):
            kind = "SSH private key" if b"OPENSSH" in first_line else "TLS private key"
            registry.remember_private_key(content, kind)
        elif path.name in SECRET_FILES:
            registry.remember(content.decode("utf-8", "replace").strip(), SECRET_FILES[path.name])


# --- The registry of this test run --------------------------------------------------------

_registry = SecretRegistry()
remember_secret = _registry.remember
tolerate_in_log = _registry.tolerate


def remembered(value: str) -> str | None:
    """The kind of secret a value was registered as, or None."""
    return _registry.secrets.get(value)


def remember_totp_device(device) -> None:
    """A TOTP seed, as stored (hex) and as shown to the user (base32, and in groups of four)."""
    base32 = b32encode(device.bin_key).decode("ascii").rstrip("=")
    for form in (device.key, base32, " ".join(base32[i : i + 4] for i in range(0, len(base32), 4))):
        remember_secret(form, "TOTP seed")


def remember_vault_data(data, kind: str) -> None:
    """The secret-looking string values of Vault data (password, pending_password, ...)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str) and _SECRET_FIELD.search(str(key)):
                remember_secret(value, kind)


class _Run:
    log_path: Path | None = None
    handler: logging.Handler | None = None
    basetemp: Path | None = None
    # pytest-xdist's controller: the log file and temporary folder of each worker that ended.
    worker_logs: list[Path] = []
    worker_basetemps: list[Path] = []
    workers_unreported: list[str] = []
    leaks: list[Leak] = []
    scanned: tuple[int, int, int] = (0, 0, 0)  # files, kinds of secret, values


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_run_log(var_dir: Path) -> None:
    """pamsite's log records, DEBUG and up, to a file of this run; the console keeps its level."""
    folder = var_dir / "test-logs"
    folder.mkdir(parents=True, exist_ok=True)
    # The logs of the last few finished runs stay for reading; runs still going keep theirs.
    finished = []
    for old in folder.glob("pamsite-*.log"):
        pid = old.stem.removeprefix("pamsite-")
        try:
            if pid.isdigit() and not _pid_alive(int(pid)):
                finished.append((old.stat().st_mtime, old))
        except OSError:
            continue  # another run's clean-up was first
    for _, old in sorted(finished)[:-KEEP_FINISHED_LOGS]:
        old.unlink(missing_ok=True)
    _Run.log_path = folder / f"pamsite-{os.getpid()}.log"
    _Run.log_path.write_bytes(b"")
    _attach_run_log()


def _attach_run_log() -> None:
    """(Again) put the run's file handler on the root logger at DEBUG.

    ``django.setup()``, which ``ManagementUtility.execute()`` runs, configures logging
    anew and closes the handlers it replaces: this runs before every test.
    """
    root = logging.getLogger()
    if _Run.log_path is None or (_Run.handler in root.handlers and root.level == logging.DEBUG):
        return
    handler = logging.FileHandler(_Run.log_path, mode="a", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(process)d %(name)s %(message)s"))
    for existing in root.handlers:
        # The console keeps its LOG_LEVEL (pytest's own capture handlers are left alone).
        if existing.level == logging.NOTSET and not type(existing).__module__.startswith("_pytest"):
            existing.setLevel(root.level)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    if _Run.handler is not None:
        _Run.handler.close()
    _Run.handler = handler


def _basetemps() -> list[Path]:
    folders = [_Run.basetemp] if _Run.basetemp is not None else []
    return [folder for folder in [*folders, *_Run.worker_basetemps] if folder.exists()]


def run_log_files() -> list[Path]:
    """Every log file this run wrote: pamsite's own, and those under the run's temporary
    folder; under pytest-xdist's controller, every worker's too."""
    files = [_Run.log_path] if _Run.log_path else []
    files += [path for path in _Run.worker_logs if path.exists()]
    for folder in _basetemps():
        files += log_files(folder)
    return sorted(set(files), key=files.index)


def scan_run() -> list[Leak]:
    """Scan the run's log files for every secret registered so far (and the run's private keys)."""
    if _Run.handler is not None:
        _Run.handler.flush()
    for folder in _basetemps():
        remember_secret_files(folder)
    files = run_log_files()
    _Run.scanned = (len(files), len(set(_registry.secrets.values())), len(_registry.secrets))
    return _registry.scan(files)


# --- pytest hooks and the session's observers ----------------------------------------------


def pytest_configure(config):
    from django.conf import settings

    _start_run_log(Path(settings.VAR_DIR))


def pytest_runtest_setup(item):
    _attach_run_log()


@pytest.fixture(scope="session", autouse=True)
def _observe_secrets(tmp_path_factory):
    """Register the secrets the code under test makes or fetches, for the whole session."""
    from django.db.models.signals import post_save
    from django_otp.plugins.otp_static.models import StaticToken
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from vault.client import VaultClient

    _Run.basetemp = tmp_path_factory.getbasetemp()

    def totp_saved(sender, instance, **kwargs):
        remember_totp_device(instance)

    def backup_code_saved(sender, instance, **kwargs):
        remember_secret(instance.token, "MFA backup code")

    post_save.connect(totp_saved, sender=TOTPDevice, weak=False, dispatch_uid="secrets_registry.totp")
    post_save.connect(
        backup_code_saved, sender=StaticToken, weak=False, dispatch_uid="secrets_registry.backup"
    )

    def observed(name, after):
        original = getattr(VaultClient, name)

        def wrapper(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            after(self, result, *args, **kwargs)
            return result

        return wrapper

    def read(self, result, *args, **kwargs):
        remember_vault_data(
            result[0] if isinstance(result, tuple) else result, "password checked out from Vault"
        )

    def written(self, result, *args, **kwargs):
        remember_vault_data(
            kwargs.get("data", args[1] if len(args) > 1 else None), "password stored in Vault"
        )

    def dynamic(self, result, *args, **kwargs):
        remember_secret(result.password, "password checked out from Vault")

    def logged_in(self, result, *args, **kwargs):
        remember_secret(self._hvac.token, "Vault token (AppRole login)")

    observers = {
        "kv_read": read,
        "kv_read_version": read,
        "kv_write": written,
        "database_credentials": dynamic,
        # The token the app gets by logging in with its AppRole (private: no public hook).
        "_login": logged_in,
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, after in observers.items():
            mp.setattr(VaultClient, name, observed(name, after))
        yield
    post_save.disconnect(sender=TOTPDevice, dispatch_uid="secrets_registry.totp")
    post_save.disconnect(sender=StaticToken, dispatch_uid="secrets_registry.backup")


WORKER_OUTPUT_KEY = "pamsite_secrets"


def pytest_sessionfinish(session, exitstatus):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        # A pytest-xdist worker: the controller scans this worker's files with the rest.
        if _Run.handler is not None:
            _Run.handler.flush()
        workeroutput[WORKER_OUTPUT_KEY] = {
            **_registry.export(),
            "log_path": str(_Run.log_path) if _Run.log_path else "",
            "basetemp": str(_Run.basetemp) if _Run.basetemp else "",
        }
        return
    _Run.leaks = scan_run()
    if (_Run.leaks or _Run.workers_unreported) and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's controller: a worker ended; keep what it registered for the final scan."""
    output = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
    if output is None:
        # A worker that died cannot say which secrets it made: the scan would be blind to them.
        _Run.workers_unreported.append(getattr(node, "gateway", node).id)
        return
    _registry.merge(output)
    if output["log_path"]:
        _Run.worker_logs.append(Path(output["log_path"]))
    if output["basetemp"]:
        _Run.worker_basetemps.append(Path(output["basetemp"]))


def pytest_terminal_summary(terminalreporter):
    if getattr(terminalreporter.config, "workeroutput", None) is not None:
        return
    for worker in _Run.workers_unreported:
        terminalreporter.write_line(
            f"FAILED: worker {worker} ended without handing over its secrets: its logs were not scanned.",
            red=True,
        )
    files, kinds, values = _Run.scanned
    if not _Run.leaks:
        terminalreporter.write_line(
            f"Log scan: no secret of the suite ({values} values of {kinds} kinds) in the {files} "
            f"log files of this run (pamsite's own: {_Run.log_path})."
        )
        return
    terminalreporter.write_line(
        f"FAILED: {len(_Run.leaks)} secret(s) created by the tests found in log files of this run:", red=True
    )
    for leak in _Run.leaks:
        terminalreporter.write_line(f"  SECRET IN LOG {leak}", red=True)
