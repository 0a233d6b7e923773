"""Active Directory for real: the ``ad`` preset against a Samba AD domain controller.

What only AD does, end to end (tests/fixtures/samba.py): objectGUID as the stable id (as
Samba's own tool prints it), sAMAccountName, nested groups through
LDAP_MATCHING_RULE_IN_CHAIN, userAccountControl and accountExpires, whenChanged as the
incremental mark, simple binds only over TLS (LDAPS, StartTLS), the sync account as a plain
domain user (by DN or user principal name), a search from the domain root (AD answers with
referrals too), and directory users at the web sign-in and at the SSH gateway (the real
OpenSSH client), a leaver's live gateway session cut by the sync. What slapd and AD both do
is tested against both in test_ldap_sync.py, test_ldap_login.py and test_ldap_client.py.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from access.models import Grant
from audit.models import AuditEvent
from identity.directory import DISABLED, LEFT, directory_sync
from identity.ldap_client import DirectoryClient, DirectoryError, get_config, reset_config
from identity.models import User
from recordings.models import GatewaySession
from tests.fixtures.gateway import ended_session, live_session
from tests.fixtures.pacs import grant_for
from tests.fixtures.samba import UF_ACCOUNTDISABLE, UF_DONT_EXPIRE_PASSWD, UF_NORMAL_ACCOUNT, ad_password
from tests.fixtures.slapd import LDAP_BACKENDS
from tests.fixtures.waiting import wait_for
from tests.secrets_registry import remember_secret
from tests.totp import totp_code

pytestmark = pytest.mark.django_db


@pytest.fixture
def ad(ad_tree, settings):
    """This test's OU in the domain, the settings pointed at it (preset ad, LDAPS, the CA)."""
    ad_tree.point(settings)
    return ad_tree


def roles(username: str) -> set[str]:
    return set(User.objects.get(username=username).groups.values_list("name", flat=True))


def filetime(moment: datetime) -> int:
    """A time as AD's accountExpires holds it: 100 ns steps since 1601-01-01 UTC."""
    return int((moment - datetime(1601, 1, 1, tzinfo=UTC)).total_seconds() * 10_000_000)


def login(client, username: str, password: str):
    return client.post(reverse("identity:login"), {"username": username, "password": password})


# --- Who a user is: objectGUID, sAMAccountName ---------------------------------------------


def test_the_stable_id_is_the_objectguid_as_samba_prints_it_and_a_rename_keeps_the_user(ad, samba):
    dn = ad.add_user("alice", cn="Alice Archer", mail="alice@hospital.example")
    assert directory_sync(full=True, dry_run=False).ok
    alice = User.objects.get(username="alice")
    # Samba's own tool decodes the 16 bytes; the first three fields are little-endian in AD.
    assert alice.external_id == samba.guid_as_samba_tool_shows("alice")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", alice.external_id)

    # Married, moved to radiology, new logon name: AD keeps the objectGUID, pamsite the user.
    time.sleep(1.1)  # whenChanged has whole seconds
    radiology = ad.add_ou("radiology")
    new_dn = ad.rename(dn, "Alice Smith", new_superior=radiology)
    ad.set(new_dn, username="asmith", sn="Smith")
    result = directory_sync(full=False, dry_run=False)
    assert result.ok, result.error
    renamed = User.objects.get(pk=alice.pk)
    assert (renamed.username, renamed.display_name, renamed.last_name) == ("asmith", "Alice Smith", "Smith")
    assert renamed.directory_dn == new_dn and renamed.external_id == alice.external_id
    assert result.run.created == 0 and User.objects.filter(source=User.Source.LDAP).count() == 1
    assert AuditEvent.objects.get(action="identity.directory.renamed").details["username"] == {
        "from": "alice",
        "to": "asmith",
    }


