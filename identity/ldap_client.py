"""The directory (LDAP / Active Directory): the one module of pamsite that imports python-ldap.

Built lazily from the LDAP_* settings (``get_config()``). What it offers:

- ``DirectoryClient``: a connection bound as the sync (service) account, with fail-over
  across the LDAP_SERVER_URI list (the next server is tried when one is down, hangs past
  LDAP_TIMEOUT or fails TLS), StartTLS or LDAPS checked against LDAP_CA_FILE, paged
  searches (RFC 2696), and the users as ``DirectoryEntry`` values in the attribute map of
  the preset (openldap or ad) with any LDAP_ATTR_* overrides.
- ``auth_ldap_settings()`` and ``auth_ldap_module()``: what django-auth-ldap needs for the
  login backend (identity.backends.DirectoryBackend), from the same settings, connecting
  through the same fail-over.
- DN and filter helpers (``normalise_dn``, ``canonical_dn``, ``escape_filter``).

Every python-ldap error becomes ``DirectoryError`` with a message that says what went
wrong (server down, bad credentials, TLS failure, no such base, bad filter) and where.
The bind password never reaches a log line, an exception message or a repr.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from urllib.parse import urlsplit

import ldap
import ldap.dn
import ldap.filter
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from ldap.controls import SimplePagedResultsControl

logger = logging.getLogger(__name__)

# Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: "member of this group, directly or through
# nested groups" in one search.
MATCHING_RULE_IN_CHAIN = "1.2.840.113556.1.4.1941"
# userAccountControl bit ACCOUNTDISABLE.
AD_ACCOUNT_DISABLED = 0x2
# accountExpires: 100 ns steps since 1601-01-01 UTC; 0 and the largest Int64 mean "never".
AD_NEVER_EXPIRES = (0, 0x7FFFFFFFFFFFFFFF)
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
PAGE_SIZE = 500


class DirectoryError(Exception):
    """The directory could not be used: ``kind`` is down, credentials, tls, config, missing
    (no such entry or search base) or search."""

    def __init__(self, message: str, *, kind: str = "search"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class AttrMap:
    """Which directory attribute holds each user field."""

    username: str
    display_name: str
    email: str
    first_name: str
    last_name: str
    stable_id: str
    disabled: str
    member_of: str
    modified: str
    # When the account expires (AD accountExpires; no LDAP_ATTR_ setting): expired is disabled.
    expires: str = ""

    def fetched(self) -> list[str]:
        """The attributes a user search asks for (never userPassword)."""
        names = [
            self.username,
            self.display_name,
            self.email,
            self.first_name,
            self.last_name,
            self.stable_id,
            self.disabled,
            self.member_of,
            self.modified,
            self.expires,
        ]
        return list(dict.fromkeys(n for n in names if n))


# The presets: attribute names and default filters of an OpenLDAP (inetOrgPerson + the
# memberof overlay, ppolicy) and an Active Directory.
PRESETS: dict[str, AttrMap] = {
    "openldap": AttrMap(
        username="uid",
        display_name="cn",
        email="mail",
        first_name="givenName",
        last_name="sn",
        stable_id="entryUUID",
        disabled="pwdAccountLockedTime",
        member_of="memberOf",
        modified="modifyTimestamp",
    ),
    "ad": AttrMap(
        username="sAMAccountName",
        display_name="displayName",
        email="mail",
        first_name="givenName",
        last_name="sn",
        stable_id="objectGUID",
        disabled="userAccountControl",
        member_of="memberOf",
        # modifyTimestamp is constructed in AD and cannot be filtered on.
        modified="whenChanged",
        # A contractor's or vendor's account often ends by its expiry date, not by disabling.
        expires="accountExpires",
    ),
}
DEFAULT_USER_FILTER = {
    "openldap": "(objectClass=inetOrgPerson)",
    "ad": "(&(objectCategory=person)(objectClass=user))",
}
DEFAULT_GROUP_FILTER = {"openldap": "(objectClass=groupOfNames)", "ad": "(objectClass=group)"}
# The setting that overrides each attribute (LDAP_ATTR_<NAME>).
ATTR_SETTINGS = {
    "username": "LDAP_ATTR_USERNAME",
    "display_name": "LDAP_ATTR_DISPLAY_NAME",
    "email": "LDAP_ATTR_EMAIL",
    "first_name": "LDAP_ATTR_FIRST_NAME",
    "last_name": "LDAP_ATTR_LAST_NAME",
    "stable_id": "LDAP_ATTR_STABLE_ID",
    "disabled": "LDAP_ATTR_DISABLED",
    "member_of": "LDAP_ATTR_MEMBER_OF",
    "modified": "LDAP_ATTR_MODIFIED",
}


@dataclass(frozen=True)
class LdapConfig:
    """The directory settings, read once (``get_config``); the password is kept out of repr."""

    uris: tuple[str, ...] = ()
    start_tls: bool = False
    ca_file: str = ""
    bind_dn: str = ""
    bind_password: str = field(default="", repr=False)
    user_base: str = ""
    user_filter: str = ""
    group_base: str = ""
    group_filter: str = ""
    preset: str = "openldap"
    attrs: AttrMap = PRESETS["openldap"]
    # With a value: disabled when the attribute holds it (case-insensitive); blank: when present.
    disabled_value: str = ""
    timeout: int = 5
    page_size: int = PAGE_SIZE

    @property
    def enabled(self) -> bool:
        return bool(self.uris)

    @property
    def nested_groups(self) -> bool:
        """Active Directory resolves nested groups in one search (LDAP_MATCHING_RULE_IN_CHAIN)."""
        return self.preset == "ad"

    @classmethod
    def from_settings(cls) -> LdapConfig:
        from django.conf import settings

        preset = getattr(settings, "LDAP_PRESET", "openldap")
        base = PRESETS[preset]
        overrides = {
            name: value
            for name, setting in ATTR_SETTINGS.items()
            if (value := (getattr(settings, setting, "") or "").strip())
        }
        user_base = getattr(settings, "LDAP_USER_BASE", "")
        return cls(
            uris=tuple(getattr(settings, "LDAP_SERVER_URI", []) or ()),
            start_tls=bool(getattr(settings, "LDAP_START_TLS", False)),
            ca_file=getattr(settings, "LDAP_CA_FILE", ""),
            bind_dn=getattr(settings, "LDAP_BIND_DN", ""),
            bind_password=getattr(settings, "LDAP_BIND_PASSWORD", ""),
            user_base=user_base,
            user_filter=getattr(settings, "LDAP_USER_FILTER", "") or DEFAULT_USER_FILTER[preset],
            group_base=getattr(settings, "LDAP_GROUP_BASE", "") or user_base,
            group_filter=getattr(settings, "LDAP_GROUP_FILTER", "") or DEFAULT_GROUP_FILTER[preset],
            preset=preset,
            attrs=replace(base, **overrides),
            disabled_value=getattr(settings, "LDAP_DISABLED_VALUE", ""),
            timeout=int(getattr(settings, "LDAP_TIMEOUT", 5)),
        )


@lru_cache(maxsize=1)
def get_config() -> LdapConfig:
    """The directory settings, read once per process (tests call ``reset_config``)."""
    return LdapConfig.from_settings()


def reset_config() -> None:
    get_config.cache_clear()


# --- DNs, filters, values ----------------------------------------------------------------


def parse_dn(dn: str) -> list:
    """The RDNs of a DN; DirectoryError (kind config) when it is not one."""
    try:
        parts = ldap.dn.str2dn(dn.strip())
    except ldap.DECODING_ERROR:
        raise DirectoryError(
            f"{dn!r} is not a distinguished name (like cn=pacs-admins,ou=groups,dc=example,dc=org).",
            kind="config",
        ) from None
    if not parts:
        raise DirectoryError("The distinguished name is empty.", kind="config")
    return parts


def canonical_dn(dn: str) -> str:
    """A DN re-written in one spelling (RFC 4514 escapes, no stray spaces), case kept."""
    return ldap.dn.dn2str(parse_dn(dn))


@lru_cache(maxsize=4096)
def normalise_dn(dn: str) -> str:
    """A DN for comparison: canonical spelling and lower case (the attributes of names in
    directories compare case-insensitively: cn, ou, dc, uid, CN in AD)."""
    parts = parse_dn(dn)
    return ldap.dn.dn2str([[(a.lower(), v.lower(), f) for a, v, f in rdn] for rdn in parts])


def escape_filter(value: str) -> str:
    """A value made safe inside a search filter (RFC 4515: * ( ) \\ NUL escaped)."""
    return ldap.filter.escape_filter_chars(value)


def guid_to_str(raw: bytes) -> str:
    """Active Directory's objectGUID (16 bytes, little-endian fields) as its canonical string,
    the one AD tools print: e.g. b'\\x10\\x32...' -> '3210…-…'."""
    if len(raw) != 16:
        raise ValueError("objectGUID must be 16 bytes")
    return str(uuid.UUID(bytes_le=raw))


_GENERALIZED_TIME = re.compile(r"^(\d{14})(?:[.,](\d+))?(Z|[+-]\d{4})?$")


def generalized_time_key(value: str) -> str:
    """A sortable form of an LDAP GeneralizedTime ("20240102030405Z", AD "20240102030405.0Z")."""
    match = _GENERALIZED_TIME.match(value.strip())
    if not match:
        return ""
    return match.group(1) + "." + (match.group(2) or "0").ljust(6, "0")[:6]


def generalized_time_datetime(value: str) -> datetime | None:
    """An LDAP GeneralizedTime ("20240102030405Z", AD "20240102030405.0Z") as an aware
    datetime (to the second), or None when it is not one."""
    match = _GENERALIZED_TIME.match(value.strip())
    if not match:
        return None
    try:
        moment = datetime.strptime(match.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    zone = match.group(3) or "Z"
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        moment -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
    return moment


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One user as the directory holds it, in pamsite's terms.

    ``unusable`` says why pamsite cannot take this entry as it is (the sync leaves it alone
    and reports why); ``notes`` what was changed to take it (a value cut short, control
    characters replaced, an e-mail address that is not one left out), for the run's report.
    """

    dn: str
    stable_id: str
    username: str
    display_name: str = ""
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    disabled: bool = False
    member_of: frozenset[str] = frozenset()  # normalised DNs of the direct groups
    modified: str = ""  # GeneralizedTime as the server wrote it
    unusable: str = ""
    notes: tuple[str, ...] = ()


