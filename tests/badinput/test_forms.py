"""Bad input in every form, posted through the real views by a user allowed to use them.

Hypothesis sends each field text with NUL and control characters, any Unicode but lone
surrogates, huge strings, negative, huge and non-finite numbers, floats, empty values, the
field left out or sent twice. The answer is the page again with the form's errors shown
(200/400), or a redirect (302) with a message saying what happened: never a 500, never a
password, a pasted private key or a site secret in the response. Targeted cases follow
for durations, ticket patterns, catastrophic regular expressions, targets, account names,
SSH public keys and the LDAP group mapping.
"""

from __future__ import annotations

import re
import time

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice
from hypothesis import example, given
from hypothesis import strategies as st

from access.models import AccessPolicy, AccessRequest, Account, Target
from recordings.models import GatewaySession
from tests.badinput.conftest import TICKET_PATTERN, live_grant
from tests.badinput.helpers import (
    BADINPUT,
    FEW,
    assert_clear_answer,
    body_of,
    form_data,
    hostile,
    rolled_back,
)
from tests.conftest import PASSWORD, make_user, verified_client

pytestmark = pytest.mark.django_db

DURATIONS = ["60", "5", "120"]
TICKETS = ["INC-123", "CHG-4567890"]
REASONS = ["Upgrade the archive's storage driver", "Vendor maintenance window"]
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDbadinputbadinputbadinputbadinputbadinputAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
A_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHzh2Wn9u1fG0Vv6m8k5Y0n0m3lJmQ3bX6l7gK0a3Yx0 alice@laptop"


def _errors(response, field: str | None = None) -> list[str]:
    form = response.context["form"]
    if field is None:
        return [e for errors in form.errors.values() for e in errors]
    return list(form.errors.get(field, []))


# --- Access: request, decide, revoke, reveal, review, break-glass -------------------------


@BADINPUT
@given(
    form_data(
        {
            "account": hostile("pacs01-ssh-ca", "pacs01-database", "pacs01-static"),
            "duration_minutes": hostile(*DURATIONS),
            "ticket": hostile(*TICKETS),
            "reason": hostile(*REASONS),
        }
    )
)
def test_request_form_answers_any_input_with_form_errors_or_a_request(
    alice_client, ticket_policy, no_vault, data
):
    with rolled_back():
        response = alice_client.post(reverse("access:request_new"), data)
        assert_clear_answer(response)
        if response.status_code == 302:
            req = AccessRequest.objects.get()
            assert 5 <= req.duration_minutes <= ticket_policy.max_duration_minutes
            assert re.fullmatch(TICKET_PATTERN, req.ticket)
            assert req.reason.strip() and "\x00" not in req.reason
        else:
            assert not AccessRequest.objects.exists()
            assert response.context["form"].errors or not data


@pytest.mark.parametrize(
    ("duration", "says"),
    [
        ("0", "greater than or equal to 5"),
        ("-1", "greater than or equal to 5"),
        (str(10**12), "less than or equal to"),
        ("1h", "whole number"),
        ("", "required"),
        ("4.5", "whole number"),
        ("NaN", "whole number"),
        ("121", "between 5 and 120 minutes"),  # the form allows it; this policy does not
    ],
)
def test_a_bad_duration_is_a_form_error_that_says_why(alice_client, ticket_policy, duration, says):
    data = {"account": "pacs01-ssh-ca", "duration_minutes": duration, "ticket": "INC-123", "reason": "work"}
    response = alice_client.post(reverse("access:request_new"), data)
    assert response.status_code == 200
    errors = _errors(response, "duration_minutes")
    assert errors and any(says in e for e in errors), errors
    assert_clear_answer(response)
    assert not AccessRequest.objects.exists()


@pytest.mark.parametrize("ticket", ["INC-123", "CHG-1234567890", "  INC-123  "])
def test_a_ticket_the_policy_accepts_makes_the_request(alice_client, ticket_policy, ticket):
    data = {"account": "pacs01-ssh-ca", "duration_minutes": "60", "ticket": ticket, "reason": "work"}
    response = alice_client.post(reverse("access:request_new"), data)
    assert response.status_code == 302
    assert AccessRequest.objects.get().ticket == ticket.strip()


