"""Web hardening, driven through the real views: the session key changes at each login step,
every POST needs the CSRF token, ``next`` never leads off-site, and under the production
settings every page carries the security headers and every cookie is Secure, HttpOnly and
SameSite.

The production values come from pamsite/settings.py itself, run again with
``PAMSITE_MODE=production`` (as ``make check-deploy`` runs it); the infrastructure settings
(database, Vault, static storage) stay the test run's.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from importlib import import_module
from pathlib import Path
from unittest import mock
from urllib.parse import urljoin, urlsplit

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from tests.conftest import PASSWORD, make_user, verified_client
from tests.totp import totp_code

try:
    from tests.urlwalk import concrete, walk

    ALL_URLS = sorted({concrete(p.route) for p in walk()})
except ImportError:  # before the walker moved to tests/urlwalk.py
    from tests.test_url_protection import ALL_URLS

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
HOST = "pamsite.example.org"
ALL_ROLES = ("pam-admin", "approver", "auditor", "requester")


def session_key(client: Client) -> str | None:
    cookie = client.cookies.get(django_settings.SESSION_COOKIE_NAME)
    return cookie.value if cookie and cookie.value else None


def session_exists(key: str) -> bool:
    return import_module(django_settings.SESSION_ENGINE).SessionStore().exists(key)


def fresh_code(user) -> str:
    """The current TOTP code; the device forgets the last one it took (a test logs in often)."""
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    TOTPDevice.objects.filter(pk=device.pk).update(last_t=-1)
    return totp_code(device.bin_key)


def password_step(client: Client, username: str, **extra):
    return client.post(reverse("identity:login"), {"username": username, "password": PASSWORD, **extra})


def code_step(client: Client, user, **extra):
    return client.post(reverse("identity:verify"), {"code": fresh_code(user), **extra})


# --- Session keys ---------------------------------------------------------------------------


def test_the_session_key_changes_at_the_password_and_again_at_the_code(client):
    dana = make_user("dana", "requester")
    client.get(reverse("identity:login"))
    before = session_key(client)

    assert password_step(client, "dana").status_code == 302
    after_password = session_key(client)
    assert after_password and after_password != before

    assert code_step(client, dana)["Location"] == reverse("dashboard")
    after_code = session_key(client)
    assert after_code and after_code != after_password
    assert not session_exists(after_password)
    assert client.get(reverse("dashboard")).status_code == 200

    # Whoever kept the key of the password step holds nothing.
    stale = Client()
    stale.cookies[django_settings.SESSION_COOKIE_NAME] = after_password
    assert stale.get(reverse("dashboard"))["Location"].startswith(reverse("identity:login"))


def test_a_backup_code_also_gives_a_new_session_key(client):
    erin = make_user("erin", "requester")
    backups = StaticDevice.objects.create(user=erin, name="backup", confirmed=True)
    backups.token_set.create(token=StaticToken.random_token())
    password_step(client, "erin")
    after_password = session_key(client)
    response = client.post(reverse("identity:verify"), {"code": backups.token_set.get().token})
    assert response.status_code == 302
    assert session_key(client) not in (None, after_password)
    assert not session_exists(after_password)


def test_enrolment_gives_a_new_session_key(client):
    """A first login: password, then the authenticator is enrolled with a code."""
    make_user("fred", "requester", totp=False)
    password_step(client, "fred")
    after_password = session_key(client)
    page = client.get(reverse("identity:enrol"))
    assert page.status_code == 200
    device = TOTPDevice.objects.get(user__username="fred", confirmed=False)
    response = client.post(reverse("identity:enrol"), {"code": totp_code(device.bin_key)})
    assert response.status_code == 200 and response.context["codes"]
    assert session_key(client) not in (None, after_password)
    assert not session_exists(after_password)


def test_a_planted_session_key_does_not_survive_login():
    """Session fixation: the attacker's own valid session key, set in the victim's browser."""
    dana = make_user("dana", "requester")
    store = import_module(django_settings.SESSION_ENGINE).SessionStore()
    store["planted"] = True
    store.create()
    planted = store.session_key

    victim = Client()
    victim.cookies[django_settings.SESSION_COOKIE_NAME] = planted
    victim.get(reverse("identity:login"))
    password_step(victim, "dana")
    assert session_key(victim) != planted
    assert not session_exists(planted)
    code_step(victim, dana)
    assert victim.get(reverse("dashboard")).status_code == 200

    attacker = Client()
    attacker.cookies[django_settings.SESSION_COOKIE_NAME] = planted
    response = attacker.get(reverse("dashboard"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("identity:login"))


def test_an_invented_session_key_is_replaced(client):
    make_user("dana", "requester")
    invented = "a" * 32
    client.cookies[django_settings.SESSION_COOKIE_NAME] = invented
    password_step(client, "dana")
    assert session_key(client) not in (None, invented)
    assert not session_exists(invented)


# --- CSRF -----------------------------------------------------------------------------------


def row_counts() -> dict[str, int]:
    return {model._meta.label: model._default_manager.count() for model in apps.get_models()}


@pytest.fixture
def csrf_client(db):
    """A client that enforces CSRF, signed in (both factors) as a user with every role,
    holding the CSRF cookie a browser would have from an earlier page."""
    user = make_user("root2", *ALL_ROLES, is_staff=True, is_superuser=True)
    client = verified_client(Client(enforce_csrf_checks=True), user)
    assert client.get(reverse("dashboard")).status_code == 200
    assert django_settings.CSRF_COOKIE_NAME in client.cookies
    return client


def assert_csrf_refused(response, what: str) -> None:
    assert response.status_code == 403, f"{what} answered {response.status_code}"
    assert "errors/csrf.html" in [t.name for t in response.templates], f"{what}: 403, but not for CSRF"


@pytest.mark.parametrize("url", ALL_URLS)
def test_every_post_without_the_token_is_refused_and_changes_nothing(csrf_client, url):
    """Every pattern of the URLconf (those that take a POST, and the rest as well)."""
    before, events = row_counts(), AuditEvent.objects.count()
    assert_csrf_refused(csrf_client.post(url, {"name": "x", "reason": "x", "code": "123456"}), f"POST {url}")
    assert AuditEvent.objects.count() == events
    assert row_counts() == before


def test_a_token_from_another_browser_is_refused(csrf_client):
    other = Client()
    other.get(reverse("identity:login"))
    foreign = other.cookies[django_settings.CSRF_COOKIE_NAME].value
    response = csrf_client.post(reverse("identity:logout"), {"csrfmiddlewaretoken": foreign})
    assert_csrf_refused(response, "logout with another browser's token")
    assert csrf_client.get(reverse("dashboard")).status_code == 200  # still signed in


def test_the_login_view_needs_the_token(db):
    make_user("dana", "requester")
    for with_cookie in (False, True):
        client = Client(enforce_csrf_checks=True)
        if with_cookie:
            client.get(reverse("identity:login"))
        before = AuditEvent.objects.count()
        assert_csrf_refused(password_step(client, "dana"), "login")
        assert session_key(client) is None
        assert AuditEvent.objects.count() == before
    # With the token (as the form sends it) the same login goes through.
    client = Client(enforce_csrf_checks=True)
    client.get(reverse("identity:login"))
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    assert password_step(client, "dana", csrfmiddlewaretoken=token)["Location"].startswith("/login/verify/")


def test_the_code_step_needs_the_token(db):
    dana = make_user("dana", "requester")
    client = Client(enforce_csrf_checks=True)
    client.get(reverse("identity:login"))
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    password_step(client, "dana", csrfmiddlewaretoken=token)
    assert_csrf_refused(code_step(client, dana), "code step")
    assert client.get(reverse("dashboard"))["Location"].startswith(reverse("identity:verify"))


# --- Open redirects -------------------------------------------------------------------------

EVIL_NEXT = [
    "//evil.example",
    "https://evil.example",
    "http://evil.example/login/",
    "/\\evil.example",
    "\\\\evil",
    "javascript:alert(1)",
    "%2F%2Fevil.example",
    "///evil.example",
    "https:/\\evil.example",
    " //evil.example",
    "/\t/evil.example",
    f"https://{HOST}@evil.example",
    f"//{HOST}@evil.example/",
    "data:text/html,<script>alert(1)</script>",
]
# The same, as a browser would send them in a link (%2F%2F... arrives as //...).
RAW_QUERIES = [
    "next=%2F%2Fevil.example",
    "next=%5C%5Cevil",
    "next=%2F%5Cevil.example",
    "next=%09//evil.example",
]


def stays_on_site(location: str) -> bool:
    """Whether a browser that follows this Location stays on our host."""
    # Browsers read "\" as "/", drop leading spaces and control characters, and tabs and
    # newlines anywhere in a URL.
    cleaned = re.sub(r"[\t\n\r]", "", location.replace("\\", "/")).lstrip("".join(map(chr, range(0x21))))
    target = urlsplit(urljoin(f"https://{HOST}/login/", cleaned))
    return target.scheme == "https" and target.netloc == HOST


def assert_on_site(response, what: str) -> None:
    if response.status_code in (301, 302, 303, 307, 308):
        assert stays_on_site(response["Location"]), f"{what} sent the browser to {response['Location']!r}"


def test_the_on_site_check_itself():
    assert stays_on_site("/") and stays_on_site("/access/?x=1") and stays_on_site("%2F%2Fevil.example")
    for bad in ("//evil.example", "/\\evil.example", "\\\\evil", "https://evil.example", "\t//evil.example"):
        assert not stays_on_site(bad), bad


@pytest.fixture
def on_host(settings):
    settings.ALLOWED_HOSTS = [HOST]
    return Client(HTTP_HOST=HOST)


@pytest.mark.parametrize("nxt", EVIL_NEXT)
def test_login_and_code_step_never_send_the_user_off_site(on_host, nxt):
    dana = make_user("dana", "requester")
    client = on_host
    page = client.get(reverse("identity:login"), {"next": nxt})
    assert page.status_code == 200
    response = password_step(client, "dana", next=nxt)
    assert response.status_code == 302 and response["Location"].startswith("/login/verify/")
    assert_on_site(response, f"the password step with next={nxt!r}")
    assert_on_site(client.get(reverse("identity:verify"), {"next": nxt}), "the code page")
    response = code_step(client, dana, next=nxt)
    assert response.status_code == 302
    assert_on_site(response, f"the code step with next={nxt!r}")
    # Signed in: both login pages send the user on at once.
    for view in ("identity:login", "identity:verify"):
        response = client.get(reverse(view), {"next": nxt})
        assert response.status_code == 302
        assert_on_site(response, f"{view} (signed in) with next={nxt!r}")


@pytest.mark.parametrize("query", RAW_QUERIES)
def test_encoded_next_values_in_the_address_never_send_the_user_off_site(on_host, query):
    dana = make_user("dana", "requester")
    client = on_host
    password_step(client, "dana")
    assert_on_site(client.get(f"{reverse('identity:verify')}?{query}"), f"code page ?{query}")
    response = client.post(f"{reverse('identity:verify')}?{query}", {"code": fresh_code(dana)})
    assert response.status_code == 302
    assert_on_site(response, f"code step ?{query}")
    assert_on_site(client.get(f"{reverse('identity:login')}?{query}"), f"login (signed in) ?{query}")


@pytest.mark.parametrize("nxt", EVIL_NEXT)
def test_enrolment_continues_on_site(on_host, nxt):
    make_user("fred", "requester", totp=False)
    client = on_host
    response = password_step(client, "fred", next=nxt)
    assert response["Location"].startswith(reverse("identity:enrol"))
    assert_on_site(response, f"the password step with next={nxt!r}")
    assert client.get(response["Location"]).status_code == 200
    device = TOTPDevice.objects.get(user__username="fred", confirmed=False)
    response = client.post(reverse("identity:enrol"), {"code": totp_code(device.bin_key), "next": nxt})
    assert response.status_code == 200
    assert stays_on_site(response.context["continue_url"]), response.context["continue_url"]


@pytest.mark.parametrize("nxt", EVIL_NEXT)
def test_the_admin_logout_and_login_redirects_stay_on_site(on_host, nxt):
    pat = make_user("pat2", "pam-admin")
    client = verified_client(on_host, pat)
    assert_on_site(client.get("/admin/login/", {"next": nxt}), "admin login")
    response = client.post(reverse("admin:logout"), {"next": nxt})
    assert response.status_code in (200, 302)
    assert_on_site(response, f"admin logout with next={nxt!r}")


@pytest.mark.parametrize(
    "path", ["//evil.example", "//evil.example/", "/\\evil.example", "///evil.example/x"]
)
def test_odd_paths_are_not_redirected_off_site(on_host, path):
    """The CommonMiddleware slash redirect and the login redirect with the path as ``next``."""
    assert_on_site(on_host.get(path), f"GET {path!r}")
    user = make_user("dana", "requester")
    assert_on_site(verified_client(on_host, user).get(path), f"GET {path!r} signed in")


# --- Production headers and cookies ---------------------------------------------------------

# Settings that say where things are, not how the site behaves: kept from the test run.
INFRASTRUCTURE = {
    "DATABASES",
    "DATABASE_URL",
    "SECRET_KEY",
    "VAR_DIR",
    "STATIC_ROOT",
    "STATIC_URL",
    "STORAGES",
    "WHITENOISE_USE_FINDERS",
    "EMAIL_BACKEND",
    "RECORDINGS_ROOT",
    "GATEWAY_HOST_KEY_FILE",
}
YEAR = 365 * 24 * 3600


@pytest.fixture(scope="module")
def production_values(tmp_path_factory):
    """pamsite/settings.py as production would load it (make check-deploy's environment)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PAMSITE_MODE": "production",
        "PAMSITE_VAR_DIR": str(tmp_path_factory.mktemp("production-var")),
        "SECRET_KEY": "production-" + "k9#Q" * 15,
        "ALLOWED_HOSTS": HOST,
        "VAULT_ROLE_ID": "role",
        "VAULT_SECRET_ID": "secret",
    }
    with mock.patch.dict(os.environ, env, clear=True), mock.patch.object(sys, "path", [str(ROOT), *sys.path]):
        module = runpy.run_path(str(ROOT / "pamsite" / "settings.py"), run_name="pamsite_production_settings")
    return {name: value for name, value in module.items() if name.isupper()}