def _lowered(attrs: dict) -> dict:
    """The attributes keyed by lower-case name (servers spell them as they like)."""
    return {k.lower(): v for k, v in attrs.items()}


def _all(attrs: dict, name: str) -> list[bytes]:
    """The values of an attribute; ``attrs`` as returned by ``_lowered``."""
    return attrs.get(name.lower(), []) if name else []


def _first(attrs: dict, name: str) -> bytes | None:
    values = _all(attrs, name)
    return values[0] if values else None


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", errors="replace").strip() if value else ""


# What the user model can hold (identity.User): longer values would be cut by SQLite and
# refused by PostgreSQL, failing a whole batch of the sync.
USERNAME_MAX = 150
STABLE_ID_MAX = 200
DN_MAX = 1000
# Django's username rule (identity.User's validator), which the SSH gateway's login names follow.
USERNAME_RE = re.compile(r"^[\w.@+-]+\Z")
# C0 and C1 control characters: NUL cannot be stored by PostgreSQL, the others are never text.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def stable_id_of(config: LdapConfig, attrs: dict) -> str:
    """The entry's stable id as text; ``attrs`` keyed by lower-case name (``_lowered``).

    Active Directory's objectGUID in its usual spelling; any other value as (lower-case)
    text, or as ``hex:`` and its bytes when it is not text (an octet string: two different
    binary ids must never become the same text).
    """
    raw = _first(attrs, config.attrs.stable_id)
    if raw is None:
        return ""
    if config.attrs.stable_id.lower() == "objectguid":
        try:
            return guid_to_str(raw)
        except ValueError:
            return ""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "hex:" + raw.hex()
    if _CONTROLS.search(text):
        return "hex:" + raw.hex()
    return text.lower()


