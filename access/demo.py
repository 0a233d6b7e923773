"""The ten-minute trial (`make demo`): a demo PACS host on this machine, set up as a pam-admin would.

The host is an OpenSSH sshd run as the user who runs `make demo`, on 127.0.0.1 at
``DEMO_SSH_PORT``, with its own config, host key and pid file under ``var/demo/``
(``demo_prepare_host``, before `make run` starts it). ``demo_setup`` then does what a
pam-admin does on the Targets pages, through the same services and audited as the first
pam-admin: the target, its host key pinned (from the key file made here, so it is known to
be the demo sshd's), an ``ssh-ca`` account and a ``static`` account set up in Vault, three
personas (requester, approver, auditor) and a policy. Every step looks before it acts: a
second run changes nothing and prints the same walk-through.

Why the static (password) account needs root: an sshd run by an ordinary user logs in only
that user, and could check a password only through PAM, for that same user, whose password
pamsite would then rotate. pamsite never changes the password of the person running it, so
without root the demo has the ``ssh-ca`` account only. As root, the demo makes a dedicated
OS user (``DEMO_OS_USER``, marked in its GECOS field) for the static account, and refuses to
touch an existing user without that mark.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess  # ssh-keygen, sshd -t, useradd, chpasswd (fixed argv)  # nosec B404
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from access.models import AccessPolicy, Account, Target
from access.rotation import generate_password, static_login_password
from access.services import account_ref, policy_create, policy_update
from access.targets import (
    account_create,
    account_setup_ssh,
    account_setup_static,
    account_test_connection,
    account_update,
    target_create,
    target_pin_host_key,
    target_update,
)
from audit.services import audit_record
from common.roles import Role
from identity.models import User
from targets import errors, ssh, ssh_blocking
from vault.client import get_client
from vault.sources import CredentialError

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
HOST = "127.0.0.1"

TARGET = "demo-pacs"
SSH_CA_ACCOUNT = "demo-root"
STATIC_ACCOUNT = "demo-static"
POLICY = "demo-pacs"
TICKET_EXAMPLE = "INC-1234"
# The default ticket rule of a policy; TICKET_EXAMPLE matches it.
TICKET_PATTERN = r"^(INC|CHG|RITM)-?\d{3,10}$"
# The GECOS field of the OS user the demo makes: the only account whose password it sets.
OS_USER_MARK = "pamsite demo static account"
VIA = "make demo"


class DemoError(Exception):
    """The demo cannot be set up; the message says what to do."""


@dataclass(frozen=True)
class Persona:
    """A demo user: its username, role and what it does in the walk-through."""

    username: str
    role: str
    display_name: str
    does: str


PERSONAS = (
    Persona("requester", Role.REQUESTER, "Demo requester", "asks for access and connects"),
    Persona("approver", Role.APPROVER, "Demo approver", "approves the request"),
    Persona("auditor", Role.AUDITOR, "Demo auditor", "replays the session"),
)


@dataclass(frozen=True)
class DemoFiles:
    """The demo sshd's files, all under ``var/demo/`` (its log: ``var/log/demo-sshd.log``)."""

    root: Path

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def config(self) -> Path:
        return self.root / "sshd_config"

    @property
    def ca_keys(self) -> Path:
        return self.root / "trusted_user_ca_keys.pub"

    @property
    def pid(self) -> Path:
        return self.root / "sshd.pid"

    @property
    def passwords(self) -> Path:
        return self.root / "passwords.txt"


@dataclass(frozen=True)
class DemoHost:
    """Who the demo sshd runs as (the ssh-ca account's login), and the static account's OS user."""

    run_as: str
    as_root: bool
    static_user: str | None  # None when not root: no password account (see the module's docstring)


@dataclass
class PersonaState:
    """A persona after setup: its password as the demo set it, if that still signs it in."""

    persona: Persona
    password: str | None = field(repr=False)
    note: str = ""


@dataclass
class DemoReport:
    """What ``demo_setup`` found and did; ``changes`` is empty when nothing needed doing."""

    host: DemoHost
    files: DemoFiles
    port: int
    fingerprint: str
    gateway_fingerprint: str
    accounts: list[Account]
    personas: list[PersonaState]
    changes: list[str]


