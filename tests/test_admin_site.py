"""The configuration pages (Django admin) open to verified pam-admins only."""

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from tests.conftest import verified_client

pytestmark = pytest.mark.django_db


def test_pam_admin_opens_the_configuration_pages(client, pat):
    verified_client(client, pat)
    assert client.get(reverse("admin:index")).status_code == 200
    assert client.get(reverse("admin:identity_user_changelist")).status_code == 200


@pytest.mark.parametrize("persona", ["alice", "bob", "carol", "mallory"])
def test_other_roles_get_403_not_a_login_loop(client, request, persona):
    verified_client(client, request.getfixturevalue(persona))
    assert client.get(reverse("admin:index")).status_code == 403
    assert client.get(reverse("admin:identity_user_changelist")).status_code == 403


def test_deactivated_pam_admin_is_refused(client, pat):
    verified_client(client, pat)
    pat.is_active = False
    pat.save()
    assert client.get(reverse("admin:index"))["Location"].startswith("/login/")


# --- What the admin must not show or do unrecorded ------------------------------------------


def test_the_admin_never_shows_an_authenticator_seed_or_backup_codes(client, pat, alice):
    from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.get(user=alice)
    backup = StaticDevice.objects.create(user=alice, name="backup", confirmed=True)
    StaticToken.objects.create(device=backup, token="k7q2m9x4")
    verified_client(client, pat)
    pages = [
        reverse("admin:otp_totp_totpdevice_changelist"),
        reverse("admin:otp_totp_totpdevice_change", args=[device.pk]),
        reverse("admin:otp_static_staticdevice_changelist"),
        reverse("admin:otp_static_staticdevice_change", args=[backup.pk]),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert device.key.encode() not in response.content, url
        assert b"k7q2m9x4" not in response.content, url
    assert b"alice" in client.get(pages[0]).content
    # Nobody sets up a second factor for someone else, nor gets at the seed's QR code.
    assert client.get(reverse("admin:otp_totp_totpdevice_add")).status_code == 403
    assert client.post(pages[1], {"name": "mine", "key": "00" * 20, "user": alice.pk}).status_code == 403
    device.refresh_from_db()
    assert device.name == "authenticator"


def test_the_audit_trail_is_not_in_the_admin(client, pat):
    """Pam-admins are not auditors: the trail is read on the auditors' pages, each reading audited."""
    verified_client(client, pat)
    assert client.get("/admin/audit/auditevent/").status_code == 404
    assert b"auditevent" not in client.get(reverse("admin:index")).content.lower()


def test_a_password_and_group_change_in_the_admin_is_an_audit_event(client, pat, alice):
    from audit.models import AuditEvent

    verified_client(client, pat)
    url = f"/admin/identity/user/{alice.pk}/password/"
    new_password = "an-admin-set-password-9"
    response = client.post(
        url, {"password1": new_password, "password2": new_password, "usable_password": "true"}
    )
    assert response.status_code == 302, response.content[:2000]
    event = AuditEvent.objects.get(action="config.changed", object_id=str(alice.pk))
    assert event.actor_username == "pat" and event.object_type == "identity.user"
    assert event.details == {"fields": ["password"]}
    assert new_password not in str(event.details)

    approver = Group.objects.get_or_create(name="approver")[0]
    change = reverse("admin:identity_user_change", args=[alice.pk])
    form = client.get(change).context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name in form.fields}
    data.update(
        {
            "groups": [g.pk for g in alice.groups.all()] + [approver.pk],
            "user_permissions": [],
            "is_active": "on",
        }
    )
    data = {k: v for k, v in data.items() if not isinstance(v, bool) or v}
    response = client.post(change, data)
    assert response.status_code == 302, (
        response.context["adminform"].form.errors if response.context else response
    )
    event = (
        AuditEvent.objects.filter(action="config.changed", object_id=str(alice.pk))
        .order_by("sequence")
        .last()
    )
    assert event.details["groups_before"] == ["requester"]
    assert event.details["groups"] == ["approver", "requester"]


def test_adding_and_deleting_in_the_admin_are_audit_events(client, pat):
    from access.models import Target
    from audit.models import AuditEvent

    verified_client(client, pat)
    add = reverse("admin:access_target_add")
    data = {
        "name": "vna01",
        "kind": "vna",
        "host": "vna01.hospital.example",
        "port": 22,
        "forward_ports": "[]",
    }
    for inline in client.get(add).context["inline_admin_formsets"]:
        management = inline.formset.management_form
        data.update({management.add_prefix(name): value for name, value in management.initial.items()})
    response = client.post(add, data)
    target = Target.objects.filter(name="vna01").first()
    assert target is not None, response.context["adminform"].form.errors if response.context else response
    assert AuditEvent.objects.filter(
        action="config.created", object_id=str(target.pk), actor_username="pat"
    ).exists()
    client.post(reverse("admin:access_target_delete", args=[target.pk]), {"post": "yes"})
    assert not Target.objects.filter(pk=target.pk).exists()
    assert AuditEvent.objects.filter(action="config.deleted", object_id=str(target.pk)).exists()