def _field(attrs: dict, name: str, limit: int, notes: list[str]) -> str:
    """A text attribute for a user field: its first value, control characters replaced, cut
    to what the field holds (each change noted)."""
    text = _text(_first(attrs, name))
    if _CONTROLS.search(text):
        text = _CONTROLS.sub("\ufffd", text)
        notes.append(f"{name} holds control characters; they were replaced by \ufffd")
    if len(text) > limit:
        notes.append(f"{name} is {len(text)} characters long; the first {limit} were kept")
        text = text[:limit]
    return text


def _username(attrs: dict, name: str) -> tuple[str, str]:
    """The username (lower case) and, if pamsite cannot use it, why."""
    values = _all(attrs, name)
    username = _text(values[0]).lower() if values else ""
    if len(values) > 1:
        return username[:USERNAME_MAX], f"{name} has {len(values)} values; a user needs exactly one username"
    if len(username) > USERNAME_MAX:
        return username[:USERNAME_MAX], (
            f"its username ({name}) is {len(username)} characters long; the longest pamsite takes is "
            f"{USERNAME_MAX}"
        )
    if username and not USERNAME_RE.match(username):
        shown = repr(username) if len(username) <= 60 else repr(username[:60]) + "…"
        return _CONTROLS.sub("\ufffd", username), (
            f"its username ({name}) {shown} has characters a pamsite username cannot have "
            "(letters, digits and . @ + - _ only)"
        )
    return username, ""