def demo_files() -> DemoFiles:
    return DemoFiles(Path(settings.VAR_DIR) / "demo")


def demo_host() -> DemoHost:
    """The demo as this process would run it: as root with a static account, or as you without."""
    as_root = os.geteuid() == 0
    return DemoHost(
        run_as=pwd.getpwuid(os.geteuid()).pw_name,
        as_root=as_root,
        static_user=settings.DEMO_OS_USER if as_root else None,
    )


def sshd_config_text(*, files: DemoFiles, port: int, host: DemoHost) -> str:
    """The demo sshd's configuration: loopback, certificates from Vault's CA, passwords for the
    static account's OS user only (as root), no other account."""
    users = " ".join(u for u in (host.run_as, host.static_user) if u)
    lines = [
        "# The pamsite demo PACS host (make demo). Written by manage.py demo_setup --prepare:",
        "# edits are overwritten.",
        f"Port {port}",
        f"ListenAddress {HOST}",
        f"HostKey {files.host_key}",
        f"PidFile {files.pid}",
        "# The ssh-ca account: certificates signed by pamsite's Vault SSH CA, no authorized_keys.",
        "PubkeyAuthentication yes",
        f"TrustedUserCAKeys {files.ca_keys}",
        "AuthorizedKeysFile none",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        # sshd checks the static account's password against /etc/shadow itself.
        "UsePAM no",
        f"AllowUsers {users}",
        f"PermitRootLogin {'prohibit-password' if host.as_root else 'no'}",
        "PermitEmptyPasswords no",
        "UseDNS no",
        "PrintMotd no",
        f"Subsystem sftp {SFTP_SERVER}",
    ]
    if host.static_user:
        lines += [
            "# The static account: its password, which pamsite keeps in Vault and rotates.",
            f"Match User {host.static_user}",
            "    PasswordAuthentication yes",
        ]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str, *, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    path.chmod(mode)
    return True