@pytest.mark.parametrize(
    ("ticket", "says"),
    [
        ("", "needs a ticket reference"),
        ("inc-123", "does not look like one this policy accepts"),
        ("INC-12", "does not look like one this policy accepts"),
        ("INC-12345678901", "does not look like one this policy accepts"),
        ("INC-123\nINC-456", "does not look like one this policy accepts"),
        ("INC-123; DROP TABLE", "does not look like one this policy accepts"),
        ("INC-123\x00", "Null characters are not allowed"),
        ("INC-" + "1" * 100, "at most 64 characters"),
    ],
)
def test_a_ticket_the_policy_refuses_is_a_clear_form_error(alice_client, ticket_policy, ticket, says):
    data = {"account": "pacs01-ssh-ca", "duration_minutes": "60", "ticket": ticket, "reason": "work"}
    response = alice_client.post(reverse("access:request_new"), data)
    assert response.status_code == 200
    errors = _errors(response, "ticket")
    assert any(says in e for e in errors), errors
    assert_clear_answer(response)


@pytest.fixture
def pending_request(alice, ticket_policy):
    from access import services

    return services.request_create(
        requester=alice,
        account=Account.objects.get(slug="pacs01-ssh-ca"),
        reason="work",
        ticket="INC-123",
        duration_minutes=60,
    )


@BADINPUT
@given(form_data({"decision": hostile("approve", "deny"), "comment": hostile("Checked with the ward.")}))
def test_decision_form_answers_any_input_with_a_message(bob_client, pending_request, no_vault, data):
    with rolled_back():
        response = bob_client.post(reverse("access:request_decide", args=[pending_request.pk]), data)
        assert_clear_answer(response, allowed=(302,))
        pending_request.refresh_from_db()
        if pending_request.state == AccessRequest.State.DENIED:
            assert pending_request.approvals.get().comment.strip()


@BADINPUT
@given(form_data({"reason": hostile("Left the hospital")}))
def test_revoke_form_answers_any_input_with_a_message(bob_client, alice, accounts, no_vault, data):
    with rolled_back():
        grant = live_grant(user=alice, account=accounts["ssh-ca"])
        response = bob_client.post(reverse("access:grant_revoke", args=[grant.pk]), data)
        assert_clear_answer(response, allowed=(302,))
        grant.refresh_from_db()
        if grant.state == "revoked":
            assert len(grant.end_reason) >= 3 and "\x00" not in grant.end_reason


@BADINPUT
@given(form_data({"code": hostile("123456", "000000")}))
def test_reveal_form_answers_any_code_without_showing_a_secret(
    alice_client, alice, accounts, ticket_policy, no_vault, data
):
    with rolled_back():
        grant = live_grant(user=alice, account=accounts["database"])
        grant.request.policy = ticket_policy
        grant.request.save()
        response = alice_client.post(reverse("access:grant_reveal", args=[grant.pk]), data)
        # A random code is wrong: back to the grant with the reason; never the reveal page.
        assert_clear_answer(response, allowed=(302, 429))
        grant.refresh_from_db()
        assert grant.revealed_at is None


@BADINPUT
@given(form_data({"comment": hostile("Reviewed with the on-call engineer.")}))
def test_review_form_answers_any_input_with_a_message(bob_client, alice, accounts, data):
    with rolled_back():
        grant = live_grant(user=alice, account=accounts["ssh-ca"], break_glass=True)
        response = bob_client.post(reverse("access:grant_review", args=[grant.pk]), data)
        assert_clear_answer(response, allowed=(302,))


@BADINPUT
@given(
    form_data(
        {
            "account": hostile("pacs01-ssh-ca", "pacs01-static"),
            "duration_minutes": hostile("30", "240"),
            "justification": hostile("The archive is down and the ward cannot see images."),
        }
    )
)
def test_break_glass_form_answers_any_input_with_form_errors_or_a_grant(
    client, erin, accounts, no_vault, data
):
    client = verified_client(client, erin)
    with rolled_back():
        response = client.post(reverse("access:break_glass"), data)
        assert_clear_answer(response, allowed=(200, 302))
        if response.status_code == 200 and data:
            assert response.context["form"].errors


# --- Access: a pam-admin's setup pages -----------------------------------------------------