def filetime(moment: datetime) -> int:
    """A time in AD's Int64 form (accountExpires, pwdLastSet): 100 ns steps since 1601 UTC."""
    delta = moment - _FILETIME_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def is_expired(config: LdapConfig, attrs: dict, *, now: datetime | None = None) -> bool:
    """Whether the account's expiry time (AD accountExpires) has passed; ``attrs`` keyed by
    lower-case name. AD refuses the password of an expired account from that moment on."""
    value = _first(attrs, config.attrs.expires)
    if value is None:
        return False
    try:
        ticks = int(value)
    except ValueError:
        return False
    if ticks in AD_NEVER_EXPIRES or ticks < 0:
        return False
    return ticks <= filetime(now or datetime.now(UTC))


def is_disabled(config: LdapConfig, attrs: dict) -> bool:
    """Whether the directory disables the account; ``attrs`` keyed by lower-case name."""
    name = config.attrs.disabled
    values = _all(attrs, name)
    if not values:
        return False
    if name.lower() == "useraccountcontrol":
        return bool(_account_control(values) & AD_ACCOUNT_DISABLED)
    if config.disabled_value:
        wanted = config.disabled_value.lower()
        return any(_text(v).lower() == wanted for v in values)
    return True


def _account_control(values: list[bytes]) -> int:
    """userAccountControl as a number, 0 when it is not one (``_account_control_problem`` then
    makes the entry unusable)."""
    try:
        return int(values[0]) if len(values) == 1 else 0
    except ValueError:
        return 0


def _account_control_problem(config: LdapConfig, attrs: dict) -> str:
    """Why pamsite cannot tell from userAccountControl whether the account is disabled ("" if it can).

    Every AD user has exactly one, a number: none at all means the sync account may not read
    it (a deny on the attribute), and taking such a user as enabled would keep a leaver in.
    """
    name = config.attrs.disabled
    if name.lower() != "useraccountcontrol":
        return ""
    values = _all(attrs, name)
    if not values:
        return (
            f"it has no {name}: the sync account (LDAP_BIND_DN) may not read it, so pamsite cannot "
            "tell whether the account is disabled; give the sync account read access to it"
        )
    try:
        if len(values) == 1:
            int(values[0])
            return ""
    except ValueError:
        pass
    return f"its {name} is not one number, so pamsite cannot tell whether the account is disabled"


# A DN that has none of these is already in canonical spelling (skips re-writing 100,000 DNs).
_RESPELLED = ("\\", ", ", " ,", "= ", " =", "+", '"', ";")