@pytest.fixture
def production(settings, production_values):
    """The test run's settings with every production value applied but INFRASTRUCTURE."""
    for name, value in production_values.items():
        if name in INFRASTRUCTURE or name.startswith("VAULT_"):
            continue
        # Only what differs: setting INSTALLED_APPS again, even unchanged, reloads the apps.
        if getattr(settings, name, object()) != value:
            setattr(settings, name, value)
    assert settings.SECURE_SSL_REDIRECT and settings.SESSION_COOKIE_SECURE and not settings.DEBUG
    return settings


def production_client(**kwargs) -> Client:
    """A browser on https://HOST (a new client: middleware reads the settings when it starts)."""
    return Client(HTTP_HOST=HOST, HTTP_ORIGIN=f"https://{HOST}", **kwargs)


def csp(response) -> dict[str, list[str]]:
    header = response.get("Content-Security-Policy", "")
    directives = {}
    for part in header.split(";"):
        if part.strip():
            name, *sources = part.split()
            directives[name.lower()] = sources
    return directives


def assert_transport_headers(response, what: str) -> None:
    hsts = response.get("Strict-Transport-Security", "")
    age = re.search(r"max-age=(\d+)", hsts)
    assert age and int(age.group(1)) >= YEAR, f"{what}: HSTS {hsts!r}"
    assert "includesubdomains" in hsts.lower(), f"{what}: HSTS {hsts!r}"
    assert response.get("X-Content-Type-Options") == "nosniff", what
    assert response.get("Referrer-Policy") in ("same-origin", "strict-origin", "no-referrer"), what
    assert response.get("Cross-Origin-Opener-Policy") == "same-origin", what