@FEW
@given(
    form_data(
        {
            "host": hostile("db.pacs.example", "127.0.0.1"),
            "port": hostile("5432", "1", "65535"),
            "database": hostile("pacs"),
            "admin_username": hostile("vault_admin"),
            "admin_password": hostile("Adm1n-pa55word!"),
            "sslmode": hostile("require", "verify-full"),
            "max_hours": hostile("24", "168"),
        }
    )
)
def test_database_setup_form_answers_any_input_and_never_echoes_the_password(
    pat_client, accounts, no_vault, data
):
    with rolled_back():
        url = reverse("access:account_setup", args=[accounts["database"].pk])
        response = pat_client.post(url, data)
        passwords = data.get("admin_password", [])
        passwords = [passwords] if isinstance(passwords, str) else passwords
        # Vault is not there: a valid form ends on the page with "Not done: …".
        body = assert_clear_answer(
            response, allowed=(200,), sent_secrets=[p for p in passwords if len(p) >= 6]
        )
        form = response.context["form"]
        if form.is_valid():
            assert "Not done:" in body
        else:
            assert form.errors


@FEW
@given(form_data({"current_password": hostile("Current-pa55word!")}))
def test_static_setup_form_answers_any_input_and_never_echoes_the_password(
    pat_client, accounts, no_vault, data
):
    with rolled_back():
        url = reverse("access:account_setup", args=[accounts["static"].pk])
        response = pat_client.post(url, data)
        passwords = data.get("current_password", [])
        passwords = [passwords] if isinstance(passwords, str) else passwords
        assert_clear_answer(response, allowed=(200,), sent_secrets=[p for p in passwords if len(p) >= 6])


@FEW
@given(form_data({"host_key": hostile(A_PUBLIC_KEY), "fingerprint": hostile("SHA256:abc")}))
def test_host_key_pin_answers_any_input_with_a_message(pat_client, target, data):
    with rolled_back():
        response = pat_client.post(reverse("access:target", args=[target.pk]), data)
        # The target does not answer: the page says the key could not be fetched.
        body = assert_clear_answer(response, allowed=(200,), need_reason=False)
        assert "could not" in body.lower() or "cannot" in body.lower() or "refused" in body.lower()
        target.refresh_from_db()
        assert target.host_key == ""


# --- Identity: login, codes, account page, SSH keys, user admin, directory -------------------


@BADINPUT
@given(form_data({"username": hostile("alice"), "password": hostile(PASSWORD)}))
def test_login_form_answers_any_input_and_never_echoes_the_password(alice, data):
    with rolled_back():
        response = Client().post(reverse("identity:login"), data)
        passwords = data.get("password", [])
        passwords = [passwords] if isinstance(passwords, str) else passwords
        usernames = data.get("username", [])
        usernames = [usernames] if isinstance(usernames, str) else usernames
        # The username is shown again on the page: a password that is part of it proves nothing.
        sent = [p for p in passwords if len(p) >= 6 and not any(p in u for u in usernames)]
        assert_clear_answer(response, allowed=(200, 302, 429), sent_secrets=sent, redirect_message=False)
        if response.status_code == 200 and data:
            assert response.context["form"].errors


@pytest.mark.parametrize(
    ("username", "says"),
    [
        ("", "This field is required."),
        ("al\x00ice", "Null characters are not allowed."),
        ("a" * 151, "at most 150 characters"),
        ("a" * 10_000, "at most 150 characters"),
        ("ALICE", "The username or password is not right"),
    ],
)
def test_a_bad_username_at_login_is_a_clear_error_and_audited(alice, username, says):
    from audit.models import AuditEvent

    response = Client().post(reverse("identity:login"), {"username": username, "password": PASSWORD})
    assert response.status_code == 200
    assert says in body_of(response)
    assert_clear_answer(response, allowed=(200,), sent_secrets=[PASSWORD])
    failure = AuditEvent.objects.filter(action="auth.login.failure").latest("sequence")
    assert "\x00" not in failure.actor_username and len(failure.actor_username) <= 150


@BADINPUT
@given(form_data({"code": hostile("123456", "abcd-efgh")}))
def test_verify_form_answers_any_code_with_a_form_error(alice, data):
    with rolled_back():
        client = Client()
        client.force_login(alice)  # the password step done, no code yet
        response = client.post(reverse("identity:verify"), data)
        assert_clear_answer(response, allowed=(200, 429))
        if response.status_code == 200 and data:
            assert response.context["form"].errors


@pytest.fixture
def newcomer(db):
    """A requester who has not set up an authenticator yet."""
    return make_user("newcomer", "requester", totp=False)


