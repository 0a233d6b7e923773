"""Property: the login and code steps never send the browser off-site, whatever ``next`` is.

Hypothesis builds ``next`` values from the pieces open redirects are made of (schemes,
runs of slashes and backslashes, percent-encoded slashes, tabs, user-info with our host in
it, look-alike and Unicode hosts, ports) and from arbitrary text, sends them in the query
string (encoded, and raw as a link would carry them) and in the form, over HTTP and HTTPS,
and follows the whole sign-in: the password page, the password step, the code page, the
code step, and both pages again once signed in; for a newcomer, enrolment and the link
that continues from the backup codes. Every Location, and that link, stays on our host.
(Targeted open-redirect cases are in tests/test_web_hardening.py.)
"""

from __future__ import annotations

import re
from urllib.parse import quote, urljoin, urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice
from hypothesis import given
from hypothesis import strategies as st

from tests.badinput.helpers import BADINPUT, CHARS, FEW, rolled_back
from tests.conftest import PASSWORD, make_user
from tests.totp import totp_code

pytestmark = pytest.mark.django_db

HOST = "pamsite.hospital.example"

SCHEMES = st.sampled_from(
    [
        "",
        "",
        "http:",
        "https:",
        "HTTPS:",
        "javascript:",
        "data:",
        "ftp:",
        "  https:",
        "\x01http:",
        "https\t:",
        "java\tscript:",
        "vbscript:",
        "file:",
        "mailto:",
    ]
)
SLASHES = st.sampled_from(
    [
        "",
        "/",
        "//",
        "///",
        "\\\\",
        "/\\",
        "\\/",
        "%2F%2F",
        "%2f/",
        "/%2F",
        "%5C%5C",
        "/%5C",
        "\t//",
        "/\t/",
        " //",
        "\n//",
        "\\\t\\",
        "//\\",
        "%252F%252F",
        "／／",  # noqa: RUF001  (look-alikes on purpose)
        "\u2044\u2044",
    ]
)
USERINFO = st.sampled_from(["", "", "user@", f"{HOST}@", "user:pass@", f"{HOST}%40", f"{HOST}:443@", "@"])
HOSTS = st.sampled_from(
    [
        "evil.example",
        HOST,
        f"{HOST}.evil.example",
        "127.0.0.1",
        "[::1]",
        "evil.example:443",
        "ẽvil.example",
        "xn--vil-4na.example",
        "evil。example",
        "ｅｖｉｌ.example",  # noqa: RUF001  (look-alikes on purpose)
        "evil.example\\@" + HOST,
        "0x7f.1",
        "",
        "%65vil.example",
    ]
)
PATHS = st.sampled_from(
    [
        "",
        "/",
        "/login/",
        "/access/?x=1",
        "#frag",
        "?next=//evil.example",
        "/..//evil.example",
        "/%2e%2e/",
        ":80",
        ":99999",
    ]
)
BUILT = st.tuples(SCHEMES, SLASHES, USERINFO, HOSTS, PATHS).map("".join)
LOCAL_PAGES = ["/", "/access/", "/audit/?actor=alice", "/sessions/1/", "/access/request/?account=x#y"]
LOCAL = st.sampled_from(LOCAL_PAGES)
NEXT = st.one_of(
    BUILT,
    BUILT,
    LOCAL,
    st.text(CHARS, max_size=60),
    st.tuples(LOCAL, st.text(CHARS, max_size=20)).map("".join),
)


def stays_on_site(location: str, *, scheme: str) -> bool:
    """Whether a browser that follows this Location (or link) stays on our host and scheme."""
    # Browsers read "\" as "/", drop leading spaces and control characters, and tabs and
    # newlines anywhere in a URL.
    cleaned = re.sub(r"[\t\n\r]", "", location.replace("\\", "/")).lstrip("".join(map(chr, range(0x21))))
    target = urlsplit(urljoin(f"{scheme}://{HOST}/login/", cleaned))
    return target.scheme == scheme and target.netloc == HOST


def check(response, *, scheme: str, what: str) -> None:
    assert response.status_code != 500
    if response.status_code in (301, 302, 303, 307, 308):
        location = response["Location"]
        assert stays_on_site(location, scheme=scheme), f"{what} sent the browser to {location!r}"