def assert_page_headers(response, what: str) -> None:
    assert_transport_headers(response, what)
    policy = csp(response)
    assert policy, f"{what}: no Content-Security-Policy"
    scripts = policy.get("script-src", policy.get("default-src"))
    assert scripts, f"{what}: no script-src or default-src"
    for weak in ("'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"):
        assert weak not in scripts, f"{what}: script-src allows {weak}"
    assert policy.get("frame-ancestors") == ["'none'"], (
        f"{what}: frame-ancestors {policy.get('frame-ancestors')}"
    )
    assert policy.get("object-src") == ["'none'"], what
    assert policy.get("base-uri") in (["'none'"], ["'self'"]), what
    assert response.get("X-Frame-Options") == "DENY", what


def test_production_sends_plain_http_to_https(production):
    response = production_client().get(reverse("identity:login"))
    assert response.status_code == 301
    assert response["Location"] == f"https://{HOST}{reverse('identity:login')}"


def test_production_pages_carry_the_security_headers(production):
    anonymous = production_client()
    login = anonymous.get(reverse("identity:login"), secure=True)
    assert login.status_code == 200
    assert_page_headers(login, "login page")

    missing = anonymous.get("/no-such-page/", secure=True)
    assert missing.status_code == 404
    assert_page_headers(missing, "404 page")

    user = make_user("dana", *ALL_ROLES)
    signed_in = verified_client(production_client(), user)
    dashboard = signed_in.get(reverse("dashboard"), secure=True)
    assert dashboard.status_code == 200
    assert_page_headers(dashboard, "dashboard")
    assert_page_headers(signed_in.get("/access/requests/999999/", secure=True), "404 page, signed in")

    outsider = verified_client(production_client(), make_user("mallory2"))
    refused = outsider.get(reverse("audit:events"), secure=True)
    assert refused.status_code == 403
    assert_page_headers(refused, "403 page")

    csrf_refused = production_client(enforce_csrf_checks=True).post(reverse("identity:login"), secure=True)
    assert csrf_refused.status_code == 403
    assert_page_headers(csrf_refused, "CSRF failure page")


