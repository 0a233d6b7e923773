"""Logging in with the directory's password (django-auth-ldap), then TOTP, against a real slapd
and a real Active Directory (Samba AD DC)."""

from __future__ import annotations

import re
import socket
import time

import pytest
from django.contrib.auth import authenticate
from django.test import RequestFactory
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from identity.backends import DirectoryBackend
from identity.directory import directory_sync
from identity.gateway_auth import gateway_password_login
from identity.ldap_client import reset_config
from identity.models import User
from tests.conftest import PASSWORD, make_user
from tests.fixtures.directory import slapd_only
from tests.fixtures.openbao import free_port
from tests.fixtures.slapd import LDAP_BACKENDS
from tests.totp import totp_code

pytestmark = pytest.mark.django_db

ALICE_PASSWORD = "Directory pw for Alice 42!"


@pytest.fixture
def signin(directory, settings):
    """alice (in pacs-admins → requester) with a directory password; LDAP login enabled."""
    alice = directory.add_user(
        "alice", cn="Alice Archer", mail="alice@hospital.example", password=ALICE_PASSWORD
    )
    admins = directory.add_group("pacs-admins", alice)
    settings.LDAP_GROUP_ROLE_MAP = [(admins, "requester")]
    settings.AUTHENTICATION_BACKENDS = LDAP_BACKENDS
    return {"alice": alice, "pacs-admins": admins}


