"""Recording signatures when Vault is stopped, replaced or lost its signing key.

Recordings are written and sealed by the real recorders against a dedicated OpenBao
(``faulty_vault``); pamsite keeps the signing key's public keys, so a check needs no Vault,
and a key that is gone everywhere says "cannot check: signing key not found", never TAMPERED.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from recordings.models import Recording
from recordings.recorder import (
    KEY_NOT_FOUND_REASON,
    SealDeferred,
    SignatureUncheckable,
    TerminalRecorder,
    _hash_file,
    seal_leftovers,
    verify_recording,
)
from tests.conftest import verified_client
from tests.fixtures.openbao import bootstrap_server
from tests.recordings.test_search import record_session
from tests.recordings.test_services import make_grant, make_session
from vault.client import reset_client
from vault.models import TransitPublicKey
from vault.signatures import transit_keys_keep

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def root(faulty_vault, settings, tmp_path):
    settings.RECORDINGS_ROOT = tmp_path / "recordings"
    return settings.RECORDINGS_ROOT


@pytest.fixture
def session(root, alice):
    return record_session(make_session(make_grant(alice)), exec_text=b"study1 sent\n")


def page(user, session) -> tuple[dict[str, str], str]:
    response = verified_client(Client(), user).get(reverse("sessions:detail", args=[session.pk]))
    assert response.status_code == 200
    states = {check.recording.kind: check.state for check in response.context["checks"]}
    return states, " ".join(response.content.decode().split())


def test_sealing_keeps_the_public_key_of_the_version_that_signed(session, faulty_vault, settings):
    kept = TransitPublicKey.objects.get()
    vault_keys = faulty_vault.root("GET", f"{settings.VAULT_TRANSIT_MOUNT}/keys/{settings.VAULT_TRANSIT_KEY}")
    assert kept.version == 1 and kept.public_key == vault_keys["data"]["keys"]["1"]["public_key"]
    assert kept.vault_cluster_id == faulty_vault.root("GET", "sys/seal-status")["cluster_id"]
    assert {r.signature.split(":")[1] for r in session.recordings.all()} == {"v1"}
    # Kept once, audited once, for the three recordings.
    assert AuditEvent.objects.filter(action="vault.transit_key.kept").count() == 1


def test_recordings_verify_while_vault_is_stopped(session, faulty_vault, carol, root):
    faulty_vault.stop()
    reset_client()

    for recording in session.recordings.all():
        ok, why = verify_recording(recording, root=root)
        assert ok, why
    states, text = page(carol, session)
    assert states == {"events": "intact", "terminal": "intact", "exec": "intact"}
    assert "cannot check" not in text


def test_a_changed_file_is_still_tampered_while_vault_is_stopped(session, faulty_vault, carol, root):
    path = root / session.recordings.get(kind=Recording.Kind.TERMINAL).path
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    faulty_vault.stop()

    states, text = page(carol, session)

    assert states == {"events": "intact", "terminal": "tampered", "exec": "intact"}
    assert "TAMPERED: tampered: " in text


def test_a_file_and_its_row_changed_together_fail_the_kept_key(session, faulty_vault, carol, root):
    """Someone who can write the database and the files recomputes the sha256: the signature,
    checked against the key pamsite kept, does not cover the new one."""
    recording = session.recordings.get(kind=Recording.Kind.EXEC)
    path = root / recording.path
    path.write_bytes(path.read_bytes().replace(b"study1 sent", b"study9 sent"))
    sha256, size = _hash_file(path)
    Recording.objects.filter(pk=recording.pk).update(sha256=sha256, size=size)
    faulty_vault.stop()

    ok, why = verify_recording(Recording.objects.get(pk=recording.pk), root=root)
    assert not ok and "does not cover its sha256 and details" in why
    states, text = page(carol, session)
    assert states == {"events": "intact", "terminal": "intact", "exec": "tampered"}
    assert "TAMPERED: tampered: the signature of" in text


@pytest.mark.parametrize("how", ["a fresh Vault", "the key deleted"])
def test_a_signing_key_that_is_gone_says_cannot_check_and_never_tampered(
    how, session, faulty_vault, carol, root, settings, openbao_factory, tmp_path
):
    """The recordings of an older `make run` (Vault in memory, no public key kept): that Vault
    and its key are gone. A new Vault has a key of the same version number, made later."""
    TransitPublicKey.objects.all().delete()
    exec_file = root / session.recordings.get(kind=Recording.Kind.EXEC).path
    exec_file.write_bytes(exec_file.read_bytes() + b"appended")  # this one was changed besides
    transit, key = settings.VAULT_TRANSIT_MOUNT, settings.VAULT_TRANSIT_KEY
    if how == "a fresh Vault":
        fresh = openbao_factory(dev=True)
        bootstrapped = bootstrap_server(fresh, tmp_path / "fresh-approle")
        settings.VAULT_ADDR = fresh.addr
        settings.VAULT_ROLE_ID, settings.VAULT_SECRET_ID = bootstrapped.role_id, bootstrapped.secret_id
        reset_client()
        transit_keys_keep()  # as `manage.py vault_bootstrap` does: the new key's version 1 is kept
        assert TransitPublicKey.objects.get().version == 1
    else:
        faulty_vault.root("POST", f"{transit}/keys/{key}/config", {"deletion_allowed": True})
        faulty_vault.root("DELETE", f"{transit}/keys/{key}")

    terminal = session.recordings.get(kind=Recording.Kind.TERMINAL)
    with pytest.raises(SignatureUncheckable) as raised:
        verify_recording(terminal, root=root)
    assert raised.value.reason == KEY_NOT_FOUND_REASON
    states, text = page(carol, session)
    assert states == {"events": "unchecked", "terminal": "unchecked", "exec": "tampered"}
    assert text.count("cannot check: signing key not found") == 2
    assert text.count("TAMPERED") == 1  # the changed file only: its sha256 differs
    assert "neither pamsite nor Vault has" in text
    event = AuditEvent.objects.filter(action="recording.viewed").latest("sequence")
    assert sorted(event.details["integrity"].values()) == ["tampered", "unchecked", "unchecked"]


def test_with_the_key_kept_a_deleted_vault_key_changes_nothing(session, faulty_vault, carol, settings):
    transit, key = settings.VAULT_TRANSIT_MOUNT, settings.VAULT_TRANSIT_KEY
    faulty_vault.root("POST", f"{transit}/keys/{key}/config", {"deletion_allowed": True})
    faulty_vault.root("DELETE", f"{transit}/keys/{key}")

    states, _ = page(carol, session)

    assert states == {"events": "intact", "terminal": "intact", "exec": "intact"}


def test_a_recording_is_not_sealed_until_its_public_key_is_kept(faulty_vault, root, alice, settings):
    """Vault answers the signature, then goes away before pamsite has its public key: the
    recording waits, unsealed, and the upkeep seals it (key kept) once Vault is back."""
    session = make_session(make_grant(alice))
    recorder = TerminalRecorder(session=session, channel=0, width=80, height=24, term="xterm")
    recorder.write(b"PACSPROMPT> ls\r\n")
    key_path = f"/v1/{settings.VAULT_TRANSIT_MOUNT}/keys/{settings.VAULT_TRANSIT_KEY}".encode()
    faulty_vault.proxy.on_request(key_path, faulty_vault.stop)

    with pytest.raises(SealDeferred, match="public key could not be kept"):
        recorder.close()

    recording = Recording.objects.get(session=session)
    assert recording.finalized_at is None and recording.sha256 and not recording.signature
    assert not TransitPublicKey.objects.exists()
    session.ended_at = timezone.now()
    session.save(update_fields=["ended_at"])
    faulty_vault.start()
    assert seal_leftovers(grace_seconds=0) == 1
    recording.refresh_from_db()
    assert recording.finalized_at is not None and not recording.interrupted
    assert TransitPublicKey.objects.count() == 1
    assert verify_recording(recording, root=root)[0]