def test_the_username_is_the_samaccountname_in_lower_case(ad):
    ad.add_user("JSmith", cn="John Smith", given_name="John", sn="Smith", mail="john.smith@hospital.example")
    assert directory_sync(full=True, dry_run=False).ok
    john = User.objects.get(source=User.Source.LDAP)
    assert (john.username, john.display_name, john.first_name, john.last_name, john.email) == (
        "jsmith",
        "John Smith",
        "John",
        "Smith",
        "john.smith@hospital.example",
    )


# --- Nested groups -------------------------------------------------------------------------


@pytest.fixture
def nested(ad, settings):
    """pacs-admins (mapped: requester) ⊃ radiology ⊃ ct-team; alice in ct-team only, bob in
    radiology only, carol in none; helpdesk (approver) holds bob directly."""
    alice = ad.add_user("alice", cn="Alice Archer", password=(alice_pw := ad_password()))
    bob = ad.add_user("bob", cn="Bob Baker")
    carol = ad.add_user("carol", cn="Carol Clark")
    ct = ad.add_group("ct-team", alice)
    radiology = ad.add_group("radiology", ct, bob)
    admins = ad.add_group("pacs-admins", radiology)
    helpdesk = ad.add_group("helpdesk", bob)
    settings.LDAP_GROUP_ROLE_MAP = [(admins, "requester"), (helpdesk, "approver")]
    return {
        "alice": alice,
        "bob": bob,
        "carol": carol,
        "ct-team": ct,
        "radiology": radiology,
        "pacs-admins": admins,
        "alice-password": alice_pw,
    }


def test_nested_groups_give_the_role_of_the_group_they_are_in(ad, nested):
    result = directory_sync(full=True, dry_run=False)
    assert result.ok and not result.problems, (result.error, result.problems)
    assert roles("alice") == {"requester"}  # two groups deep
    assert roles("bob") == {"requester", "approver"}
    assert roles("carol") == set()

    # The nesting cut: an incremental run takes the role (no user entry changed).
    ad.remove_member(nested["radiology"], nested["ct-team"])
    result = directory_sync(full=False, dry_run=False)
    assert result.ok
    assert roles("alice") == set() and roles("bob") == {"requester", "approver"}
    assert AuditEvent.objects.filter(action="identity.directory.roles_changed").get().details == {
        "username": "alice",
        "added": [],
        "removed": ["requester"],
    }


def test_a_loop_of_nested_groups_ends(ad, nested):
    """Groups that contain each other (it happens in real forests) are no endless chain."""
    ad.add_member(nested["ct-team"], nested["pacs-admins"])
    result = directory_sync(full=True, dry_run=False)
    assert result.ok, result.error
    assert roles("alice") == {"requester"} and roles("carol") == set()


def test_the_first_sign_in_gives_the_role_of_a_nested_group(client, ad, nested, settings):
    settings.AUTHENTICATION_BACKENDS = LDAP_BACKENDS
    response = login(client, "alice", nested["alice-password"])
    assert response.status_code == 302 and response["Location"].startswith(reverse("identity:enrol"))
    assert roles("alice") == {"requester"}


# --- Disabled and expired accounts ----------------------------------------------------------


def test_user_account_control_disabled_is_deactivated_and_enabled_reactivated(client, ad, settings):
    settings.AUTHENTICATION_BACKENDS = LDAP_BACKENDS
    password = ad_password()
    flags = UF_NORMAL_ACCOUNT | UF_DONT_EXPIRE_PASSWD
    dn = ad.add_user("alice", cn="Alice Archer", password=password, userAccountControl=str(flags))
    ad.add_user("dora", cn="Dora Dormant", disabled=True)  # created disabled: never a pamsite user
    assert directory_sync(full=True, dry_run=False).ok
    assert User.objects.get(username="alice").is_active
    assert not User.objects.filter(username="dora").exists()

    time.sleep(1.1)
    ad.disable(dn)
    assert ad.server.user_account_control(dn) == flags | UF_ACCOUNTDISABLE  # 66050: other bits kept
    result = directory_sync(full=False, dry_run=False)
    assert result.ok and result.run.deactivated == 1
    alice = User.objects.get(username="alice")
    assert not alice.is_active and alice.deactivated_reason == DISABLED
    assert login(client, "alice", password).status_code == 200  # AD refuses the bind too

    time.sleep(1.1)
    ad.enable(dn)
    result = directory_sync(full=False, dry_run=False)
    assert result.ok and result.run.reactivated == 1
    assert User.objects.get(username="alice").is_active
    assert login(client, "alice", password).status_code == 302


