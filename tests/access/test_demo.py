"""The demo's setup (access/demo.py) against the real Vault and the demo sshd it configures.

Each test writes the demo's files under its own var/ folder, starts ``/usr/sbin/sshd`` from
the config written there (as `make run` does), and runs ``demo_setup`` as the first admin.
The OS users are throwaway ``pamt…`` accounts, removed at the end.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from access import demo
from access.models import AccessPolicy, Account, Target
from access.rotation import generate_password
from access.services import account_ref
from audit.models import AuditEvent
from identity.models import User
from targets import errors, ssh, ssh_blocking
from tests.conftest import make_user
from tests.fixtures.openbao import free_port
from tests.fixtures.sshd import USER_PREFIX
from tests.fixtures.waiting import wait_for
from tests.secrets_registry import remember_secret
from vault.client import get_client
from vault.sources import ssh_sign, static_login_password

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def _userdel(name: str) -> None:
    wait_for(
        lambda: subprocess.run(["userdel", "-r", name], capture_output=True).returncode in (0, 6, 12),
        f"userdel {name}",
        timeout=10,
    )


def _shadow_hash(name: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":")[1]
    raise AssertionError(f"{name} is not in /etc/shadow")


class DemoSshd:
    """The demo sshd started from the config demo_prepare_host wrote (as make run starts it)."""

    def __init__(self, config: Path, log: Path, *, run_as: str | None = None):
        argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]
        if run_as:
            argv = ["runuser", "-u", run_as, "--", *argv]
        self.log = log
        self.process = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        port = demo_sshd_port()
        wait_for(
            lambda: self.process.poll() is not None or ssh_blocking.answers_ssh("127.0.0.1", port),
            f"the demo sshd on port {port}",
        )
        assert self.process.poll() is None, f"sshd exited: {log.read_text()[-2000:]}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def demo_var(settings, approle_settings, tmp_path):
    """The demo's settings pointed at a fresh var/ folder, a free port and a throwaway OS user."""
    settings.VAR_DIR = tmp_path / "var"
    (settings.VAR_DIR / "log").mkdir(parents=True)
    settings.DEMO_SSH_PORT = free_port()
    settings.DEMO_OS_USER = f"{USER_PREFIX}{secrets.token_hex(4)}"
    settings.GATEWAY_HOST_KEY_FILE = tmp_path / "no-gateway" / "ssh_host_ed25519_key"
    yield settings
    if subprocess.run(["id", settings.DEMO_OS_USER], capture_output=True).returncode == 0:
        _userdel(settings.DEMO_OS_USER)


@pytest.fixture
def admin(db):
    """The first pam-admin (make run's `admin`), whom the demo's changes are audited as."""
    return make_user("admin", "pam-admin", "requester", "approver", "auditor")


@pytest.fixture
def demo_sshd(demo_var):
    demo.demo_prepare_host()
    files = demo.demo_files()
    sshd = DemoSshd(files.config, demo_var.VAR_DIR / "log" / "demo-sshd.log")
    yield sshd
    sshd.stop()


def _remember_passwords() -> dict[str, str]:
    passwords = demo._read_passwords(demo.demo_files())
    for password in passwords.values():
        remember_secret(password, "a demo user's password")
    return passwords


