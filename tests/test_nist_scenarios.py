"""The scenarios of NIST SP 1800-24 ("Securing Picture Archiving and Communication System"),
each one story told end to end through the real pieces: the web pages (Django's test client),
the gateway driven by the OpenSSH client, a real sshd as the PACS host, real OpenBao, real slapd.

1. Access without a grant is denied, and alerted when it repeats.
2. A stolen password without the second factor gets nowhere, and the account locks (alert).
3. A vendor's just-in-time session: request with a ticket, approval, recorded session, cut at
   expiry, password rotated, replay audited.
4. A leaver loses access at the directory sync.
5. Vault down: checkouts fail closed, break-glass still works (sealed envelope) and alerts.
6. A tampered recording and a tampered audit row are detected.
7. Every login and logout, on the web and at the gateway, is audited.

No secret is ever printed here: passwords are compared by their digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from access import services
from access.models import AccessPolicy, AccessRequest, Account, Grant
from access.tasks import sweep_task
from audit.formats import is_security_alert
from audit.models import AuditEvent
from identity.directory import LEFT
from identity.models import User
from recordings import sessions
from recordings.models import GatewaySession, Recording
from targets import ssh_blocking
from tests.audit.conftest import drop_triggers, restore_triggers
from tests.conftest import PASSWORD, make_user, verified_client
from tests.fixtures.gateway import ended_session, live_session
from tests.fixtures.openbao import point_settings_at
from tests.fixtures.pacs import grant_for, policy_for
from tests.fixtures.slapd import LDAP_BACKENDS
from tests.fixtures.waiting import wait_for
from tests.totp import totp_code
from vault import sources
from vault.bootstrap import vault_bootstrap

# The gateway serves from threads of this process: the tests commit what it must see.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

GATEWAY_ADDRESS = "127.0.0.1"  # where the OpenSSH client connects from


def signed_in(user, *, address: str = "127.0.0.1") -> Client:
    """A browser of the user's, from ``address``, with both factors done."""
    return verified_client(Client(REMOTE_ADDR=address), user)


def wrong_code(user) -> str:
    """A six-digit code that the user's authenticator does not accept now (nor a step either side)."""
    key = TOTPDevice.objects.get(user=user, confirmed=True).bin_key
    now = time.time()
    accepted = {totp_code(key, at=now + step) for step in (-60, -30, 0, 30, 60)}
    return next(code for code in ("000000", "111111", "222222") if code not in accepted)


def digest(secret: str) -> str:
    """What is compared of a password (a failing assertion then shows no secret)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def last_sequence() -> int:
    return AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0


def actions_since(sequence: int) -> list[str]:
    return list(
        AuditEvent.objects.filter(sequence__gt=sequence).order_by("sequence").values_list("action", flat=True)
    )


def in_order(seen: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` occurs in ``seen`` in this order (other events may come between)."""
    remaining = iter(seen)
    return all(action in remaining for action in expected)


def cast_output(data: bytes) -> str:
    """The terminal output an asciicast v2 recording holds (its complete lines)."""
    output = []
    for line in data.decode(errors="replace").splitlines()[1:]:
        try:
            _time, kind, text = json.loads(line)
        except ValueError:
            continue  # the line the gateway is writing
        if kind == "o":
            output.append(text)
    return "".join(output)


def terminal_output(session: GatewaySession) -> str:
    recording = session.recordings.get(kind=Recording.Kind.TERMINAL)
    return cast_output((Path(settings.RECORDINGS_ROOT) / recording.path).read_bytes())


def target_of(account: Account) -> dict:
    """How to log in to the account's target directly (to ask which password it takes)."""
    target = account.target
    return {
        "host": target.host,
        "port": target.port,
        "username": account.username,
        "host_key": target.host_key,
    }


# --- 1 ------------------------------------------------------------------------------------