def test_an_account_that_expires_is_a_leaver_at_the_next_incremental_run(client, ad, settings):
    """accountExpires passing changes nothing in the entry (not whenChanged either), and AD
    then refuses the account's password; the incremental runs still find it."""
    settings.AUTHENTICATION_BACKENDS = LDAP_BACKENDS
    password = ad_password()
    soon = datetime.now(UTC) + timedelta(seconds=6)  # the first run must see it still valid
    dn = ad.add_user("vera", cn="Vera Vendor", password=password, accountExpires=str(filetime(soon)))
    ad.add_user("ulla", cn="Ulla Unlimited", accountExpires="9223372036854775807")  # never
    ad.add_user("nico", cn="Nico Never", accountExpires="0")  # never, too
    assert directory_sync(full=True, dry_run=False).ok
    assert User.objects.get(username="vera").is_active
    wait_for(lambda: datetime.now(UTC) > soon + timedelta(seconds=1), "the account to expire", timeout=10)
    assert login(client, "vera", password).status_code == 200  # AD: account expired
    result = directory_sync(full=False, dry_run=False)
    assert result.ok, result.error
    vera = User.objects.get(username="vera")
    assert not vera.is_active and vera.deactivated_reason == DISABLED
    assert User.objects.get(username="ulla").is_active and User.objects.get(username="nico").is_active
    assert [c.username for c in result.changes if c.action == "deactivated"] == ["vera"]
    # An account already expired when first seen is never created.
    ad.add_user("old", cn="Old Vendor", accountExpires=str(filetime(datetime(2020, 1, 1, tzinfo=UTC))))
    assert directory_sync(full=True, dry_run=False).ok
    assert not User.objects.filter(username="old").exists()
    assert ad.server.attribute(dn, "accountExpires") == [str(filetime(soon))]


USER_ACCOUNT_CONTROL = "bf967a68-0de6-11d0-a285-00aa003049e2"  # the attribute's schemaIDGUID


def test_a_sync_account_that_may_not_read_user_account_control_changes_no_one_and_says_why(
    client, ad, samba, settings
):
    """A domain whose sync account is denied userAccountControl hides who is disabled: such
    entries are left as they are with the reason (never taken as enabled), and a sign-in
    that needs one is refused."""
    settings.AUTHENTICATION_BACKENDS = LDAP_BACKENDS
    password = ad_password()
    ad.add_user("alice", cn="Alice Archer", password=password)
    dave = ad.add_user("dave", cn="Dave Dunn")
    assert directory_sync(full=True, dry_run=False).ok
    samba.deny_reading(ad.people, USER_ACCOUNT_CONTROL, samba.sync_dn)
    ad.disable(dave)  # a leaver the sync account cannot see as one
    ad.add_user("erin", cn="Erin Early", password=ad_password())
    result = directory_sync(full=True, dry_run=False)
    assert result.ok, result.error
    assert result.changes == []
    assert not User.objects.filter(username="erin").exists()
    says = "no userAccountControl: the sync account (LDAP_BIND_DN) may not read it"
    assert sum(says in p for p in result.problems) == 3, result.problems
    assert result.run.skipped == 3
    assert login(client, "alice", password).status_code == 200  # cannot tell: refused


# --- Incremental runs: whenChanged -----------------------------------------------------------