def test_the_demo_pins_its_key_sets_up_both_accounts_and_makes_the_personas(demo_sshd, admin):
    report = demo.demo_setup()
    passwords = _remember_passwords()
    files = demo.demo_files()

    target = Target.objects.get(name=demo.TARGET)
    key_file = ssh.parse_host_key(Path(f"{files.host_key}.pub").read_text())
    assert (target.host, target.port) == ("127.0.0.1", demo_sshd_port())
    assert target.host_key == key_file.openssh and target.host_key_fingerprint == key_file.fingerprint
    assert target.host_key_confirmed_by == admin
    pinned = AuditEvent.objects.get(action="access.target.host_pinned")
    assert pinned.actor_username == "admin" and pinned.details["fingerprint"] == key_file.fingerprint

    # The ssh-ca account logs in as the user sshd runs as (root here) with a certificate from Vault.
    root = Account.objects.get(slug=demo.SSH_CA_ACCOUNT)
    assert (root.kind, root.username) == (Account.Kind.SSH_CA, "root")
    private, public = ssh.generate_keypair()
    certificate = ssh_sign(account=account_ref(root), public_key=public, ttl_seconds=60)
    with ssh_blocking.connect(
        host=target.host,
        port=target.port,
        username="root",
        host_key=target.host_key,
        private_key=private,
        certificate=certificate,
    ) as connection:
        assert ssh_blocking.run(connection=connection, command="id -un").stdout.strip() == b"root"

    # The static account is the demo's own OS user, its password in Vault, checked by a login.
    static = Account.objects.select_related("target").get(slug=demo.STATIC_ACCOUNT)
    assert (static.kind, static.username) == (Account.Kind.STATIC, demo_sshd_os_user())
    assert pwd.getpwnam(static.username).pw_gecos == demo.OS_USER_MARK
    password = remember_secret(static_login_password(account=account_ref(static)), "demo static password")
    assert ssh_blocking.check_password_login(
        host=target.host,
        port=target.port,
        username=static.username,
        host_key=target.host_key,
        password=password,
    )
    # Only that user may use a password: root's is never tried, let alone changed.
    with pytest.raises(errors.TargetError, match="does not accept password"):
        ssh_blocking.check_password_login(
            host=target.host, port=target.port, username="root", host_key=target.host_key, password=password
        )

    # Each account passed Test connection, as after a pam-admin's setup: the Targets page says ready.
    assert all(a.last_test_ok for a in Account.objects.all())
    assert AuditEvent.objects.filter(action="access.account.tested", details__ok=True).count() == 2

    # Personas with their roles and the printed passwords; the file is the owner's alone.
    assert sorted(passwords) == ["approver", "auditor", "requester"]
    for persona in demo.PERSONAS:
        user = User.objects.get(username=persona.username)
        assert list(user.groups.values_list("name", flat=True)) == [persona.role]
        assert user.check_password(passwords[persona.username])
        assert not user.totpdevice_set.exists()  # enrolled at the first sign-in, as usual
    assert files.passwords.stat().st_mode & 0o777 == 0o600
    assert files.root.stat().st_mode & 0o777 == 0o700

    # One policy: requesters, both accounts, one approval, a ticket the example satisfies.
    policy = AccessPolicy.objects.get(name=demo.POLICY)
    assert list(policy.groups.values_list("name", flat=True)) == ["requester"]
    assert set(policy.accounts.values_list("slug", flat=True)) == {demo.SSH_CA_ACCOUNT, demo.STATIC_ACCOUNT}
    assert policy.approvals_required == 1 and policy.ticket_required
    assert policy.ticket_example == demo.TICKET_EXAMPLE and re.match(
        policy.ticket_pattern, demo.TICKET_EXAMPLE
    )

    # Every change is audited as the admin, saying it came from make demo.
    created = AuditEvent.objects.filter(
        action__in=["access.target.created", "access.account.created", "access.policy.created"]
    )
    assert sorted(e.object_repr for e in created) == ["demo-pacs", "demo-pacs", "demo-root", "demo-static"]
    users = AuditEvent.objects.filter(action="identity.demo_user_created")
    assert sorted((e.object_repr, e.details["roles"]) for e in users) == [
        ("Demo approver", ["approver"]),
        ("Demo auditor", ["auditor"]),
        ("Demo requester", ["requester"]),
    ]
    assert {e.actor_username for e in [*created, *users]} == {"admin"}
    assert {e.details["via"] for e in [*created, *users]} == {"make demo"}

    text = demo.demo_instructions(report, web_url="http://127.0.0.1:8000/")
    assert "ssh -p 2222 requester:demo-root@localhost" in text
    for persona in demo.PERSONAS:
        assert re.search(rf"^  {persona.username}\s+{passwords[persona.username]}\s", text, re.M)


def demo_sshd_port() -> int:
    from django.conf import settings

    return settings.DEMO_SSH_PORT


def demo_sshd_os_user() -> str:
    from django.conf import settings

    return settings.DEMO_OS_USER


