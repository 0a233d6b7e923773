"""The one module of pamsite that talks to Vault / OpenBao (through hvac).

Everything else asks ``get_client()`` for a ``VaultClient`` and calls its typed methods.
The client is built lazily from the VAULT_* settings and cached per process; the cache
is dropped by ``reset_client()`` and whenever a VAULT_* setting changes (tests).

It authenticates with AppRole when VAULT_ROLE_ID and VAULT_SECRET_ID are both set
(re-logging in when the token nears its expiry or was revoked), otherwise with
VAULT_TOKEN. Every failure is raised as a ``VaultError`` whose message says what went
wrong and what to do. No token, secret_id or secret value ever appears in a message,
a log line or a repr.
"""

from __future__ import annotations

import base64
import datetime
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import hvac
import hvac.exceptions
import requests
from django.conf import settings
from django.core.signals import setting_changed  # the signal django.test.signals re-exports
from django.dispatch import receiver
from django.views.decorators.debug import sensitive_variables

logger = logging.getLogger(__name__)

_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.@=+-]+(/[A-Za-z0-9_.@=+-]+)*$")


class VaultError(Exception):
    """A Vault request failed. The message says what to do and never holds a secret."""


class VaultUnavailable(VaultError):
    """Vault cannot serve requests: unreachable, timed out, TLS failure, not initialised."""


class VaultSealed(VaultUnavailable):
    """Vault is sealed: an operator must unseal it."""


class VaultAuthError(VaultError):
    """Vault rejected pamsite's credentials (AppRole or token), or none are configured."""


class VaultPermissionDenied(VaultError):
    """The credentials are valid but the policy does not allow the request."""


class VaultNotFound(VaultError):
    """Nothing at that path (no such secret, key or role)."""


class VaultConflict(VaultError):
    """A check-and-set write lost: the KV secret changed since it was read (or already exists)."""


@dataclass(frozen=True)
class VaultConfig:
    """Where Vault is and how to authenticate; secrets are left out of the repr."""

    addr: str
    token: str = field(default="", repr=False)
    role_id: str = field(default="", repr=False)
    secret_id: str = field(default="", repr=False)
    cacert: str = ""
    namespace: str = ""
    timeout: int = 10
    approle_mount: str = "approle"
    kv_mount: str = "pamsite-kv"
    database_mount: str = "pamsite-database"
    ssh_mount: str = "pamsite-ssh"
    transit_mount: str = "pamsite-transit"
    transit_key: str = "pamsite-recordings"

    @classmethod
    def from_settings(cls) -> VaultConfig:
        s = settings
        return cls(
            addr=s.VAULT_ADDR.rstrip("/"),
            token=s.VAULT_TOKEN,
            role_id=s.VAULT_ROLE_ID,
            secret_id=s.VAULT_SECRET_ID,
            cacert=s.VAULT_CACERT,
            namespace=s.VAULT_NAMESPACE,
            timeout=s.VAULT_TIMEOUT,
            approle_mount=s.VAULT_APPROLE_MOUNT,
            kv_mount=s.VAULT_KV_MOUNT,
            database_mount=s.VAULT_DATABASE_MOUNT,
            ssh_mount=s.VAULT_SSH_MOUNT,
            transit_mount=s.VAULT_TRANSIT_MOUNT,
            transit_key=s.VAULT_TRANSIT_KEY,
        )

    @property
    def auth_method(self) -> str:
        """ "approle", "token" or "none" (only sys/health and public endpoints work)."""
        if self.role_id and self.secret_id:
            return "approle"
        return "token" if self.token else "none"

    def token_only(self) -> VaultConfig:
        """The same server with VAULT_TOKEN as the credential (for privileged commands)."""
        return replace(self, role_id="", secret_id="")  # nosec B106  # clears them: no password here


@dataclass(frozen=True)
class VaultHealth:
    """What sys/health says; ``state`` is unsealed, standby, sealed, uninitialized or unreachable."""

    state: str
    address: str
    version: str = ""
    cluster_name: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("unsealed", "standby")