@pytest.fixture
def hung_server():
    """A TCP port that accepts connections and never answers (a server that hangs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"ldap://127.0.0.1:{s.getsockname()[1]}"


def login(client, username, password):
    return client.post(reverse("identity:login"), {"username": username, "password": password})


def test_the_directory_password_then_totp_logs_in(client, signin):
    directory_sync(full=True, dry_run=False)
    alice = User.objects.get(username="alice")
    device = TOTPDevice.objects.create(user=alice, name="phone", confirmed=True)
    response = login(client, "alice", ALICE_PASSWORD)
    assert response.status_code == 302 and response["Location"].startswith(reverse("identity:verify"))
    # The password alone opens nothing.
    assert client.get(reverse("dashboard"))["Location"].startswith(reverse("identity:verify"))
    response = client.post(reverse("identity:verify"), {"code": totp_code(device.bin_key)})
    assert response.status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200
    assert User.objects.filter(source="ldap").count() == 1  # the synced row, no duplicate
    events = AuditEvent.objects.filter(action__startswith="auth.login").order_by("sequence")
    assert [(e.action, e.actor_id) for e in events] == [
        ("auth.login.password_ok", alice.pk),
        ("auth.login.success", alice.pk),
    ]


def test_a_first_login_before_any_sync_creates_the_user_as_the_sync_would(client, signin, directory):
    response = login(client, "Alice", ALICE_PASSWORD)  # usernames compare case-insensitively
    assert response.status_code == 302 and response["Location"].startswith(reverse("identity:enrol"))
    alice = User.objects.get(username="alice")
    assert alice.source == "ldap" and alice.external_id == directory.stable_id(signin["alice"])
    assert set(alice.groups.values_list("name", flat=True)) == {"requester"}
    assert not alice.has_usable_password()
    created = AuditEvent.objects.get(action="identity.directory.created")
    assert created.details["roles"] == ["requester"]
    # The sync later finds the same user: nothing to create.
    result = directory_sync(full=True, dry_run=False)
    assert result.run.created == 0 and User.objects.filter(source="ldap").count() == 1


def test_a_login_applies_a_group_change_at_once(client, signin, directory):
    directory_sync(full=True, dry_run=False)
    helpdesk = directory.add_group("helpdesk", signin["alice"])
    from identity.directory import group_mapping_add

    pat = make_user("pat", "pam-admin")
    group_mapping_add(acting_user=pat, group_dn=helpdesk, role="approver")
    assert login(client, "alice", ALICE_PASSWORD).status_code == 302
    assert set(User.objects.get(username="alice").groups.values_list("name", flat=True)) == {
        "requester",
        "approver",
    }


def test_a_wrong_directory_password_is_refused_and_audited(client, signin):
    directory_sync(full=True, dry_run=False)
    response = login(client, "alice", "not her password")
    assert response.status_code == 200
    assert b"username or password is not right" in response.content
    event = AuditEvent.objects.get(action="auth.login.failure")
    assert event.actor_username == "alice" and event.details["reason"] == "bad_password"
    assert "not her password" not in str(event.details)


def test_a_synced_user_cannot_log_in_with_a_local_password(client, signin):
    directory_sync(full=True, dry_run=False)
    alice = User.objects.get(username="alice")
    alice.set_password(PASSWORD)  # as if someone had set one in the admin
    alice.save()
    directory_sync(full=True, dry_run=False)  # the sync removes it again
    assert login(client, "alice", PASSWORD).status_code == 200


def test_a_directory_account_never_logs_in_as_a_local_user_of_the_same_name(client, signin):
    local = make_user("alice", "pam-admin")  # a local alice, another person
    assert login(client, "alice", ALICE_PASSWORD).status_code == 200
    assert login(client, "alice", PASSWORD).status_code == 302  # her own local password
    assert client.session["_auth_user_id"] == str(local.pk)
    assert not User.objects.filter(source="ldap").exists()


def test_disabled_and_deactivated_users_are_refused(client, signin, directory):
    directory_sync(full=True, dry_run=False)
    User.objects.filter(username="alice").update(is_active=False)
    assert login(client, "alice", ALICE_PASSWORD).status_code == 200
    User.objects.filter(username="alice").update(is_active=True)
    directory.disable(signin["alice"])
    # The directory refuses the bind (ppolicy, AD); even if it did not, the entry is disabled.
    assert login(client, "alice", ALICE_PASSWORD).status_code == 200


def test_a_deactivated_users_web_session_ends(client, signin, directory):
    directory_sync(full=True, dry_run=False)
    alice = User.objects.get(username="alice")
    TOTPDevice.objects.create(user=alice, name="phone", confirmed=True)
    login(client, "alice", ALICE_PASSWORD)
    client.post(reverse("identity:verify"), {"code": totp_code(alice.totpdevice_set.get().bin_key)})
    assert client.get(reverse("dashboard")).status_code == 200
    directory.delete(signin["alice"])
    assert directory_sync(full=True, dry_run=False).run.deactivated == 1
    assert client.get(reverse("dashboard")).status_code == 302


INJECTIONS = ["*", ")(", "\\", "admin)(|(uid=*", "alice)(uid=*", "*)(objectClass=*"]
ESCAPED = {
    "*": r"\2A",
    ")(": r"\29\28",
    "\\": r"\5C",
    "admin)(|(uid=*": r"admin\29\28|\28uid=\2A",
    "alice)(uid=*": r"alice\29\28uid=\2A",
    "*)(objectClass=*": r"\2A\29\28objectClass=\2A",
}


@slapd_only  # slapd's log shows the filter it parsed
@pytest.mark.parametrize("username", INJECTIONS)
def test_no_ldap_injection_through_the_username(signin, slapd, username):
    directory_sync(full=True, dry_run=False)
    offset = slapd.log_size()
    for password in (ALICE_PASSWORD, "anything"):
        assert DirectoryBackend().authenticate(None, username=username, password=password) is None
    log = slapd.log_since(offset)
    searches = re.findall(r'filter="(\(&\(objectClass=inetOrgPerson\)\(uid=.*?\)\))"', log)
    assert searches, log
    expected = f"(&(objectClass=inetOrgPerson)(uid={ESCAPED[username]}))"
    # slapd writes the filter it parsed: the username stayed one escaped value of uid.
    assert all(s.lower() == expected.lower() for s in searches), searches
    assert not re.search(r"BIND dn=\"cn=alice", log, re.I)  # never reached a bind as a user


@slapd_only
def test_a_local_pam_admin_logs_in_while_the_directory_is_down(client, signin, settings, hung_server):
    pat = make_user("pat", "pam-admin")
    for uri in ([f"ldap://127.0.0.1:{free_port()}"], [hung_server]):
        settings.LDAP_SERVER_URI = uri
        reset_config()
        client.logout()
        started = time.monotonic()
        response = login(client, "pat", PASSWORD)
        assert response.status_code == 302 and response["Location"].startswith(reverse("identity:verify"))
        assert client.session["_auth_user_id"] == str(pat.pk)
        assert time.monotonic() - started < 1.0  # local usernames never go to the directory


@slapd_only
def test_a_hung_directory_fails_within_the_timeout(signin, settings, hung_server):
    directory_sync(full=True, dry_run=False)
    settings.LDAP_SERVER_URI = [hung_server]
    settings.LDAP_TIMEOUT = 1
    reset_config()
    request = RequestFactory().post("/login/", REMOTE_ADDR="10.9.8.7")
    started = time.monotonic()
    assert authenticate(request, username="alice", password=ALICE_PASSWORD) is None
    assert time.monotonic() - started < 2.5


def test_login_fails_over_to_the_next_server(signin, settings, hung_server):
    real = settings.LDAP_SERVER_URI[0]
    settings.LDAP_SERVER_URI = [f"ldap://127.0.0.1:{free_port()}", hung_server, real]
    settings.LDAP_TIMEOUT = 1
    reset_config()
    request = RequestFactory().post("/login/", REMOTE_ADDR="10.9.8.7")
    user = authenticate(request, username="alice", password=ALICE_PASSWORD)
    assert user is not None and user.username == "alice" and user.source == "ldap"


def test_the_gateway_takes_the_directory_password(signin):
    directory_sync(full=True, dry_run=False)
    user = gateway_password_login(username="alice", password=ALICE_PASSWORD, client_ip="192.0.2.10")
    assert user is not None and user.username == "alice"
    assert gateway_password_login(username="alice", password="wrong", client_ip="192.0.2.10") is None
    event = AuditEvent.objects.get(action="auth.login.password_ok")
    assert event.details["channel"] == "ssh"


@slapd_only  # slapd's log shows every bind
def test_an_empty_password_never_reaches_the_directory(signin, slapd):
    """An empty password would be an anonymous bind, which directories accept."""
    offset = slapd.log_size()
    assert DirectoryBackend().authenticate(None, username="alice", password="") is None
    # A bind is logged "op=N BIND dn=..."; another test's connection closing may log UNBIND.
    assert not re.search(r"\bBIND\b", slapd.log_since(offset))