@BADINPUT
@given(form_data({"code": hostile("123456")}))
def test_enrol_form_answers_any_code_with_a_form_error(newcomer, data):
    with rolled_back():
        client = Client()
        client.force_login(newcomer)
        response = client.post(reverse("identity:enrol"), data)
        assert_clear_answer(response, allowed=(200,))
        assert response.context["form"].errors or not data
        assert not TOTPDevice.objects.filter(user=newcomer, confirmed=True).exists()


@BADINPUT
@given(form_data({"password": hostile(PASSWORD), "code": hostile("123456")}))
def test_self_reset_form_answers_any_input_and_keeps_the_device(alice_client, alice, data):
    with rolled_back():
        response = alice_client.post(reverse("identity:self_reset"), data)
        passwords = data.get("password", [])
        passwords = [passwords] if isinstance(passwords, str) else passwords
        assert_clear_answer(response, allowed=(400, 429), sent_secrets=[p for p in passwords if len(p) >= 6])
        assert TOTPDevice.objects.filter(user=alice, confirmed=True).exists()


@BADINPUT
@given(form_data({"code": hostile("123456")}))
def test_backup_codes_form_answers_any_code_with_a_form_error(alice_client, data):
    with rolled_back():
        response = alice_client.post(reverse("identity:backup_codes"), data)
        assert_clear_answer(response, allowed=(400,))
        assert response.context["codes_form"].errors


@BADINPUT
@given(form_data({"name": hostile("work laptop"), "public_key": hostile(A_PUBLIC_KEY, PRIVATE_KEY)}))
def test_ssh_key_form_answers_any_input_and_never_echoes_a_private_key(alice_client, alice, data):
    with rolled_back():
        response = alice_client.post(reverse("identity:ssh_key_add"), data)
        keys = data.get("public_key", [])
        keys = [keys] if isinstance(keys, str) else keys
        private = [k.strip() for k in keys if "PRIVATE KEY" in k.upper() and k.strip()]
        assert_clear_answer(response, allowed=(302, 400), sent_secrets=private)
        if response.status_code == 400:
            assert response.context["ssh_key_form"].errors
            assert not alice.ssh_keys.exists()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "required"),
        ("garbage", "not_a_key"),
        ("ssh-ed25519", "incomplete"),
        ("ssh-ed25519 !!!notbase64!!!", "bad_data"),
        ("ssh-ed25519 AAAA", "type_mismatch"),
        ("ssh-rsa " + "A" * 100_000, "too_long"),
        (PRIVATE_KEY, "private_key"),
        ("PuTTY-User-Key-File-3: ssh-ed25519\nPrivate-Lines: 1\nAAAA", "private_key"),
        ("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----", "wrong_format"),
        ("ssh-ed25519 AAAA\x00", "null"),
        (A_PUBLIC_KEY + "\n" + A_PUBLIC_KEY, "several_lines"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "unsupported_type"),
    ],
)
def test_a_bad_public_key_is_refused_with_a_message_and_not_echoed_when_private(
    alice_client, alice, text, code
):
    response = alice_client.post(reverse("identity:ssh_key_add"), {"name": "laptop", "public_key": text})
    assert response.status_code == 400
    form = response.context["ssh_key_form"]
    messages = [str(e) for e in form.errors.get("public_key", [])] + [str(e) for e in form.non_field_errors()]
    assert messages and all(m.strip() for m in messages), messages
    body = assert_clear_answer(response, allowed=(400,))
    if code == "private_key":
        assert "private key" in " ".join(messages).lower()
        assert text.strip().splitlines()[1] not in body
    assert not alice.ssh_keys.exists()


@BADINPUT
@given(form_data({"reason": hostile("Lost phone, identity checked by call-back")}))
def test_admin_reset_form_answers_any_input(pat_client, alice, data):
    with rolled_back():
        response = pat_client.post(reverse("identity:admin_reset", args=[alice.pk]), data)
        assert_clear_answer(response, allowed=(200, 302))
        has_device = TOTPDevice.objects.filter(user=alice).exists()
        assert has_device == (response.status_code == 200)


