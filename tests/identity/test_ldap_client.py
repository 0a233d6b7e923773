"""The LDAP client (identity/ldap_client.py) against a real slapd and a real Active Directory
(Samba AD DC), and the LDAP_* settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from identity.ldap_client import (
    PRESETS,
    DirectoryClient,
    DirectoryError,
    LdapConfig,
    entry_from_attrs,
    filetime,
    generalized_time_datetime,
    get_config,
    guid_to_str,
    normalise_dn,
)
from tests.fixtures.directory import slapd_only
from tests.fixtures.openbao import _make_tls_files, free_port

ROOT = Path(__file__).resolve().parent.parent.parent


def config_for(directory, **changes) -> LdapConfig:
    """The configuration the settings point at (``directory``'s tree), with changes."""
    return replace(get_config(), **changes)


def test_the_sync_account_reads_users_in_pages(directory):
    directory.add_users([f"user{i:03}" for i in range(120)])
    # Pages of 50: three round trips, every entry once.
    with DirectoryClient(config_for(directory, page_size=50)) as client:
        entries = list(client.iter_users())
    assert len(entries) == 120 and len({e.stable_id for e in entries}) == 120
    assert {e.username for e in entries} == {f"user{i:03}" for i in range(120)}


def test_bad_credentials_are_a_clear_error_without_the_password(directory):
    config = config_for(directory, bind_password="definitely-not-it-123")
    with pytest.raises(DirectoryError) as caught:
        DirectoryClient(config).connect()
    assert caught.value.kind == "credentials"
    assert "refused the sync account's credentials" in str(caught.value)
    assert "definitely-not-it-123" not in str(caught.value) and "definitely" not in repr(config)


@slapd_only
def test_a_server_that_is_down_is_named(directory):
    uri = f"ldap://127.0.0.1:{free_port()}"
    with pytest.raises(DirectoryError, match=f"Cannot reach the directory server {uri}") as caught:
        DirectoryClient(config_for(directory, uris=(uri,))).connect()
    assert caught.value.kind == "down"


@slapd_only
def test_a_hung_server_times_out_and_the_next_one_is_used(directory, slapd):
    import socket

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(4)
        hung_uri = f"ldap://127.0.0.1:{hung.getsockname()[1]}"
        alone = config_for(directory, uris=(hung_uri,), timeout=1)
        started = time.monotonic()
        with pytest.raises(DirectoryError, match=r"did not answer within 1 s \(LDAP_TIMEOUT\)"):
            DirectoryClient(alone).connect()
        assert time.monotonic() - started < 2.5
        both = config_for(directory, uris=(f"ldap://127.0.0.1:{free_port()}", hung_uri, slapd.uri), timeout=1)
        with DirectoryClient(both) as client:
            assert client.uri == slapd.uri


def test_starttls_with_the_ca_file(directory):
    directory.add_user("alice")
    server = directory.server
    config = config_for(directory, uris=(server.uri,), start_tls=True, ca_file=str(server.cacert))
    with DirectoryClient(config) as client:
        assert [e.username for e in client.iter_users()] == ["alice"]


def test_ldaps_with_the_ca_file(directory):
    directory.add_user("alice")
    server = directory.server
    config = config_for(directory, uris=(server.ldaps_uri,), ca_file=str(server.cacert))
    with DirectoryClient(config) as client:
        assert [e.username for e in client.iter_users()] == ["alice"]


def test_starttls_with_another_ca_is_a_tls_error(directory, tmp_path):
    server = directory.server
    _make_tls_files(tmp_path)  # a CA that did not sign the server's certificate
    config = config_for(directory, uris=(server.uri,), start_tls=True, ca_file=str(tmp_path / "ca.pem"))
    with pytest.raises(DirectoryError, match=f"TLS with {server.uri} failed") as caught:
        DirectoryClient(config).connect()
    assert caught.value.kind == "tls"
    assert str(tmp_path / "ca.pem") in str(caught.value)
    ldaps = config_for(directory, uris=(server.ldaps_uri,), ca_file=str(tmp_path / "ca.pem"))
    with pytest.raises(DirectoryError, match=f"TLS with {server.ldaps_uri} failed") as caught:
        DirectoryClient(ldaps).connect()
    assert caught.value.kind == "tls"


@slapd_only
def test_an_ldaps_address_that_accepts_and_closes_is_down_not_a_certificate_problem(directory):
    """A load balancer in front of domain controllers that are all down accepts the connection
    and closes it: libldap says "Can't contact LDAP server" either way, and only a server that
    completes a TLS handshake has a certificate to blame."""
    from tests.fixtures.netfault import TcpProxy

    proxy = TcpProxy("127.0.0.1", free_port()).start()  # nothing behind it
    try:
        uri = f"ldaps://127.0.0.1:{proxy.port}"
        with pytest.raises(DirectoryError) as caught:
            DirectoryClient(config_for(directory, uris=(uri,))).connect()
    finally:
        proxy.down()
    assert caught.value.kind == "down"
    assert f"Cannot reach the directory server {uri}" in str(caught.value)
    assert "certificate" not in str(caught.value)


def test_a_missing_search_base_is_named(directory):
    config = config_for(directory, user_base=f"ou=nowhere,{directory.server.suffix}")
    with pytest.raises(DirectoryError, match="the search base does not exist"):
        list(DirectoryClient(config).iter_users())


@pytest.mark.unit
def test_dns_compare_in_any_spelling():
    assert normalise_dn("CN=PACS\\, Admins,OU=Groups,DC=Hospital") == normalise_dn(
        "cn=pacs\\2c admins, ou=groups, dc=hospital"
    )
    with pytest.raises(DirectoryError, match="is not a distinguished name"):
        normalise_dn("pacs-admins")


def test_active_directory_entries():
    """objectGUID becomes the string AD tools print; userAccountControl bit 2 is "disabled"."""
    config = LdapConfig(uris=("ldaps://dc1",), preset="ad", attrs=PRESETS["ad"])
    guid = uuid.UUID("a3b2c1d0-1f2e-4d3c-8b7a-0123456789ab")
    attrs = {
        "sAMAccountName": [b"JSmith"],
        "displayName": ["Jöhn Smith".encode()],
        "objectGUID": [guid.bytes_le],
        "userAccountControl": [b"514"],  # NORMAL_ACCOUNT | ACCOUNTDISABLE
        "memberOf": [b"CN=PACS Admins,OU=Groups,DC=hospital,DC=example"],
        "whenChanged": [b"20261128101500.0Z"],
    }
    entry = entry_from_attrs(config, "CN=John Smith,OU=Staff,DC=hospital,DC=example", attrs)
    assert entry.stable_id == "a3b2c1d0-1f2e-4d3c-8b7a-0123456789ab" == guid_to_str(guid.bytes_le)
    assert entry.username == "jsmith" and entry.display_name == "Jöhn Smith" and entry.disabled
    assert "cn=pacs admins,ou=groups,dc=hospital,dc=example" in entry.member_of
    enabled = entry_from_attrs(config, "CN=x,DC=h", {**attrs, "userAccountControl": [b"512"]})
    assert not enabled.disabled
    assert config.nested_groups and config.attrs.modified == "whenChanged"


def test_active_directory_account_expiry_and_unreadable_account_control():
    """accountExpires in the past is disabled (0 and the largest Int64 mean never); an entry
    whose userAccountControl is missing or not a number cannot be judged: unusable."""
    config = LdapConfig(uris=("ldaps://dc1",), preset="ad", attrs=PRESETS["ad"])
    attrs = {
        "sAMAccountName": [b"vera"],
        "objectGUID": [uuid.uuid4().bytes_le],
        "userAccountControl": [b"512"],
    }

    def entry(**changed):
        return entry_from_attrs(config, "CN=Vera,DC=h", {**attrs, **changed})

    assert filetime(datetime(1970, 1, 1, tzinfo=UTC)) == 116_444_736_000_000_000  # as AD counts
    past, future = filetime(datetime(2020, 1, 1, tzinfo=UTC)), filetime(datetime(2100, 1, 1, tzinfo=UTC))
    assert entry(accountExpires=[str(past).encode()]).disabled
    for never in (str(future).encode(), b"0", b"9223372036854775807", b"-1", b"soon"):
        assert not entry(accountExpires=[never]).disabled, never
    assert "accountExpires" in config.attrs.fetched()
    assert not entry().unusable
    assert "may not read it" in entry(userAccountControl=[]).unusable
    assert "not one number" in entry(userAccountControl=[b"x"]).unusable
    assert generalized_time_datetime("20240102030405.0Z") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert generalized_time_datetime("20240102030405+0100") == datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert generalized_time_datetime("yesterday") is None


def _settings_check(env: dict[str, str], tmp_path, code: str = "") -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LDAP_") and k != "DATABASE_URL"}
    command = ["shell", "--no-imports", "-c", code] if code else ["check"]
    return subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env={**clean, "PAMSITE_VAR_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


LDAP_ENV = {
    "LDAP_SERVER_URI": "ldaps://dc1.hospital.example, ldaps://dc2.hospital.example",
    "LDAP_USER_BASE": "ou=staff,dc=hospital,dc=example",
    "LDAP_GROUP_ROLE_MAP": "cn=PACS\\, Admins,ou=groups,dc=hospital,dc=example=requester;"
    "cn=helpdesk,ou=groups,dc=hospital,dc=example=approver",
}


def test_the_settings_add_the_backend_between_the_lockout_check_and_modelbackend(tmp_path):
    code = (
        "from django.conf import settings as s; print(s.AUTHENTICATION_BACKENDS); "
        "print(s.LDAP_SERVER_URI); print(s.LDAP_GROUP_ROLE_MAP)"
    )
    result = _settings_check(LDAP_ENV, tmp_path, code)
    assert result.returncode == 0, result.stderr
    backends, uris, mapping = result.stdout.strip().splitlines()
    assert (
        backends.index("LockoutBackend") < backends.index("DirectoryBackend") < backends.index("ModelBackend")
    )
    assert uris == "['ldaps://dc1.hospital.example', 'ldaps://dc2.hospital.example']"
    assert "('cn=PACS\\\\, Admins,ou=groups,dc=hospital,dc=example', 'requester')" in mapping
    without = _settings_check(
        {}, tmp_path, "from django.conf import settings as s; print(s.AUTHENTICATION_BACKENDS)"
    )
    assert "DirectoryBackend" not in without.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LDAP_SERVER_URI": "dc1.hospital.example"},
            "LDAP_SERVER_URI: 'dc1.hospital.example' is not an LDAP",
        ),
        ({"LDAP_USER_BASE": ""}, "LDAP_USER_BASE must name where the users are"),
        ({"LDAP_GROUP_ROLE_MAP": "cn=x,dc=y=superuser"}, "LDAP_GROUP_ROLE_MAP: 'cn=x,dc=y=superuser' is not"),
        ({"LDAP_USER_FILTER": "(objectClass=person"}, "LDAP_USER_FILTER must be an LDAP filter"),
        ({"LDAP_PRESET": "novell"}, "LDAP_PRESET must be one of openldap, ad"),
        ({"LDAP_ATTR_USERNAME": "uid;x"}, "LDAP_ATTR_USERNAME must be an LDAP attribute name"),
        ({"LDAP_CA_FILE": "/nonexistent/ca.pem"}, "LDAP_CA_FILE: cannot read /nonexistent/ca.pem"),
        ({"LDAP_SYNC_MAX_DEACTIVATE_PERCENT": "150"}, "LDAP_SYNC_MAX_DEACTIVATE_PERCENT must be at most 100"),
        ({"LDAP_TIMEOUT": "soon"}, "LDAP_TIMEOUT must be a whole number"),
        (
            {"PAMSITE_MODE": "production", "LDAP_SERVER_URI": "ldap://dc1", "SECRET_KEY": "k" * 60},
            "LDAP_SERVER_URI uses ldap:// without LDAP_START_TLS",
        ),
    ],
)
def test_bad_ldap_settings_stop_startup_naming_the_variable(tmp_path, env, message):
    result = _settings_check(
        {**LDAP_ENV, "ALLOWED_HOSTS": "pam.example", "VAULT_ROLE_ID": "r", "VAULT_SECRET_ID": "s", **env},
        tmp_path,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


def test_the_bind_password_may_come_from_a_file(tmp_path):
    secret = tmp_path / "bind"
    secret.write_text("from-a-file-pw\n")
    code = "from django.conf import settings as s; print(s.LDAP_BIND_PASSWORD == 'from-a-file-pw')"
    result = _settings_check({**LDAP_ENV, "LDAP_BIND_PASSWORD_FILE": str(secret)}, tmp_path, code)
    assert result.stdout.strip() == "True", result.stderr


@slapd_only
def test_active_directory_asks_for_nested_members_in_one_search(directory):
    """AD resolves nested groups with LDAP_MATCHING_RULE_IN_CHAIN; the group DN is escaped into it."""
    config = config_for(directory, preset="ad", user_filter="(&(objectCategory=person)(objectClass=user))")
    client = DirectoryClient(config)
    assert client.members_filter("CN=PACS (West)\\, Admins*,OU=Groups,DC=h") == (
        "(&(&(objectCategory=person)(objectClass=user))"
        "(memberOf:1.2.840.113556.1.4.1941:=CN=PACS \\28West\\29\\5c, Admins\\2a,OU=Groups,DC=h))"
    )
    openldap = DirectoryClient(config_for(directory))
    assert openldap.members_filter("cn=a,dc=h") == "(&(objectClass=inetOrgPerson)(memberOf=cn=a,dc=h))"