def entry_from_attrs(config: LdapConfig, dn: str, attrs: dict) -> DirectoryEntry:
    """A DirectoryEntry from a search result's raw attributes (bytes values).

    Whatever the directory holds (empty, huge, binary or non-UTF-8 values, several values
    where one is expected), the entry is one the sync can store or one it leaves alone
    (``unusable``, with the reason); never a user with a cut or broken username or id.
    """
    a = config.attrs
    attrs = _lowered(attrs)
    member_of = set()
    for value in _all(attrs, a.member_of):
        try:
            member_of.add(normalise_dn(_text(value)))
        except DirectoryError:
            continue
    if any(mark in dn for mark in _RESPELLED):
        with contextlib.suppress(DirectoryError):
            dn = canonical_dn(dn)  # one spelling (servers differ: "\2C" or "\,")
    notes: list[str] = []
    # Usernames in pamsite are lower case: directories compare them case-insensitively.
    username, unusable = _username(attrs, a.username)
    stable_id = stable_id_of(config, attrs)
    ids = len(_all(attrs, a.stable_id))
    if ids > 1:
        unusable, stable_id = f"{a.stable_id} has {ids} values; a user needs exactly one stable id", ""
    elif len(stable_id) > STABLE_ID_MAX:
        unusable = f"its stable id ({a.stable_id}) has {len(stable_id)} characters (at most {STABLE_ID_MAX})"
    if len(dn) > DN_MAX or _CONTROLS.search(dn):
        unusable = f"its DN is {len(dn)} characters long or holds control characters (at most {DN_MAX})"
    unusable = unusable or _account_control_problem(config, attrs)
    email = _field(attrs, a.email, 254, notes)
    if email:
        try:
            validate_email(email)
        except ValidationError:
            notes.append(f"{a.email} {email[:60]!r} is not an e-mail address; left out")
            email = ""
    return DirectoryEntry(
        dn=dn,
        stable_id=stable_id,
        username=username,
        display_name=_field(attrs, a.display_name, 200, notes),
        email=email,
        first_name=_field(attrs, a.first_name, 150, notes),
        last_name=_field(attrs, a.last_name, 150, notes),
        disabled=is_disabled(config, attrs) or is_expired(config, attrs),
        member_of=frozenset(member_of),
        modified=_text(_first(attrs, a.modified))[:40],
        unusable=unusable,
        notes=tuple(notes),
    )


# --- Errors ----------------------------------------------------------------------------------


def _info(exc: ldap.LDAPError) -> str:
    detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    text = detail.get("desc", "") or exc.__class__.__name__
    info = detail.get("info", "")
    if info and info != "(unknown error code)":
        text += f": {info}"
    return text.rstrip(". ")  # the messages around it end their own sentences