@BADINPUT
@given(
    form_data(
        {
            "group_dn": hostile("cn=pacs-admins,ou=groups,dc=hospital,dc=example", "cn=x\\,y,dc=example"),
            "role": hostile("requester", "approver", "auditor", "pam-admin", "break-glass"),
        }
    )
)
def test_group_mapping_form_answers_any_input_with_form_errors(pat_client, data):
    from identity.models import LdapGroupMapping

    with rolled_back():
        response = pat_client.post(reverse("identity:directory_mapping_add"), data)
        assert_clear_answer(response, allowed=(302, 400))
        if response.status_code == 302:
            mapping = LdapGroupMapping.objects.get()
            assert "\x00" not in mapping.group_dn and len(mapping.group_dn) <= 1000
        else:
            assert response.context["form"].errors


@pytest.mark.parametrize(
    ("group_dn", "says"),
    [
        ("", "required"),
        ("not a dn", "is not a distinguished name"),
        ("cn=x,dc=example\x00", "Null characters"),
        ("cn=" + "a" * 2000, "at most 1000"),
        ("=,=,=", "is not a distinguished name"),
    ],
)
def test_a_bad_group_dn_is_a_clear_form_error(pat_client, group_dn, says):
    response = pat_client.post(
        reverse("identity:directory_mapping_add"), {"group_dn": group_dn, "role": "auditor"}
    )
    assert response.status_code == 400
    errors = [e for errors in response.context["form"].errors.values() for e in errors]
    assert any(says in e for e in errors), errors
    assert_clear_answer(response, allowed=(400,))


def test_an_unknown_role_is_a_clear_form_error(pat_client):
    response = pat_client.post(
        reverse("identity:directory_mapping_add"), {"group_dn": "cn=x,dc=example", "role": "superuser"}
    )
    assert response.status_code == 400
    assert "not one of the available choices" in str(response.context["form"].errors["role"])


# --- Sessions: terminate, legal holds --------------------------------------------------------


@pytest.fixture
def live_session(alice):
    return GatewaySession.objects.create(user=alice, account="pacs01-ssh-ca", client_address="192.0.2.7")


@BADINPUT
@given(form_data({"reason": hostile("Suspicious commands"), "back": hostile("detail", "live")}))
def test_terminate_form_answers_any_input_with_a_message(bob_client, live_session, data):
    with rolled_back():
        response = bob_client.post(reverse("sessions:terminate", args=[live_session.pk]), data)
        assert_clear_answer(response, allowed=(302,))
        live_session.refresh_from_db()
        if live_session.terminate_requested_at is not None:
            reason = live_session.terminate_reason
            assert reason.strip() and "\x00" not in reason and len(reason) <= 1000


@BADINPUT
@given(
    form_data(
        {
            "session": hostile("1"),
            "username": hostile("alice", "nobody"),
            "reason": hostile("Case 2024-17, legal department"),
            "back": hostile("", "1", "-1", "99999999999999999999"),
        }
    )
)
def test_legal_hold_form_answers_any_input_with_a_message(carol_client, live_session, data):
    from recordings.models import LegalHold

    if data.get("session") == "1":
        data["session"] = str(live_session.pk)
    with rolled_back():
        response = carol_client.post(reverse("sessions:hold_place"), data)
        assert_clear_answer(response, allowed=(302, 404))
        for hold in LegalHold.objects.all():
            assert hold.reason.strip() and "\x00" not in hold.reason


# --- Posts that take no field: any body is ignored -------------------------------------------

JUNK = form_data({"x": hostile(), "next": hostile("//evil.example"), "pk": hostile("1"), "code": hostile()})
NO_FIELD_POSTS = [
    ("audit:verify", "carol_client", None, (302,)),
    ("access:request_cancel", "alice_client", "request", (302,)),
    ("access:request_retry", "alice_client", "request", (302,)),
    ("access:grant_checkin", "alice_client", "grant", (302,)),
    ("identity:ssh_key_remove", "alice_client", 999_999, (404,)),
    ("identity:directory_mapping_remove", "pat_client", 999_999, (302,)),
    ("sessions:hold_release", "carol_client", 999_999, (404,)),
    ("identity:logout", "alice_client", None, (302,)),
]


