"""What the bad-input tests share: hypothesis settings, strategies of hostile values, and the
checks every answer must pass (no 500, a clear error shown, no secret sent back)."""

from __future__ import annotations

import contextlib
import html

from django.conf import settings as django_settings
from django.contrib.messages import get_messages
from django.db import transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Reproducible in CI (derandomize: the same examples every run, no example database) and
# quick enough that the whole folder runs in about a minute on SQLite. Django's fixtures
# are function-scoped on purpose: each example runs in a savepoint that is rolled back.
BADINPUT = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)
FEW = settings(BADINPUT, max_examples=12)

# Unicode without lone surrogates (a browser cannot send those: they are not UTF-8).
CHARS = st.characters(exclude_categories=("Cs",))
CONTROLS = st.sampled_from(
    [
        "\x00",
        "\x01",
        "\x07",
        "\x08",
        "\t",
        "\n",
        "\r",
        "\x1b",
        "\x1b[31m",
        "\x7f",
        "\x85",
        "\u2028",
        "\u202e",
        "\ufeff",
        "\ufffd",
    ]
)
NASTY = st.sampled_from(
    [
        "",
        " ",
        "   \t ",
        "\x00",
        "a\x00b",
        "<script>alert(1)</script>",
        "\"'><img src=x onerror=alert(1)>",
        "'; DROP TABLE identity_user; --",
        "%s%n%x{0}{}",
        "../../../../etc/passwd",
        "\u202egnp.exe",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🙂 ﷽",  # noqa: RUF001  (look-alikes on purpose)
        "null",
        "None",
        "[]",
        "{}",
        "\\",
        "*",
        "(",
        "a" * 65,
        "é" * 300,
    ]
)
NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "0",
            "-0",
            "-1",
            "1e309",
            "-1e309",
            "NaN",
            "inf",
            "1.5",
            "0x10",
            "1_000",
            "١٢٣",
            " 7 ",
            "+5",
            "99999999999999999999999",
            str(2**63),
            str(2**64),
            "1e3",
            "5.0",
        ]
    ),
)
TEXT = st.text(CHARS, max_size=40)
WITH_CONTROLS = st.tuples(TEXT, CONTROLS, TEXT).map("".join)
# 10 kB to 300 kB: more than any field's limit, well within what a form post may carry.
HUGE = st.builds(
    lambda piece, count: piece * count, st.text(CHARS, min_size=1, max_size=3), st.integers(3_000, 100_000)
)


def hostile(*good: str) -> st.SearchStrategy[str]:
    """Any one hostile value, or (sometimes) one of the good ones so the success path runs too."""
    options = [TEXT, WITH_CONTROLS, NASTY, NUMBERS, HUGE]
    if good:
        options.append(st.sampled_from(good))
    return st.one_of(*options)


def form_data(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict]:
    """A POST body: each field's value, or the field missing, or sent twice with two values."""

    def one(strategy):
        return st.one_of(
            strategy,
            st.just(None),  # left out of the post
            st.lists(strategy, min_size=2, max_size=2),  # repeated key
        )

    return st.fixed_dictionaries({name: one(s) for name, s in fields.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not None}
    )


@contextlib.contextmanager
def rolled_back():
    """Run one example in a savepoint that is rolled back: examples never see each other's rows
    (lockout counters, created requests, the audit chain) and the next one starts clean."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def secrets_of_the_site() -> list[str]:
    """Values that must never appear in any page."""
    values = [django_settings.SECRET_KEY]
    for name in ("VAULT_TOKEN", "VAULT_SECRET_ID", "LDAP_BIND_PASSWORD"):
        value = getattr(django_settings, name, "")
        if isinstance(value, str) and len(value) >= 8:
            values.append(value)
    return values


def body_of(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", errors="replace")
    return response.content.decode("utf-8", errors="replace")


def messages_of(response) -> list:
    """The messages the view queued for the next page (a redirect's explanation)."""
    return list(get_messages(response.wsgi_request))


FORM_KEYS = (
    "form", "ssh_key_form", "reset_form", "codes_form", "decision_form",
    "password_form", "roles_form", "deactivate_form", "reactivate_form",
)  # fmt: skip


def bound_forms(response) -> list:
    if response.context is None:
        return []
    forms = []
    for key in FORM_KEYS:
        try:
            form = response.context[key]
        except KeyError:
            continue
        if getattr(form, "is_bound", False) and form not in forms:
            forms.append(form)
    return forms


def assert_clear_answer(
    response, *, allowed=(200, 302, 400), sent_secrets=(), need_reason=True, redirect_message=True
) -> str:
    """The answer to a bad post or query: never a 500, a clear reason, nothing secret in it.

    A page with a bound form that failed shows every one of the form's errors; a redirect
    carries a message saying what happened (success or why not).
    """
    assert response.status_code != 500
    assert response.status_code in allowed, f"unexpected status {response.status_code}"
    body = body_of(response)
    for secret in [*secrets_of_the_site(), *sent_secrets]:
        if secret:
            assert secret not in body, "a secret was sent back in the response"
    assert "Traceback (most recent call last)" not in body
    if not need_reason:
        return body
    if response.status_code in (200, 400):
        for form in bound_forms(response):
            if form.errors:
                for errors in form.errors.values():
                    for error in errors:
                        assert error.strip(), "an empty error message"
                        assert html.escape(error) in body or error in body, f"error not shown: {error!r}"
    if response.status_code == 302 and redirect_message:
        queued = messages_of(response)
        assert queued, f"a redirect to {response.url} that says nothing"
        assert all(str(m).strip() for m in queued), "an empty message"
    return body