def _translate(exc: ldap.LDAPError, *, uri: str, config: LdapConfig, during: str) -> DirectoryError:
    """A python-ldap error as a DirectoryError saying what went wrong, where (never the password)."""
    if isinstance(exc, ldap.INVALID_CREDENTIALS):
        return DirectoryError(
            f"{uri} refused the sync account's credentials (LDAP_BIND_DN {config.bind_dn!r} and "
            "LDAP_BIND_PASSWORD): bad credentials, or the account is locked.",
            kind="credentials",
        )
    if isinstance(exc, ldap.STRONG_AUTH_REQUIRED | ldap.CONFIDENTIALITY_REQUIRED):
        # Active Directory takes a password (a simple bind) only over an encrypted connection.
        return DirectoryError(
            f"{uri} requires TLS before it takes a password ({_info(exc)}): use an ldaps:// URI in "
            "LDAP_SERVER_URI or set LDAP_START_TLS=true, with LDAP_CA_FILE naming the CA that signed "
            "the server's certificate.",
            kind="tls",
        )
    if isinstance(exc, ldap.TIMEOUT):
        return DirectoryError(
            f"{uri} did not answer within {config.timeout} s (LDAP_TIMEOUT) while {during}.", kind="down"
        )
    if during == "starting TLS" or isinstance(exc, ldap.CONNECT_ERROR):
        ca = f"LDAP_CA_FILE {config.ca_file}" if config.ca_file else "the system's CA certificates"
        return DirectoryError(
            f"TLS with {uri} failed ({_info(exc)}): its certificate is not signed by a CA in {ca}, "
            "its name does not match the URI's host, or the server does not offer TLS.",
            kind="tls",
        )
    if isinstance(exc, ldap.SERVER_DOWN):
        info = _info(exc)
        if during in _HANDSHAKE:
            if uri.lower().startswith("ldaps://"):
                # libldap says "Can't contact LDAP server" (GnuTLS adds "The TLS connection was
                # non-properly terminated" for a peer that just closes) for a certificate it
                # refuses and for a server that is not there alike: ask the server.
                tls_problem = _speaks_tls(uri, config.timeout)
            else:
                tls_problem = any(word in info.lower() for word in ("tls", "ssl", "certificate"))
            if tls_problem:
                ca = f"LDAP_CA_FILE {config.ca_file}" if config.ca_file else "the system's CA certificates"
                return DirectoryError(
                    f"TLS with {uri} failed ({info}): the server answers, but its certificate is not "
                    f"signed by a CA in {ca} or its name does not match the URI's host.",
                    kind="tls",
                )
            return DirectoryError(f"Cannot reach the directory server {uri}: {info}.", kind="down")
        # The connection was up (TLS done, bound): the server went away in the middle.
        return DirectoryError(
            f"Cannot reach the directory server {uri} any more: it went away while {during} ({info}).",
            kind="down",
        )
    if isinstance(exc, ldap.REFERRAL):
        # Active Directory's answer for a DN of another domain of the forest (a group of the
        # radiology domain, say): it is not in this directory, as far as this server goes.
        return DirectoryError(
            f"{uri}: what {during} asked for is in another domain or partition; the server refers "
            f"elsewhere ({_info(exc)}). Use a Global Catalog (ldaps://...:3269) or a domain "
            "controller of that domain.",
            kind="missing",
        )
    if isinstance(exc, ldap.NO_SUCH_OBJECT):
        return DirectoryError(
            f"{uri}: the search base does not exist while {during} ({_info(exc)}).", kind="missing"
        )
    if isinstance(exc, ldap.FILTER_ERROR):
        return DirectoryError(f"{uri}: a search filter is not valid while {during}.", kind="config")
    if isinstance(exc, ldap.SIZELIMIT_EXCEEDED | ldap.ADMINLIMIT_EXCEEDED):
        return DirectoryError(
            f"{uri} stopped the search at its size limit while {during}: give the sync account "
            "no size limit (OpenLDAP olcLimits) or check that paged results are allowed.",
            kind="config",
        )
    if isinstance(exc, ldap.INSUFFICIENT_ACCESS):
        return DirectoryError(
            f"{uri}: the sync account may not read what {during} needs ({_info(exc)}).", kind="config"
        )
    return DirectoryError(f"{uri}: directory error while {during}: {_info(exc)}.", kind="search")


# What open_connection is doing when libldap makes the TLS handshake (at the first operation).
_HANDSHAKE = ("connecting", "binding as the sync account")