@FEW
@given(data=st.data())
@pytest.mark.parametrize(
    ("name", "persona", "obj", "allowed"), NO_FIELD_POSTS, ids=[n for n, *_ in NO_FIELD_POSTS]
)
def test_posts_without_fields_ignore_any_body(
    request, alice, accounts, ticket_policy, no_vault, name, persona, obj, allowed, data
):
    from access import services

    client = request.getfixturevalue(persona)
    body = data.draw(JUNK)
    with rolled_back():
        if obj == "request":
            obj = services.request_create(
                requester=alice,
                account=accounts["ssh-ca"],
                reason="work",
                ticket="INC-123",
                duration_minutes=60,
            ).pk
        elif obj == "grant":
            obj = live_grant(user=alice, account=accounts["ssh-ca"]).pk
        url = reverse(name, args=[obj]) if obj is not None else reverse(name)
        response = client.post(url, body)
        assert_clear_answer(response, allowed=allowed, redirect_message=name != "identity:ssh_key_remove")
        if response.status_code == 302:
            assert not response.url.startswith("//") and "evil" not in response.url


# --- Configuration (Django admin): targets, accounts, policies --------------------------------


def _admin_post(client, model: str, data: dict):
    return client.post(reverse(f"admin:access_{model}_add"), data)


def _admin_errors_shown(response) -> list[str]:
    assert response.status_code == 200
    form = response.context["adminform"].form
    errors = [str(e) for errors in form.errors.values() for e in errors]
    body = body_of(response)
    assert "errornote" in body or "errorlist" in body
    return errors


INLINE_EMPTY = {
    "accounts-TOTAL_FORMS": "0",
    "accounts-INITIAL_FORMS": "0",
    "accounts-MIN_NUM_FORMS": "0",
    "accounts-MAX_NUM_FORMS": "1000",
}


@BADINPUT
@given(
    form_data(
        {
            "name": hostile("pacs02", "vna-01"),
            "kind": hostile("pacs", "vna", "database"),
            "host": hostile("pacs02.hospital.example", "10.0.0.5", "[::1]"),
            "port": hostile("22", "2222", "65535"),
            "tags": hostile('["radiology"]', "[]"),
            "forward_ports": hostile("[5432, 104]", "[]", "[0]", '["104"]', "[true]", "{}"),
        }
    )
)
def test_target_admin_form_answers_any_input_with_form_errors(pat_client, data):
    with rolled_back():
        response = _admin_post(pat_client, "target", {**INLINE_EMPTY, **data})
        assert_clear_answer(response, allowed=(200, 302), redirect_message=False, need_reason=False)
        if response.status_code == 302:
            target = Target.objects.get()
            assert 1 <= target.port <= 65535
            assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", target.name)
            assert all(isinstance(p, int) and 1 <= p <= 65535 for p in target.forward_ports)
            assert target.host and "\x00" not in target.host
        else:
            assert _admin_errors_shown(response) or response.context["inline_admin_formsets"]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("port", "0", "greater than or equal to 1"),
        ("port", "-22", "greater than or equal to"),
        ("port", "65536", "less than or equal to 65535"),
        ("port", "22.5", "whole number"),
        ("port", str(10**30), "less than or equal to 65535"),
        ("host", "", "required"),
        ("host", "a" * 300, "at most 255"),
        ("host", "pacs\x00.example", "Null characters"),
        ("name", "PACS 01", "lower-case letters"),
        ("name", "-pacs", "lower-case letters"),
        ("forward_ports", "[0]", "TCP port numbers"),
        ("forward_ports", "[70000]", "TCP port numbers"),
        ("forward_ports", '["5432"]', "TCP port numbers"),
        ("forward_ports", "5432", "TCP port numbers"),
        ("forward_ports", "not json", "valid JSON"),
    ],
)
def test_a_bad_target_field_is_a_clear_form_error(pat_client, field, value, says):
    data = {
        **INLINE_EMPTY,
        "name": "pacs02",
        "kind": "pacs",
        "host": "pacs02.example",
        "port": "22",
        "tags": "[]",
        "forward_ports": "[]",
        field: value,
    }
    response = _admin_post(pat_client, "target", data)
    errors = _admin_errors_shown(response)
    assert any(says in e for e in errors), errors
    assert not Target.objects.exists()