@dataclass(frozen=True)
class SealStatus:
    """What the unauthenticated sys/seal-status says, storage backend included."""

    initialized: bool
    sealed: bool
    storage_type: str = ""
    version: str = ""
    cluster_id: str = ""

    @property
    def in_memory(self) -> bool:
        """Whether Vault keeps its data in memory only ("inmem", as the dev server does): lost at a stop."""
        return self.storage_type.startswith("inmem")


class InitResult(NamedTuple):
    """The one unseal key and the root token of a freshly initialised Vault; kept out of the repr."""

    unseal_key: str
    root_token: str

    def __repr__(self) -> str:
        return "InitResult(unseal_key='***', root_token='***')"


@dataclass(frozen=True)
class TransitKeyVersion:
    """One version of a transit signing key as Vault reports it: its public part only."""

    version: int
    public_key: str  # base64 of the raw key (32 bytes for ed25519)
    created_at: datetime.datetime
    key_type: str


class DatabaseCredentials(NamedTuple):
    """Dynamic database credentials and their lease; the password stays out of the repr."""

    username: str
    password: str
    lease_id: str
    lease_duration: int

    def __repr__(self) -> str:
        return (
            f"DatabaseCredentials(username={self.username!r}, password='***', "
            f"lease_id={self.lease_id!r}, lease_duration={self.lease_duration})"
        )


def _check_path(value: str, what: str) -> str:
    if not _SAFE_PATH.match(value) or ".." in value.split("/"):
        raise VaultError(f"Refusing an unsafe Vault {what}: {value[:80]!r}")
    return value


