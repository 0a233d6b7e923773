"""Bad input in the Users pages' forms, the invitation and the password forms: never a 500,
the form's errors shown, no password sent back, nothing half made."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from hypothesis import given

from identity.models import Invitation, User
from tests.badinput.helpers import BADINPUT, FEW, assert_clear_answer, form_data, hostile, rolled_back
from tests.conftest import PASSWORD, make_user, verified_client

pytestmark = pytest.mark.django_db

GOOD_PASSWORD = "a perfectly good passphrase 9"


def _sent(data: dict, *names: str) -> list[str]:
    values = []
    for name in names:
        value = data.get(name, [])
        values += [value] if isinstance(value, str) else value
    return [v for v in values if len(v) >= 8]


@BADINPUT
@given(
    form_data(
        {
            "username": hostile("ivan", "j.smith@vendor"),
            "first_name": hostile("Ivan"),
            "last_name": hostile("Petrov"),
            "email": hostile("ivan@vendor.example"),
            "roles": hostile("requester", "auditor", "break-glass"),
            "method": hostile("link", "password"),
            "email_link": hostile("on", ""),
        }
    )
)
def test_invite_form_answers_any_input_with_form_errors_or_an_invitation(pat_client, data):
    with rolled_back():
        before = User.objects.count()
        response = pat_client.post(reverse("identity:user_invite"), data)
        assert_clear_answer(response, allowed=(200, 400))
        if response.status_code == 200:
            invited = response.context["invited"]
            assert "\x00" not in invited.username and len(invited.username) <= 150
            assert User.objects.count() == before + 1
        else:
            assert response.context["form"].errors
            assert User.objects.count() == before  # nothing half made


@BADINPUT
@given(form_data({"roles": hostile("requester", "approver", "pam-admin")}))
def test_roles_form_answers_any_input(pat_client, alice, data):
    with rolled_back():
        response = pat_client.post(reverse("identity:user_roles", args=[alice.pk]), data)
        assert_clear_answer(response, allowed=(302, 400))


@BADINPUT
@given(form_data({"deactivate-reason": hostile("contract ended, INC-1")}))
def test_deactivate_form_answers_any_input(pat_client, alice, data):
    with rolled_back():
        response = pat_client.post(reverse("identity:user_deactivate", args=[alice.pk]), data)
        assert_clear_answer(response, allowed=(302, 400))
        assert User.objects.get(pk=alice.pk).is_active == (response.status_code == 400)


@BADINPUT
@given(form_data({"reactivate-reason": hostile("back from leave")}))
def test_reactivate_form_answers_any_input(pat_client, alice, data):
    with rolled_back():
        User.objects.filter(pk=alice.pk).update(is_active=False, deactivated_reason="by pat: on leave")
        response = pat_client.post(reverse("identity:user_reactivate", args=[alice.pk]), data)
        assert_clear_answer(response, allowed=(302, 400))


@BADINPUT
@given(form_data({"method": hostile("link", "password"), "email_link": hostile("on")}))
def test_password_reset_form_answers_any_input(pat_client, alice, data):
    with rolled_back():
        response = pat_client.post(reverse("identity:user_password_reset", args=[alice.pk]), data)
        assert_clear_answer(response, allowed=(200, 400))
        assert User.objects.get(pk=alice.pk).check_password(PASSWORD) == (response.status_code == 400)


@BADINPUT
@given(
    form_data(
        {
            "password": hostile(PASSWORD),
            "new_password1": hostile(GOOD_PASSWORD),
            "new_password2": hostile(GOOD_PASSWORD),
        }
    )
)
def test_own_password_form_answers_any_input_and_never_echoes_a_password(alice, data):
    with rolled_back():
        client = verified_client(Client(), alice)
        response = client.post(reverse("identity:password_change"), data)
        sent = _sent(data, "password", "new_password1", "new_password2")
        assert_clear_answer(response, allowed=(302, 400, 429), sent_secrets=sent)


@FEW
@given(form_data({"new_password1": hostile(GOOD_PASSWORD), "new_password2": hostile(GOOD_PASSWORD)}))
def test_invitation_password_form_answers_any_input_and_never_echoes_it(pat, data):
    from identity.users import user_invite

    with rolled_back():
        issued = user_invite(
            acting_user=pat,
            username="ivan",
            first_name="",
            last_name="",
            email="",
            roles=set(),
            method="link",
        )
        client = Client()
        client.get("/" + issued.link.split("/", 3)[3])
        response = client.post(reverse("identity:invitation_password"), data)
        sent = _sent(data, "new_password1", "new_password2")
        assert_clear_answer(response, allowed=(302, 400), sent_secrets=sent)
        used = Invitation.objects.get(user__username="ivan").used_at is not None
        assert used == (response.status_code == 302)


@FEW
@given(form_data({"new_password1": hostile(GOOD_PASSWORD), "new_password2": hostile(GOOD_PASSWORD)}))
def test_first_password_form_answers_any_input_and_never_echoes_it(db, data):
    with rolled_back():
        olga = make_user("olga", totp=False, must_change_password=True)
        client = Client()
        client.force_login(olga)
        response = client.post(reverse("identity:password_new"), data)
        sent = _sent(data, "new_password1", "new_password2")
        assert_clear_answer(response, allowed=(302, 400), sent_secrets=sent)


@FEW
@given(token=hostile("x" * 43))
def test_any_invitation_token_gets_a_clear_page(db, token):
    from urllib.parse import quote

    with rolled_back():
        response = Client().get(f"/invitation/{quote(token, safe='')}/")
        assert response.status_code in (302, 404, 410), response.status_code
        assert "Traceback" not in response.content.decode(errors="replace")