def test_nist_access_without_a_grant_is_denied_and_alerted(gateway, alice, ssh_account):
    """Alice signs in at the gateway with both factors but holds no grant for the account:
    every attempt is refused with what is missing and where to ask, leaves a refused session
    and an audit event; the DENIALS_BEFORE_ALERT-th within the window raises a security alert."""
    slug = ssh_account.slug
    for _ in range(sessions.DENIALS_BEFORE_ALERT):
        assert not AuditEvent.objects.filter(action="security.alert.access_without_grant").exists()
        result = gateway.ssh(alice, f"alice:{slug}", "id")
        assert result.returncode != 0 and not result.stdout
        message = result.stderr.decode()
        assert f"You have no grant for {slug}." in message
        assert f"/access/request/?account={slug}" in message
    refused = GatewaySession.objects.filter(user=alice).order_by("pk")
    assert [(s.end_reason, s.grant_id, s.account) for s in refused] == [
        (GatewaySession.EndReason.REFUSED, None, slug)
    ] * sessions.DENIALS_BEFORE_ALERT
    events = AuditEvent.objects.filter(action="gateway.session.refused").order_by("sequence")
    assert [(e.actor_username, e.source_ip, e.object_id, e.details["reason"]) for e in events] == [
        ("alice", GATEWAY_ADDRESS, str(s.pk), "no-grant") for s in refused
    ]
    alert = AuditEvent.objects.get(action="security.alert.access_without_grant")
    assert (alert.actor_username, alert.source_ip, alert.object_id) == (
        "alice",
        GATEWAY_ADDRESS,
        str(refused.last().pk),
    )
    assert alert.details["accounts"] == [slug]
    assert alert.details["refusals"] == sessions.DENIALS_BEFORE_ALERT
    assert is_security_alert(alert.action)


# --- 2 ------------------------------------------------------------------------------------