def _parse_time(value: str) -> datetime.datetime:
    """An RFC 3339 time from Vault ("2026-01-02T03:04:05.123456789Z"), to the microsecond, in UTC."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        raise VaultError(f"Vault returned a time pamsite cannot read: {value[:40]!r}")
    whole, fraction, zone = match.groups()
    micro = f"{(fraction or '0')[:6]:0<6}"
    parsed = datetime.datetime.fromisoformat(f"{whole}.{micro}{'+00:00' if zone == 'Z' else zone}")
    return parsed.astimezone(datetime.UTC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class VaultClient:
    """A connection to Vault with pamsite's credentials and typed operations."""

    # Renew (or log in again) once less than this share of the token's TTL remains.
    RENEW_FRACTION = 1 / 3

    def __init__(self, config: VaultConfig):
        self.config = config
        self._lock = threading.RLock()
        self._token_deadline: float | None = None  # monotonic; None: not logged in yet
        self._token_ttl = 0
        self._hvac = hvac.Client(
            url=config.addr,
            # An explicit "" stops hvac from falling back to $VAULT_TOKEN or ~/.vault-token.
            token="" if config.auth_method == "approle" else config.token,
            verify=config.cacert or True,
            timeout=config.timeout,
            namespace=config.namespace or None,
        )

    def __repr__(self) -> str:
        return f"<VaultClient {self.config.addr} auth={self.auth_method}>"

    @property
    def auth_method(self) -> str:
        return self.config.auth_method

    # --- Health and public endpoints (no authentication) -----------------------------

    def health(self, *, timeout: float = 5) -> VaultHealth:
        """The server's state from the unauthenticated sys/health; never raises for it."""
        addr = self.config.addr
        try:
            resp = self._hvac.adapter.get(
                "/v1/sys/health", raise_exception=False, timeout=min(timeout, self.config.timeout)
            )
        except requests.RequestException as exc:
            return VaultHealth("unreachable", addr, message=str(self._translate(exc, "sys/health")))
        if isinstance(resp, dict):  # hvac decodes only a 200 answer
            status, body = 200, resp
        else:
            status = resp.status_code
            try:
                body = resp.json()
            except ValueError:
                body = {}
        info = {"version": str(body.get("version", "")), "cluster_name": str(body.get("cluster_name", ""))}
        if status == 501 or body.get("initialized") is False:
            msg = (
                f"Vault at {addr} is not initialised: initialise it (bao operator init), unseal it, "
                "then run manage.py vault_bootstrap"
            )
            return VaultHealth("uninitialized", addr, message=msg, **info)
        if body.get("sealed"):
            return VaultHealth("sealed", addr, message=self._sealed_message(), **info)
        if status in (429, 472, 473) or body.get("standby"):
            msg = f"Vault at {addr} is a standby node: it forwards requests to the active node"
            return VaultHealth("standby", addr, message=msg, **info)
        if status == 200:
            return VaultHealth("unsealed", addr, message=f"Vault at {addr} is unsealed and active", **info)
        msg = (
            f"Vault at {addr} answered sys/health with HTTP {status}: check that VAULT_ADDR is a Vault server"
        )
        return VaultHealth("unreachable", addr, message=msg, **info)

    def ssh_ca_public_key(self) -> str | None:
        """The SSH CA's public key (for TrustedUserCAKeys), or None if no CA is configured."""
        path = f"{self.config.ssh_mount}/public_key"
        try:
            resp = self._hvac.adapter.get(f"/v1/{path}", raise_exception=False)
        except requests.RequestException as exc:
            raise self._translate(exc, path) from None
        status = 200 if isinstance(resp, dict) else resp.status_code
        if status in (400, 403, 404):
            return None  # no CA key yet (400), or no such mount (403/404 on this public route)
        if status != 200:
            raise self._translate_status(resp, path)
        return resp.text.strip() or None

    def seal_status(self) -> SealStatus:
        """The unauthenticated sys/seal-status: initialised, sealed, storage type.

        Raises VaultUnavailable when Vault cannot be reached.
        """
        try:
            body = self._hvac.sys.read_seal_status()
        except Exception as exc:
            raise self._translate(exc, "sys/seal-status") from None
        return SealStatus(
            initialized=bool(body.get("initialized")),
            sealed=bool(body.get("sealed")),
            storage_type=str(body.get("storage_type") or ""),
            version=str(body.get("version") or ""),
            cluster_id=str(body.get("cluster_id") or ""),
        )

    @sensitive_variables("resp")
    def initialize(self, *, shares: int = 1, threshold: int = 1) -> InitResult:
        """Initialise a new Vault (sys/init, unauthenticated); the caller must keep what it returns."""
        try:
            resp = self._hvac.sys.initialize(secret_shares=shares, secret_threshold=threshold)
        except Exception as exc:
            raise self._translate(exc, "sys/init") from None
        return InitResult(resp["keys_base64"][0], resp["root_token"])

    @sensitive_variables("key")
    def unseal(self, key: str) -> SealStatus:
        """Submit an unseal key (sys/unseal); the seal status after it."""
        try:
            body = self._hvac.sys.submit_unseal_key(key=key)
        except Exception as exc:
            raise self._translate(exc, "sys/unseal", (key,)) from None
        return SealStatus(
            initialized=bool(body.get("initialized", True)),
            sealed=bool(body.get("sealed")),
            storage_type=str(body.get("storage_type") or ""),
            version=str(body.get("version") or ""),
            cluster_id=str(body.get("cluster_id") or ""),
        )

    # --- Typed operations ----------------------------------------------------------

    def kv_read(self, path: str, *, version: int | None = None) -> dict[str, Any]:
        """The data of a KV v2 secret (latest version unless given)."""
        _check_path(path, "KV path")
        resp = self._call(
            f"{self.config.kv_mount}/data/{path}",
            lambda c: c.secrets.kv.v2.read_secret_version(
                path, version=version, mount_point=self.config.kv_mount, raise_on_deleted_version=True
            ),
        )
        return resp["data"]["data"]

    def kv_read_version(self, path: str) -> tuple[dict[str, Any], int]:
        """The latest data of a KV v2 secret and its version number (for a check-and-set write)."""
        _check_path(path, "KV path")
        resp = self._call(
            f"{self.config.kv_mount}/data/{path}",
            lambda c: c.secrets.kv.v2.read_secret_version(
                path, mount_point=self.config.kv_mount, raise_on_deleted_version=True
            ),
        )
        return resp["data"]["data"], int(resp["data"]["metadata"]["version"])

    def kv_destroy(self, path: str, versions: Iterable[int]) -> None:
        """Destroy versions of a KV v2 secret for good (their data cannot be undeleted)."""
        _check_path(path, "KV path")
        versions = [int(v) for v in versions]
        self._call(
            f"{self.config.kv_mount}/destroy/{path}",
            lambda c: c.secrets.kv.v2.destroy_secret_versions(
                path, versions=versions, mount_point=self.config.kv_mount
            ),
        )

    def kv_delete_all(self, path: str) -> None:
        """Remove a KV v2 secret with every version and its metadata; nothing there is fine."""
        _check_path(path, "KV path")
        self._call(
            f"{self.config.kv_mount}/metadata/{path}",
            lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(
                path, mount_point=self.config.kv_mount
            ),
        )

    @sensitive_variables("data")
    def kv_write(self, path: str, data: dict[str, Any], *, cas: int | None = None) -> int:
        """Write a new version of a KV v2 secret; returns the version number."""
        _check_path(path, "KV path")
        resp = self._call(
            f"{self.config.kv_mount}/data/{path}",
            lambda c: c.secrets.kv.v2.create_or_update_secret(
                path, secret=data, cas=cas, mount_point=self.config.kv_mount
            ),
            sensitive=[v for v in data.values() if isinstance(v, str)],
        )
        return int(resp["data"]["version"])

    def transit_sign(self, data: bytes, *, key: str | None = None) -> str:
        """Sign data with the transit key; returns Vault's "vault:vN:..." signature."""
        key = _check_path(key or self.config.transit_key, "transit key name")
        resp = self._call(
            f"{self.config.transit_mount}/sign/{key}",
            lambda c: c.secrets.transit.sign_data(
                key, hash_input=_b64(data), mount_point=self.config.transit_mount
            ),
        )
        return resp["data"]["signature"]

    def transit_verify(self, data: bytes, signature: str, *, key: str | None = None) -> bool:
        """True if the signature is the transit key's over data; False for any other signature."""
        key = _check_path(key or self.config.transit_key, "transit key name")
        path = f"{self.config.transit_mount}/verify/{key}"

        def verify(c):
            try:
                return c.secrets.transit.verify_signed_data(
                    key, hash_input=_b64(data), signature=signature, mount_point=self.config.transit_mount
                )["data"]["valid"]
            except hvac.exceptions.InvalidRequest as exc:
                if any("invalid signature" in e for e in exc.errors or ()):
                    return False  # malformed: certainly not a valid signature
                raise

        return bool(self._call(path, verify))

    def transit_public_keys(self, *, key: str | None = None) -> list[TransitKeyVersion]:
        """Every version of the transit key with its public key; VaultNotFound when there is no such key.

        Reads keys/<key>, which holds the public parts and the key's settings only (never a
        private key): the pamsite-app policy allows read there and nothing else.
        """
        key = _check_path(key or self.config.transit_key, "transit key name")
        path = f"{self.config.transit_mount}/keys/{key}"
        resp = self.read(path)
        if resp is None:
            raise VaultNotFound(f"Nothing found in Vault at {path}: the signing key does not exist")
        data = resp["data"]
        versions = []
        for number, info in (data.get("keys") or {}).items():
            if not isinstance(info, dict) or not info.get("public_key"):
                continue  # a symmetric key lists creation times only: nothing to keep
            versions.append(
                TransitKeyVersion(
                    version=int(number),
                    public_key=str(info["public_key"]),
                    created_at=_parse_time(str(info.get("creation_time") or "")),
                    key_type=str(data.get("type") or ""),
                )
            )
        return sorted(versions, key=lambda v: v.version)

    def ssh_sign_public_key(
        self, role: str, public_key: str, valid_principals: Iterable[str] | str, ttl: int | str
    ) -> str:
        """A user certificate for public_key, valid for the principals, signed by the SSH CA."""
        role = _check_path(role, "SSH role name")
        principals = valid_principals if isinstance(valid_principals, str) else ",".join(valid_principals)
        resp = self._call(
            f"{self.config.ssh_mount}/sign/{role}",
            lambda c: c.secrets.ssh.sign_ssh_key(
                name=role,
                public_key=public_key,
                valid_principals=principals,
                ttl=str(ttl),
                cert_type="user",
                mount_point=self.config.ssh_mount,
            ),
        )
        return resp["data"]["signed_key"].strip()

    @sensitive_variables("resp")
    def database_credentials(self, role: str) -> DatabaseCredentials:
        """New dynamic credentials for a database role, with their lease."""
        role = _check_path(role, "database role name")
        resp = self._call(
            f"{self.config.database_mount}/creds/{role}",
            lambda c: c.secrets.database.generate_credentials(role, mount_point=self.config.database_mount),
        )
        return DatabaseCredentials(
            resp["data"]["username"], resp["data"]["password"], resp["lease_id"], int(resp["lease_duration"])
        )

    def lease_renew(self, lease_id: str, increment: int) -> int:
        """Renew a lease; Vault sets its TTL to ``increment`` seconds (capped). Returns the new TTL."""
        resp = self._call("sys/leases/renew", lambda c: c.sys.renew_lease(lease_id, increment=increment))
        return int(resp["lease_duration"])

    def lease_revoke(self, lease_id: str) -> None:
        """Revoke a lease now (the database role is dropped); an unknown lease is not an error."""
        self._call("sys/leases/revoke", lambda c: c.sys.revoke_lease(lease_id))

    def mount_type(self, mount: str) -> str | None:
        """The engine at a mount ("kv-v2", "ssh", ...), or None when absent or hidden from this token."""
        path = f"sys/internal/ui/mounts/{_check_path(mount, 'mount')}"
        try:
            resp = self._call(path, lambda c: c.read(path))
        except VaultPermissionDenied:
            return None  # Vault answers 403 for a mount that does not exist
        if not resp:
            return None
        data = resp["data"]
        if data["type"] == "kv":
            return f"kv-v{(data.get('options') or {}).get('version', '1')}"
        return data["type"]

    # --- Raw API paths (vault_bootstrap, test set-up) ------------------------------

    def read(self, path: str) -> dict | None:
        """GET /v1/<path>; None when nothing is there."""
        resp = self._call(path, lambda c: c.read(path))
        return resp if isinstance(resp, dict) else None

    @sensitive_variables("data", "sensitive")
    def write(
        self, path: str, data: dict[str, Any] | None = None, *, sensitive: Iterable[str] = ()
    ) -> dict | None:
        """POST /v1/<path> with a JSON body; Vault's answer, or None when it has no body.

        Values listed in ``sensitive`` (a password in the body) are scrubbed from errors.
        """
        resp = self._call(path, lambda c: c.write_data(path, data=data or {}), sensitive=tuple(sensitive))
        return resp if isinstance(resp, dict) else None

    def delete(self, path: str) -> None:
        """DELETE /v1/<path>."""
        self._call(path, lambda c: c.delete(path))

    # --- Authentication ------------------------------------------------------------

    def _authenticated(self) -> hvac.Client:
        if self.auth_method == "approle":
            with self._lock:
                if self._token_deadline is None:
                    self._login()
                elif self._token_deadline - time.monotonic() < self._token_ttl * self.RENEW_FRACTION:
                    self._refresh()
        elif self.auth_method == "none":
            raise VaultAuthError(
                "No Vault credentials are configured: set VAULT_ROLE_ID and VAULT_SECRET_ID "
                "(or their _FILE forms), or VAULT_TOKEN"
            )
        return self._hvac

    @sensitive_variables("resp")
    def _login(self) -> None:
        mount = self.config.approle_mount
        try:
            resp = self._hvac.auth.approle.login(
                role_id=self.config.role_id,
                secret_id=self.config.secret_id,
                mount_point=mount,
                use_token=True,
            )
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            self._token_deadline = None
            raise VaultAuthError(
                "Vault rejected the AppRole credentials: check VAULT_ROLE_ID / VAULT_SECRET_ID "
                f"(and that AppRole is enabled at auth/{mount})"
            ) from None
        except Exception as exc:
            raise self._translate(exc, f"auth/{mount}/login") from None
        self._remember_lease(resp["auth"])
        logger.info("Logged in to Vault at %s with AppRole", self.config.addr)

    def _refresh(self) -> None:
        """Extend the token; when it cannot grow any more (max TTL) or is gone, log in again."""
        try:
            auth = self._hvac.auth.token.renew_self()["auth"]
        except Exception:
            auth = None
        if auth and auth.get("lease_duration", 0) >= self._token_ttl * self.RENEW_FRACTION:
            self._remember_lease(auth, keep_ttl=True)
        else:
            self._login()

    def _remember_lease(self, auth: dict, *, keep_ttl: bool = False) -> None:
        duration = int(auth.get("lease_duration") or 0)
        if not keep_ttl:
            self._token_ttl = duration
        self._token_deadline = time.monotonic() + duration if duration else math.inf

    def _token_is_valid(self) -> bool:
        try:
            self._hvac.auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            return False
        except Exception as exc:
            raise self._translate(exc, "auth/token/lookup-self") from None
        return True

    # --- Error mapping -------------------------------------------------------------

    @sensitive_variables("sensitive")
    def _call(self, path: str, fn: Callable[[hvac.Client], Any], *, sensitive: Iterable[str] = ()) -> Any:
        """Run fn with an authenticated hvac client, turning every failure into a VaultError."""
        for attempt in (1, 2):
            client = self._authenticated()
            token_used = client.token
            try:
                return fn(client)
            except hvac.exceptions.Forbidden:
                if client.token != token_used:  # another thread logged in meanwhile
                    continue
                if self._token_is_valid():
                    raise VaultPermissionDenied(
                        f"Vault refused the request (permission denied) for {path}: check the pamsite policy"
                    ) from None
                if self.auth_method != "approle":
                    raise VaultAuthError(
                        f"Vault rejected the token for {path} (expired or revoked): check VAULT_TOKEN"
                    ) from None
                if attempt == 1:
                    logger.info("Vault token expired or revoked; logging in with AppRole again")
                    with self._lock:
                        self._login()
                    continue
                raise VaultAuthError(
                    f"Vault rejected the AppRole token for {path} right after login"
                ) from None
            except Exception as exc:
                raise self._translate(exc, path, sensitive) from None
        raise VaultAuthError(f"Vault kept rejecting the token for {path}")

    def _translate(self, exc: Exception, path: str, sensitive: Iterable[str] = ()) -> Exception:
        addr, hx = self.config.addr, hvac.exceptions
        if isinstance(exc, requests.exceptions.SSLError):
            return VaultUnavailable(
                f"TLS verification failed for Vault at {addr}: set VAULT_CACERT to the CA bundle "
                "that signed its certificate"
            )
        if isinstance(exc, requests.exceptions.Timeout):
            return VaultUnavailable(
                f"Vault at {addr} did not answer within {self.config.timeout} s: check that it is "
                "running and reachable, or raise VAULT_TIMEOUT"
            )
        if isinstance(exc, requests.RequestException):
            return VaultUnavailable(
                f"Vault unreachable at {addr}: check VAULT_ADDR and that the server is running"
            )
        if not isinstance(exc, hx.VaultError):
            return exc  # a bug, not a Vault failure: let it surface as it is
        message = exc.args[0] if exc.args and exc.args[0] else ""
        detail = self._scrub("; ".join(exc.errors or ()) or str(message), sensitive)
        if isinstance(exc, hx.VaultDown):
            if "sealed" in detail.lower():
                return VaultSealed(self._sealed_message())
            return VaultUnavailable(f"Vault at {addr} is unavailable (HTTP 503) for {path}: {detail}")
        if isinstance(exc, hx.VaultNotInitialized):
            return VaultUnavailable(
                f"Vault at {addr} is not initialised: initialise it (bao operator init) and unseal it"
            )
        if isinstance(exc, hx.Forbidden):
            return VaultPermissionDenied(
                f"Vault refused the request (permission denied) for {path}: check the pamsite policy"
            )
        if isinstance(exc, hx.Unauthorized):
            return VaultAuthError(
                f"Vault refused the credentials for {path}: check VAULT_TOKEN or the AppRole"
            )
        if isinstance(exc, hx.InvalidPath):
            hint = detail or "check the path, and that manage.py vault_bootstrap has run"
            return VaultNotFound(f"Nothing found in Vault at {path}: {hint}")
        if isinstance(exc, hx.InvalidRequest) and "check-and-set" in detail:
            return VaultConflict(
                f"The secret at {path} changed meanwhile (check-and-set failed): read it again and retry"
            )
        if isinstance(exc, hx.RateLimitExceeded):
            return VaultUnavailable(f"Vault at {addr} is rate-limiting requests for {path}: retry later")
        return VaultError(f"Vault rejected the request for {path}: {detail or _answer_in_words(exc)}")

    def _translate_status(self, resp: requests.Response, path: str) -> Exception:
        try:
            errors = resp.json().get("errors")
        except ValueError:
            errors = None
        exc = hvac.exceptions.VaultError.from_status(
            resp.status_code, errors=errors or [f"HTTP {resp.status_code}"]
        )
        return self._translate(exc, path)

    def _sealed_message(self) -> str:
        return f"Vault is sealed at {self.config.addr}: unseal it (bao operator unseal) and retry"

    @sensitive_variables()
    def _scrub(self, text: str, sensitive: Iterable[str] = ()) -> str:
        """Vault's own error text, without our credentials or the values we sent, on one line."""
        secrets = [
            self.config.token,
            self.config.secret_id,
            self.config.role_id,
            self._hvac.token,
            *sensitive,
        ]
        for secret in secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        # Vault wraps some errors as "1 error occurred:\n\t* permission denied\n\n".
        return " ".join(re.sub(r"\d+ errors? occurred:|\t\* ", " ", text).split())[:300]


