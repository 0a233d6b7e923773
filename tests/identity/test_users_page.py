"""The Users page (pam-admins): the list with search, filters and pages; a user's page with
roles, deactivation and reactivation, each through one service and audited."""

from __future__ import annotations

import pytest
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.urls import reverse
from django_otp.plugins.otp_static.models import StaticDevice

from access import services
from audit.models import AuditEvent
from identity.models import User
from identity.users import user_roles_set
from tests.conftest import make_user, verified_client

pytestmark = pytest.mark.django_db

USERS = reverse("identity:users")


def usernames(response) -> list[str]:
    return [u.username for u in response.context["page"]]


def test_the_list_shows_roles_source_authenticator_backup_codes_sign_in_and_state(client, pat, alice):
    device = StaticDevice.objects.create(user=alice, name="backup codes", confirmed=True)
    for token in ("aaaa1111", "bbbb2222", "cccc3333"):
        device.token_set.create(token=token)
    make_user("newbie", totp=False)
    gone = make_user("gone", "approver")
    services.user_deactivate(user=gone, acting_user=pat, reason="left the hospital")
    make_user("lena", "auditor", source=User.Source.LDAP)
    verified_client(client, pat)
    response = client.get(USERS)
    assert response.status_code == 200
    rows = {u.username: u for u in response.context["page"]}
    assert rows["alice"].mfa_enrolled and rows["alice"].backup_codes_left == 3
    assert not rows["newbie"].mfa_enrolled
    text = response.content.decode()
    assert "3 backup codes" in text and "not enrolled" in text
    assert "by pat: left the hospital" in text and "directory" in text


def test_search_by_name_username_or_e_mail(client, pat, alice):
    make_user("jsmith", first_name="Jane", last_name="Smith", email="jane.smith@vendor.example")
    make_user("kjones", display_name="Kim Jones", email="kim@hospital.example")
    verified_client(client, pat)
    assert usernames(client.get(USERS, {"q": "smith"})) == ["jsmith"]
    assert usernames(client.get(USERS, {"q": "jane vendor"})) == ["jsmith"]
    assert usernames(client.get(USERS, {"q": "Kim Jones"})) == ["kjones"]
    assert usernames(client.get(USERS, {"q": "hospital.example"})) == ["alice", "kjones", "pat"]
    empty = client.get(USERS, {"q": "nobody-at-all"})
    assert empty.status_code == 200 and b"No user matches" in empty.content


def test_filter_by_role_state_and_source(client, pat, alice, bob):
    make_user("gail", "requester", "break-glass")
    make_user("norole")
    make_user("lena", "requester", source=User.Source.LDAP)
    make_user("invited", totp=False, must_change_password=True)
    services.user_deactivate(user=bob, acting_user=pat, reason="moved to another trust")
    verified_client(client, pat)
    assert usernames(client.get(USERS, {"role": "requester"})) == ["alice", "gail", "lena"]
    assert usernames(client.get(USERS, {"role": "break-glass"})) == ["gail"]
    assert usernames(client.get(USERS, {"role": "none"})) == ["invited", "norole"]
    assert usernames(client.get(USERS, {"state": "deactivated"})) == ["bob"]
    assert usernames(client.get(USERS, {"state": "invited"})) == ["invited"]
    assert usernames(client.get(USERS, {"state": "no-mfa"})) == ["invited"]
    assert usernames(client.get(USERS, {"source": "ldap"})) == ["lena"]
    assert usernames(client.get(USERS, {"role": "requester", "source": "local"})) == ["alice", "gail"]
    # Nonsense in the query string is ignored, not an error.
    assert client.get(USERS, {"role": "root", "state": "<script>", "page": "x"}).status_code == 200