def test_nist_a_stolen_password_without_the_totp_is_refused_and_alerted(
    gateway, settings, alice, bob, ssh_account
):
    """Someone has alice's password but not her phone, and alice holds a live grant. On the web
    the password alone opens no page; each wrong code is refused and audited, on the web and at
    the gateway, and they count together: at LOGIN_FAILURE_LIMIT the account is locked
    (auth.lockout, a security alert) and even alice's own password and code are refused.
    Retries while her authenticator is throttled are refused without counting (the delay is
    skipped between attempts here: it is the lockout under test)."""
    grant_for(alice, bob, ssh_account)
    login = f"alice:{ssh_account.slug}"
    limit = settings.LOGIN_FAILURE_LIMIT = 5  # the default, whatever the environment
    web_tries = 2
    intruder = Client(REMOTE_ADDR="203.0.113.7")
    response = intruder.post(reverse("identity:login"), {"username": "alice", "password": PASSWORD})
    assert response["Location"].startswith(reverse("identity:verify"))
    for page in ("dashboard", "access:mine", "access:targets", "sessions:search"):
        assert intruder.get(reverse(page))["Location"].startswith(reverse("identity:verify")), page
    devices = TOTPDevice.objects.filter(user=alice, confirmed=True)
    for _ in range(web_tries):
        devices.update(throttling_failure_count=0, throttling_failure_timestamp=None)
        response = intruder.post(reverse("identity:verify"), {"code": wrong_code(alice)})
        assert response.status_code == 200 and b'name="code"' in response.content
    assert intruder.get(reverse("access:mine")).status_code == 302

    connections = 0
    while not AuditEvent.objects.filter(action="auth.lockout").exists():
        assert connections < limit, "no lockout after LOGIN_FAILURE_LIMIT wrong codes"
        devices.update(throttling_failure_count=0, throttling_failure_timestamp=None)
        # One wrong code counted per connection: the client's retry comes while throttled.
        result = gateway.ssh(alice, login, "id", code=wrong_code(alice))
        assert result.returncode == 255 and not result.stdout
        connections += 1

    failures = AuditEvent.objects.filter(action="auth.mfa.failure", actor_username="alice").exclude(
        details__reason__in=["locked_out", "throttled"]
    )
    assert failures.count() == limit
    assert {(e.source_ip, e.details.get("channel", "web")) for e in failures} == {
        ("203.0.113.7", "web"),
        (GATEWAY_ADDRESS, "ssh"),
    }
    assert failures.filter(details__channel="ssh").count() == limit - web_tries
    lockout = AuditEvent.objects.get(action="auth.lockout")
    assert lockout.actor_username == "alice" and is_security_alert(lockout.action)
    assert not GatewaySession.objects.filter(user=alice).exists()  # never reached the target

    # Locked: alice herself, with the right password and code, is refused on both channels.
    result = gateway.ssh(alice, login, "id")
    assert result.returncode == 255 and not result.stdout
    assert AuditEvent.objects.filter(
        action="auth.login.failure", actor_username="alice", details__reason="locked_out"
    ).exists()
    response = Client().post(reverse("identity:login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 429
    assert not GatewaySession.objects.filter(user=alice).exists()


# --- 3 ------------------------------------------------------------------------------------


def test_nist_vendor_just_in_time_session_end_to_end(gateway, bob, carol, static_account):
    """A vendor engineer asks for the PACS service account with a change ticket; an approver
    approves on the web; the vendor works through the gateway (recorded); when the grant's time
    is up the gateway cuts the session with a message, the worker expires the grant and rotates
    the password on the target; an auditor replays the session, and that viewing is audited."""
    vendor = make_user("vince", "requester", email="vince@pacs-vendor.example")
    AccessPolicy.objects.filter(accounts=static_account).update(ticket_required=True)
    slug = static_account.slug
    start = last_sequence()

    # Request, on the web: the ticket is required.
    vendor_web = signed_in(vendor, address="192.0.2.10")
    ask = {"account": slug, "duration_minutes": 30, "reason": "Apply DICOM router patch 7.3.1"}
    response = vendor_web.post(reverse("access:request_new"), {**ask, "ticket": ""})
    assert response.status_code == 200 and b"needs a ticket reference" in response.content
    response = vendor_web.post(reverse("access:request_new"), {**ask, "ticket": "CHG-4711"})
    req = AccessRequest.objects.get(requester=vendor)
    assert response["Location"] == req.get_absolute_url()
    assert (req.state, req.ticket) == (AccessRequest.State.PENDING, "CHG-4711")

    # Approval, on the web.
    approver_web = signed_in(bob)
    assert b"CHG-4711" in approver_web.get(reverse("access:approvals")).content
    response = approver_web.post(
        reverse("access:request_decide", args=[req.pk]), {"decision": "approve", "comment": "CAB ok"}
    )
    assert response.status_code == 302
    req.refresh_from_db()
    assert req.state == AccessRequest.State.FULFILLED, req.checkout_error
    grant = req.grant
    assert f"vince:{slug}@".encode() in vendor_web.get(grant.get_absolute_url()).content
    ref = services.account_ref(static_account)
    password_before = sources.static_login_password(account=ref)

    # The recorded session through the gateway.
    client = gateway.popen(vendor, f"vince:{slug}", tty=True)
    session = live_session(vendor)
    wait_for(lambda: terminal_output(session).strip(), "the shell's prompt")
    typed = "echo vendor-fix-$((40+2))"
    client.stdin.write(typed.encode())  # typed, then Enter once it shows (as a person would)
    client.stdin.flush()
    wait_for(lambda: typed in terminal_output(session), "the typed command echoed")
    client.stdin.write(b"\n")
    client.stdin.flush()
    wait_for(lambda: "vendor-fix-42" in terminal_output(session), "the command's output recorded")

    # The grant's time is up: the gateway cuts the session, with a message.
    Grant.objects.filter(pk=grant.pk).update(ends_at=timezone.now())
    out, _err = client.communicate(timeout=20)
    said = out.decode(errors="replace")
    assert "vendor-fix-42" in said
    assert f"Your grant for {slug} expired" in said and "The session is closed." in said
    session = ended_session(vendor)
    assert session.end_reason == GatewaySession.EndReason.GRANT_ENDED

    # The worker's sweep expires the grant and rotates the password on the target.
    assert sweep_task()["grants_expired"] == 1
    grant.refresh_from_db()
    assert grant.state == Grant.State.EXPIRED
    assert grant.cleanup == Grant.Cleanup.DONE, grant.cleanup_error
    password_after = sources.static_login_password(account=ref)
    assert digest(password_after) != digest(password_before)
    assert ssh_blocking.check_password_login(**target_of(static_account), password=password_after)
    assert not ssh_blocking.check_password_login(**target_of(static_account), password=password_before)

    # An auditor replays it; the viewing is itself audited.
    auditor_web = signed_in(carol, address="192.0.2.77")
    page = auditor_web.get(reverse("replay:session", args=[session.pk]))
    assert page.status_code == 200 and typed.encode() in page.content  # the command's marker
    terminal = session.recordings.get(kind=Recording.Kind.TERMINAL)
    played = cast_output(auditor_web.get(reverse("replay:cast", args=[terminal.pk])).content)
    assert "vendor-fix-42" in played and f"Your grant for {slug} expired" in played
    viewed = AuditEvent.objects.get(action="recording.viewed", actor_username="carol")
    assert (viewed.object_id, viewed.source_ip, viewed.details["page"]) == (
        str(session.pk),
        "192.0.2.77",
        "replay",
    )
    assert in_order(
        actions_since(start),
        [
            "access.request.created",
            "access.request.approved",
            "access.grant.checked_out",
            "gateway.session.started",
            "gateway.session.ended",
            "access.grant.expired",
            "access.password.rotated",
            "recording.viewed",
        ],
    )


# --- 4 ------------------------------------------------------------------------------------


def test_nist_a_leaver_is_revoked_at_the_directory_sync(
    gateway, bob, ssh_account, ldap_settings, ldap_tree, slapd
):
    """Lena, a directory user, holds a live grant and is connected through the gateway. She is
    removed from the directory; at the next sync she is deactivated, her grant revoked and her
    session closed with a message; she cannot connect again."""
    password = "Lena's directory password 91!"
    lena_dn = ldap_tree.add_user("lena", cn="Lena Leaver", mail="lena@hospital.example", password=password)
    ldap_settings.LDAP_GROUP_ROLE_MAP = [(ldap_tree.add_group("pacs-admins", lena_dn), "requester")]
    ldap_settings.AUTHENTICATION_BACKENDS = LDAP_BACKENDS
    call_command("sync_ldap", "--full", stdout=io.StringIO())
    lena = User.objects.get(username="lena", source=User.Source.LDAP)
    TOTPDevice.objects.create(user=lena, name="authenticator", confirmed=True)
    grant = grant_for(lena, bob, ssh_account)
    login = f"lena:{ssh_account.slug}"

    client = gateway.popen(lena, login, password=password, tty=True)
    client.stdin.write(b"echo lena-at-work\n")
    client.stdin.flush()
    session = live_session(lena)
    wait_for(lambda: "lena-at-work" in terminal_output(session), "her command's output recorded")

    slapd.delete(lena_dn)
    call_command("sync_ldap", "--full", stdout=io.StringIO())
    lena.refresh_from_db()
    assert not lena.is_active and lena.deactivated_reason == LEFT
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED and grant.end_reason == LEFT and grant.ended_by is None
    out, _err = client.communicate(timeout=20)
    assert LEFT in out.decode(errors="replace")
    session = ended_session(lena)
    assert session.end_reason in (GatewaySession.EndReason.TERMINATED, GatewaySession.EndReason.REVOKED)
    assert AuditEvent.objects.filter(action="identity.directory.deactivated", object_id=str(lena.pk)).exists()
    revoked = AuditEvent.objects.get(action="access.grant.revoked", object_id=str(grant.pk))
    assert revoked.actor is None and revoked.details["reason"] == LEFT
    cut = AuditEvent.objects.get(action="gateway.session.ended", object_id=str(session.pk))
    assert LEFT in cut.details["message"]

    result = gateway.ssh(lena, login, "id", password=password)
    assert result.returncode == 255 and not result.stdout
    assert GatewaySession.objects.filter(user=lena).count() == 1


# --- 5 ------------------------------------------------------------------------------------


def test_nist_vault_down_checkouts_fail_closed_while_break_glass_works_and_alerts(
    alice, bob, carol, pat, pacs_target, sshd_target, openbao_factory, settings, mailoutbox
):
    """Vault is sealed. An approved request gets no credential (it stays approved, the
    approver and requester are told why, a retry fails too). A break-glass member still gets
    emergency access: the grant is made, the page tells her to use the account's sealed
    emergency credential, pam-admins get a security alert, and the account is flagged. Once
    Vault is unsealed the worker's sweep rotates the password, so the envelope's stops working."""
    vault = openbao_factory()  # this test's own server: sealing it disturbs no other test
    vault.initialize()
    vault.unseal()
    point_settings_at(settings, vault)
    vault_bootstrap()
    local = sshd_target.create_user()
    account = Account.objects.create(
        target=pacs_target, slug="pacs01-svc", kind=Account.Kind.STATIC, username=local.name
    )
    ref = services.account_ref(account)
    sources.static_set_password(account=ref, password=local.password)  # also sealed in the envelope
    policy_for(account)
    erin = make_user("erin", "requester", "break-glass", email="erin@hospital.example")

    vault.seal()

    # An ordinary checkout fails closed.
    requester_web, approver_web = signed_in(alice), signed_in(bob)
    requester_web.post(
        reverse("access:request_new"),
        {"account": account.slug, "duration_minutes": 30, "ticket": "", "reason": "routine cleanup"},
    )
    req = AccessRequest.objects.get(requester=alice)
    response = approver_web.post(
        reverse("access:request_decide", args=[req.pk]), {"decision": "approve", "comment": ""}, follow=True
    )
    assert b"could not be checked out yet" in response.content and b"Vault is sealed" in response.content
    req.refresh_from_db()
    assert req.state == AccessRequest.State.APPROVED and "sealed" in req.checkout_error
    response = requester_web.post(reverse("access:request_retry", args=[req.pk]), follow=True)
    assert b"Still could not check the credential out" in response.content
    assert not Grant.objects.exists()
    assert AuditEvent.objects.filter(action="access.grant.checkout_failed").count() == 2

    # Break-glass still works, on the sealed emergency credential.
    mailoutbox.clear()
    response = signed_in(erin).post(
        reverse("access:break_glass"),
        {"account": account.slug, "duration_minutes": 30, "justification": "ER cannot load CT images"},
        follow=True,
    )
    grant = Grant.objects.get(user=erin)
    assert response.redirect_chain[-1][0] == grant.get_absolute_url()
    page = response.content.decode()
    assert "Vault is unreachable: use the sealed emergency credential" in page
    assert f'Open the sealed emergency envelope for <strong class="mono">{account.slug}</strong>' in page
    assert (grant.break_glass, grant.is_live, grant.credential) == (
        True,
        True,
        Grant.Credential.SEALED_ENVELOPE,
    )
    account.refresh_from_db()
    assert account.emergency_rotation_due_since is not None
    assert AuditEvent.objects.get(action="access.break_glass.activated").actor_username == "erin"
    alert = AuditEvent.objects.get(action="security.alert.break_glass_without_vault")
    assert (alert.actor_username, alert.object_id) == ("erin", str(grant.pk))
    assert (alert.details["account"], alert.details["vault"]) == (account.slug, "sealed")
    assert is_security_alert(alert.action)
    to_pam_admins = [m for m in mailoutbox if m.subject.startswith("[pamsite] SECURITY ALERT: break-glass")]
    assert [m.to for m in to_pam_admins] == [[pat.email]]
    assert "sealed emergency envelope of pacs01-svc" in to_pam_admins[0].body
    assert any(carol.email in m.to and "EMERGENCY ACCESS" in m.subject for m in mailoutbox)

    # While Vault is down nothing can be rotated; once it is back, the sweep does it at once.
    assert services.break_glass_rotations_due() == 0
    vault.unseal()
    assert sweep_task()["rotated_after_break_glass"] == 1
    account.refresh_from_db()
    assert account.emergency_rotation_due_since is None
    rotated = sources.static_login_password(account=ref)
    assert digest(rotated) != digest(local.password)
    assert ssh_blocking.check_password_login(**target_of(account), password=rotated)
    assert not ssh_blocking.check_password_login(**target_of(account), password=local.password)
    event = AuditEvent.objects.get(action="access.password.rotated", object_type="access.account")
    assert event.details["after"] == "break-glass without Vault"
    assert sweep_task()["rotated_after_break_glass"] == 0


# --- 6 ------------------------------------------------------------------------------------


def test_nist_a_tampered_recording_and_audit_row_are_detected(
    gateway, settings, alice, bob, carol, ssh_account
):
    """After a recorded session, one changed byte of its recording makes the session page say
    TAMPERED; an audit row edited in the database, by someone who can drop the append-only
    trigger, is named by sequence number by the auditor's check and by verify_audit."""
    grant_for(alice, bob, ssh_account)
    result = gateway.ssh(
        alice, f"alice:{ssh_account.slug}", tty=True, input=b"echo study-$((6*7)) sent; exit\n"
    )
    assert b"study-42 sent" in result.stdout, result.stderr
    session = ended_session(alice)
    auditor_web = signed_in(carol)
    detail = reverse("sessions:detail", args=[session.pk])

    def verdicts() -> tuple[dict[str, str], object]:
        response = auditor_web.get(detail)
        assert response.status_code == 200
        return {check.recording.kind: check.state for check in response.context["checks"]}, response

    states, _page = verdicts()
    assert set(states.values()) == {"intact"}, states

    # The terminal recording: "study-42 sent" becomes "study-72 sent".
    terminal = session.recordings.get(kind=Recording.Kind.TERMINAL)
    path = Path(settings.RECORDINGS_ROOT) / terminal.path
    data = path.read_bytes()
    assert data.count(b"study-42 sent") == 1
    path.write_bytes(data.replace(b"study-42 sent", b"study-72 sent"))
    states, page = verdicts()
    assert states == {kind: ("tampered" if kind == Recording.Kind.TERMINAL else "intact") for kind in states}
    assert b"TAMPERED" in page.content
    viewed = AuditEvent.objects.filter(action="recording.viewed").latest("sequence")
    assert viewed.details["integrity"][str(terminal.pk)] == "tampered"

    # An audit row: the trigger refuses the edit until it is dropped (and is put back after).
    started = AuditEvent.objects.get(action="gateway.session.started", object_id=str(session.pk))
    edit = "UPDATE audit_auditevent SET details = %s WHERE sequence = %s"
    forged = json.dumps({"account": "pacs01-other", "grant": 0, "node": "elsewhere"})
    with pytest.raises(IntegrityError, match="append-only"), connection.cursor() as cursor:
        cursor.execute(edit, [forged, started.sequence])
    drop_triggers()
    try:
        with connection.cursor() as cursor:
            cursor.execute(edit, [forged, started.sequence])
    finally:
        restore_triggers()
    with pytest.raises(IntegrityError, match="append-only"), connection.cursor() as cursor:
        cursor.execute(edit, [json.dumps({}), started.sequence])
    assert AuditEvent.objects.get(sequence=started.sequence).details["account"] == "pacs01-other"

    response = auditor_web.post(reverse("audit:verify"), follow=True)
    said = [str(m) for m in response.context["messages"]]
    assert any(f"Audit trail broken at sequence {started.sequence}:" in m and "altered" in m for m in said), (
        said
    )
    with pytest.raises(CommandError, match=f"Audit trail broken at sequence {started.sequence}:"):
        call_command("verify_audit", stdout=io.StringIO())


# --- 7 ------------------------------------------------------------------------------------


def channel_of(event: AuditEvent) -> str:
    """The login channel of an event: gateway rows and rows marked "ssh" are the gateway's; the
    web's rows carry no channel (identity.services._channel)."""
    if event.action.startswith("gateway."):
        return "ssh"
    return event.details.get("channel", "web")


def test_nist_every_login_and_logout_is_audited(gateway, alice, bob, ssh_account):
    """On the web: a wrong password, the password, a wrong code, the right code, sign-out. At
    the gateway: a wrong password, a full login, the session's end. Each is in the audit trail
    with the user, the channel and the address she came from."""
    grant_for(alice, bob, ssh_account)
    start = last_sequence()
    web_address = "198.51.100.23"
    web = Client(REMOTE_ADDR=web_address)
    login_url, verify_url = reverse("identity:login"), reverse("identity:verify")
    assert web.post(login_url, {"username": "alice", "password": "not her password"}).status_code == 200
    assert web.post(login_url, {"username": "alice", "password": PASSWORD}).status_code == 302
    assert web.post(verify_url, {"code": wrong_code(alice)}).status_code == 200
    device = TOTPDevice.objects.get(user=alice, confirmed=True)
    device.throttle_reset()  # django-otp's pause after a wrong code; not what is tested here
    assert web.post(verify_url, {"code": totp_code(device.bin_key)}).status_code == 302
    assert web.get(reverse("dashboard")).status_code == 200
    assert web.post(reverse("identity:logout")).status_code == 302
    assert web.get(reverse("dashboard")).status_code == 302

    login = f"alice:{ssh_account.slug}"
    assert gateway.ssh(alice, login, "id", password="not her password").returncode == 255
    result = gateway.ssh(alice, login, "whoami")
    assert result.returncode == 0, result.stderr
    ended_session(alice)
    # The gateway records the logout as the connection's last act, just after the session's end.
    deadline = time.monotonic() + 10
    while not AuditEvent.objects.filter(sequence__gt=start, action="auth.logout", source_ip=GATEWAY_ADDRESS):
        assert time.monotonic() < deadline, "the gateway recorded no logout"
        time.sleep(0.1)

    watched = {
        "auth.login.failure",
        "auth.login.password_ok",
        "auth.mfa.failure",
        "auth.login.success",
        "auth.logout",
        "gateway.session.started",
        "gateway.session.ended",
    }
    events = AuditEvent.objects.filter(sequence__gt=start, action__in=watched).order_by("sequence")
    on_web, at_gateway = ("alice", "web", web_address), ("alice", "ssh", GATEWAY_ADDRESS)
    assert [(e.action, e.actor_username, channel_of(e), e.source_ip) for e in events] == [
        ("auth.login.failure", *on_web),
        ("auth.login.password_ok", *on_web),
        ("auth.mfa.failure", *on_web),
        ("auth.login.success", *on_web),
        ("auth.logout", *on_web),
        ("auth.login.failure", *at_gateway),
        ("auth.login.password_ok", *at_gateway),
        ("auth.login.success", *at_gateway),
        ("gateway.session.started", *at_gateway),
        ("gateway.session.ended", *at_gateway),
        ("auth.logout", *at_gateway),
    ]