def _speaks_tls(uri: str, timeout: int) -> bool:
    """Whether the server at the URI's host and port completes a TLS handshake.

    Only to tell why libldap could not connect: a server that answers TLS has a certificate
    we do not trust; one that accepts TCP and then closes (a load balancer or proxy whose
    domain controllers are down, a server dying) is down. Nothing is sent over it.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a probe of the handshake, not a connection we use
    try:
        parts = urlsplit(uri)
        host = parts.hostname or "localhost"
        with (
            socket.create_connection((host, parts.port or 636), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except (OSError, ValueError):
        return False


# --- Connections --------------------------------------------------------------------------------


def _initialize(config: LdapConfig, uri: str):
    conn = ldap.initialize(uri, bytes_mode=False)
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, config.timeout)
    conn.set_option(ldap.OPT_TIMEOUT, config.timeout)
    # Active Directory answers searches at the domain root with referrals; never chase them.
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
    if config.ca_file:
        conn.set_option(ldap.OPT_X_TLS_CACERTFILE, config.ca_file)
    conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # last: applies the TLS options above
    conn.timeout = config.timeout
    return conn


def open_connection(config: LdapConfig):
    """A connection to the first server of LDAP_SERVER_URI that answers, TLS started as
    configured, bound as the sync account.

    A server that is down, does not answer within LDAP_TIMEOUT or fails TLS is skipped; bad
    credentials stop at once (the replicas share them). DirectoryError names every failure.
    """
    if not config.enabled:
        raise DirectoryError("LDAP is not configured: LDAP_SERVER_URI is empty.", kind="config")
    failures: list[DirectoryError] = []
    for uri in config.uris:
        conn = None
        during = "connecting"
        try:
            conn = _initialize(config, uri)
            if config.start_tls and not uri.lower().startswith("ldaps://"):
                during = "starting TLS"
                conn.start_tls_s()
            during = "binding as the sync account"
            conn.simple_bind_s(config.bind_dn, config.bind_password)
            logger.debug("LDAP: connected to %s as %s", uri, config.bind_dn)
            return conn
        except ldap.LDAPError as exc:
            error = _translate(exc, uri=uri, config=config, during=during)
            _unbind(conn)
            if error.kind == "credentials":
                raise error from None
            logger.warning("LDAP: %s", error)
            failures.append(error)
    if len(failures) == 1:
        raise failures[0]
    kind = "tls" if all(f.kind == "tls" for f in failures) else "down"
    raise DirectoryError(
        "No directory server could be used: " + " ".join(str(f) for f in failures), kind=kind
    )


def _unbind(conn) -> None:
    if conn is None:
        return
    with contextlib.suppress(ldap.LDAPError):
        conn.unbind_s()


class DirectoryClient:
    """The sync account's view of the directory (a context manager: connects, then unbinds)."""

    def __init__(self, config: LdapConfig | None = None):
        self.config = config or get_config()
        self._conn = None
        self.uri = ""

    def __enter__(self) -> DirectoryClient:
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def connect(self) -> None:
        self._conn = open_connection(self.config)
        self.uri = self._conn.get_option(ldap.OPT_URI)

    def close(self) -> None:
        _unbind(self._conn)
        self._conn = None

    def paged_search(
        self,
        base: str,
        filterstr: str,
        attrs: list[str] | None,
        *,
        scope: int = ldap.SCOPE_SUBTREE,
        during: str,
    ) -> Iterator[tuple[str, dict]]:
        """(dn, raw attributes) for every entry, page by page (RFC 2696 simple paged results)."""
        if self._conn is None:
            self.connect()
        control = SimplePagedResultsControl(True, size=self.config.page_size, cookie="")
        try:
            while True:
                msgid = self._conn.search_ext(base, scope, filterstr, attrs, serverctrls=[control])
                _, data, _, controls = self._conn.result3(msgid, timeout=self.config.timeout)
                for dn, entry_attrs in data:
                    if dn is not None:  # skip search references (AD)
                        yield dn, entry_attrs
                cookie = next(
                    (c.cookie for c in controls if c.controlType == SimplePagedResultsControl.controlType),
                    b"",
                )
                if not cookie:
                    return
                control.cookie = cookie
        except ldap.LDAPError as exc:
            raise _translate(exc, uri=self.uri, config=self.config, during=during) from None

    def _user_filter(self, *extra: str) -> str:
        return "(&" + self.config.user_filter + "".join(extra) + ")" if extra else self.config.user_filter

    def iter_users(self, *, modified_since: str = "") -> Iterator[DirectoryEntry]:
        """Every user under LDAP_USER_BASE matching LDAP_USER_FILTER (modified since, if given)."""
        extra = []
        if modified_since:
            changed = f"({self.config.attrs.modified}>={escape_filter(modified_since)})"
            expires = self.config.attrs.expires
            if expires:
                # An expiry date passing changes nothing in the entry (whenChanged neither): the
                # accounts that expired since the mark are read as well.
                since = generalized_time_datetime(modified_since)
                low = max(filetime(since), 1) if since else 1
                now = filetime(datetime.now(UTC))
                changed = f"(|{changed}(&({expires}>={low})({expires}<={now})))"
            extra.append(changed)
        for dn, attrs in self.paged_search(
            self.config.user_base,
            self._user_filter(*extra),
            self.config.attrs.fetched(),
            during="reading the users",
        ):
            yield entry_from_attrs(self.config, dn, attrs)

    def user_by_dn(self, dn: str) -> DirectoryEntry | None:
        """The user at ``dn`` if it matches LDAP_USER_FILTER (else None)."""
        try:
            found = list(
                self.paged_search(
                    dn,
                    self.config.user_filter,
                    self.config.attrs.fetched(),
                    scope=ldap.SCOPE_BASE,
                    during="reading a user",
                )
            )
        except DirectoryError as exc:
            if exc.kind == "missing":
                return None
            raise
        return entry_from_attrs(self.config, *found[0]) if found else None

    def members_of(self, group_dn: str) -> set[str]:
        """Stable ids of the users in the group: directly, and for Active Directory also through
        nested groups (LDAP_MATCHING_RULE_IN_CHAIN)."""
        return {
            stable_id_of(self.config, _lowered(attrs))
            for _, attrs in self.paged_search(
                self.config.user_base,
                self.members_filter(group_dn),
                [self.config.attrs.stable_id],
                during="reading a group's members",
            )
        } - {""}

    def members_filter(self, group_dn: str) -> str:
        """The users in a group: (memberOf=DN), for AD (memberOf:1.2.840.113556.1.4.1941:=DN)."""
        rule = f":{MATCHING_RULE_IN_CHAIN}:" if self.config.nested_groups else ""
        return self._user_filter(f"({self.config.attrs.member_of}{rule}={escape_filter(group_dn)})")

    def is_member(self, entry: DirectoryEntry, group_dn: str) -> bool:
        """Whether one user is in the group (nested groups too for Active Directory)."""
        if not self.config.nested_groups:
            return normalise_dn(group_dn) in entry.member_of
        filterstr = f"({self.config.attrs.member_of}:{MATCHING_RULE_IN_CHAIN}:={escape_filter(group_dn)})"
        found = self.paged_search(
            entry.dn, filterstr, ["1.1"], scope=ldap.SCOPE_BASE, during="checking a membership"
        )
        return any(True for _ in found)

    def existing_groups(self, group_dns: Iterable[str]) -> set[str]:
        """The normalised DNs, among those given, of groups that exist (and match LDAP_GROUP_FILTER)."""
        found = set()
        for group_dn in group_dns:
            try:
                for _ in self.paged_search(
                    group_dn,
                    self.config.group_filter,
                    ["1.1"],
                    scope=ldap.SCOPE_BASE,
                    during="reading a group",
                ):
                    found.add(normalise_dn(group_dn))
            except DirectoryError as exc:
                if exc.kind != "missing":
                    raise
        return found