def test_thousands_of_users_are_paged_and_the_filters_kept_across_pages(client, pat):
    hashed = make_password(None)
    User.objects.bulk_create(
        [User(username=f"dir{i:04d}", source=User.Source.LDAP, password=hashed) for i in range(2500)]
    )
    verified_client(client, pat)
    first = client.get(USERS, {"source": "ldap"})
    assert first.context["page"].paginator.count == 2500
    assert len(usernames(first)) == 50 and usernames(first)[0] == "dir0000"
    assert b"Page 1 of 50" in first.content and b"source=ldap&amp;page=2" in first.content
    last = client.get(USERS, {"source": "ldap", "page": "50"})
    assert usernames(last)[-1] == "dir2499"


def test_roles_of_a_local_user_are_set_on_her_page_and_audited(client, pat, alice):
    verified_client(client, pat)
    url = reverse("identity:user_roles", args=[alice.pk])
    response = client.post(url, {"roles": ["requester", "break-glass"]})
    assert response.status_code == 302
    assert set(alice.groups.values_list("name", flat=True)) == {"requester", "break-glass"}
    event = AuditEvent.objects.get(action="identity.user.roles_changed")
    assert event.actor == pat and event.details["added"] == ["break-glass"] and event.details["removed"] == []


def test_a_directory_users_roles_are_the_directorys_and_cannot_be_changed_here(client, pat, settings):
    """Every sync (and each sign-in) sets a directory user's roles from the mapped groups and takes
    away the others: a change here would be undone without a word, so it is refused."""
    settings.LDAP_SERVER_URI = ["ldap://directory.hospital.example"]
    lena = make_user("lena", "requester", source=User.Source.LDAP)
    verified_client(client, pat)
    page = client.get(reverse("identity:user", args=[lena.pk]))
    assert b"come from their directory groups" in page.content
    assert b'action="/users/%d/roles/"' % lena.pk not in page.content
    response = client.post(reverse("identity:user_roles", args=[lena.pk]), {"roles": ["pam-admin"]})
    assert response.status_code == 400 and b"next sync would undo" in response.content
    assert set(lena.groups.values_list("name", flat=True)) == {"requester"}
    # With no directory configured, nothing would undo it: the roles are editable.
    settings.LDAP_SERVER_URI = []
    user_roles_set(acting_user=pat, user=lena, roles={"requester", "approver"})
    assert set(lena.groups.values_list("name", flat=True)) == {"requester", "approver"}


def test_no_pam_admin_takes_the_pam_admin_role_from_herself(pat):
    """So there is always a pam-admin left: another one must take it from her."""
    with pytest.raises(ValidationError, match="from yourself"):
        user_roles_set(acting_user=pat, user=pat, roles=set())
    paula = make_user("paula", "pam-admin")
    user_roles_set(acting_user=paula, user=pat, roles={"auditor"})
    assert set(pat.groups.values_list("name", flat=True)) == {"auditor"}


def test_deactivation_on_the_page_needs_a_reason_and_is_refused_for_oneself(client, pat, alice):
    verified_client(client, pat)
    response = client.post(reverse("identity:user_deactivate", args=[alice.pk]), {"deactivate-reason": "x"})
    assert response.status_code == 400 and b"at least 5 characters" in response.content
    assert User.objects.get(pk=alice.pk).is_active
    own = client.get(reverse("identity:user", args=[pat.pk]))
    assert b"You cannot deactivate yourself" in own.content
    response = client.post(
        reverse("identity:user_deactivate", args=[pat.pk]), {"deactivate-reason": "testing it"}
    )
    assert response.status_code == 400 and User.objects.get(pk=pat.pk).is_active


