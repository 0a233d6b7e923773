"""pamsite settings.

All configuration comes from environment variables (see README, "Settings"). Each has
a default that works on a fresh clone: SQLite under var/, the embedded OpenBao dev
server on 127.0.0.1:8200, no broker. ``PAMSITE_MODE=production`` switches to the
hardened defaults and refuses to start without a real SECRET_KEY and ALLOWED_HOSTS.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from pamsite.env import env_bool, env_choice, env_int, env_list, env_secret, env_str, usable_cpus

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PAMSITE_VAR_DIR", str(BASE_DIR / "var")))

MODE = env_choice("PAMSITE_MODE", "dev", ("dev", "production"))
PRODUCTION = MODE == "production"

# --- Core -------------------------------------------------------------------------
# Dev only: production refuses to start with it (below).
_DEV_SECRET_KEY = "dev-only-insecure-key-never-use-in-production-0123456789abcdef"  # noqa: S105  # nosec B105
SECRET_KEY = env_secret("SECRET_KEY", "" if PRODUCTION else _DEV_SECRET_KEY)
if PRODUCTION and (len(SECRET_KEY) < 50 or SECRET_KEY == _DEV_SECRET_KEY):
    raise ImproperlyConfigured(
        "SECRET_KEY (or SECRET_KEY_FILE) must be set to a random value of at least 50 "
        "characters when PAMSITE_MODE=production."
    )
DEBUG = env_bool("DEBUG", not PRODUCTION)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be false when PAMSITE_MODE=production.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must name this site's host names when PAMSITE_MODE=production.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # must precede staticfiles (daphne.E001): runserver serves ASGI
    "pamsite.apps.PamsiteAdminConfig",  # django.contrib.admin for pam-admins only
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "csp",
    "identity",
    "audit",
    "vault",
    "access",
    "recordings.apps.RecordingsConfig",
    "gateway",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "pamsite.middleware.MFARequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "pamsite.urls"
WSGI_APPLICATION = "pamsite.wsgi.application"
ASGI_APPLICATION = "pamsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "pamsite.context_processors.pamsite",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------
DATABASE_URL = env_secret("DATABASE_URL", f"sqlite:///{VAR_DIR / 'pamsite.sqlite3'}")
try:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0),
            # A kept connection the server dropped (restart, failover) is replaced at the next
            # request instead of failing it.
            conn_health_checks=True,
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL this site understands: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Tests on a file, not in memory, so a worker process started by a test can share
    # it; one per test run, so two runs side by side do not clash.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-pamsite-{os.getpid()}.sqlite3")}
    # BEGIN IMMEDIATE: a transaction takes the write lock when it starts, so concurrent
    # writers (threads, the worker) wait their turn instead of failing half-way.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache; Redis when REDIS_URL is set (lockouts live in the database) ------------
REDIS_URL = env_secret("REDIS_URL", "")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Authentication ---------------------------------------------------------------
AUTH_USER_MODEL = "identity.User"
AUTHENTICATION_BACKENDS = [
    # Refuses a locked username or address before any password is checked.
    "identity.lockout.LockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
    "identity.backends.RolePermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "identity:login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "identity:login"
# An invitation (one-time link or password) of a new local user, or of a password reset,
# works for this long; then a pam-admin makes a new one.
INVITATION_LIFETIME_HOURS = env_int("INVITATION_LIFETIME_HOURS", 72, minimum=1, maximum=24 * 30)

# Idle sessions expire: every request pushes the expiry forward by this much.
SESSION_IDLE_TIMEOUT_MINUTES = env_int("SESSION_IDLE_TIMEOUT_MINUTES", 15, minimum=1, maximum=24 * 60)
SESSION_COOKIE_AGE = SESSION_IDLE_TIMEOUT_MINUTES * 60
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_NAME = "pamsite_session"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)
if PRODUCTION and not (SESSION_COOKIE_SECURE and CSRF_COOKIE_SECURE):
    # Sent over plain HTTP, the cookie of a session past both factors is anyone's to take.
    raise ImproperlyConfigured(
        "SESSION_COOKIE_SECURE and CSRF_COOKIE_SECURE cannot be false when PAMSITE_MODE=production."
    )
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_FAILURE_VIEW = "pamsite.views.csrf_failure"

# --- MFA (django-otp) -------------------------------------------------------------
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "pamsite")
# Codes one step either side of now are accepted (clock drift of phones).
OTP_TOTP_TOLERANCE = env_int("OTP_TOTP_TOLERANCE", 1, minimum=0, maximum=2)
OTP_TOTP_THROTTLE_FACTOR = 1
OTP_STATIC_THROTTLE_FACTOR = 1
MFA_BACKUP_CODES = 10

# --- Lockouts (identity.lockout): web and gateway count together, in the database ---
# A username is locked after LOGIN_FAILURE_LIMIT wrong passwords and codes (together) within
# LOGIN_LOCKOUT_MINUTES, for LOGIN_LOCKOUT_MINUTES; only that username.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=100)
LOGIN_LOCKOUT_MINUTES = env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1, maximum=24 * 60)
# A client address is locked only for password spraying: LOGIN_ADDRESS_FAILURE_LIMIT failures
# from it within the window, naming at least LOGIN_ADDRESS_USERNAMES different usernames, so
# one user's mistakes never lock colleagues behind the same NAT or proxy out.
# LOGIN_LOCKOUT_BY_IP=false turns address locks off.
LOGIN_LOCKOUT_BY_IP = env_bool("LOGIN_LOCKOUT_BY_IP", True)
LOGIN_ADDRESS_FAILURE_LIMIT = env_int("LOGIN_ADDRESS_FAILURE_LIMIT", 20, minimum=2, maximum=10_000)
LOGIN_ADDRESS_USERNAMES = env_int("LOGIN_ADDRESS_USERNAMES", 5, minimum=2, maximum=1_000)
if LOGIN_ADDRESS_USERNAMES > LOGIN_ADDRESS_FAILURE_LIMIT:
    raise ImproperlyConfigured(
        f"LOGIN_ADDRESS_USERNAMES ({LOGIN_ADDRESS_USERNAMES}) cannot be more than "
        f"LOGIN_ADDRESS_FAILURE_LIMIT ({LOGIN_ADDRESS_FAILURE_LIMIT}): each username counted is at least "
        "one failure."
    )
# How many reverse proxies in front of pamsite append to X-Forwarded-For (0: use the
# connection's address; never trust the header from clients directly).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0, maximum=5)

# --- Vault / OpenBao ----------------------------------------------------------------
# `make run`'s embedded OpenBao (vault/embedded.py) listens on this port, with its data,
# unseal key and root token under VAR_DIR/openbao/.
VAULT_EMBEDDED_PORT = env_int("PAMSITE_VAULT_PORT", 8200, minimum=1, maximum=65534)
VAULT_ADDR = env_str("VAULT_ADDR", f"http://127.0.0.1:{VAULT_EMBEDDED_PORT}")


# Dev default only (the embedded OpenBao's root token, for manage.py by hand): production
# authenticates with AppRole.
def _embedded_root_token() -> str:
    try:
        return (VAR_DIR / "openbao" / "root-token").read_text(encoding="utf-8").strip()
    except OSError:
        return ""  # no embedded OpenBao (yet), or not this user's


VAULT_TOKEN = env_secret("VAULT_TOKEN", "" if PRODUCTION else _embedded_root_token())
VAULT_ROLE_ID = env_secret("VAULT_ROLE_ID", "")
VAULT_SECRET_ID = env_secret("VAULT_SECRET_ID", "")
VAULT_CACERT = env_str("VAULT_CACERT", "")
VAULT_NAMESPACE = env_str("VAULT_NAMESPACE", "")
VAULT_TIMEOUT = env_int("VAULT_TIMEOUT", 10, minimum=1, maximum=300)
VAULT_APPROLE_MOUNT = env_str("VAULT_APPROLE_MOUNT", "approle")
VAULT_APPROLE_NAME = env_str("VAULT_APPROLE_NAME", "pamsite")
VAULT_KV_MOUNT = env_str("VAULT_KV_MOUNT", "pamsite-kv")
VAULT_DATABASE_MOUNT = env_str("VAULT_DATABASE_MOUNT", "pamsite-database")
VAULT_SSH_MOUNT = env_str("VAULT_SSH_MOUNT", "pamsite-ssh")
VAULT_TRANSIT_MOUNT = env_str("VAULT_TRANSIT_MOUNT", "pamsite-transit")
VAULT_TRANSIT_KEY = env_str("VAULT_TRANSIT_KEY", "pamsite-recordings")
# The SSH role (CA mode) that vault_bootstrap creates and the gateway signs user keys with.
VAULT_SSH_ROLE = env_str("VAULT_SSH_ROLE", "pamsite-gateway")
# Lifetime of a secret_id issued by `vault_bootstrap --write-approle`, in seconds (0: no expiry).
VAULT_APPROLE_SECRET_ID_TTL = env_int("VAULT_APPROLE_SECRET_ID_TTL", 0, minimum=0)
if PRODUCTION and not (VAULT_ROLE_ID and VAULT_SECRET_ID) and not VAULT_TOKEN:
    raise ImproperlyConfigured(
        "Vault credentials are missing: set VAULT_ROLE_ID and VAULT_SECRET_ID (or their _FILE forms) "
        "when PAMSITE_MODE=production."
    )

# --- Background work (Celery) -----------------------------------------------------
CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL", "")
# Without a broker (the embedded default) tasks run in the calling process.
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Access workflow ----------------------------------------------------------------
ACCESS_REQUEST_PENDING_HOURS = env_int("ACCESS_REQUEST_PENDING_HOURS", 24, minimum=1, maximum=24 * 30)
ACCESS_EXPIRY_WARNING_MINUTES = env_int("ACCESS_EXPIRY_WARNING_MINUTES", 10, minimum=1, maximum=120)
ACCESS_BREAK_GLASS_MAX_MINUTES = env_int("ACCESS_BREAK_GLASS_MAX_MINUTES", 60, minimum=5, maximum=240)
ACCESS_SWEEP_SECONDS = env_int("ACCESS_SWEEP_SECONDS", 15, minimum=1, maximum=3600)
CELERY_BEAT_SCHEDULE = {"access-sweep": {"task": "access.sweep", "schedule": float(ACCESS_SWEEP_SECONDS)}}

# --- E-mail (notifications) ----------------------------------------------------------
PAMSITE_BASE_URL = env_str("PAMSITE_BASE_URL", "http://127.0.0.1:8000")
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if PRODUCTION
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "pamsite <pamsite@localhost>")

# --- Audit ------------------------------------------------------------------------
AUDIT_PAGE_SIZE = env_int("AUDIT_PAGE_SIZE", 50, minimum=10, maximum=500)

# HTTP requests one web process runs at once; more wait their turn in its event loop
# (pamsite.asgi). Each running request holds a thread and a database connection, and
# every audited change takes its turn at the audit trail's head: past a few per core,
# more at once only makes each one slower and can exhaust PostgreSQL's connections.
WEB_MAX_CONCURRENT_REQUESTS = env_int("WEB_MAX_CONCURRENT_REQUESTS", 8, minimum=1, maximum=1000)

# --- Session recordings -----------------------------------------------------------
# One folder, shared by every gateway process of a node; the files are named from ids only.
RECORDINGS_ROOT = Path(env_str("RECORDINGS_ROOT", str(VAR_DIR / "recordings")))

# --- SSH gateway (manage.py ssh_gateway) --------------------------------------------
# Where the gateway listens, as host:port; 0.0.0.0:2222 to serve other machines.
GATEWAY_LISTEN = env_str("GATEWAY_LISTEN", "127.0.0.1:2222")
# The gateway's own SSH host key (Ed25519), created on first start and kept: users'
# ssh clients pin it. Keep it when moving or re-installing the gateway.
GATEWAY_HOST_KEY_FILE = Path(
    env_str("GATEWAY_HOST_KEY_FILE", str(VAR_DIR / "gateway" / "ssh_host_ed25519_key"))
)
# How users reach the gateway (shown on the pages: "ssh -p PORT user:account@HOST").
GATEWAY_PUBLIC_HOST = env_str("GATEWAY_PUBLIC_HOST", "localhost")
GATEWAY_PUBLIC_PORT = env_int("GATEWAY_PUBLIC_PORT", 2222, minimum=1, maximum=65535)
# This gateway host's name in Session rows; one per machine (processes add their pid).
GATEWAY_NODE = env_str("GATEWAY_NODE", "")
# Gateway worker processes sharing the listening port (one Python process relays on one
# core): "auto", the default, starts one per CPU the gateway may use.
GATEWAY_WORKERS = env_int("GATEWAY_WORKERS", min(usable_cpus(), 64), minimum=1, maximum=64, auto=usable_cpus)
# Ciphers the gateway offers users' clients. AES-GCM only by default: OpenSSH clients pick
# their own first choice among those offered, and GCM relays fastest (no separate MAC).
GATEWAY_CIPHERS = env_list("GATEWAY_CIPHERS", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])
# Seconds a client has to finish logging in (password/key and TOTP), counted from the TCP
# accept: a client stalled anywhere before (banner, key exchange, authentication) is dropped.
GATEWAY_LOGIN_TIMEOUT = env_int("GATEWAY_LOGIN_TIMEOUT", 60, minimum=5, maximum=600)
# Connection limits of one gateway process (gateway/ssh/limits.py), checked at the TCP
# accept so a flood costs no key exchange: all connections; connections from one client
# address (logging in or logged in); connections still logging in (handshakes cost CPU).
GATEWAY_MAX_CONNECTIONS = env_int("GATEWAY_MAX_CONNECTIONS", 500, minimum=1, maximum=100_000)
GATEWAY_MAX_CONNECTIONS_PER_ADDRESS = env_int(
    "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", 20, minimum=1, maximum=100_000
)
GATEWAY_MAX_UNAUTHENTICATED = env_int("GATEWAY_MAX_UNAUTHENTICATED", 100, minimum=1, maximum=100_000)
# Live gateway sessions one user may have at once, counted in the database (all processes).
GATEWAY_MAX_SESSIONS_PER_USER = env_int("GATEWAY_MAX_SESSIONS_PER_USER", 10, minimum=1, maximum=10_000)
# Database connections one gateway process uses at once (logins, opening and ending
# sessions, sealing recordings); more threads wait their turn. Keeps a mass disconnect (or
# a burst of logins) under PostgreSQL's max_connections, counted with the web processes'.
GATEWAY_MAX_DATABASE_CONNECTIONS = env_int("GATEWAY_MAX_DATABASE_CONNECTIONS", 8, minimum=1, maximum=1000)
# Seconds to log in to a target before the session is refused.
GATEWAY_UPSTREAM_TIMEOUT = env_int("GATEWAY_UPSTREAM_TIMEOUT", 15, minimum=1, maximum=120)

# --- The demo (make demo: access/demo.py) --------------------------------------------
# The demo PACS host's sshd listens on 127.0.0.1 at this port (an unusual one: a real sshd
# or the gateway may hold 22 and 2222).
DEMO_SSH_PORT = env_int("PAMSITE_DEMO_SSH_PORT", 22022, minimum=1, maximum=65535)
# When make demo runs as root: the dedicated OS user of the demo's static (password) account,
# made by the demo and marked so in its GECOS field; no other account's password is touched.
DEMO_OS_USER = env_str("PAMSITE_DEMO_OS_USER", "pamdemo")
if not re.match(r"^[a-z_][a-z0-9_-]{0,30}$", DEMO_OS_USER) or DEMO_OS_USER == "root":
    raise ImproperlyConfigured(
        f"PAMSITE_DEMO_OS_USER must be a new login name for the demo (lower-case letters, digits, "
        f"'_', '-', not root), not {DEMO_OS_USER[:40]!r}."
    )

# --- First administrator (make run) -----------------------------------------------
PAMSITE_SITE_NAME = env_str("PAMSITE_SITE_NAME", "pamsite")

# --- Internationalisation ---------------------------------------------------------
LANGUAGE_CODE = "en-gb"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static files -----------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
if not PRODUCTION:
    # WhiteNoise expects STATIC_ROOT to exist; in dev it serves from the finders.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# --- Security headers -------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    # Only behind a proxy that always sets (and strips client-sent) X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- Logging: never a secret, always to stderr (the process manager keeps it) ------
LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # hvac and urllib3 at debug level would print request bodies (tokens).
        "hvac": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        # asyncssh logs every connection and channel at INFO (the gateway and the SSH door).
        "asyncssh": {"level": "WARNING"},
    },
}

# --- Audit forwarding (manage.py audit_forward --loop, or the Celery task audit.forward) -----
# Comma-separated syslog URLs: syslog+tcp://HOST:514?format=json|cef|dicom,
# syslog+tls://HOST:6514?format=...&ca=/path/ca.pem (see audit/destinations.py).
from audit.destinations import parse_destinations  # noqa: E402  (plain Python: no models)

try:
    AUDIT_FORWARD = parse_destinations(env_str("AUDIT_FORWARD", ""))
except ValueError as exc:
    raise ImproperlyConfigured(f"AUDIT_FORWARD: {exc}") from None
# This host's name in the messages (syslog HOSTNAME, DICOM AuditSourceID); empty: the host name.
AUDIT_FORWARD_HOSTNAME = env_str("AUDIT_FORWARD_HOSTNAME", "")
# Seconds between the forwarder's looks for new events.
AUDIT_FORWARD_INTERVAL = env_int("AUDIT_FORWARD_INTERVAL", 2, minimum=1, maximum=3600)
# Events per batch; the cursor moves after each batch the receiver took.
AUDIT_FORWARD_BATCH = env_int("AUDIT_FORWARD_BATCH", 500, minimum=1, maximum=10000)
# Longest wait between retries of a receiver that is down (the wait doubles from 1 s).
AUDIT_FORWARD_MAX_BACKOFF = env_int("AUDIT_FORWARD_MAX_BACKOFF", 60, minimum=1, maximum=3600)
if AUDIT_FORWARD:
    CELERY_BEAT_SCHEDULE["audit-forward"] = {
        "task": "audit.forward",
        "schedule": float(AUDIT_FORWARD_INTERVAL),
    }

# --- Recordings retention and search ------------------------------------------------
# Days after a session ends before its recordings' files are deleted (0: keep forever). A
# legal hold on the session or on its user keeps them; the rows (sha256, signature) stay.
RECORDINGS_RETENTION_DAYS = env_int("RECORDINGS_RETENTION_DAYS", 365, minimum=0, maximum=100 * 366)
# Characters of text kept per session for the search (commands first, then output).
SESSIONS_SEARCH_MAX_CHARS = env_int(
    "SESSIONS_SEARCH_MAX_CHARS", 2_000_000, minimum=10_000, maximum=50_000_000
)
SESSIONS_PAGE_SIZE = env_int("SESSIONS_PAGE_SIZE", 50, minimum=10, maximum=500)
# How often the worker seals what a gateway left, indexes any ended session not indexed yet
# and deletes expired recordings.
SESSIONS_MAINTAIN_SECONDS = env_int("SESSIONS_MAINTAIN_SECONDS", 300, minimum=10, maximum=24 * 3600)
CELERY_BEAT_SCHEDULE["sessions-maintain"] = {
    "task": "sessions.maintain",
    "schedule": float(SESSIONS_MAINTAIN_SECONDS),
}
# How often the worker indexes the sessions that ended lately for search (the gateways do not:
# their time is for live sessions): a session is searchable about this long after it ends.
SESSIONS_INDEX_SECONDS = env_int("SESSIONS_INDEX_SECONDS", 5, minimum=1, maximum=3600)
CELERY_BEAT_SCHEDULE["sessions-index"] = {
    "task": "sessions.index_recent",
    "schedule": float(SESSIONS_INDEX_SECONDS),
}

# --- Directory (LDAP / Active Directory) ---------------------------------------------
# Empty LDAP_SERVER_URI (the default): no directory; only local users. Set: `manage.py
# sync_ldap` (and the worker, every LDAP_SYNC_INTERVAL_MINUTES) mirrors the directory's users
# and their roles, and users log in with their directory password (then TOTP, as everyone).
_LDAP_ROLES = ("requester", "approver", "auditor", "pam-admin", "break-glass")  # common.roles
_LDAP_ATTR_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+)$")


def _ldap_uris(name: str) -> list[str]:
    uris = [u for u in re.split(r"[\s,]+", env_str(name, "").strip()) if u]
    for uri in uris:
        if not re.match(r"^ldaps?://[^/\s]+/?$", uri, re.I):
            raise ImproperlyConfigured(
                f"{name}: {uri!r} is not an LDAP server URI like ldaps://dc1.hospital.example "
                "or ldap://ldap.hospital.example:389 (several: space- or comma-separated, for fail-over)."
            )
    return uris


def _ldap_filter(name: str) -> str:
    value = env_str(name, "").strip()
    # Parentheses balanced, ignoring escaped characters (\28 is the escape of "(" anyway).
    depth = 0
    for ch in re.sub(r"\\.", "", value):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if value and (depth != 0 or not (value.startswith("(") and value.endswith(")"))):
        raise ImproperlyConfigured(
            f"{name} must be an LDAP filter in parentheses, like (objectClass=person)."
        )
    return value


def _ldap_attr(name: str) -> str:
    value = env_str(name, "").strip()
    if value and not _LDAP_ATTR_NAME.match(value):
        raise ImproperlyConfigured(
            f"{name} must be an LDAP attribute name (like uid or objectGUID), not {value!r}."
        )
    return value


def _ldap_group_role_map(name: str) -> list[tuple[str, str]]:
    # "cn=pacs-admins,ou=groups,dc=x=requester;cn=helpdesk,ou=groups,dc=x=approver"
    pairs = []
    for item in re.split(r"(?<!\\)[;\n]", env_str(name, "")):
        item = item.strip()
        if not item:
            continue
        dn, sep, role = item.rpartition("=")
        if not sep or "=" not in dn or role.strip() not in _LDAP_ROLES:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not GROUP-DN=ROLE with ROLE one of {', '.join(_LDAP_ROLES)} "
                "(pairs separated by ';')."
            )
        pairs.append((dn.strip(), role.strip()))
    return pairs


# Several servers (space- or comma-separated) are tried in order: fail-over.
LDAP_SERVER_URI = _ldap_uris("LDAP_SERVER_URI")
LDAP_START_TLS = env_bool("LDAP_START_TLS", False)
# PEM file of the CA(s) that signed the directory's certificate (blank: the system's).
LDAP_CA_FILE = env_str("LDAP_CA_FILE", "")
if LDAP_CA_FILE and not os.access(LDAP_CA_FILE, os.R_OK):
    raise ImproperlyConfigured(f"LDAP_CA_FILE: cannot read {LDAP_CA_FILE}.")
# The sync (service) account: reads users and groups; no size limit on its searches.
LDAP_BIND_DN = env_str("LDAP_BIND_DN", "")
LDAP_BIND_PASSWORD = env_secret("LDAP_BIND_PASSWORD", "")
LDAP_USER_BASE = env_str("LDAP_USER_BASE", "")
# Blank: the preset's ((objectClass=inetOrgPerson); AD: (&(objectCategory=person)(objectClass=user))).
LDAP_USER_FILTER = _ldap_filter("LDAP_USER_FILTER")
LDAP_GROUP_BASE = env_str("LDAP_GROUP_BASE", "")
LDAP_GROUP_FILTER = _ldap_filter("LDAP_GROUP_FILTER")
# Attribute names and defaults: openldap (uid, entryUUID, memberOf overlay, ppolicy) or
# ad (sAMAccountName, objectGUID, userAccountControl, nested groups). See identity/ldap_client.py.
LDAP_PRESET = env_choice("LDAP_PRESET", "openldap", ("openldap", "ad"))
# Overrides of the preset's attribute names (blank: the preset's).
LDAP_ATTR_USERNAME = _ldap_attr("LDAP_ATTR_USERNAME")
LDAP_ATTR_DISPLAY_NAME = _ldap_attr("LDAP_ATTR_DISPLAY_NAME")
LDAP_ATTR_EMAIL = _ldap_attr("LDAP_ATTR_EMAIL")
LDAP_ATTR_FIRST_NAME = _ldap_attr("LDAP_ATTR_FIRST_NAME")
LDAP_ATTR_LAST_NAME = _ldap_attr("LDAP_ATTR_LAST_NAME")
LDAP_ATTR_STABLE_ID = _ldap_attr("LDAP_ATTR_STABLE_ID")
LDAP_ATTR_DISABLED = _ldap_attr("LDAP_ATTR_DISABLED")
LDAP_ATTR_MEMBER_OF = _ldap_attr("LDAP_ATTR_MEMBER_OF")
LDAP_ATTR_MODIFIED = _ldap_attr("LDAP_ATTR_MODIFIED")
# With a value, a user is disabled when LDAP_ATTR_DISABLED holds it; blank: when it is present
# (AD: userAccountControl's ACCOUNTDISABLE bit).
LDAP_DISABLED_VALUE = env_str("LDAP_DISABLED_VALUE", "")
# The initial group → role mapping; once pam-admins edit it on the Directory page, theirs rules.
LDAP_GROUP_ROLE_MAP = _ldap_group_role_map("LDAP_GROUP_ROLE_MAP")
# A run that would deactivate more users than this, or more than this percentage of the
# directory's users, changes nothing, fails and alerts pam-admins.
LDAP_SYNC_MAX_DEACTIVATE = env_int("LDAP_SYNC_MAX_DEACTIVATE", 10, minimum=0)
LDAP_SYNC_MAX_DEACTIVATE_PERCENT = env_int("LDAP_SYNC_MAX_DEACTIVATE_PERCENT", 10, minimum=0, maximum=100)
LDAP_SYNC_INTERVAL_MINUTES = env_int("LDAP_SYNC_INTERVAL_MINUTES", 15, minimum=1, maximum=24 * 60)
# The periodic sync is incremental, but a full one (which finds deleted users) at least this often.
LDAP_SYNC_FULL_INTERVAL_HOURS = env_int("LDAP_SYNC_FULL_INTERVAL_HOURS", 24, minimum=1, maximum=24 * 30)
# Seconds to connect to, and to wait for each answer of, a directory server.
LDAP_TIMEOUT = env_int("LDAP_TIMEOUT", 5, minimum=1, maximum=120)
if LDAP_SERVER_URI:
    if not LDAP_USER_BASE:
        raise ImproperlyConfigured(
            "LDAP_USER_BASE must name where the users are when LDAP_SERVER_URI is set."
        )
    if PRODUCTION and not LDAP_START_TLS and any(u.lower().startswith("ldap://") for u in LDAP_SERVER_URI):
        raise ImproperlyConfigured(
            "LDAP_SERVER_URI uses ldap:// without LDAP_START_TLS: passwords would cross the network in "
            "clear. Use ldaps:// or set LDAP_START_TLS=true when PAMSITE_MODE=production."
        )
    # After the lockout check (a locked username never reaches the directory), before
    # ModelBackend (a local pam-admin still logs in when the directory is down).
    AUTHENTICATION_BACKENDS.insert(
        AUTHENTICATION_BACKENDS.index("django.contrib.auth.backends.ModelBackend"),
        "identity.backends.DirectoryBackend",
    )
    CELERY_BEAT_SCHEDULE["identity-directory-sync"] = {
        "task": "access.directory_sync",  # the sync, then the leavers' grants and requests
        "schedule": float(LDAP_SYNC_INTERVAL_MINUTES * 60),
    }
