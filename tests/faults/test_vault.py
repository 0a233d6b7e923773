"""Vault sealed or stopped under pamsite: at checkout, and during a live gateway session.

A dedicated OpenBao (``faulty_vault``) is sealed for real, or made unreachable by the proxy
in front of it (the server keeps its leases, as a Vault behind a dead network would).
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from access import services
from access.models import AccessRequest, Grant
from audit.chain import verify_chain
from audit.models import AuditEvent
from recordings.models import GatewaySession, Recording
from recordings.recorder import seal_leftovers, verify_recording
from tests.conftest import verified_client
from tests.fixtures.gateway import live_session
from tests.fixtures.pacs import grant_for
from vault.sources import CHECKOUT_LEASE_SECONDS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def test_vault_sealed_or_stopped_during_checkout_leaves_the_request_approved_and_the_retry_works(
    faulty_vault, vault_db_account, alice, bob, pg_target, settings
):
    """Sealed at approval, then gone between the lease and its renewal: each time the request
    stays approved (not fulfilled) with the reason shown, no grant is made, no lease outlives
    CHECKOUT_LEASE_SECONDS; once Vault is back the retry grants, and check-in drops the user."""
    requester, approver = verified_client(Client(), alice), verified_client(Client(), bob)
    roles_before = pg_target.roles()
    req = services.request_create(
        requester=alice, account=vault_db_account, reason="index rebuild", ticket="", duration_minutes=30
    )
    request_url = reverse("access:request", args=[req.pk])
    creds = f"{settings.VAULT_DATABASE_MOUNT}/creds/{vault_db_account.slug}/"

    # 1. Sealed when the approver approves.
    faulty_vault.seal()
    response = approver.post(reverse("access:request_decide", args=[req.pk]), {"decision": "approve"})
    assert response.status_code == 302
    req.refresh_from_db()
    assert req.state == AccessRequest.State.APPROVED
    assert "Vault is sealed" in req.checkout_error and "unseal" in req.checkout_error
    assert not Grant.objects.exists()
    assert pg_target.roles() == roles_before
    page = _page(requester, request_url)
    assert "The credential could not be checked out: Vault is sealed" in page and "Retry checkout" in page
    failed = AuditEvent.objects.get(action="access.grant.checkout_failed")
    assert "sealed" in failed.details["error"]

    # Still sealed: the retry says so again, and still makes nothing.
    requester.post(reverse("access:request_retry", args=[req.pk]))
    assert "Still could not check the credential out" in _page(requester, request_url)
    assert not Grant.objects.exists()

    # 2. Unsealed; then Vault goes away between handing out the lease and its renewal.
    faulty_vault.unseal()
    faulty_vault.proxy.on_request(b"/v1/sys/leases/renew", faulty_vault.stop)
    requester.post(reverse("access:request_retry", args=[req.pk]))
    req.refresh_from_db()
    assert req.state == AccessRequest.State.APPROVED
    assert "Vault unreachable" in req.checkout_error
    assert "Vault unreachable" in _page(requester, request_url)
    assert not Grant.objects.exists()
    # Its revocation could not reach Vault either: the lease Vault handed out is short, so it
    # and its database user end by themselves within CHECKOUT_LEASE_SECONDS, never with the grant's length.
    orphans = faulty_vault.leases(creds)
    assert len(orphans) == 1 and 0 < next(iter(orphans.values())) <= CHECKOUT_LEASE_SECONDS
    (orphan_role,) = pg_target.roles() - roles_before
    with pg_target.admin() as conn:
        valid_until = conn.execute("SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", [orphan_role])
        assert valid_until.fetchone()[0] <= timezone.now() + timedelta(seconds=CHECKOUT_LEASE_SECONDS + 5)

    # 3. Back: the retry grants; the grant's own lease lasts the grant.
    faulty_vault.start()
    response = requester.post(reverse("access:request_retry", args=[req.pk]))
    req.refresh_from_db()
    assert req.state == AccessRequest.State.FULFILLED and req.checkout_error == ""
    grant = Grant.objects.get()
    assert response.url == grant.get_absolute_url()
    assert grant.login in pg_target.roles()
    assert faulty_vault.leases(creds)[grant.lease_id] > CHECKOUT_LEASE_SECONDS
    services.grant_checkin(grant=grant, acting_user=alice)
    # The release runs on commit (no broker) or at the worker's next sweep: run it as the worker would.
    services.grants_cleanup_due()
    grant.refresh_from_db()
    assert grant.cleanup == Grant.Cleanup.DONE, grant.cleanup_error
    assert grant.login not in pg_target.roles()
    assert verify_chain().ok


def _wait_for(path, text: bytes, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_bytes():
        assert time.monotonic() < deadline, f"{text!r} did not reach {path}"
        time.sleep(0.1)


@pytest.mark.parametrize("fault", ["sealed", "stopped"])
def test_vault_going_away_mid_session_keeps_the_session_refuses_new_ones_and_seals_later(
    fault, faulty_vault, vault_static_account, gateway, alice, bob, settings
):
    """The live session keeps its injected credential and ends normally; a new one is refused
    saying Vault is unavailable; the recordings Vault could not sign at close are signed by
    the worker's seal_leftovers once Vault is back, as complete, and all verify."""
    grant_for(alice, bob, vault_static_account)
    client = gateway.popen(alice, "alice:pacs01-svc", tty=True)
    client.stdin.write(b"echo before-$((20+1))\n")
    client.stdin.flush()
    session = live_session(alice)
    cast = settings.RECORDINGS_ROOT / session.recordings.get(kind=Recording.Kind.TERMINAL).path
    _wait_for(cast, b"before-21")

    if fault == "sealed":
        faulty_vault.seal()
    else:
        faulty_vault.stop()
    client.stdin.write(b"echo during-$((20+2))\n")
    client.stdin.flush()
    _wait_for(cast, b"during-22")

    refused = gateway.ssh(alice, "alice:pacs01-svc", "echo never")
    said = refused.stdout.decode() + refused.stderr.decode()
    assert refused.returncode != 0 and "never" not in said.replace("echo never", "")
    why = "Vault is sealed" if fault == "sealed" else "Vault unreachable"
    assert "cannot log in to pacs01: Vault did not hand out the credential" in said and why in said
    refusal = GatewaySession.objects.exclude(pk=session.pk).get(user=alice)

    client.stdin.write(b"echo after-$((20+3)); exit\n")
    client.stdin.flush()
    out, _ = client.communicate(timeout=30)
    assert client.returncode == 0 and b"after-23" in out
    session.refresh_from_db()
    refusal.refresh_from_db()
    deadline = time.monotonic() + 10
    while session.ended_at is None or refusal.ended_at is None:
        assert time.monotonic() < deadline, "the sessions were not ended"
        time.sleep(0.1)
        session.refresh_from_db()
        refusal.refresh_from_db()
    # Ended as what they were, not as failures: only the signature waits for Vault.
    assert (session.end_reason, session.end_message) == (GatewaySession.EndReason.CLOSED, "")
    assert refusal.end_reason == GatewaySession.EndReason.REFUSED and why in refusal.end_message
    unsealed = Recording.objects.filter(session__in=[session, refusal])
    assert unsealed.count() == 3 and not unsealed.filter(finalized_at__isnull=False).exists()

    if fault == "sealed":
        faulty_vault.unseal()
    else:
        faulty_vault.start()
    assert seal_leftovers(grace_seconds=0) == 3
    for recording in Recording.objects.filter(session__in=[session, refusal]):
        assert recording.finalized_at is not None and not recording.interrupted, recording.path
        ok, verdict = verify_recording(recording, root=settings.RECORDINGS_ROOT)
        assert ok, verdict
    # With Vault back, connecting works again.
    again = gateway.ssh(alice, "alice:pacs01-svc", "echo back-$((20+4))")
    assert again.returncode == 0 and b"back-24" in again.stdout, again.stderr
    assert verify_chain().ok
