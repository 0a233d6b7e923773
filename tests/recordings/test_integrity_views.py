"""The session page checks each recording (sha256 recomputed, Vault signature verified) and
says intact, TAMPERED or "cannot check"; recordings download with the right type, audited.

Recordings are written and sealed by the real recorders and the real OpenBao server.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from recordings import views
from recordings.models import Recording
from tests.conftest import verified_client
from tests.fixtures.openbao import free_port
from tests.recordings.test_search import record_session
from tests.recordings.test_services import make_grant, make_session
from vault.client import reset_client
from vault.models import TransitPublicKey

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(approle_settings, tmp_path):
    approle_settings.RECORDINGS_ROOT = tmp_path / "recordings"
    return approle_settings.RECORDINGS_ROOT


@pytest.fixture
def session(root, alice):
    return record_session(make_session(make_grant(alice)), exec_text=b"study1 sent\n")


def detail(client, session):
    response = client.get(reverse("sessions:detail", args=[session.pk]))
    assert response.status_code == 200
    return response


def states(response) -> dict[str, str]:
    return {check.recording.kind: check.state for check in response.context["checks"]}


def recording(session, kind) -> Recording:
    return session.recordings.get(kind=kind)


def test_every_recording_of_an_untouched_session_is_intact(client, carol, session):
    verified_client(client, carol)
    response = detail(client, session)
    assert states(response) == {"events": "intact", "terminal": "intact", "exec": "intact"}
    assert response.content.count(b'<span class="badge ok">intact</span>') == 3


def test_one_changed_byte_shows_tampered(client, carol, session, root):
    path = root / recording(session, "terminal").path
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    verified_client(client, carol)
    response = detail(client, session)
    assert states(response) == {"events": "intact", "terminal": "tampered", "exec": "intact"}
    assert b"TAMPERED: tampered: " in response.content
    assert recording(session, "terminal").path.encode() in response.content


def test_a_changed_timing_index_shows_tampered(client, carol, session, root):
    path = root / recording(session, "exec").index_path
    path.write_text(path.read_text().replace(" o\n", " e\n", 1))
    verified_client(client, carol)
    assert states(detail(client, session))["exec"] == "tampered"


def test_a_missing_file_is_reported(client, carol, session, root):
    (root / recording(session, "events").path).unlink()
    verified_client(client, carol)
    response = detail(client, session)
    assert states(response)["events"] == "tampered"
    assert b"MISSING: missing: " in response.content


def test_vault_down_the_kept_public_key_still_checks_every_recording(
    client, carol, session, root, approle_settings
):
    path = root / recording(session, "exec").path
    path.write_bytes(path.read_bytes() + b"appended")
    approle_settings.VAULT_ADDR = f"http://127.0.0.1:{free_port()}"
    reset_client()
    verified_client(client, carol)
    response = detail(client, session)
    assert states(response) == {"events": "intact", "terminal": "intact", "exec": "tampered"}
    assert b"cannot check" not in response.content


def test_vault_down_and_the_key_not_kept_says_cannot_check_and_never_intact(
    client, carol, session, root, approle_settings
):
    """As with recordings sealed before pamsite kept public keys: only Vault could tell."""
    TransitPublicKey.objects.all().delete()
    path = root / recording(session, "exec").path
    path.write_bytes(path.read_bytes() + b"appended")
    approle_settings.VAULT_ADDR = f"http://127.0.0.1:{free_port()}"
    reset_client()
    verified_client(client, carol)
    response = detail(client, session)
    # A file whose sha256 differs is still reported: that needs no Vault.
    assert states(response) == {"events": "unchecked", "terminal": "unchecked", "exec": "tampered"}
    assert response.content.count(b"cannot check: Vault unreachable") == 2
    assert b">intact<" not in response.content
    event = AuditEvent.objects.filter(action="recording.viewed").latest("sequence")
    assert sorted(event.details["integrity"].values()) == ["tampered", "unchecked", "unchecked"]


def test_viewing_a_session_is_audited_with_the_verdicts(client, carol, session):
    verified_client(client, carol)
    detail(client, session)
    event = AuditEvent.objects.filter(action="recording.viewed").latest("sequence")
    assert event.actor == carol
    assert (event.object_type, event.object_id) == ("recordings.session", str(session.pk))
    assert event.details["user"] == "alice" and event.details["account"] == "pacs01-root"
    assert set(event.details["integrity"].values()) == {"intact"}
    assert len(event.details["integrity"]) == 3


def test_the_sessions_own_user_sees_the_checks_but_no_download(client, alice, session):
    verified_client(client, alice)
    response = detail(client, session)
    assert set(states(response).values()) == {"intact"}
    assert (
        reverse("sessions:download", args=[recording(session, "terminal").pk]).encode()
        not in response.content
    )
    assert (
        client.get(reverse("sessions:download", args=[recording(session, "terminal").pk])).status_code == 403
    )
    assert not AuditEvent.objects.filter(action="recording.downloaded").exists()


def test_an_outsider_gets_404_for_the_page_and_the_file(client, mallory, session):
    verified_client(client, mallory)
    assert client.get(reverse("sessions:detail", args=[session.pk])).status_code == 404
    assert client.get(reverse("sessions:download", args=[recording(session, "events").pk])).status_code == 404


@pytest.mark.parametrize(
    ("kind", "query", "content_type", "suffix"),
    [
        ("terminal", "", "application/x-asciicast", ".cast"),
        ("exec", "", "application/octet-stream", ".bin"),
        ("exec", "?file=index", "text/plain; charset=utf-8", ".idx"),
        ("events", "", "application/x-ndjson", ".jsonl"),
    ],
)
@pytest.mark.parametrize("persona", ["bob", "carol", "pat"])
def test_overseers_download_each_file_with_its_type_audited(
    client, request, persona, session, root, kind, query, content_type, suffix
):
    user = request.getfixturevalue(persona)
    verified_client(client, user)
    rec = recording(session, kind)
    response = client.get(reverse("sessions:download", args=[rec.pk]) + query)
    assert response.status_code == 200
    assert response["Content-Type"] == content_type
    assert response["Content-Disposition"].startswith("attachment;")
    relative = rec.index_path if query else rec.path
    assert f'filename="session-{session.pk}-' in response["Content-Disposition"]
    assert response["Content-Disposition"].endswith(f'{suffix}"')
    assert b"".join(response.streaming_content) == (root / relative).read_bytes()
    event = AuditEvent.objects.filter(action="recording.downloaded").latest("sequence")
    assert event.actor == user
    assert (event.object_type, event.object_id) == ("recordings.recording", str(rec.pk))
    assert event.details == {
        "session": session.pk,
        "path": relative,
        "size": (root / relative).stat().st_size,
        "sha256": rec.index_sha256 if query else rec.sha256,
    }


def test_a_recording_without_index_has_no_index_download(client, carol, session):
    verified_client(client, carol)
    url = reverse("sessions:download", args=[recording(session, "terminal").pk])
    assert client.get(url + "?file=index").status_code == 404


def test_the_player_slot_includes_the_player_template_only_when_it_exists(
    client, carol, session, settings, tmp_path, monkeypatch
):
    verified_client(client, carol)
    monkeypatch.setattr(views, "PLAYER_TEMPLATE", "sessions/_no_such_player.html")
    assert detail(client, session).context["has_player"] is False
    folder = tmp_path / "templates" / "sessions"
    folder.mkdir(parents=True)
    (folder / "_test_player.html").write_text('<div id="player-here">{{ session.pk }}</div>')
    settings.TEMPLATES = [
        {**settings.TEMPLATES[0], "DIRS": [tmp_path / "templates", *settings.TEMPLATES[0]["DIRS"]]}
    ]
    monkeypatch.setattr(views, "PLAYER_TEMPLATE", "sessions/_test_player.html")
    response = detail(client, session)
    assert response.context["has_player"] is True
    assert f'<div id="player-here">{session.pk}</div>'.encode() in response.content