def test_a_second_run_changes_nothing_and_prints_the_same_walk_through(demo_sshd, admin):
    first = demo.demo_setup()
    _remember_passwords()
    static = Account.objects.select_related("target").get(slug=demo.STATIC_ACCOUNT)
    _, kv_version = get_client().kv_read_version(account_ref(static).secret_path)
    hashes = dict(User.objects.values_list("username", "password"))
    shadow = _shadow_hash(static.username)
    events = AuditEvent.objects.count()

    second = demo.demo_setup()

    assert first.changes and second.changes == []
    assert AuditEvent.objects.count() == events
    assert dict(User.objects.values_list("username", "password")) == hashes
    assert get_client().kv_read_version(account_ref(static).secret_path)[1] == kv_version
    assert _shadow_hash(static.username) == shadow
    url = "http://127.0.0.1:8000/"
    assert demo.demo_instructions(second, web_url=url) == demo.demo_instructions(first, web_url=url)


def test_a_new_port_is_followed_and_a_pam_admins_edits_stay(demo_sshd, admin, demo_var):
    demo.demo_setup()
    _remember_passwords()
    Target.objects.filter(name=demo.TARGET).update(description="Radiology's test PACS, keep it.")
    demo_sshd.stop()
    demo_var.DEMO_SSH_PORT = free_port()
    demo.demo_prepare_host()
    moved = DemoSshd(demo.demo_files().config, demo_var.VAR_DIR / "log" / "demo-sshd.log")
    try:
        report = demo.demo_setup()
    finally:
        moved.stop()

    target = Target.objects.get(name=demo.TARGET)
    assert target.port == demo_var.DEMO_SSH_PORT
    assert target.host_key_fingerprint == report.fingerprint
    assert target.description == "Radiology's test PACS, keep it."
    assert f"an sshd on 127.0.0.1:{demo_var.DEMO_SSH_PORT} run as root" in demo.demo_instructions(
        report, web_url="http://127.0.0.1:8000/"
    )


def test_a_changed_persona_password_is_kept_and_the_walk_through_says_so(demo_sshd, admin):
    demo.demo_setup()
    _remember_passwords()
    requester = User.objects.get(username="requester")
    requester.set_password(remember_secret(secrets.token_urlsafe(16), "a test user's password"))
    requester.save()
    hashed = requester.password

    report = demo.demo_setup()

    assert User.objects.get(username="requester").password == hashed
    text = demo.demo_instructions(report, web_url="http://127.0.0.1:8000/")
    assert re.search(r"^  requester\s+\(password changed since", text, re.M)
    assert "manage.py changepassword requester" in text


def test_a_static_password_vault_lost_is_set_again_and_audited(demo_sshd, admin, bootstrapped_vault):
    """An in-memory Vault restarted empty: the demo gives its own OS user a new password."""
    from django.conf import settings

    demo.demo_setup()
    _remember_passwords()
    static = Account.objects.select_related("target").get(slug=demo.STATIC_ACCOUNT)
    bootstrapped_vault.server.api(
        "DELETE",
        f"{settings.VAULT_KV_MOUNT}/metadata/{account_ref(static).secret_path}",
        token=bootstrapped_vault.root_token,
    )

    report = demo.demo_setup()

    assert report.changes[0] == f"set the password of {demo.STATIC_ACCOUNT} in Vault (checked by a login)"
    assert [c.split(":")[0] for c in report.changes[1:]] == [
        "Test connection of demo-root",
        "Test connection of demo-static",
    ]
    password = remember_secret(static_login_password(account=account_ref(static)), "demo static password")
    assert ssh_blocking.check_password_login(
        host="127.0.0.1",
        port=demo_sshd_port(),
        username=static.username,
        host_key=static.target.host_key,
        password=password,
    )
    configured = AuditEvent.objects.filter(action="vault.account.configured", object_repr=demo.STATIC_ACCOUNT)
    assert configured.count() == 2
    assert configured.order_by("-sequence").first().details["verified_on_target"] is True


def test_an_os_user_the_demo_did_not_make_keeps_its_password(demo_sshd, admin):
    name = demo_sshd_os_user()
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
    own = remember_secret(generate_password(), "a test user's password")
    subprocess.run(["chpasswd"], input=f"{name}:{own}\n", text=True, check=True)
    before = _shadow_hash(name)

    with pytest.raises(demo.DemoError, match=f"{name} exists and was not made by the demo"):
        demo.demo_setup()

    assert _shadow_hash(name) == before
    assert not Account.objects.filter(slug=demo.STATIC_ACCOUNT).exists()


def test_a_busy_port_is_named_before_anything_starts(demo_var):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", demo_var.DEMO_SSH_PORT))
        busy.listen()
        with pytest.raises(demo.DemoError, match=f"Port {demo_var.DEMO_SSH_PORT} on 127.0.0.1 is in use"):
            demo.demo_prepare_host()


