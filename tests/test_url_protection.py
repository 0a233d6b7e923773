"""Every URL pattern refuses an anonymous user and a password-only (not OTP-verified) user.

The URLconf is walked, so a view added later without protection fails this test.
"""

from __future__ import annotations

import pytest
from django.urls import resolve
from django.urls.exceptions import Resolver404

from pamsite.middleware import MFA_PENDING_VIEWS, PUBLIC_VIEWS
from tests.conftest import make_user
from tests.urlwalk import concrete, walk

ALL_URLS = sorted({concrete(p.route) for p in walk()})


def test_the_walk_finds_the_pages():
    assert "/" in ALL_URLS and "/login/" in ALL_URLS and "/audit/" in ALL_URLS
    assert any(url.startswith("/admin/") for url in ALL_URLS)


@pytest.mark.parametrize("url", ALL_URLS)
def test_anonymous_is_sent_to_login(client, db, url):
    try:
        match = resolve(url)
    except Resolver404:
        pytest.fail(f"{url} does not resolve: add a sample value for its parameter to tests.urlwalk.SAMPLES")
    if match.view_name in PUBLIC_VIEWS:
        return
    for method in (client.get, client.post):
        response = method(url)
        assert response.status_code == 302, f"{method.__name__.upper()} {url} answered {response.status_code}"
        assert response["Location"].startswith("/login/"), f"{url} redirected to {response['Location']}"


@pytest.mark.parametrize("url", ALL_URLS)
def test_password_only_user_is_sent_to_the_code_step(client, db, url):
    match = resolve(url)
    if match.view_name in PUBLIC_VIEWS | MFA_PENDING_VIEWS:
        return
    user = make_user(
        "halfway", "pam-admin", "auditor", "approver", "requester", is_staff=True, is_superuser=True
    )
    client.force_login(user)  # password done, no code
    for method in (client.get, client.post):
        response = method(url)
        assert response.status_code == 302, f"{method.__name__.upper()} {url} answered {response.status_code}"
        assert response["Location"].startswith("/login/verify/"), (
            f"{url} redirected to {response['Location']}"
        )


def test_public_views_are_only_the_login_pages():
    assert {
        "identity:login",
        "identity:logout",
        "healthz",
        "identity:invitation",
        "identity:invitation_password",
    } == PUBLIC_VIEWS
    assert {"identity:verify", "identity:enrol"} == MFA_PENDING_VIEWS
