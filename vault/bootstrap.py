"""Set up Vault for pamsite: engines, SSH CA, transit key, policy, AppRole. Idempotent.

Each step reads what is there first and writes only what is missing or different, so a
second run changes nothing. The SSH CA signing key is generated only when there is none:
a new one would invalidate every target's TrustedUserCAKeys.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from vault.client import VaultClient, VaultConfig, VaultError

POLICY_DIR = Path(__file__).resolve().parent / "policies"
APP_POLICY = "pamsite-app"
POLICIES = ("pamsite-app", "pamsite-admin")

# The AppRole's tokens: an hour each, renewable up to a day; then the client logs in again.
APPROLE_TOKEN_TTL = 3600
APPROLE_TOKEN_MAX_TTL = 86400

# The gateway's signing role: a certificate only has to be valid at login time.
SSH_CERT_TTL = 300
SSH_CERT_MAX_TTL = 3600

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)*$")


def _names() -> dict[str, str]:
    """The placeholders of the .hcl files, from settings, each checked to be a plain name."""
    names = {
        "kv_mount": ("VAULT_KV_MOUNT", settings.VAULT_KV_MOUNT),
        "database_mount": ("VAULT_DATABASE_MOUNT", settings.VAULT_DATABASE_MOUNT),
        "ssh_mount": ("VAULT_SSH_MOUNT", settings.VAULT_SSH_MOUNT),
        "transit_mount": ("VAULT_TRANSIT_MOUNT", settings.VAULT_TRANSIT_MOUNT),
        "transit_key": ("VAULT_TRANSIT_KEY", settings.VAULT_TRANSIT_KEY),
        "approle_mount": ("VAULT_APPROLE_MOUNT", settings.VAULT_APPROLE_MOUNT),
        "approle_name": ("VAULT_APPROLE_NAME", settings.VAULT_APPROLE_NAME),
        "ssh_role": ("VAULT_SSH_ROLE", settings.VAULT_SSH_ROLE),
    }
    for setting, value in names.values():
        # These names end up inside policy paths: a "*", '"' or ".." would widen them.
        if not _SAFE_NAME.match(value) or ".." in value:
            raise VaultError(
                f"{setting} must be a plain Vault path name (letters, digits, . _ - /), not {value!r}"
            )
    return {placeholder: value for placeholder, (_, value) in names.items()}


def render_policy(name: str) -> str:
    """The text of vault/policies/<name>.hcl with its {placeholders} filled in from settings."""
    if name not in POLICIES:
        raise VaultError(f"No policy named {name!r}: choose one of {', '.join(POLICIES)}")
    names = _names()
    text = (POLICY_DIR / f"{name}.hcl").read_text(encoding="utf-8")

    def fill(match: re.Match) -> str:
        if match.group(1) not in names:
            raise VaultError(f"{name}.hcl uses an unknown placeholder {match.group(0)}")
        return names[match.group(1)]

    # Comments keep their {placeholders}: they document them.
    lines = text.splitlines(keepends=True)
    return "".join(line if line.lstrip().startswith("#") else _PLACEHOLDER.sub(fill, line) for line in lines)


@dataclass
class BootstrapResult:
    """What a bootstrap run did; ``changed`` is empty when Vault was already set up."""

    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    ssh_ca_public_key: str = ""
    approle_files: list[Path] = field(default_factory=list)


def privileged_client() -> VaultClient:
    """A client with VAULT_TOKEN, never the AppRole: the bootstrap configures Vault itself."""
    config = VaultConfig.from_settings().token_only()
    if not config.token:
        raise VaultError(
            "vault_bootstrap needs a privileged Vault token: set VAULT_TOKEN (or VAULT_TOKEN_FILE) "
            "to a token with the pamsite-admin policy, or to the root token of the embedded OpenBao "
            "(VAULT_TOKEN_FILE=var/openbao/root-token)"
        )
    return VaultClient(config)


def vault_bootstrap(
    *,
    vault: VaultClient | None = None,
    approle_dir: Path | None = None,
    echo: Callable[[str], object] = lambda line: None,
) -> BootstrapResult:
    """Make Vault ready for pamsite; with approle_dir, also write role_id and a new secret_id there.

    ``vault`` defaults to ``privileged_client()``. ``echo`` receives one line per step.
    """
    vault = vault or privileged_client()
    names = _names()
    result = BootstrapResult()

    def changed(line: str) -> None:
        result.changed.append(line)
        echo(line)

    def unchanged(line: str) -> None:
        result.unchanged.append(line)
        echo(line)

    # Secrets engines.
    mounts = vault.read("sys/mounts")["data"]
    for label, engine, options, mount in (
        ("kv-v2", "kv", {"version": "2"}, names["kv_mount"]),
        ("database", "database", {}, names["database_mount"]),
        ("ssh", "ssh", {}, names["ssh_mount"]),
        ("transit", "transit", {}, names["transit_mount"]),
    ):
        result.mounts.append(mount)
        current = mounts.get(f"{mount}/")
        if current is None:
            body = {"type": engine, "options": options, "description": f"pamsite: {label}"}
            vault.write(f"sys/mounts/{mount}", body)
            changed(f"enabled {label} at {mount}")
            continue
        version = (current.get("options") or {}).get("version", "1")
        if current["type"] != engine or (engine == "kv" and version != "2"):
            found = f"kv-v{version}" if current["type"] == "kv" else current["type"]
            raise VaultError(
                f"{mount} is already a {found} engine, not {label}: move it, or choose another mount "
                "name in the VAULT_*_MOUNT settings"
            )
        unchanged(f"already enabled: {label} at {mount}")

    # SSH CA: generated once; replacing it would lock pamsite out of every target.
    ssh = names["ssh_mount"]
    public_key = vault.ssh_ca_public_key()
    if public_key is None:
        resp = vault.write(f"{ssh}/config/ca", {"generate_signing_key": True, "key_type": "ssh-ed25519"})
        public_key = resp["data"]["public_key"].strip()
        changed(f"generated the SSH CA signing key (ed25519) at {ssh}")
    else:
        unchanged(f"already configured: SSH CA at {ssh}")
    result.ssh_ca_public_key = public_key
    echo(f"ssh CA public key: {public_key}")

    _ensure(
        vault,
        f"{ssh}/roles/{names['ssh_role']}",
        {
            "key_type": "ca",
            "allow_user_certificates": True,
            "allow_host_certificates": False,
            # The gateway picks the principal of each grant's account; nothing else signs here.
            "allowed_users": "*",
            "default_user": "",
            "allowed_extensions": "permit-pty,permit-port-forwarding",
            "default_extensions": {"permit-pty": "", "permit-port-forwarding": ""},
            "ttl": SSH_CERT_TTL,
            "max_ttl": SSH_CERT_MAX_TTL,
        },
        f"SSH signing role {names['ssh_role']}",
        changed,
        unchanged,
    )

    # Transit key for recordings: ed25519, never exportable, never deletable.
    transit, key = names["transit_mount"], names["transit_key"]
    current = vault.read(f"{transit}/keys/{key}")
    if current is None:
        body = {"type": "ed25519", "exportable": False, "allow_plaintext_backup": False}
        vault.write(f"{transit}/keys/{key}", body)
        changed(f"created transit signing key {key} (ed25519) at {transit}")
    else:
        data = current["data"]
        if data["type"] != "ed25519":
            raise VaultError(
                f"The transit key {key} at {transit} is {data['type']}, not ed25519: "
                "set VAULT_TRANSIT_KEY to another name"
            )
        if data.get("deletion_allowed"):
            vault.write(f"{transit}/keys/{key}/config", {"deletion_allowed": False})
            changed(f"made transit key {key} undeletable")
        else:
            unchanged(f"already there: transit signing key {key} at {transit}")
        if data.get("exportable") or data.get("allow_plaintext_backup"):
            result.warnings.append(
                f"transit key {key} is exportable, which Vault cannot undo: create a new key "
                "(set VAULT_TRANSIT_KEY) if that was not intended"
            )

    # The app's policy.
    text = render_policy(APP_POLICY)
    current = vault.read(f"sys/policies/acl/{APP_POLICY}")
    if current is None or current["data"]["policy"].strip() != text.strip():
        vault.write(f"sys/policies/acl/{APP_POLICY}", {"policy": text})
        changed(f"{'wrote' if current is None else 'updated'} policy {APP_POLICY}")
    else:
        unchanged(f"already up to date: policy {APP_POLICY}")

    # AppRole, and the app's role.
    approle = names["approle_mount"]
    current = vault.read("sys/auth")["data"].get(f"{approle}/")
    if current is None:
        vault.write(f"sys/auth/{approle}", {"type": "approle", "description": "pamsite: AppRole"})
        changed(f"enabled approle at auth/{approle}")
    elif current["type"] != "approle":
        raise VaultError(
            f"auth/{approle} is already a {current['type']} auth method: "
            "set VAULT_APPROLE_MOUNT to another path"
        )
    else:
        unchanged(f"already enabled: approle at auth/{approle}")
    role_path = f"auth/{approle}/role/{names['approle_name']}"
    _ensure(
        vault,
        role_path,
        dict(  # noqa: C408 (keyword form: bandit reads "token": True as a hard-coded password)
            token_policies=[APP_POLICY],
            token_no_default_policy=True,
            token_ttl=APPROLE_TOKEN_TTL,
            token_max_ttl=APPROLE_TOKEN_MAX_TTL,
            bind_secret_id=True,
            secret_id_ttl=settings.VAULT_APPROLE_SECRET_ID_TTL,
            secret_id_num_uses=0,
        ),
        f"AppRole role {names['approle_name']}",
        changed,
        unchanged,
    )

    if approle_dir is not None:
        result.approle_files = _write_approle(vault, role_path, Path(approle_dir))
        changed(f"issued a new secret_id for AppRole {names['approle_name']}")
        echo(f"wrote role_id and secret_id (mode 0600) to {Path(approle_dir)}")
    for warning in result.warnings:
        echo(f"WARNING: {warning}")
    return result


def _ensure(vault: VaultClient, path: str, desired: dict, what: str, changed, unchanged) -> None:
    """Write desired to path unless Vault already holds exactly those values."""
    current = vault.read(path)
    data = current["data"] if current else None
    if data is not None and all(data.get(k) == v for k, v in desired.items()):
        unchanged(f"already up to date: {what}")
        return
    vault.write(path, desired)
    changed(f"{'created' if data is None else 'updated'} {what}")


@sensitive_variables("secret_id", "resp")
def _write_approle(vault: VaultClient, role_path: str, directory: Path) -> list[Path]:
    role_id = vault.read(f"{role_path}/role-id")["data"]["role_id"]
    resp = vault.write(f"{role_path}/secret-id", {"metadata": json.dumps({"issued_by": "vault_bootstrap"})})
    secret_id = resp["data"]["secret_id"]
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return [
        _write_private(directory / "role_id", role_id),
        _write_private(directory / "secret_id", secret_id),
    ]


@sensitive_variables("text")
def _write_private(path: Path, text: str) -> Path:
    """Replace path atomically with a file only its owner can read."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