def _answer_in_words(exc: Exception) -> str:
    """What Vault answered, for an error that came without Vault's own words (never a class name)."""
    hx = hvac.exceptions
    for kind, words in (
        (hx.InvalidRequest, "it found the request invalid (HTTP 400)"),
        (hx.PreconditionFailed, "it is not up to date yet (HTTP 412): retry in a moment"),
        (hx.InternalServerError, "it had an internal error (HTTP 500): see Vault's log"),
        (hx.BadGateway, "a proxy in front of it could not reach it (HTTP 502)"),
        (hx.UnsupportedOperation, "it does not support this operation: check Vault's version"),
    ):
        if isinstance(exc, kind):
            return words
    return "it gave no reason: see Vault's log"


_client: VaultClient | None = None
_client_lock = threading.Lock()


def get_client() -> VaultClient:
    """The process's VaultClient, built from settings on first use."""
    global _client
    with _client_lock:
        if _client is None:
            _client = VaultClient(VaultConfig.from_settings())
        return _client


def reset_client() -> None:
    """Forget the cached client: the next get_client() reads the settings again."""
    global _client
    with _client_lock:
        _client = None


@receiver(setting_changed)
def _reset_on_setting_change(*, setting: str, **kwargs) -> None:
    if setting.startswith("VAULT_"):
        reset_client()