def test_production_static_files_carry_the_transport_headers(production):
    """WhiteNoise answers before the CSP and frame middleware: those concern documents, and
    the static files are styles and scripts only (checked here), served as what they are."""
    static = Path(django_settings.BASE_DIR) / "static"
    kinds = {path.suffix for path in static.rglob("*") if path.is_file()}
    assert not kinds & {".html", ".htm", ".svg", ".xml", ".xhtml"}, kinds
    response = production_client().get("/static/css/pamsite.css", secure=True)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert_transport_headers(response, "static file")


def set_cookies(response) -> dict:
    """The cookies a response sets (not those it deletes)."""
    return {
        name: morsel for name, morsel in response.cookies.items() if morsel.value and morsel["max-age"] != 0
    }


def assert_cookie_hardened(name: str, morsel, what: str) -> None:
    assert morsel["secure"], f"{name} from {what} is not Secure"
    assert morsel["httponly"], f"{name} from {what} is not HttpOnly"
    assert str(morsel["samesite"]).lower() in ("lax", "strict"), (
        f"{name} from {what}: SameSite={morsel['samesite']}"
    )


def test_production_cookies_from_a_real_login_are_secure_httponly_and_samesite(production):
    dana = make_user("dana", "requester")
    client = production_client(enforce_csrf_checks=True)
    seen: dict[str, int] = {}

    def check(response, what):
        assert response.status_code in (200, 302), f"{what} answered {response.status_code}"
        for name, morsel in set_cookies(response).items():
            assert_cookie_hardened(name, morsel, what)
            seen[name] = seen.get(name, 0) + 1
        return response

    def token():
        return client.cookies[django_settings.CSRF_COOKIE_NAME].value

    check(client.get(reverse("identity:login"), secure=True), "the login page")
    first_token = token()
    response = check(
        client.post(
            reverse("identity:login"),
            {"username": "dana", "password": PASSWORD, "csrfmiddlewaretoken": first_token},
            secure=True,
        ),
        "the password step",
    )
    assert response["Location"].startswith("/login/verify/")
    assert token() != first_token  # the CSRF secret changes at login too
    code = fresh_code(dana)
    response = check(
        client.post(reverse("identity:verify"), {"code": code, "csrfmiddlewaretoken": token()}, secure=True),
        "the code step",
    )
    assert response["Location"] == reverse("dashboard")
    check(client.get(reverse("dashboard"), secure=True), "the dashboard")
    check(client.post(reverse("identity:logout"), {"csrfmiddlewaretoken": token()}, secure=True), "sign-out")
    assert seen.get(django_settings.SESSION_COOKIE_NAME, 0) >= 3
    assert seen.get(django_settings.CSRF_COOKIE_NAME, 0) >= 2
    assert seen.get("messages", 0) >= 1  # "You have signed out."