@BADINPUT
@given(
    form_data(
        {
            "slug": hostile("pacs01-root"),
            "kind": hostile("ssh-ca", "database", "static"),
            "username": hostile("root", "svc_pacs", "postgres"),
            "vault_role": hostile(""),
            "kv_path": hostile(""),
            "database_name": hostile("", "pacs"),
            "tags": hostile("[]"),
        }
    )
)
def test_account_admin_form_answers_any_input_with_form_errors(pat_client, target, data):
    with rolled_back():
        response = _admin_post(pat_client, "account", {"target": str(target.pk), "is_active": "on", **data})
        assert_clear_answer(response, allowed=(200, 302), redirect_message=False, need_reason=False)
        if response.status_code == 302:
            account = Account.objects.get()
            assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", account.slug)
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}", account.username)
        else:
            assert _admin_errors_shown(response)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("slug", "PACS01", "lower-case letters"),
        ("slug", "pacs 01", "lower-case letters"),
        ("slug", "a" * 64, "at most 63"),
        ("username", "root; rm -rf /", "no spaces"),
        ("username", "-oProxyCommand=evil", "no spaces"),
        ("username", "al\x00ice", "Null characters"),
        ("username", "", "required"),
        ("username", "1root", "no spaces"),
    ],
)
def test_a_bad_account_name_is_a_clear_form_error(pat_client, target, field, value, says):
    data = {
        "target": str(target.pk),
        "slug": "pacs01-root",
        "kind": "ssh-ca",
        "username": "root",
        "tags": "[]",
        field: value,
    }
    response = _admin_post(pat_client, "account", data)
    errors = _admin_errors_shown(response)
    assert any(says in e for e in errors), errors