def demo_prepare_host(*, host: DemoHost | None = None, vault=None) -> DemoHost:
    """Write what the demo sshd needs before it starts: host key (made once), the Vault SSH
    CA's public key, the config; as root, ``/run/sshd``. Changes only what differs.

    ``host``: who the sshd will run as; by default this process's user (``demo_host``).
    """
    files, host = demo_files(), host or demo_host()
    if not SSHD.exists():
        raise DemoError(f"OpenSSH's sshd is not installed ({SSHD}): `make demo` installs openssh-server.")
    port = settings.DEMO_SSH_PORT
    if _port_taken(HOST, port):
        raise DemoError(
            f"Port {port} on {HOST} is in use: stop what runs there (a demo sshd left from an earlier "
            f"run has its pid in {files.pid}), or set PAMSITE_DEMO_SSH_PORT to another port."
        )
    files.root.mkdir(parents=True, exist_ok=True)
    files.root.chmod(0o700)
    if not files.host_key.exists():
        subprocess.run(  # noqa: S603  (fixed argv)  # nosec B603
            [
                "/usr/bin/ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "pamsite-demo",
                "-f",
                str(files.host_key),
            ],
            check=True,
            capture_output=True,
        )
    ca = (vault or get_client()).ssh_ca_public_key()
    if not ca:
        raise DemoError("Vault has no SSH CA yet: run `manage.py vault_bootstrap` first (make run does).")
    _write_if_changed(files.ca_keys, ca.strip() + "\n")
    _write_if_changed(files.config, sshd_config_text(files=files, port=port, host=host))
    if host.as_root:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    checked = subprocess.run(  # noqa: S603  (fixed argv)  # nosec B603
        [str(SSHD), "-t", "-f", str(files.config)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0:
        raise DemoError(f"sshd refuses the demo config {files.config}: {checked.stderr.strip()}")
    return host


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait(what: str, ready, *, timeout: float, log: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not answer within {timeout:g} s: see {log}")
        time.sleep(0.1)


def _web_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=2) as response:  # noqa: S310  # nosec B310
            return response.status == 200
    except OSError:
        return False


def demo_wait_for_stack(*, web_url: str, timeout: float = 60) -> None:
    """Wait until the demo sshd, the gateway and the web app answer (they start in parallel)."""
    logs = Path(settings.VAR_DIR) / "log"
    port = settings.DEMO_SSH_PORT
    _wait(
        f"The demo sshd on {HOST}:{port}",
        lambda: ssh_blocking.answers_ssh(HOST, port),
        timeout=timeout,
        log=str(logs / "demo-sshd.log"),
    )
    gateway_host, _, gateway_port = settings.GATEWAY_LISTEN.rpartition(":")
    gateway_host = gateway_host.strip("[]") or "127.0.0.1"
    _wait(
        f"The gateway on {settings.GATEWAY_LISTEN}",
        lambda: ssh_blocking.answers_ssh(gateway_host, int(gateway_port)),
        timeout=timeout,
        log=str(logs / "gateway.log"),
    )
    _wait(
        f"The web app at {web_url}", lambda: _web_answers(web_url), timeout=timeout, log=str(logs / "web.log")
    )


def first_admin() -> User:
    """The first active pam-admin, whom the demo's changes are audited as."""
    admin = (
        User.objects.filter(groups__name=Role.PAM_ADMIN, is_active=True).order_by("date_joined", "pk").first()
    )
    if admin is None:
        raise DemoError(
            "There is no pam-admin to set the demo up as: run `manage.py ensure_first_admin` first."
        )
    return admin


def _ensure_target(*, port: int, acting_user: User, changes: list[str]) -> Target:
    """The demo target, created, or moved back to where the demo sshd listens (a pam-admin's
    other edits stay)."""
    target = Target.objects.filter(name=TARGET).first()
    if target is None:
        changes.append(f"created the target {TARGET}")
        return target_create(
            acting_user=acting_user,
            values={
                "name": TARGET,
                "kind": Target.Kind.PACS,
                "host": HOST,
                "port": port,
                "description": "The demo PACS host: an sshd on this machine, started by make demo.",
                "tags": ["demo"],
            },
            via=VIA,
        )
    if not target.has_host_key:
        raise DemoError(
            f"A target {TARGET} of kind {target.get_kind_display()} exists: rename it for the demo."
        )
    # A new address drops the pin (target_update): it is pinned again below.
    if target_update(target=target, acting_user=acting_user, values={"host": HOST, "port": port}, via=VIA):
        changes.append(f"moved the target {TARGET} to {HOST}:{port}")
    return target


def _ensure_account(
    *,
    target: Target,
    slug: str,
    kind: str,
    username: str,
    description: str,
    acting_user: User,
    changes: list[str],
) -> Account:
    """The demo account, created, or given back its login (a pam-admin's other edits stay)."""
    account = Account.objects.filter(slug=slug).first()
    if account is None:
        changes.append(f"created the account {slug}")
        account = account_create(
            target=target,
            acting_user=acting_user,
            values={"slug": slug, "kind": kind, "username": username, "description": description},
            via=VIA,
        )
    elif account.target_id != target.pk or account.kind != kind:
        raise DemoError(
            f"An account {slug} exists that is not the demo's ({account.get_kind_display()} on "
            f"{account.target.name}): rename it for the demo."
        )
    elif account_update(account=account, acting_user=acting_user, values={"username": username}, via=VIA):
        changes.append(f"changed the login of {slug} to {username}")
    return Account.objects.select_related("target").get(pk=account.pk)


def _host_key_line(files: DemoFiles) -> ssh.HostKey:
    public = files.host_key.with_name(files.host_key.name + ".pub")
    if not public.exists():
        raise DemoError(f"No demo host key at {public}: run `manage.py demo_setup --prepare` first.")
    return ssh.parse_host_key(public.read_text())


def _ssh_role_allows(account: Account) -> bool:
    vault = get_client()
    ref = account_ref(account)
    resp = vault.read(f"{vault.config.ssh_mount}/roles/{ref.role_name}")
    if resp is None:
        return False
    allowed = [u.strip() for u in str(resp["data"].get("allowed_users", "")).split(",")]
    return account.username in allowed


def _test_connection(account: Account, *, acting_user: User, changes: list[str]) -> None:
    """Test connection, as a pam-admin would after a setup: the Targets page then shows the
    account ready; a failure stops the demo with what failed (the walk-through would not work)."""
    result = account_test_connection(account=account, acting_user=acting_user)
    if not result.ok:
        raise DemoError(f"Test connection of {account.slug} failed: {result.message}")
    changes.append(f"Test connection of {account.slug}: {result.message}")


# --- The static account's OS user (root only) ---------------------------------------------


def _os_user_made_by_demo(name: str) -> bool:
    """True if the demo made this OS user; False if there is none; refuses anyone else's."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return False
    if entry.pw_gecos != OS_USER_MARK or entry.pw_uid == 0:
        raise DemoError(
            f"The OS user {name} exists and was not made by the demo: pamsite leaves its password alone. "
            "Set PAMSITE_DEMO_OS_USER to a name that is not taken."
        )
    return True


def _os_user_ensure(name: str, changes: list[str]) -> None:
    if _os_user_made_by_demo(name):
        return
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(  # noqa: S603  (fixed argv, a checked name)  # nosec B603
        [useradd, "-m", "-s", "/bin/bash", "-c", OS_USER_MARK, name], check=True, capture_output=True
    )
    changes.append(f"created the OS user {name} for {STATIC_ACCOUNT}")


@sensitive_variables("password")
def _os_user_set_password(name: str, password: str) -> None:
    if not _os_user_made_by_demo(name):
        raise DemoError(f"The OS user {name} is gone: run `make demo` again.")
    chpasswd = shutil.which("chpasswd") or "/usr/sbin/chpasswd"
    subprocess.run(  # noqa: S603  (fixed argv; the password goes on stdin)  # nosec B603
        [chpasswd], input=f"{name}:{password}\n", text=True, check=True, capture_output=True
    )


@sensitive_variables("password")
def _static_password_works(account: Account) -> bool:
    ref = account_ref(account)
    try:
        password = static_login_password(account=ref)
    except CredentialError:
        return False  # nothing in Vault yet (or a Vault that lost its data)
    return ssh_blocking.check_password_login(
        host=ref.host,
        port=ref.port,
        username=ref.username,
        host_key=ref.host_key,
        password=password,
        target=account.slug,
    )


@sensitive_variables("password")
def _static_setup(account: Account, *, acting_user: User, changes: list[str]) -> None:
    """Give the demo's OS user a new password and store it in Vault, checked by a login."""
    password = generate_password()
    _os_user_set_password(account.username, password)
    account_setup_static(account=account, acting_user=acting_user, current_password=password)
    changes.append(f"set the password of {account.slug} in Vault (checked by a login)")


# --- Personas --------------------------------------------------------------------------


def _read_passwords(files: DemoFiles) -> dict[str, str]:
    if not files.passwords.exists():
        return {}
    known = {}
    for line in files.passwords.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            username, _, password = line.partition(" ")
            known[username] = password.strip()
    return known


@sensitive_variables("passwords")
def _write_passwords(files: DemoFiles, passwords: dict[str, str]) -> None:
    text = "# The demo users' passwords as make demo set them (it never changes them).\n" + "".join(
        f"{username} {password}\n" for username, password in passwords.items()
    )
    fd = os.open(files.passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _new_password() -> str:
    # Letters and digits only: typed into a browser and an ssh prompt, pasted in a shell.
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(16))


@sensitive_variables("known", "password")
def _ensure_personas(*, files: DemoFiles, acting_user: User, changes: list[str]) -> list[PersonaState]:
    known = _read_passwords(files)
    states = []
    for persona in PERSONAS:
        user = User.objects.filter(username=persona.username).first()
        if user is None:
            password = _new_password()
            with transaction.atomic():
                user = User.objects.create_user(
                    username=persona.username,
                    password=password,
                    display_name=persona.display_name,
                    email=f"{persona.username}@demo.invalid",
                )
                user.groups.set([Group.objects.get(name=persona.role)])
                # As ensure_first_admin's: a local user with a password of its own (no forced
                # change: the walk-through's passwords keep working), MFA enrolled at first sign-in.
                audit_record(
                    action="identity.demo_user_created",
                    actor=acting_user,
                    obj=user,
                    details={"roles": [persona.role], "via": VIA},
                )
            known[persona.username] = password
            _write_passwords(files, known)
            changes.append(f"created the user {persona.username} ({persona.role})")
            states.append(PersonaState(persona, password))
        elif persona.username not in known:
            states.append(PersonaState(persona, None, "existed before the demo: its own password"))
        elif not user.check_password(known[persona.username]):
            states.append(
                PersonaState(persona, None, "password changed since: reset it as below, or keep yours")
            )
        else:
            states.append(PersonaState(persona, known[persona.username]))
    return states


# --- The whole setup -------------------------------------------------------------------


def demo_setup(
    *,
    acting_user: User | None = None,
    host: DemoHost | None = None,
    web_url: str | None = None,
    timeout: float = 60,
) -> DemoReport:
    """Set the demo up, or check it is set up: target, pinned key, accounts in Vault, personas, policy.

    Needs the demo sshd running from ``demo_prepare_host``'s config (`make demo` starts it)
    and, with ``web_url``, waits for it, the gateway and the web app first.
    """
    acting_user = acting_user or first_admin()
    files, host = demo_files(), host or demo_host()
    key = _host_key_line(files)
    port = settings.DEMO_SSH_PORT
    if web_url:
        demo_wait_for_stack(web_url=web_url, timeout=timeout)
    else:
        _wait(
            f"The demo sshd on {HOST}:{port}",
            lambda: ssh_blocking.answers_ssh(HOST, port),
            timeout=timeout,
            log=str(Path(settings.VAR_DIR) / "log" / "demo-sshd.log"),
        )
    changes: list[str] = []
    target = _ensure_target(port=port, acting_user=acting_user, changes=changes)
    if target.host_key != key.openssh:
        # The key file was made by demo_prepare_host: the service still checks the host shows it.
        target_pin_host_key(
            target=target, acting_user=acting_user, host_key=key.openssh, fingerprint=key.fingerprint
        )
        changes.append(f"pinned the host key of {TARGET} ({key.fingerprint})")

    root_account = _ensure_account(
        target=target,
        slug=SSH_CA_ACCOUNT,
        kind=Account.Kind.SSH_CA,
        username=host.run_as,
        description="Logs in as the user the demo sshd runs as.",
        acting_user=acting_user,
        changes=changes,
    )
    accounts = [root_account]
    if not _ssh_role_allows(root_account):
        account_setup_ssh(account=root_account, acting_user=acting_user)
        changes.append(f"set up {SSH_CA_ACCOUNT} in Vault (SSH role for the principal {host.run_as})")
    if host.static_user:
        _os_user_ensure(host.static_user, changes)
        static_account = _ensure_account(
            target=target,
            slug=STATIC_ACCOUNT,
            kind=Account.Kind.STATIC,
            username=host.static_user,
            description="The demo's own OS user: pamsite keeps and rotates its password.",
            acting_user=acting_user,
            changes=changes,
        )
        accounts.append(static_account)
        if not _static_password_works(static_account):
            _static_setup(static_account, acting_user=acting_user, changes=changes)

    if changes or any(a.last_test_ok is not True for a in accounts):
        for account in accounts:
            _test_connection(account, acting_user=acting_user, changes=changes)
    _ensure_policy(accounts=accounts, acting_user=acting_user, changes=changes)
    personas = _ensure_personas(files=files, acting_user=acting_user, changes=changes)
    return DemoReport(
        host=host,
        files=files,
        port=port,
        fingerprint=key.fingerprint,
        gateway_fingerprint=_gateway_fingerprint(),
        accounts=accounts,
        personas=personas,
        changes=changes,
    )


def _ensure_policy(*, accounts: list[Account], acting_user: User, changes: list[str]) -> AccessPolicy:
    """The demo policy, created; an account the demo added later (demo-static, on a first run
    as root after one as an ordinary user) joins it if no policy covers it yet."""
    policy = AccessPolicy.objects.filter(name=POLICY).first()
    if policy is None:
        changes.append(f"created the policy {POLICY}")
        return policy_create(
            acting_user=acting_user,
            values={
                "name": POLICY,
                "approvals_required": 1,
                "max_duration_minutes": 60,
                "ticket_required": True,
                "ticket_pattern": TICKET_PATTERN,
                "ticket_example": TICKET_EXAMPLE,
                "allow_reveal": False,
                "groups": [Group.objects.get(name=Role.REQUESTER)],
                "accounts": accounts,
                "targets": [],
            },
            via=VIA,
        )
    missing = [a for a in accounts if not a.policies.exists()]
    if missing:
        policy_update(
            policy=policy,
            acting_user=acting_user,
            values={"accounts": [*policy.accounts.all(), *missing]},
            via=VIA,
        )
        changes.append(f"added {', '.join(a.slug for a in missing)} to the policy {POLICY}")
    return policy


def _gateway_fingerprint() -> str:
    public = Path(str(settings.GATEWAY_HOST_KEY_FILE) + ".pub")
    try:
        return ssh.parse_host_key(public.read_text()).fingerprint
    except (OSError, errors.TargetError):
        return ""


# --- What the newcomer reads -------------------------------------------------------------


def shown_path(path: Path) -> str:
    """A path as the newcomer types it: relative to the project folder when inside it."""
    try:
        return str(path.relative_to(settings.BASE_DIR))
    except ValueError:
        return str(path)


def demo_instructions(report: DemoReport, *, web_url: str) -> str:
    """The walk-through printed by `make demo`: the same on every run while nothing changed."""
    host = report.host
    gateway = (
        f"ssh -p {settings.GATEWAY_PUBLIC_PORT} requester:{SSH_CA_ACCOUNT}@{settings.GATEWAY_PUBLIC_HOST}"
    )
    log = shown_path(Path(settings.VAR_DIR) / "log" / "demo-sshd.log")
    width = max(len(p.persona.username) for p in report.personas)
    lines = [
        "=" * 78,
        "The demo: a PACS host on this machine, its accounts in Vault, three users",
        "=" * 78,
        f"Target {TARGET}: an sshd on {HOST}:{report.port} run as {host.run_as}",
        f"  (its files in {shown_path(report.files.root)}/, its log {log}),",
        f"  host key {report.fingerprint} (pinned).",
        f"  {SSH_CA_ACCOUNT:<12} ssh-ca: the gateway logs in as {host.run_as} with a certificate from",
        "               Vault's SSH CA that lasts 2 minutes; no one holds a key or password for it.",
    ]
    if host.static_user:
        lines += [
            f"  {STATIC_ACCOUNT:<12} static: the OS user {host.static_user}; its password is in Vault only,",
            "               and pamsite gives it a new one after each grant.",
        ]
    else:
        lines += [
            f"  ({STATIC_ACCOUNT}, a password account, needs make demo run as root: an sshd run as",
            f"   {host.run_as} checks no password but {host.run_as}'s, and pamsite never changes yours.)",
        ]
    accounts = " and ".join(a.slug for a in report.accounts)
    lines += [
        f"Policy {POLICY}: requesters may ask for {accounts}, with one approval,",
        f"  for up to 60 minutes, with a ticket like {TICKET_EXAMPLE}.",
        "",
        f"Users (passwords also in {shown_path(report.files.passwords)}; make demo never changes them):",
    ]
    for state in report.personas:
        shown = state.password if state.password else f"({state.note})"
        lines.append(
            f"  {state.persona.username:<{width}}  {shown:<16}  {state.persona.role}: {state.persona.does}"
        )
    lines += [
        "  admin, the pam-admin, has the password the first make run printed.",
        "  Reset one: .venv/bin/python manage.py changepassword requester",
        "",
        "Try it:",
        f"1. Open {web_url} and sign in as requester. At the first sign-in, scan the QR",
        "   code with an authenticator app (or type the key beside it), enter its code, keep the",
        "   backup codes.",
        f"2. My access -> Request access: account {SSH_CA_ACCOUNT}, 30 minutes, ticket {TICKET_EXAMPLE},",
        "   a reason -> Send request.",
        "3. In a private window, sign in as approver (set up its code the same way) -> Approvals",
        "   -> Approve.",
        f"4. In a terminal: {gateway}",
    ]
    if report.gateway_fingerprint:
        lines += [
            "   ssh asks once about the gateway's host key: answer yes if it shows",
            f"   {report.gateway_fingerprint}.",
        ]
    lines += [
        "   Type requester's password, then a new code from the app. Run a command or two",
        "   (hostname; id), then exit.",
        "5. Sign in as auditor -> Sessions -> the session: each recording is intact; Replay plays it.",
        "=" * 78,
    ]
    return "\n".join(lines) + "\n"