def as_query(nxt: str, raw: bool) -> str:
    """``?next=…`` as a form would encode it, or raw as a hand-made link carries it."""
    if raw:
        return "?next=" + "".join(c if c not in "&#% " else quote(c) for c in nxt)
    return "?next=" + quote(nxt, safe="")


@pytest.fixture
def dana(db, settings):
    settings.ALLOWED_HOSTS = [HOST]
    return make_user("dana", "requester")


@pytest.fixture
def fred(db, settings):
    """A newcomer: the password step sends him to enrol."""
    settings.ALLOWED_HOSTS = [HOST]
    return make_user("fred", "requester", totp=False)


def test_the_on_site_check_itself():
    for good in ("/", "/access/?x=1", "%2F%2Fevil.example", "?next=//evil.example"):
        assert stays_on_site(good, scheme="https"), good
    for bad in (
        "//evil.example",
        "/\\evil.example",
        "\\\\evil",
        "https://evil.example",
        "\t//evil.example",
        f"http://{HOST}/",
        f"//{HOST}@evil.example",
        "javascript:alert(1)",
    ):
        assert not stays_on_site(bad, scheme="https"), bad


@BADINPUT
@given(nxt=NEXT, raw=st.booleans(), secure=st.booleans(), in_form=st.booleans())
def test_the_sign_in_never_redirects_off_site_for_any_next(dana, nxt, raw, secure, in_form):
    scheme = "https" if secure else "http"
    client = Client(HTTP_HOST=HOST)
    query = as_query(nxt, raw)
    login, verify = reverse("identity:login"), reverse("identity:verify")
    with rolled_back():
        page = client.get(login + query, secure=secure)
        assert page.status_code == 200
        form = {"username": "dana", "password": PASSWORD, **({"next": nxt} if in_form else {})}
        response = client.post(login + query, form, secure=secure)
        assert response.status_code == 302
        check(response, scheme=scheme, what="the password step")
        check(client.get(verify + query, secure=secure), scheme=scheme, what="the code page")
        device = TOTPDevice.objects.get(user=dana)
        code = {"code": totp_code(device.bin_key), **({"next": nxt} if in_form else {})}
        response = client.post(verify + query, code, secure=secure)
        assert response.status_code == 302, "the right code did not sign in"
        check(response, scheme=scheme, what="the code step")
        if nxt in LOCAL_PAGES:
            assert response["Location"] == nxt, "a page of the site given as next is where sign-in goes"
        for view in (login, verify):
            response = client.get(view + query, secure=secure)
            assert response.status_code == 302
            check(response, scheme=scheme, what=f"{view} once signed in")


@FEW
@given(nxt=NEXT, raw=st.booleans(), secure=st.booleans())
def test_enrolment_never_continues_off_site_for_any_next(fred, nxt, raw, secure):
    scheme = "https" if secure else "http"
    client = Client(HTTP_HOST=HOST)
    query = as_query(nxt, raw)
    with rolled_back():
        response = client.post(
            reverse("identity:login") + query, {"username": "fred", "password": PASSWORD}, secure=secure
        )
        check(response, scheme=scheme, what="the password step")
        assert response["Location"].startswith(reverse("identity:enrol"))
        assert client.get(response["Location"], secure=secure).status_code == 200
        device = TOTPDevice.objects.get(user=fred, confirmed=False)
        response = client.post(
            reverse("identity:enrol") + query, {"code": totp_code(device.bin_key), "next": nxt}, secure=secure
        )
        assert response.status_code == 200
        continue_url = response.context["continue_url"]
        assert stays_on_site(continue_url, scheme=scheme), f"enrolment continues to {continue_url!r}"


@BADINPUT
@given(nxt=NEXT, raw=st.booleans())
def test_a_page_that_needs_sign_in_keeps_a_local_next(db, settings, nxt, raw):
    """The redirect to the login page carries the page asked for, never anything else."""
    settings.ALLOWED_HOSTS = [HOST]
    client = Client(HTTP_HOST=HOST)
    path = reverse("access:mine") + as_query(nxt, raw).replace("?next=", "?q=")
    response = client.get(path)
    assert response.status_code == 302
    check(response, scheme="http", what="the sign-in redirect")
    assert response["Location"].startswith(reverse("identity:login") + "?next=%2Faccess%2F")