# --- The login backend (django-auth-ldap) --------------------------------------------------


class _FailoverLdapModule:
    """python-ldap as django-auth-ldap sees it, but ``initialize`` connects through
    ``open_connection`` (fail-over, timeouts, TLS; the sync account's bind proves the server
    answers), and django-auth-ldap then binds as it needs."""

    def __init__(self, config: LdapConfig):
        self._config = config

    def initialize(self, uri, bytes_mode=False):
        try:
            return open_connection(self._config)
        except DirectoryError as exc:
            # django-auth-ldap treats an LDAPError as "this backend cannot say": the next
            # backend (a local account) is tried.
            raise ldap.SERVER_DOWN({"desc": str(exc)}) from None

    def __getattr__(self, name):
        return getattr(ldap, name)


def auth_ldap_module(config: LdapConfig | None = None) -> _FailoverLdapModule:
    return _FailoverLdapModule(config or get_config())


def auth_ldap_settings(config: LdapConfig | None = None) -> dict:
    """django-auth-ldap's settings (without the AUTH_LDAP_ prefix) for the login backend.

    The user's DN is found by a search as the sync account, the username escaped by
    django-auth-ldap (``%(user)s``); the password is checked by binding as that DN. No
    attribute is copied and no group mirrored: the sync (identity.directory) keeps users.
    """
    from django_auth_ldap.config import LDAPSearch

    config = config or get_config()
    # A "%" in the configured filter must not be taken for a placeholder.
    user_filter = config.user_filter.replace("%", "%%")
    search = LDAPSearch(
        config.user_base,
        ldap.SCOPE_SUBTREE,
        f"(&{user_filter}({config.attrs.username}=%(user)s))",
        attrlist=["1.1"],
    )
    return {
        "SERVER_URI": " ".join(config.uris),
        "START_TLS": False,  # done by open_connection
        "BIND_DN": config.bind_dn,
        "BIND_PASSWORD": config.bind_password,
        "USER_SEARCH": search,
        "USER_ATTRLIST": ["1.1"],
        "USER_ATTR_MAP": {},
        "ALWAYS_UPDATE_USER": False,
        "MIRROR_GROUPS": None,
        "FIND_GROUP_PERMS": False,
        "CACHE_TIMEOUT": 0,
        # PERMIT_EMPTY_PASSWORD stays at its default, off: an empty password would be an
        # anonymous bind, which many servers accept.
    }