def test_the_high_water_mark_is_the_newest_whenchanged(ad):
    ad.add_user("alice", cn="Alice Archer")
    time.sleep(1.1)
    bob = ad.add_user("bob", cn="Bob Baker")
    result = directory_sync(full=True, dry_run=False)
    assert result.ok
    newest = ad.server.attribute(bob, "whenChanged")[0]
    assert re.fullmatch(r"\d{14}\.0Z", newest)  # AD's GeneralizedTime, with its ".0"
    assert result.run.high_water_mark == newest
    time.sleep(1.1)
    ad.set(bob, mail="bob@hospital.example")
    again = directory_sync(full=False, dry_run=False)
    assert again.ok and again.run.seen == 1  # bob only: alice's whenChanged is older
    assert [c.line() for c in again.changes] == ["updated       bob  (email: '' → 'bob@hospital.example')"]
    assert again.run.high_water_mark > newest


# --- Binding: TLS, the sync account ------------------------------------------------------------


def test_plain_ldap_without_tls_is_refused_saying_what_to_set(ad, samba):
    config = replace(get_config(), uris=(samba.uri,))
    with pytest.raises(DirectoryError) as caught:
        DirectoryClient(config).connect()
    assert caught.value.kind == "tls"
    message = str(caught.value)
    assert "requires TLS" in message and "ldaps://" in message and "LDAP_START_TLS" in message
    assert samba.sync_password not in message


def test_a_whole_sync_and_a_sign_in_over_starttls(client, ad, samba, settings):
    password = ad_password()
    alice = ad.add_user("alice", cn="Alice Archer", password=password)
    settings.LDAP_GROUP_ROLE_MAP = [(ad.add_group("pacs-admins", alice), "requester")]
    settings.LDAP_SERVER_URI = [samba.uri]
    settings.LDAP_START_TLS = True
    settings.AUTHENTICATION_BACKENDS = LDAP_BACKENDS
    reset_config()
    result = directory_sync(full=True, dry_run=False)
    assert result.ok and result.run.server.startswith(samba.uri), result.error
    assert roles("alice") == {"requester"}
    assert login(client, "alice", password).status_code == 302


def test_the_sync_account_may_bind_by_its_user_principal_name(ad, settings):
    ad.add_user("alice", cn="Alice Archer")
    settings.LDAP_BIND_DN = "pamsite-sync@hospital.test"
    reset_config()
    result = directory_sync(full=True, dry_run=False)
    assert result.ok and result.run.created == 1, result.error


def test_users_found_from_the_domain_root_past_its_referrals(client, ad, samba, settings):
    """A base at the domain root: AD also answers with references to its other partitions
    (CN=Configuration...), which are no users; the filter picks the members of a group."""
    password = ad_password()
    alice = ad.add_user("alice", cn="Alice Archer", password=password)
    ad.add_user("bob", cn="Bob Baker")  # not in the group: not a pamsite user
    staff = ad.add_group("pamsite-users", ad.add_group("radiology", alice))
    assert samba.references(samba.suffix, "(sAMAccountName=alice)")
    settings.LDAP_USER_BASE = samba.suffix
    # The README's example: users of a group, directly or through nested groups, anywhere in
    # the domain (not its Administrator, krbtgt, the sync account...).
    settings.LDAP_USER_FILTER = (
        f"(&(objectCategory=person)(objectClass=user)(memberOf:1.2.840.113556.1.4.1941:={staff}))"
    )
    settings.AUTHENTICATION_BACKENDS = LDAP_BACKENDS
    reset_config()
    result = directory_sync(full=True, dry_run=False)
    assert result.ok and not result.problems, (result.error, result.problems)
    assert list(User.objects.values_list("username", flat=True)) == ["alice"]
    assert login(client, "alice", password).status_code == 302


# --- The SSH gateway, with the real OpenSSH client ----------------------------------------------


