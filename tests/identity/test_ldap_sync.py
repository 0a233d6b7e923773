"""The directory sync against a real slapd and a real Active Directory (Samba AD DC): joiners,
movers, leavers, renames, the safety limit."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.models import AuditEvent
from identity.directory import DISABLED, LEFT, directory_sync, group_mapping_add
from identity.models import DirectorySyncRun, LdapGroupMapping, User
from tests.conftest import make_user
from tests.fixtures.directory import slapd_only
from tests.fixtures.slapd import LDAPDELETE, LDAPMODIFY

pytestmark = pytest.mark.django_db


def actions(prefix: str = "identity.directory.") -> list[str]:
    return list(
        AuditEvent.objects.filter(action__startswith=prefix)
        .order_by("sequence")
        .values_list("action", flat=True)
    )


def roles(user: User) -> set[str]:
    return set(user.groups.values_list("name", flat=True))


@pytest.fixture
def hospital(directory, settings):
    """Three directory users; pacs-admins give requester, helpdesk approver (both mapped)."""
    t = directory
    alice = t.add_user("alice", cn="Alice Archer", mail="alice@hospital.example", given_name="Alice")
    bob = t.add_user("bob", cn="Bob Baker", mail="bob@hospital.example")
    dave = t.add_user("dave", cn="Dave Dunn")
    admins = t.add_group("pacs-admins", alice, dave)
    helpdesk = t.add_group("helpdesk", bob)
    settings.LDAP_GROUP_ROLE_MAP = [(admins, "requester"), (helpdesk, "approver")]
    return {"alice": alice, "bob": bob, "dave": dave, "pacs-admins": admins, "helpdesk": helpdesk}


def test_joiners_are_created_with_their_stable_id_roles_and_no_local_password(hospital, directory):
    result = directory_sync(full=True, dry_run=False)
    assert result.ok, result.error
    alice = User.objects.get(username="alice")
    assert alice.source == User.Source.LDAP
    assert alice.external_id == directory.stable_id(hospital["alice"])
    assert alice.directory_dn == hospital["alice"]
    assert (alice.email, alice.display_name, alice.first_name) == (
        "alice@hospital.example",
        "Alice Archer",
        "Alice",
    )
    assert not alice.has_usable_password()
    assert roles(alice) == {"requester"}
    assert roles(User.objects.get(username="bob")) == {"approver"}
    run = result.run
    assert (run.state, run.full, run.seen, run.created, run.deactivated) == ("succeeded", True, 3, 3, 0)
    assert run.high_water_mark
    assert actions().count("identity.directory.created") == 3
    assert actions()[-1] == "identity.directory.synced"
    created = AuditEvent.objects.filter(action="identity.directory.created", object_id=str(alice.pk)).get()
    assert created.details["roles"] == ["requester"]


def test_a_second_run_with_no_change_changes_nothing(hospital):
    directory_sync(full=True, dry_run=False)
    before = AuditEvent.objects.count()
    again = directory_sync(full=False, dry_run=False)
    assert again.ok and again.changes == []
    assert not again.run.full
    full = directory_sync(full=True, dry_run=False)
    assert full.ok and full.changes == [] and full.run.seen == 3
    # Only the two summary events were added.
    assert AuditEvent.objects.count() == before + 2


def test_an_incremental_run_reads_only_users_changed_since_the_last_run(hospital, directory):
    import time

    directory_sync(full=True, dry_run=False)
    # The directory's timestamps have whole seconds, and the run asks for ">= the newest it
    # saw": entries of that second are read again (harmless), later ones once.
    time.sleep(1.1)
    directory.set(hospital["bob"], mail="robert@hospital.example")
    first = directory_sync(full=False, dry_run=False)
    time.sleep(1.1)
    directory.set(hospital["dave"], mail="dave@hospital.example")
    second = directory_sync(full=False, dry_run=False)
    assert first.ok and second.ok and not first.run.full and not second.run.full
    assert [c.line() for c in first.changes] == [
        "updated       bob  (email: 'bob@hospital.example' → 'robert@hospital.example')"
    ]
    assert second.run.seen == 2  # bob (the boundary second) and dave; not alice
    assert [c.line() for c in second.changes] == ["updated       dave  (email: '' → 'dave@hospital.example')"]
    assert second.run.high_water_mark > first.run.high_water_mark


def test_a_mover_gets_the_roles_of_the_new_groups_in_an_incremental_run(hospital, directory):
    directory_sync(full=True, dry_run=False)
    # Group changes do not touch the user's modifyTimestamp: memberships are read every run.
    directory.remove_member(hospital["pacs-admins"], hospital["dave"])
    directory.add_member(hospital["helpdesk"], hospital["dave"])
    result = directory_sync(full=False, dry_run=False)
    assert result.ok
    dave = User.objects.get(username="dave")
    assert roles(dave) == {"approver"}
    event = AuditEvent.objects.get(action="identity.directory.roles_changed")
    assert event.details == {"username": "dave", "added": ["approver"], "removed": ["requester"]}
    assert event.object_id == str(dave.pk) and event.actor is None
    assert result.run.updated == 1


def test_only_role_groups_are_managed_and_local_users_are_never_touched(hospital):
    local = make_user("localadmin", "pam-admin", "auditor")
    directory_sync(full=True, dry_run=False)
    alice = User.objects.get(username="alice")
    other = Group.objects.create(name="radiology-newsletter")
    alice.groups.add(other, Group.objects.get_or_create(name="auditor")[0])
    result = directory_sync(full=True, dry_run=False)
    assert result.ok
    # The auditor role was not given by the directory: taken away; the other group stays.
    assert roles(alice) == {"requester", "radiology-newsletter"}
    local.refresh_from_db()
    assert local.is_active and roles(local) == {"pam-admin", "auditor"} and local.source == "local"
    assert not AuditEvent.objects.filter(
        action__startswith="identity.directory.", object_type="identity.user", object_id=str(local.pk)
    ).exists()


def test_a_rename_and_an_ou_move_update_the_same_user(hospital, directory):
    directory_sync(full=True, dry_run=False)
    alice = User.objects.get(username="alice")
    radiology = directory.add_ou("radiology")
    new_dn = directory.rename(hospital["alice"], "Alice Smith", new_superior=radiology)
    directory.set(new_dn, username="asmith", sn="Smith")
    result = directory_sync(full=True, dry_run=False)
    assert result.ok, result.error
    renamed = User.objects.get(pk=alice.pk)
    assert (renamed.username, renamed.display_name, renamed.directory_dn) == ("asmith", "Alice Smith", new_dn)
    assert renamed.is_active and roles(renamed) == {"requester"}  # memberOf followed the move (refint)
    assert User.objects.filter(source="ldap").count() == 3
    assert result.run.deactivated == 0 and result.run.created == 0
    event = AuditEvent.objects.get(action="identity.directory.renamed")
    assert event.details["username"] == {"from": "alice", "to": "asmith"}
    updated = AuditEvent.objects.get(action="identity.directory.updated")
    assert updated.details["dn"] == {"from": hospital["alice"], "to": new_dn}


def test_names_with_commas_plus_signs_and_accents(directory, settings):
    t = directory
    user = t.add_user(
        "jmuller", cn="Müller, Jürgen+Ä", sn="Müller", given_name="Jürgen", mail="juergen@krankenhaus.example"
    )
    other = t.add_user("zoe", cn="Zoë O'Brien-Ñúñez")
    group = t.add_group("PACS, Admins + Ärzte", user, other)
    # The mapping is written in another spelling of the same DN (hex escapes, upper case).
    spelled = group.replace("PACS\\, Admins \\+ Ärzte", "pacs\\2C ADMINS \\2B ärzte")
    spelled = re.sub("ou=groups", "OU=Groups", spelled, flags=re.IGNORECASE)
    assert spelled != group
    settings.LDAP_GROUP_ROLE_MAP = [(spelled, "auditor")]
    result = directory_sync(full=True, dry_run=False)
    assert result.ok and not result.problems, result.problems
    jm = User.objects.get(username="jmuller")
    assert (jm.display_name, jm.first_name, jm.email) == (
        "Müller, Jürgen+Ä",
        "Jürgen",
        "juergen@krankenhaus.example",
    )
    assert jm.directory_dn == user
    assert roles(jm) == {"auditor"} and roles(User.objects.get(username="zoe")) == {"auditor"}


def test_a_username_held_by_a_local_user_is_not_taken(hospital):
    local = make_user("bob", "approver")
    result = directory_sync(full=True, dry_run=False)
    assert result.ok
    assert User.objects.get(username="bob").pk == local.pk
    assert User.objects.filter(source="ldap").count() == 2
    assert any("'bob' belongs to a local user" in p for p in result.problems)
    assert result.run.skipped == 1


def test_a_mapped_group_missing_from_the_directory_takes_no_role_away(hospital, directory):
    directory_sync(full=True, dry_run=False)
    directory.rename(hospital["helpdesk"], "service-desk")
    result = directory_sync(full=True, dry_run=False)
    assert result.ok
    assert roles(User.objects.get(username="bob")) == {"approver"}
    assert any("Mapped group not found" in p and "helpdesk" in p for p in result.problems)
    assert result.run.problems == result.problems


@slapd_only  # slapd makes the referral; Samba, with one domain, has none to give
def test_a_mapped_group_in_another_domain_is_not_found_and_takes_no_role_away(hospital, directory, settings):
    """Active Directory answers a search for a DN of another domain of its forest with a
    referral: the group is not in this directory (reported, no role taken), and the run goes on."""
    directory_sync(full=True, dry_run=False)
    other = f"ou=radiology-domain,{directory.base}"
    ldif = (
        f"dn: {other}\nobjectClass: referral\nobjectClass: extensibleObject\nou: radiology-domain\n"
        "ref: ldap://radiology.hospital.example/ou=radiology-domain,dc=radiology,dc=example\n"
    )
    directory.server._tool(LDAPMODIFY, ["-a", "-M"], ldif)  # -M: the referral itself
    try:
        elsewhere = f"cn=pacs-admins,{other}"
        settings.LDAP_GROUP_ROLE_MAP = [(elsewhere, "requester"), (hospital["helpdesk"], "approver")]
        result = directory_sync(full=True, dry_run=False)
        assert result.ok, result.error
        assert roles(User.objects.get(username="alice")) == {"requester"}  # not taken away
        assert any("Mapped group not found" in p and "pacs-admins" in p for p in result.problems)
    finally:
        directory.server._tool(LDAPDELETE, ["-M", other])


def _ssh_grant(user, approver):
    from access import services
    from access.models import AccessPolicy, Account, Target
    from vault import sources

    target = Target.objects.get_or_create(name="pacs01", kind=Target.Kind.PACS, host="127.0.0.1", port=22)[0]
    account = Account.objects.get_or_create(
        target=target, slug="pacs01-root", kind=Account.Kind.SSH_CA, username="root"
    )[0]
    sources.configure_ssh_role(account=services.account_ref(account))
    policy = AccessPolicy.objects.get_or_create(
        name="PACS", approvals_required=1, max_duration_minutes=120, ticket_required=False
    )[0]
    policy.groups.add(Group.objects.get_or_create(name="requester")[0])
    policy.targets.add(target)
    req = services.request_create(
        requester=user, account=account, reason="study", ticket="", duration_minutes=60
    )
    services.request_decide(access_request=req, approver=approver, approve=True, comment="ok")
    req.refresh_from_db()
    assert req.state == "fulfilled", req.checkout_error
    return req.grant


def _live_session(user, grant, account="pacs01-root"):
    from recordings.models import GatewaySession

    return GatewaySession.objects.create(user=user, grant=grant, account=account, gateway_node="gw1")


@pytest.mark.parametrize("how", ["removed", "disabled"])
def test_a_leaver_is_deactivated_and_loses_live_access(how, hospital, directory, approle_settings):
    from access.models import AccessPolicy, AccessRequest, Grant

    directory_sync(full=True, dry_run=False)
    alice, bob = User.objects.get(username="alice"), User.objects.get(username="bob")
    grant = _ssh_grant(alice, bob)
    session = _live_session(alice, grant)
    # A session whose grant had already ended when the gateway last looked.
    old_grant = _ssh_grant(alice, bob)
    from access import services

    services.grant_checkin(grant=old_grant, acting_user=alice)
    old_session = _live_session(alice, old_grant)
    ended = _live_session(alice, old_grant)
    ended.ended_at = timezone.now()
    ended.save()
    AccessPolicy.objects.update(approvals_required=2)
    pending = services.request_create(
        requester=alice, account=grant.account, reason="more", ticket="", duration_minutes=30
    )

    if how == "removed":
        directory.delete(hospital["alice"])
        result = directory_sync(full=True, dry_run=False)
        reason = LEFT
    else:
        directory.disable(hospital["alice"])
        result = directory_sync(full=False, dry_run=False)
        reason = DISABLED
    assert result.ok, result.error
    # Right after every sync the access worker ends what the leavers held (access.tasks).
    assert services.grants_of_inactive_revoke() == 1
    assert services.requests_of_inactive_cancel() == 1
    alice.refresh_from_db()
    assert not alice.is_active and alice.deactivated_reason == reason  # deactivated, not deleted
    assert roles(alice) == {"requester"}  # kept for the record; an inactive user holds none
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED and grant.end_reason == reason and grant.ended_by is None
    # Every gateway process sees her deactivated and cuts both live sessions (the one whose
    # grant had ended too), saying why in words: no administrator acted, and none is named.
    # (sessions_to_cut itself runs on the gateway's threads: tests/web/test_deactivation.py.)
    from recordings.models import GatewaySession
    from recordings.sessions import end_of

    live = GatewaySession.objects.filter(pk__in=[session.pk, old_session.pk]).select_related(
        "user", "grant__account"
    )
    for row in live:
        end_reason, message = end_of(session=row)
        assert end_reason == GatewaySession.EndReason.REVOKED
        assert message == f"Your pamsite account was deactivated: {reason}."
        assert "administrator" not in message
        assert row.terminate_requested_at is None  # no termination pretending someone asked
    pending.refresh_from_db()
    assert pending.state == AccessRequest.State.CANCELLED
    event = AuditEvent.objects.get(action="identity.directory.deactivated")
    assert event.details["reason"] == reason
    revoked = AuditEvent.objects.get(action="access.grant.revoked", object_id=str(grant.pk))
    assert revoked.actor is None and revoked.details["reason"] == reason
    cancelled = AuditEvent.objects.get(action="access.request.cancelled", object_id=str(pending.pk))
    assert cancelled.actor is None and cancelled.details["reason"] == reason
    assert result.run.deactivated == 1


def test_a_user_who_comes_back_is_reactivated_but_not_one_a_pam_admin_deactivated(hospital, directory):
    directory_sync(full=True, dry_run=False)
    directory.disable(hospital["alice"])
    directory_sync(full=True, dry_run=False)
    assert not User.objects.get(username="alice").is_active
    User.objects.filter(username="bob").update(is_active=False)  # a pam-admin blocked bob
    directory.enable(hospital["alice"])
    result = directory_sync(full=True, dry_run=False)
    assert result.ok
    alice = User.objects.get(username="alice")
    assert alice.is_active and alice.deactivated_reason == ""
    assert not User.objects.get(username="bob").is_active
    assert "identity.directory.reactivated" in actions()


@slapd_only
def test_a_disabled_value_can_be_configured(hospital, slapd, settings):
    from identity.ldap_client import reset_config

    settings.LDAP_ATTR_DISABLED = "employeeType"
    settings.LDAP_DISABLED_VALUE = "Disabled"
    reset_config()
    slapd.modify(hospital["alice"], ("add", "employeeType", "disabled"))
    slapd.modify(hospital["bob"], ("add", "employeeType", "contractor"))
    directory_sync(full=True, dry_run=False)
    assert not User.objects.filter(username="alice").exists()  # never created while disabled
    assert User.objects.get(username="bob").is_active


def _leave(directory, hospital, *names):
    for name in names:
        directory.delete(hospital[name])


def test_the_safety_limit_changes_nothing_fails_and_mails_the_pam_admins(
    hospital, directory, settings, mailoutbox
):
    make_user("pat", "pam-admin", email="pat@hospital.example")
    directory_sync(full=True, dry_run=False)
    settings.LDAP_SYNC_MAX_DEACTIVATE = 1
    directory.add_user("erin", cn="Erin Early")  # a joiner in the same run is not created either
    _leave(directory, hospital, "alice", "bob")
    before = AuditEvent.objects.count()
    err = io.StringIO()
    with pytest.raises(
        CommandError, match="Safety limit: it would deactivate 2 users, more than LDAP_SYNC_MAX"
    ):
        call_command("sync_ldap", "--full", stdout=io.StringIO(), stderr=err)
    assert User.objects.filter(source="ldap", is_active=True).count() == 3
    assert not User.objects.filter(username="erin").exists()
    run = DirectorySyncRun.objects.order_by("-pk").first()
    assert run.state == "failed" and "Nothing was changed" in run.error
    assert {c["username"] for c in run.changes if c["action"] == "deactivated"} == {"alice", "bob"}
    assert [e.action for e in AuditEvent.objects.filter(sequence__gt=before)] == [
        "identity.directory.sync_failed"
    ]
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["pat@hospital.example"]
    assert "alice" in mailoutbox[0].body and "--override-safety-limit" in mailoutbox[0].body

    # A pam-admin who checked it applies the run anyway (audited).
    call_command("sync_ldap", "--full", "--override-safety-limit", stdout=io.StringIO())
    assert User.objects.filter(source="ldap", is_active=False).count() == 2
    assert (
        AuditEvent.objects.filter(action="identity.directory.synced")
        .order_by("sequence")
        .last()
        .details["safety_limit_overridden"]
    )


def test_the_percentage_limit(hospital, directory, settings):
    directory_sync(full=True, dry_run=False)
    settings.LDAP_SYNC_MAX_DEACTIVATE_PERCENT = 30
    _leave(directory, hospital, "dave")  # 1 of 3 = 33 %
    result = directory_sync(full=True, dry_run=False)
    assert result.refused and "1 of 3 active directory users (33%)" in result.error
    assert User.objects.filter(source="ldap", is_active=True).count() == 3


@slapd_only
def test_a_directory_that_cannot_be_reached_changes_nothing(hospital, settings):
    from identity.ldap_client import reset_config
    from tests.fixtures.openbao import free_port

    directory_sync(full=True, dry_run=False)
    settings.LDAP_SERVER_URI = [f"ldap://127.0.0.1:{free_port()}"]
    reset_config()
    with pytest.raises(
        CommandError, match=r"full sync failed: Cannot reach the directory server ldap://127\.0\.0\.1"
    ):
        call_command("sync_ldap", "--full", stdout=io.StringIO(), stderr=io.StringIO())
    assert User.objects.filter(source="ldap", is_active=True).count() == 3
    run = DirectorySyncRun.objects.order_by("-pk").first()
    assert run.state == "failed" and "Cannot reach" in run.error and run.finished_at
    assert AuditEvent.objects.filter(action="identity.directory.sync_failed").count() == 1


def test_a_dry_run_prints_the_changes_and_makes_none(hospital, directory):
    directory_sync(full=True, dry_run=False)
    _leave(directory, hospital, "dave")
    directory.add_user("erin", cn="Erin Early")
    out = io.StringIO()
    call_command("sync_ldap", "--full", "--dry-run", stdout=out)
    text = out.getvalue()
    assert "Changes this run would make (none was made):" in text
    assert "  created       erin" in text
    assert "  deactivated   dave  (reason: left the directory)" in text
    assert "Dry run: full sync" in text
    assert User.objects.get(username="dave").is_active and not User.objects.filter(username="erin").exists()
    # A dry run never moves the high-water mark.
    assert DirectorySyncRun.objects.filter(dry_run=True).get().high_water_mark == ""


@slapd_only
def test_only_one_sync_runs_at_a_time(hospital):
    from identity.directory import DirectorySyncBusy

    DirectorySyncRun.objects.create(full=True)
    with pytest.raises(DirectorySyncBusy):
        directory_sync(full=True, dry_run=False)
    with pytest.raises(CommandError, match="Another directory sync is running"):
        call_command("sync_ldap", stdout=io.StringIO())
    # A run left "running" by a process that died long ago does not block for ever.
    DirectorySyncRun.objects.update(started_at=timezone.now() - timedelta(days=1))
    assert directory_sync(full=True, dry_run=False).ok
    assert DirectorySyncRun.objects.filter(error__startswith="Interrupted").count() == 1


def test_the_pam_admins_mapping_replaces_the_setting_once_it_has_rows(hospital, settings):
    pat = make_user("pat", "pam-admin")
    directory_sync(full=True, dry_run=False)
    assert roles(User.objects.get(username="bob")) == {"approver"}
    # The first edit copies the setting's pairs in, so nothing is lost by adding one.
    group_mapping_add(acting_user=pat, group_dn=hospital["helpdesk"], role="auditor")
    assert set(LdapGroupMapping.objects.values_list("role", flat=True)) == {
        "requester",
        "approver",
        "auditor",
    }
    settings.LDAP_GROUP_ROLE_MAP = []  # no longer read
    directory_sync(full=True, dry_run=False)
    assert roles(User.objects.get(username="bob")) == {"approver", "auditor"}
    assert actions("identity.directory.mapping_added").count("identity.directory.mapping_added") == 3


def test_synced_users_never_keep_a_usable_local_password(hospital):
    directory_sync(full=True, dry_run=False)
    alice = User.objects.get(username="alice")
    alice.set_password("a local password 123")
    alice.save()
    result = directory_sync(full=True, dry_run=False)
    alice.refresh_from_db()
    assert not alice.has_usable_password()
    assert "local_login" in AuditEvent.objects.get(action="identity.directory.updated").details
    assert result.run.updated == 1


@slapd_only
@pytest.mark.django_db(transaction=True)
def test_a_leavers_database_grant_is_revoked_and_the_role_dropped(
    hospital, directory, pg_target, approle_settings
):
    """End to end with OpenBao and PostgreSQL: the dynamic role exists while the grant is live
    and is dropped once the sync revoked it (the release runs after the sync's commit)."""
    from access import services
    from access.models import AccessPolicy, Grant
    from tests.fixtures.pacs import make_database_account

    directory_sync(full=True, dry_run=False)
    alice, bob = User.objects.get(username="alice"), User.objects.get(username="bob")
    account = make_database_account(pg_target)
    policy = AccessPolicy.objects.create(
        name="PACS database", approvals_required=1, max_duration_minutes=60, ticket_required=False
    )
    policy.groups.add(Group.objects.get(name="requester"))
    policy.accounts.add(account)
    req = services.request_create(
        requester=alice, account=account, reason="fix", ticket="", duration_minutes=30
    )
    services.request_decide(access_request=req, approver=bob, approve=True, comment="")
    grant = Grant.objects.get(request=req)
    assert grant.login in pg_target.roles()
    session = _live_session(alice, grant, account=account.slug)

    directory.delete(hospital["alice"])
    result = directory_sync(full=True, dry_run=False)
    assert result.ok, result.error
    # Right after the sync the worker revokes the leaver's grants (access.tasks); the release
    # runs right after that commit (no broker) or at the worker's next sweep (a broker
    # configured by an earlier test): run the sweep as the worker would.
    assert services.grants_of_inactive_revoke() == 1
    services.grants_cleanup_due()
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED
    assert grant.cleanup == Grant.Cleanup.DONE, grant.cleanup_error
    assert grant.login not in pg_target.roles()
    from recordings.sessions import sessions_to_cut

    assert sessions_to_cut(session_ids=[session.pk]) == {
        session.pk: ("revoked", "Your pamsite account was deactivated: left the directory.")
    }
    assert not User.objects.get(pk=alice.pk).is_active


@slapd_only
def test_the_periodic_task_is_incremental_with_a_full_run_each_day(hospital, settings):
    from identity.tasks import directory_sync_due, directory_sync_task

    assert directory_sync_due()
    first = directory_sync_task()
    assert first["ok"] and first["full"] and first["created"] == 3
    assert not directory_sync_due()  # ran just now
    DirectorySyncRun.objects.update(started_at=timezone.now() - timedelta(minutes=20))
    assert directory_sync_due()
    second = directory_sync_task()
    assert second["ok"] and not second["full"]
    DirectorySyncRun.objects.filter(full=True).update(started_at=timezone.now() - timedelta(hours=25))
    assert directory_sync_task()["full"]
    assert set(DirectorySyncRun.objects.values_list("trigger", flat=True)) == {"schedule"}
    settings.LDAP_SERVER_URI = []
    assert not directory_sync_due() and "skipped" in directory_sync_task()


@slapd_only
def test_the_scheduled_sync_revokes_a_leavers_grant_right_after(hospital, directory, approle_settings):
    """The scheduled task (access.directory_sync) is identity's sync, then at once the access
    sweep: a leaver's grant does not wait for the next sweep."""
    from access.models import Grant
    from access.tasks import directory_sync_task

    directory_sync(full=True, dry_run=False)
    alice, bob = User.objects.get(username="alice"), User.objects.get(username="bob")
    grant = _ssh_grant(alice, bob)
    directory.delete(hospital["alice"])
    result = directory_sync_task(full=True)
    assert result["ok"] and result["deactivated"] == 1
    assert result["grants_of_inactive_revoked"] == 1
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED and grant.end_reason == LEFT


@slapd_only
def test_the_embedded_worker_runs_the_sync_when_due(hospital):
    from access.management.commands.access_sweep import Command

    out = io.StringIO()
    command = Command(stdout=out)
    command._directory_sync_if_due()
    command._directory_sync_if_due()  # not due again yet
    assert out.getvalue().count("directory sync:") == 1
    assert DirectorySyncRun.objects.count() == 1


@slapd_only
def test_an_unexpected_error_fails_the_run_and_the_next_one_runs(hospital, monkeypatch):
    from identity import directory

    def broken():
        raise RuntimeError("database on fire")

    monkeypatch.setattr(directory, "_known_users", broken)
    with pytest.raises(RuntimeError):
        directory_sync(full=True, dry_run=False)
    run = DirectorySyncRun.objects.get()
    assert run.state == "failed" and "database on fire" in run.error and run.finished_at
    monkeypatch.undo()
    assert directory_sync(full=True, dry_run=False).ok