def _policy_data(**overrides) -> dict:
    group = Group.objects.get_or_create(name="requester")[0]
    data = {
        "name": "PACS admins",
        "groups": [str(group.pk)],
        "tags": "[]",
        "approvals_required": "1",
        "max_duration_minutes": "60",
        "ticket_required": "on",
        "ticket_pattern": r"^INC-\d+$",
        "is_active": "on",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@BADINPUT
@given(
    form_data(
        {
            "name": hostile("PACS admins"),
            "approvals_required": hostile("0", "1", "3"),
            "max_duration_minutes": hostile("5", "60", "10080"),
            "ticket_pattern": hostile(r"^INC-\d+$", r"^(INC|CHG)-?\d{3,10}$", ""),
            "tags": hostile('["radiology"]', "[]"),
        }
    )
)
def test_policy_admin_form_answers_any_input_with_form_errors(pat_client, data):
    with rolled_back():
        response = pat_client.post(reverse("admin:access_accesspolicy_add"), _policy_data(**data))
        assert_clear_answer(response, allowed=(200, 302), redirect_message=False, need_reason=False)
        if response.status_code == 302:
            policy = AccessPolicy.objects.get()
            if policy.ticket_pattern:
                re.compile(policy.ticket_pattern)
            assert 0 <= policy.approvals_required <= 3
        else:
            assert _admin_errors_shown(response)


@pytest.mark.parametrize(
    "pattern", ["(", "[a-", "*INC", "INC-\\", "(?P<x", "a{2,1}", "a{99999999999999999999}", "a{4294967296}"]
)
def test_an_invalid_ticket_regex_is_a_clear_form_error(pat_client, pattern):
    response = pat_client.post(reverse("admin:access_accesspolicy_add"), _policy_data(ticket_pattern=pattern))
    errors = _admin_errors_shown(response)
    assert any("Not a valid regular expression" in e for e in errors), errors
    assert not AccessPolicy.objects.exists()


CATASTROPHIC = [
    r"^(a+)+$",
    r"^(\d+)*$",
    r"^(a|a)*b$",
    r"^(INC|INC-?)*\d+$",
    r"^([A-Z]+-?)+\d$",
    r"^\d*\d*\d*\d*\d*\d*x$",
    r"^(\w+\s?)*$",
]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a_catastrophic_ticket_regex_is_refused_with_a_clear_error(pat_client, pattern):
    response = pat_client.post(reverse("admin:access_accesspolicy_add"), _policy_data(ticket_pattern=pattern))
    errors = _admin_errors_shown(response)
    assert any("too long" in e and "ticket" in e for e in errors), errors
    assert not AccessPolicy.objects.exists()


@pytest.mark.parametrize(
    "pattern",
    [
        r"^(INC|CHG|RITM)-?\d{3,10}$",
        r"^[A-Z]{2,5}-\d{1,10}(-\d+)?$",
        r"^INC\d+$",
        r"^(?:INC|CHG)-[0-9]{6}$",
        r"^[A-Z]+-\d+$",
        r"(?i)^inc-\d+$",
    ],
)
def test_ordinary_ticket_regexes_are_accepted(pat_client, pattern):
    response = pat_client.post(reverse("admin:access_accesspolicy_add"), _policy_data(ticket_pattern=pattern))
    assert response.status_code == 302, _admin_errors_shown(response)
    assert AccessPolicy.objects.get().ticket_pattern == pattern


ATOMS = st.sampled_from(
    ["a", "\\d", "[A-Z]", ".", "INC", "-", "\\w", "\\s", "[a-z0-9]", "(?:INC|CHG)", "x|y"]
)
QUANTIFIERS = st.sampled_from(["", "", "*", "+", "?", "{2,5}", "{1,10}", "*?", "+?", "{3}", "{0,64}"])


def _group(parts: tuple[str, str, str]) -> str:
    body, quantifier, opener = parts
    return f"{opener}{body}){quantifier}"


PATTERNS = st.recursive(
    st.tuples(ATOMS, QUANTIFIERS).map("".join),
    lambda inner: st.one_of(
        st.tuples(
            st.lists(inner, min_size=1, max_size=4).map("".join), QUANTIFIERS, st.sampled_from(["(", "(?:"])
        ).map(_group),
        st.lists(inner, min_size=2, max_size=3).map("|".join).map(lambda s: f"({s})"),
    ),
    max_leaves=8,
).map(lambda body: f"^{body}$")
HOSTILE_TICKETS = [
    "a" * 63 + "!",
    "1" * 63 + "!",
    "INC" * 21 + "!",
    "ab " * 21 + "!",
    "-" * 63 + "!",
    "A1" * 31 + "!",
    "xy" * 31 + "!",
    " " * 63 + "!",
]


def _matches_within(pattern: str, seconds: float) -> bool:
    """Whether matching every hostile ticket ends within the time, in a child process (a
    runaway regular expression cannot be interrupted in the process that runs it)."""
    import os
    import signal

    pid = os.fork()
    if pid == 0:  # the child: only regular expressions, then leave at once
        try:
            for ticket in HOSTILE_TICKETS:
                re.fullmatch(pattern, ticket)
        finally:
            os._exit(0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


@BADINPUT
@given(PATTERNS)
@example(r"^(INC|CHG|RITM)-?\d{3,10}$")
@example(r"^(a+)+$")
@example(r"^[A-Z]+-\d+-\d+$")
def test_every_ticket_pattern_the_checker_accepts_matches_any_ticket_quickly(pattern):
    from access.ticket_patterns import ticket_pattern_problem

    problem = ticket_pattern_problem(pattern)
    if problem is None:
        assert _matches_within(pattern, 2.0), (
            f"{pattern!r} was accepted but takes too long on a hostile ticket"
        )
    else:
        assert "too long" in problem or "Not a valid regular expression" in problem


@pytest.mark.parametrize("pattern", [*CATASTROPHIC, "(", "a{99999999999999999999}"])
def test_a_request_under_a_policy_with_a_broken_or_catastrophic_regex_answers_at_once(
    alice_client, ticket_policy, pattern
):
    """A pattern saved before it was checked (or by hand in the database) must not hang or
    crash the requester's page: the request is refused with a reason, quickly."""
    AccessPolicy.objects.filter(pk=ticket_policy.pk).update(ticket_pattern=pattern)
    ticket = "a" * 40 + "!" if "a" in pattern else "1" * 40 + "!"
    if "INC" in pattern or "A-Z" in pattern:
        ticket = "INC" * 20 + "!"
    if r"\w" in pattern:
        ticket = "ab " * 20 + "!"
    data = {"account": "pacs01-ssh-ca", "duration_minutes": "60", "ticket": ticket, "reason": "work"}
    started = time.monotonic()
    response = alice_client.post(reverse("access:request_new"), data)
    assert time.monotonic() - started < 2
    assert response.status_code == 200
    errors = _errors(response, "ticket")
    assert any("pam-admin" in e for e in errors), errors
    assert not AccessRequest.objects.exists()


def test_a_huge_value_in_every_admin_text_field_is_a_form_error_not_a_crash(pat_client, target):
    huge = "x" * 200_000
    response = pat_client.post(
        reverse("admin:access_accesspolicy_add"), _policy_data(name=huge, ticket_pattern=huge, tags=huge)
    )
    errors = _admin_errors_shown(response)
    assert any("at most" in e for e in errors), errors