@pytest.fixture
def lena(ad, settings):
    """Lena, a directory user with an AD password (not only ASCII: a German hospital's), in
    pacs-admins (requester), synced, with an authenticator."""
    password = remember_secret(f"Grüße-{ad_password()}-Ärztin", "AD user password")
    dn = ad.add_user("lena", cn="Lena Leaver", mail="lena@hospital.example", password=password)
    settings.LDAP_GROUP_ROLE_MAP = [(ad.add_group("pacs-admins", dn), "requester")]
    settings.AUTHENTICATION_BACKENDS = LDAP_BACKENDS
    call_command("sync_ldap", "--full", stdout=io.StringIO())
    user = User.objects.get(username="lena", source=User.Source.LDAP)
    TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)
    return {"user": user, "dn": dn, "password": password}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_gateway_takes_the_ad_password_and_the_code(gateway, bob, ssh_account, lena):
    grant_for(lena["user"], bob, ssh_account)
    login_name = f"lena:{ssh_account.slug}"
    wrong = gateway.ssh(lena["user"], login_name, "echo hello", password="not her AD password")
    assert wrong.returncode == 255 and not wrong.stdout
    result = gateway.ssh(lena["user"], login_name, "echo hello-from-ad", password=lena["password"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "hello-from-ad"
    prompts = gateway.askpass_log.read_text().lower()
    assert "password" in prompts and "code" in prompts  # both factors were asked for
    event = AuditEvent.objects.filter(action="auth.login.password_ok").latest("sequence")
    assert event.details["channel"] == "ssh" and event.actor_id == lena["user"].pk


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["deleted", "disabled"])
def test_a_leavers_live_gateway_session_is_cut_by_the_sync(how, gateway, bob, ssh_account, ad, lena):
    """Lena is connected through the gateway when she is deleted from AD (seen by the full
    run) or her account is disabled (seen by the incremental one): the sync deactivates her,
    revokes her grant and her session ends with the reason; she cannot connect again."""
    user = lena["user"]
    grant = grant_for(user, bob, ssh_account)
    login_name = f"lena:{ssh_account.slug}"
    client = gateway.popen(user, login_name, password=lena["password"], tty=True)
    client.stdin.write(b"echo lena-at-work\n")
    client.stdin.flush()
    session = live_session(user)

    if how == "deleted":
        ad.delete(lena["dn"])
        call_command("sync_ldap", "--full", stdout=io.StringIO())
        reason = LEFT
    else:
        time.sleep(1.1)  # past the full run's whenChanged second
        ad.disable(lena["dn"])
        call_command("sync_ldap", stdout=io.StringIO())
        reason = DISABLED
    user.refresh_from_db()
    assert not user.is_active and user.deactivated_reason == reason
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED and grant.end_reason == reason
    out, _err = client.communicate(timeout=20)
    assert reason in out.decode(errors="replace")
    session = ended_session(user)
    assert session.end_reason in (GatewaySession.EndReason.TERMINATED, GatewaySession.EndReason.REVOKED)
    assert AuditEvent.objects.filter(action="identity.directory.deactivated", object_id=str(user.pk)).exists()
    cut = AuditEvent.objects.get(action="gateway.session.ended", object_id=str(session.pk))
    assert reason in cut.details["message"]

    again = gateway.ssh(user, login_name, "id", password=lena["password"])
    assert again.returncode == 255 and not again.stdout
    assert GatewaySession.objects.filter(user=user).count() == 1


def test_the_web_sign_in_takes_the_ad_password_then_the_code(client, lena):
    device = TOTPDevice.objects.get(user=lena["user"])
    response = login(client, "lena", lena["password"])
    assert response.status_code == 302 and response["Location"].startswith(reverse("identity:verify"))
    assert client.get(reverse("dashboard"))["Location"].startswith(reverse("identity:verify"))
    assert client.post(reverse("identity:verify"), {"code": totp_code(device.bin_key)}).status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200
