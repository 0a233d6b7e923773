"""manage.py pam_config export|apply: the site's targets, accounts and policies as one YAML file."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from access import services
from access.config_file import ConfigFileError, config_apply, config_export
from access.models import AccessPolicy, AccessRequest, Account, Grant, Target
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq5Q0Yg7C3ZbJrQWwq0b0bH8r4bqg3v8c3zZ"


@pytest.fixture
def site(pat):
    """A site with an SSH target (pinned), a database target, their accounts and two policies."""
    pacs = Target.objects.create(
        name="pacs01",
        host="10.0.0.5",
        description="Main PACS, radiology",
        tags=["radiology"],
        forward_ports=[104, 11112],
        host_key=KEY,
        host_key_fingerprint="SHA256:qlXBCNmRjUfgPNbLQ+hb2wcZVynOWUXR4JyNluNe2qA",
    )
    root = Account.objects.create(target=pacs, slug="pacs01-root", kind="ssh-ca", username="root")
    Account.objects.create(
        target=pacs, slug="pacs01-svc", kind="static", username="pacssvc", tags=["vendor"], kv_path="pacs/svc"
    )
    db = Target.objects.create(name="pacsdb", kind="database", host="db.hospital.example", port=5433)
    Account.objects.create(
        target=db,
        slug="pacsdb-admin",
        kind="database",
        username="pacs_admin",
        database_name="pacs",
        database_sslmode="verify-full",
        is_active=False,
    )
    admins = AccessPolicy.objects.create(
        name="PACS admins",
        ticket_pattern=r"^(INC|CHG)-\d+$",
        ticket_example="INC-12345",
        ticket_case_insensitive=True,
        max_duration_minutes=240,
    )
    admins.groups.add(Group.objects.get(name="requester"))
    admins.targets.add(pacs)
    vendors = AccessPolicy.objects.create(
        name="Vendor",
        approvals_required=2,
        ticket_required=False,
        ticket_pattern="",
        tags=["vendor"],
        is_active=False,
    )
    vendors.groups.add(Group.objects.get(name="requester"), Group.objects.get(name="break-glass"))
    vendors.accounts.add(root)


def _wipe():
    AccessPolicy.objects.all().delete()
    Account.objects.all().delete()
    Target.objects.all().delete()


def _apply(text, pat=None, **options):
    return config_apply(text=text, source="site.yaml", acting_user=pat, **options)


def test_export_then_apply_on_a_fresh_database_reproduces_the_site(site, pat):
    exported = config_export()
    assert "password" not in exported.lower()
    _wipe()
    outcome = _apply(exported, pat, pin_host_keys=True)
    # 2 targets, a pin, 3 accounts (one deactivated), 2 policies (one deactivated)
    assert len(outcome.changes) == 10
    assert config_export() == exported
    pinned = Target.objects.get(name="pacs01")
    assert pinned.host_key == KEY and pinned.host_key_confirmed_by == pat
    assert (
        AuditEvent.objects.filter(
            action="access.target.created", details__via="pam_config apply site.yaml"
        ).count()
        == 2
    )
    assert AuditEvent.objects.get(action="access.config.applied").actor == pat


def test_applying_twice_changes_nothing_the_second_time(site, pat):
    exported = config_export()
    _wipe()
    _apply(exported, pat, pin_host_keys=True)
    events = AuditEvent.objects.count()
    outcome = _apply(exported, pat, pin_host_keys=True)
    assert outcome.changes == [] and AuditEvent.objects.count() == events


def test_a_dry_run_changes_nothing_and_says_what_would_change(site, pat, tmp_path):
    text = (
        config_export()
        .replace("host: 10.0.0.5", "host: 10.0.0.9")
        .replace("max_duration_minutes: 240", "max_duration_minutes: 30")
    )
    events = AuditEvent.objects.count()
    out = StringIO()
    path = tmp_path / "site.yaml"
    path.write_text(text)
    call_command("pam_config", "apply", str(path), "--dry-run", stdout=out)
    said = out.getvalue()
    assert "would change target pacs01: host 10.0.0.5 → 10.0.0.9" in said
    assert "would change policy PACS admins: max_duration_minutes 240 → 30" in said
    assert Target.objects.get(name="pacs01").host == "10.0.0.5"
    assert AuditEvent.objects.count() == events


def test_a_bad_file_changes_nothing_and_says_where(site, pat):
    text = config_export()
    bad = (
        text.replace("port: 22", "port: ssh")
        .replace("kind: static", "kind: statik")
        .replace("groups: [requester]", "groups: [radiologists]")
        .replace("  host: db.hospital.example", "  hots: db.hospital.example")
        .replace("host: 10.0.0.5", "host: 10.0.0.7")  # a valid change: still not made
    )
    lines = bad.splitlines()
    with pytest.raises(ConfigFileError) as refused:
        _apply(bad, pat)
    problems = refused.value.problems
    port_line = next(i for i, line in enumerate(lines, 1) if "port: ssh" in line)
    assert f"site.yaml:{port_line}: targets[0].port: must be a whole number, not 'ssh'" in problems
    assert any("hots: unknown field" in p for p in problems)
    assert any("groups: no group 'radiologists'" in p for p in problems)
    assert Target.objects.get(name="pacs01").host == "10.0.0.5"


def test_a_bad_account_kind_names_its_line(site, pat):
    text = config_export().replace("kind: static", "kind: statik")
    line = next(i for i, line in enumerate(text.splitlines(), 1) if "kind: statik" in line)
    with pytest.raises(ConfigFileError) as refused:
        _apply(text, pat)
    assert any(
        p.startswith(f"site.yaml:{line}: targets[0] (pacs01).accounts[1] (pacs01-svc).kind:")
        for p in refused.value.problems
    )


def test_not_yaml_at_all_is_one_clear_error():
    with pytest.raises(ConfigFileError) as refused:
        _apply("version: 1\ntargets:\n - name: [x\n")
    assert refused.value.problems[0].startswith("site.yaml:4: not valid YAML")


def test_the_command_refuses_a_bad_file_with_each_problem(site, tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(config_export().replace("port: 22", "port: -3"))
    with pytest.raises(CommandError) as refused:
        call_command("pam_config", "apply", str(path))
    assert "was not applied; nothing was changed" in str(refused.value)
    assert "port: Ensure this value is greater than or equal to 1" in str(refused.value)


def test_host_keys_are_pinned_only_by_a_named_pam_admin_who_asks(site, pat):
    exported = config_export()
    _wipe()
    with pytest.raises(ConfigFileError) as refused:
        _apply(exported, None, pin_host_keys=True)
    assert "name the pam-admin" in refused.value.problems[0]
    outcome = _apply(exported, None)
    assert Target.objects.get(name="pacs01").host_key == ""
    assert any("is not pinned" in note for note in outcome.notes)
    event = AuditEvent.objects.get(action="access.config.applied")
    assert event.actor is None and "no user named" in event.details["by"]


def test_deactivating_an_account_in_the_file_revokes_its_grants(site, pat, alice):
    from datetime import timedelta

    from django.utils import timezone

    root = Account.objects.get(slug="pacs01-root")
    req = AccessRequest.objects.create(
        requester=alice,
        account=root,
        reason="w",
        duration_minutes=60,
        approvals_required=0,
        state="fulfilled",
    )
    grant = Grant.objects.create(
        request=req, user=alice, account=root, ends_at=timezone.now() + timedelta(hours=1)
    )
    text = config_export().replace("    username: root\n", "    username: root\n    active: false\n")
    _apply(text, pat)
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED
    assert services.account_ref(Account.objects.get(slug="pacs01-root"))  # still there, inactive
    assert not Account.objects.get(slug="pacs01-root").is_active


def test_the_command_exports_and_applies_as_a_named_user(site, pat, tmp_path):
    path = tmp_path / "site.yaml"
    call_command("pam_config", "export", str(path), stdout=StringIO())
    _wipe()
    out = StringIO()
    call_command("pam_config", "apply", str(path), "--as", "pat", "--pin-host-keys", stdout=out)
    assert "Applied 10 change(s)." in out.getvalue()
    out = StringIO()
    call_command("pam_config", "apply", str(path), "--as", "pat", "--pin-host-keys", stdout=out)
    assert "No change: pamsite already matches the file." in out.getvalue()
    with pytest.raises(CommandError, match="No user 'nobody'"):
        call_command("pam_config", "apply", str(path), "--as", "nobody")


def test_a_policy_naming_accounts_as_text_instead_of_a_list_is_refused(site, pat):
    text = config_export().replace(
        "  targets: [pacs01]\n", "  targets: [pacs01]\n  accounts: pacs01-root\n", 1
    )
    with pytest.raises(ConfigFileError) as refused:
        _apply(text, pat)
    assert any("policies[0].accounts: must be a list of words" in p for p in refused.value.problems)