def test_as_an_ordinary_user_the_demo_has_the_certificate_account_only(demo_var, admin):
    """sshd run by a non-root user logs in that user with a certificate, and no one by password."""
    name = f"{USER_PREFIX}{secrets.token_hex(4)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
    # A folder the user can reach (pytest's own are root's alone), as a developer's clone is.
    demo_var.VAR_DIR = Path(tempfile.mkdtemp(prefix="pamsite-demo-"))
    demo_var.VAR_DIR.chmod(0o755)
    (demo_var.VAR_DIR / "log").mkdir()
    try:
        host = demo.DemoHost(run_as=name, as_root=False, static_user=None)
        demo.demo_prepare_host(host=host)
        files = demo.demo_files()
        config = files.config.read_text()
        assert f"AllowUsers {name}\n" in config and "PermitRootLogin no" in config
        assert "PasswordAuthentication yes" not in config
        # The files belong to the user who runs the sshd (make demo run by that user makes them so).
        subprocess.run(["chown", "-R", name, str(files.root)], check=True)
        sshd = DemoSshd(files.config, demo_var.VAR_DIR / "log" / "demo-sshd.log", run_as=name)
        try:
            report = demo.demo_setup(host=host)
            assert os.stat(files.pid).st_uid == pwd.getpwnam(name).pw_uid  # the sshd runs as the user

            assert [a.slug for a in report.accounts] == [demo.SSH_CA_ACCOUNT]
            assert not Account.objects.filter(slug=demo.STATIC_ACCOUNT).exists()
            root = Account.objects.select_related("target").get(slug=demo.SSH_CA_ACCOUNT)
            assert root.username == name
            private, public = ssh.generate_keypair()
            certificate = ssh_sign(account=account_ref(root), public_key=public, ttl_seconds=60)
            with ssh_blocking.connect(
                host="127.0.0.1",
                port=demo_var.DEMO_SSH_PORT,
                username=name,
                host_key=root.target.host_key,
                private_key=private,
                certificate=certificate,
            ) as connection:
                assert (
                    ssh_blocking.run(connection=connection, command="id -un").stdout.strip() == name.encode()
                )
            with pytest.raises(errors.TargetError, match="does not accept password"):
                ssh_blocking.check_password_login(
                    host="127.0.0.1",
                    port=demo_var.DEMO_SSH_PORT,
                    username=name,
                    host_key=root.target.host_key,
                    password="not-tried-anyway",
                )
            text = demo.demo_instructions(report, web_url="http://127.0.0.1:8000/")
            assert f"needs make demo run as root: an sshd run as\n   {name} checks no password" in text
        finally:
            sshd.stop()
    finally:
        _userdel(name)
        shutil.rmtree(demo_var.VAR_DIR)


def test_the_config_lets_the_static_user_alone_use_a_password():
    files = demo.DemoFiles(Path("/srv/pamsite/var/demo"))
    host = demo.DemoHost(run_as="root", as_root=True, static_user="pamdemo")
    config = demo.sshd_config_text(files=files, port=22022, host=host)
    assert "ListenAddress 127.0.0.1\n" in config and "Port 22022\n" in config
    assert "AllowUsers root pamdemo\n" in config
    assert "PermitRootLogin prohibit-password\n" in config
    head, match_block = config.split("Match User pamdemo\n")
    assert "PasswordAuthentication no\n" in head
    assert match_block.strip() == "PasswordAuthentication yes"
    assert f"TrustedUserCAKeys {files.ca_keys}\n" in config and f"PidFile {files.pid}\n" in config


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PAMSITE_DEMO_OS_USER", "root", "PAMSITE_DEMO_OS_USER must be a new login name"),
        ("PAMSITE_DEMO_OS_USER", "Pam Demo", "PAMSITE_DEMO_OS_USER must be a new login name"),
        ("PAMSITE_DEMO_SSH_PORT", "70000", "PAMSITE_DEMO_SSH_PORT must be at most 65535"),
    ],
)
def test_a_bad_demo_setting_stops_startup_naming_it(tmp_path, name, value, says):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PAMSITE_MODE", "SECRET_KEY"}}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=Path(__file__).resolve().parents[2],
        env={**env, "PAMSITE_VAR_DIR": str(tmp_path), name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and says in result.stderr
