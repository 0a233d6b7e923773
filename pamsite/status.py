"""The system status page: whether Vault is usable, and what pamsite is set up to use."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from audit.selectors import audit_forwarding_status
from common.roles import Role, require_role
from vault.client import VaultClient, VaultError, VaultHealth, get_client
from vault.models import TransitPublicKey
from vault.signatures import public_key_fingerprint

_BADGES = {"unsealed": "ok", "standby": "warn", "sealed": "bad", "uninitialized": "bad", "unreachable": "bad"}
_AUTH_LABELS = {"approle": "AppRole", "none": "none configured"}  # else the method itself ("token")


@require_GET
@never_cache
def system_status(request: HttpRequest) -> HttpResponse:
    """Vault's health, storage and mounts, how pamsite authenticates to it, the recordings'
    signing keys pamsite keeps, the database engine, and how far the audit trail has been
    forwarded to each AUDIT_FORWARD destination.

    For pam-admins. Shows names and states only: never a token, role_id or secret_id.
    """
    require_role(request.user, Role.PAM_ADMIN)
    vault = get_client()
    health = vault.health()
    context = {
        "health": health,
        "badge": _BADGES.get(health.state, "warn"),
        "auth_method": _AUTH_LABELS.get(vault.auth_method, vault.auth_method),
        "uses_approle": vault.auth_method == "approle",
        "approle_name": settings.VAULT_APPROLE_NAME,
        "approle_mount": settings.VAULT_APPROLE_MOUNT,
        "token_in_production": vault.auth_method == "token" and settings.PRODUCTION,
        "database": _database_status(),
        "forwarding": audit_forwarding_status(),
        **_vault_details(vault, health),
    }
    return render(request, "status.html", context)


def _vault_details(vault: VaultClient, health: VaultHealth) -> dict:
    """The mounts pamsite expects and what Vault has there (asked only when it is usable), where
    Vault keeps its data, and the recordings' signing keys pamsite keeps."""
    expected = [
        (settings.VAULT_KV_MOUNT, "kv-v2", "static account passwords"),
        (settings.VAULT_DATABASE_MOUNT, "database", "dynamic database accounts"),
        (settings.VAULT_SSH_MOUNT, "ssh", "SSH certificates for the gateway"),
        (settings.VAULT_TRANSIT_MOUNT, "transit", f"recording signatures (key {settings.VAULT_TRANSIT_KEY})"),
    ]
    mounts, error, ssh_ca = [], "", None
    for path, engine, purpose in expected:
        found, checked = None, False
        if health.ok and not error:
            try:
                found, checked = vault.mount_type(path), True
            except VaultError as exc:
                error = str(exc)
        mounts.append(
            {"path": path, "engine": engine, "purpose": purpose, "found": found, "checked": checked}
        )
    if health.ok and not error:
        try:
            ssh_ca = vault.ssh_ca_public_key()
        except VaultError as exc:
            error = str(exc)
    return {
        "mounts": mounts,
        # Only mounts Vault was asked about and that are absent or of another engine: "not
        # checked" (Vault sealed or unreachable) is no reason to run the bootstrap.
        "mounts_missing": [m["path"] for m in mounts if m["checked"] and m["found"] != m["engine"]],
        "vault_error": error,
        "ssh_ca_public_key": ssh_ca,
        "storage": _storage(vault, health),
        "signing_keys": _signing_keys(vault, health),
    }


def _storage(vault: VaultClient, health: VaultHealth) -> dict:
    """Where Vault keeps its data, from the unauthenticated sys/seal-status (any AppRole may ask)."""
    if health.state == "unreachable":
        return {"type": "", "in_memory": False}
    try:
        status = vault.seal_status()
    except VaultError:
        return {"type": "", "in_memory": False}
    return {"type": status.storage_type, "in_memory": status.in_memory}


def _signing_keys(vault: VaultClient, health: VaultHealth) -> dict:
    """The kept public keys of the recordings' signing key, and whether Vault's current one is among them."""
    kept = list(TransitPublicKey.objects.order_by("mount", "name", "version", "vault_created_at"))
    rows = [
        {
            "key": row,
            "fingerprint": public_key_fingerprint(row.public_key),
            "current": row.mount == vault.config.transit_mount and row.name == vault.config.transit_key,
        }
        for row in kept
    ]
    replaced, not_kept = [], []
    if health.ok:
        try:
            in_vault = vault.transit_public_keys()
        except VaultError:
            in_vault = []  # the mounts table says what is missing; this is only a comparison
        mount, name = vault.config.transit_mount, vault.config.transit_key
        mine = [r for r in kept if (r.mount, r.name) == (mount, name)]
        for version in in_vault:
            same = [r for r in mine if r.version == version.version]
            if any(r.public_key == version.public_key for r in same):
                continue
            # Another key under the same version number: this Vault is not the one that signed before.
            (replaced if same else not_kept).append(version.version)
    return {"kept": rows, "replaced": replaced, "not_kept": not_kept}


def _database_status() -> dict:
    try:
        version = ".".join(str(part) for part in connection.get_database_version())
    except Exception:  # the page reports; it must not fail on a version query
        version = ""
    return {
        "vendor": connection.vendor,
        "display_name": connection.display_name,
        "version": version,
        "host": connection.settings_dict.get("HOST") or "",
        "name": str(connection.settings_dict.get("NAME") or ""),
    }
