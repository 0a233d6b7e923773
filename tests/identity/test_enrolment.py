"""TOTP enrolment: QR code and key, activation with a correct code, backup codes; resets."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from django.urls import reverse
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from tests.conftest import PASSWORD, make_user, verified_client
from tests.totp import key_from_base32, totp_code

pytestmark = pytest.mark.django_db


@pytest.fixture
def newbie(db):
    return make_user("newbie", "requester", totp=False)


def start_enrolment(client):
    client.post(reverse("identity:login"), {"username": "newbie", "password": PASSWORD})
    response = client.get(reverse("identity:enrol"))
    assert response.status_code == 200
    secret = re.search(rb'id="totp-secret">([A-Z2-7 ]+)<', response.content).group(1).decode()
    return response, secret


def test_enrolment_page_shows_qr_svg_and_key(client, newbie):
    response, secret = start_enrolment(client)
    assert b"<svg" in response.content
    assert len(secret.replace(" ", "")) == 32  # 160-bit key, as authenticator apps expect
    # Reloading keeps the same key (the user may already have scanned it).
    _, again = start_enrolment(client)
    assert again == secret


def test_code_from_oathtool_activates_the_device(client, newbie):
    """An independent RFC 6238 implementation (SHA1, 6 digits, 30 s) is accepted."""
    _, secret = start_enrolment(client)
    code = subprocess.run(
        ["oathtool", "--totp", "-b", secret.replace(" ", "")], capture_output=True, text=True, check=True
    ).stdout.strip()
    response = client.post(reverse("identity:enrol"), {"code": code})
    assert response.status_code == 200
    codes = re.findall(rb"<li>([a-z2-7]{8})</li>", response.content)
    assert len(codes) == 10
    assert TOTPDevice.objects.get(user=newbie).confirmed
    assert StaticToken.objects.filter(device__user=newbie).count() == 10
    assert client.get(reverse("dashboard")).status_code == 200
    assert AuditEvent.objects.filter(action="mfa.enrolled", actor=newbie).count() == 1
    # The codes were shown once: no page shows them again.
    assert codes[0] not in client.get(reverse("identity:account")).content


def test_wrong_code_does_not_activate(client, newbie):
    _, secret = start_enrolment(client)
    good = totp_code(key_from_base32(secret))
    response = client.post(reverse("identity:enrol"), {"code": f"{(int(good) + 7) % 1_000_000:06d}"})
    assert response.status_code == 200
    assert b"That code is not right" in response.content
    assert not TOTPDevice.objects.get(user=newbie).confirmed
    assert client.get(reverse("dashboard")).status_code == 302
    assert AuditEvent.objects.filter(action="mfa.enrol.failure").count() == 1


def test_password_alone_cannot_enrol_a_second_device(client, alice):
    client.post(reverse("identity:login"), {"username": "alice", "password": PASSWORD})
    response = client.get(reverse("identity:enrol"))
    assert response["Location"].startswith(reverse("identity:verify"))
    assert TOTPDevice.objects.filter(user=alice).count() == 1


def test_self_reset_needs_password_and_code(client, alice):
    verified_client(client, alice)
    key = TOTPDevice.objects.get(user=alice).bin_key
    response = client.post(reverse("identity:self_reset"), {"password": "wrong", "code": totp_code(key)})
    assert response.status_code == 400
    assert b"password is not right" in response.content
    assert TOTPDevice.objects.filter(user=alice).exists()

    response = client.post(reverse("identity:self_reset"), {"password": PASSWORD, "code": "000000"})
    assert response.status_code == 400
    assert TOTPDevice.objects.filter(user=alice).exists()

    time.sleep(1.1)  # django-otp waits a second after a wrong code
    response = client.post(reverse("identity:self_reset"), {"password": PASSWORD, "code": totp_code(key)})
    assert response["Location"] == reverse("identity:enrol")
    assert not TOTPDevice.objects.filter(user=alice, confirmed=True).exists()
    assert client.get(reverse("dashboard"))["Location"].startswith(reverse("identity:enrol"))
    assert AuditEvent.objects.filter(action="mfa.reset", details__by="self").count() == 1


def test_new_backup_codes_replace_the_old(client, alice):
    from identity.services import _new_backup_codes

    old = _new_backup_codes(alice)
    verified_client(client, alice)
    key = TOTPDevice.objects.get(user=alice).bin_key
    response = client.post(reverse("identity:backup_codes"), {"code": totp_code(key)})
    new = re.findall(rb"<li>([a-z2-7]{8})</li>", response.content)
    assert len(new) == 10
    tokens = set(StaticToken.objects.filter(device__user=alice).values_list("token", flat=True))
    assert not tokens & set(old)


def test_pam_admin_resets_another_users_device_and_ends_their_sessions(client, pat, alice):
    from django.test import Client

    alice_client = verified_client(Client(), alice)
    assert alice_client.get(reverse("dashboard")).status_code == 200

    verified_client(client, pat)
    url = reverse("identity:admin_reset", args=[alice.pk])
    assert client.get(url).status_code == 200
    response = client.post(url, {"reason": "x"})
    assert response.status_code == 200  # reason too short: form error, nothing done
    assert TOTPDevice.objects.filter(user=alice).exists()

    response = client.post(url, {"reason": "lost phone, called back on desk number"})
    assert response["Location"] == reverse("identity:user", args=[alice.pk])  # back to her page
    assert not TOTPDevice.objects.filter(user=alice).exists()
    assert alice_client.get(reverse("dashboard")).status_code == 302
    event = AuditEvent.objects.get(action="mfa.reset")
    assert event.actor == pat
    assert event.object_id == str(alice.pk)
    assert event.details["by"] == "pam-admin"
    assert event.details["sessions_ended"] == 1


@pytest.mark.parametrize("persona", ["alice", "bob", "carol", "mallory"])
def test_only_pam_admins_reset_other_users_devices(client, request, persona, pat):
    user = request.getfixturevalue(persona)
    verified_client(client, user)
    assert client.get(reverse("identity:users")).status_code == 403
    assert (
        client.post(
            reverse("identity:admin_reset", args=[pat.pk]), {"reason": "takeover attempt"}
        ).status_code
        == 403
    )
    assert TOTPDevice.objects.filter(user=pat).exists()


def test_pam_admin_cannot_reset_own_device_from_the_admin_page(client, pat):
    verified_client(client, pat)
    response = client.post(reverse("identity:admin_reset", args=[pat.pk]), {"reason": "lost my own phone"})
    assert response.status_code == 403
    assert TOTPDevice.objects.filter(user=pat).exists()


def test_users_page_lists_enrolment(client, pat, alice):
    make_user("newbie", totp=False)
    verified_client(client, pat)
    response = client.get(reverse("identity:users"))
    assert response.status_code == 200
    assert b"newbie" in response.content and b"not enrolled" in response.content