def test_the_production_values_are_the_hardened_ones(production_values):
    """What the tests above applied (``make check-deploy`` and tests/test_settings.py run Django's
    deployment checks on the same settings)."""
    assert production_values["SECURE_HSTS_SECONDS"] >= YEAR
    assert production_values["SECURE_HSTS_INCLUDE_SUBDOMAINS"]
    assert production_values["SESSION_COOKIE_SECURE"] and production_values["CSRF_COOKIE_SECURE"]
    assert production_values["SESSION_COOKIE_HTTPONLY"] and production_values["CSRF_COOKIE_HTTPONLY"]
    assert production_values["X_FRAME_OPTIONS"] == "DENY"
    assert "django.middleware.security.SecurityMiddleware" in production_values["MIDDLEWARE"]
    assert "csp.middleware.CSPMiddleware" in production_values["MIDDLEWARE"]


@pytest.mark.parametrize("name", ["SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"])
def test_production_refuses_to_start_with_cookies_sent_over_http(tmp_path, name):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PAMSITE_MODE": "production",
        "PAMSITE_VAR_DIR": str(tmp_path),
        "SECRET_KEY": "production-" + "k9#Q" * 15,
        "ALLOWED_HOSTS": HOST,
        "VAULT_ROLE_ID": "role",
        "VAULT_SECRET_ID": "secret",
        name: "false",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert name in result.stderr and "cannot be false when PAMSITE_MODE=production" in result.stderr