def test_reactivation_gives_the_account_back_but_nothing_she_held(client, pat, alice):
    services.user_deactivate(user=alice, acting_user=pat, reason="on leave for a year")
    verified_client(client, pat)
    page = client.get(reverse("identity:user", args=[alice.pk]))
    assert b"by pat: on leave for a year" in page.content
    response = client.post(
        reverse("identity:user_reactivate", args=[alice.pk]), {"reactivate-reason": "back, INC-4"}
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.is_active and alice.deactivated_reason == "" and alice.deactivated_by is None
    event = AuditEvent.objects.get(action="identity.user.reactivated")
    assert event.actor == pat and event.details["was"] == "by pat: on leave for a year"


def test_a_directory_user_the_sync_deactivated_is_reactivated_by_the_directory_only(client, pat):
    lena = make_user("lena", "requester", source=User.Source.LDAP)
    User.objects.filter(pk=lena.pk).update(is_active=False, deactivated_reason="left the directory")
    verified_client(client, pat)
    page = client.get(reverse("identity:user", args=[lena.pk]))
    assert b"The sync reactivates them by itself" in page.content
    response = client.post(
        reverse("identity:user_reactivate", args=[lena.pk]), {"reactivate-reason": "came back"}
    )
    assert response.status_code == 400
    assert not User.objects.get(pk=lena.pk).is_active


def test_a_pam_admins_reason_never_reads_as_the_syncs(pat):
    """The sync reactivates only users it deactivated, recognised by its own words: a
    pam-admin's reason is kept as "by pat: …", whatever she typed."""
    lena = make_user("lena", "requester", source=User.Source.LDAP)
    services.user_deactivate(user=lena, acting_user=pat, reason="left the directory")
    lena.refresh_from_db()
    assert lena.deactivated_reason == "by pat: left the directory"
    from identity.directory import DEACTIVATION_REASONS

    assert lena.deactivated_reason not in DEACTIVATION_REASONS


def test_deactivation_keeps_the_roles_for_the_record(alice, pat):
    from common.roles import roles_of

    services.user_deactivate(user=alice, acting_user=pat, reason="left the trust")
    alice = User.objects.get(pk=alice.pk)
    assert set(alice.groups.values_list("name", flat=True)) == {"requester"}
    assert roles_of(alice) == frozenset()


def test_only_pam_admins_deactivate_and_with_a_reason(alice, pat):
    from django.core.exceptions import PermissionDenied

    approver = make_user("vera", "approver")
    with pytest.raises(PermissionDenied):
        services.user_deactivate(user=alice, acting_user=approver, reason="not my job")
    with pytest.raises(ValidationError, match="reason"):
        services.user_deactivate(user=alice, acting_user=pat, reason="x")
    with pytest.raises(PermissionDenied):
        services.user_deactivate(user=alice, acting_user=None, reason="left", via="users page")
    assert User.objects.get(pk=alice.pk).is_active
    assert Group.objects.filter(name="requester").exists()


def test_a_locked_user_shows_as_locked_and_is_unlocked_from_her_page(client, pat, alice, settings):
    """Wrong passwords lock alice: the list and her page say so (until when), and Unlock on
    her page releases the lock, is audited, and comes back to her page."""
    from django.test import Client

    from identity.models import LoginLock

    wrong = Client(REMOTE_ADDR="192.0.2.44")
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        wrong.post(reverse("identity:login"), {"username": "alice", "password": "not it"})
    assert LoginLock.objects.get(scope="username", value="alice").locked_until is not None
    verified_client(client, pat)
    listing = client.get(USERS)
    assert "alice" in listing.context["locked"] and "pat" not in listing.context["locked"]
    page = client.get(reverse("identity:user", args=[alice.pk]))
    assert "locked</span> until" in page.content.decode()
    answer = client.post(
        reverse("identity:lockout_release"),
        {"scope": "username", "value": "alice", "next": reverse("identity:user", args=[alice.pk])},
    )
    assert answer.status_code == 302 and answer["Location"] == reverse("identity:user", args=[alice.pk])
    assert AuditEvent.objects.filter(action="auth.lockout.released", actor=pat).count() == 1
    assert "alice" not in client.get(USERS).context["locked"]
    assert "not locked" in client.get(reverse("identity:user", args=[alice.pk])).content.decode()
