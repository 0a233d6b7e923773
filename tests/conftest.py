"""Shared fixtures: personas, MFA-verified clients, and the rule that a skip fails the run."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

pytest_plugins = [
    # Logs the run at DEBUG and fails it when a log file holds a secret the suite created.
    "tests.secrets_registry",
    "tests.fixtures.openbao",
    "tests.fixtures.sshd",
    "tests.fixtures.pacs",
    "tests.fixtures.pgtarget",
    "tests.fixtures.gateway",
    "tests.fixtures.gateway_process",
    "tests.fixtures.slapd",
    "tests.fixtures.samba",
    "tests.fixtures.directory",
]

# Django's guard against ORM calls on an event loop stays on for the run, and for every
# process the tests start (the gateway's loop must not make one): an outer shell's setting
# would switch it off everywhere. Only browser tests lift it, for themselves (below).
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"
os.environ.pop(ASYNC_UNSAFE, None)

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's Chromium (installed by `make test`), headless, with no calls home."""
    executable = next((p for p in CHROMIUM_CANDIDATES if Path(p).exists()), None)
    if executable is None:
        pytest.fail("Chromium is not installed: run `make test`, which installs it (apt package chromium).")
    return {
        **browser_type_launch_args,
        "executable_path": executable,
        "headless": True,
        "args": [
            "--no-sandbox",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ],
    }


class _PlaywrightLoop:
    """Playwright's event loop while its sync API is started (None before and after).

    The sync API runs its loop in the main thread from the first browser test to the end of
    the session, so Django sees a running loop in every test after that one and its guard
    refuses their (plain synchronous) ORM calls. Browser tests lift the guard; every other
    test runs with that loop hidden, the guard on, as before any browser test ran.
    """

    loop: asyncio.AbstractEventLoop | None = None


def _show_playwright_loop() -> None:
    """Make Playwright's loop the thread's running loop again: closing its browser and
    stopping it (at the end of the session, maybe in another test's teardown) run it."""
    if _PlaywrightLoop.loop is not None:
        asyncio._set_running_loop(_PlaywrightLoop.loop)


@pytest.fixture(scope="session")
def playwright(playwright):
    """pytest-playwright's, with its loop recorded (to hide it from the other tests)."""
    _PlaywrightLoop.loop = asyncio._get_running_loop()
    yield playwright
    _show_playwright_loop()
    _PlaywrightLoop.loop = None


@pytest.fixture(scope="session")
def browser(browser):
    """pytest-playwright's; Playwright's loop is shown again before it is closed."""
    yield browser
    _show_playwright_loop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Browser tests run (setup to teardown) with Django's async-safety guard lifted; the
    others with Playwright's loop, if an earlier browser test started it, hidden."""
    browser = item.get_closest_marker("browser") is not None
    hidden = _PlaywrightLoop.loop is not None and not browser
    if browser:
        os.environ[ASYNC_UNSAFE] = "true"
    if hidden:
        # Low-level asyncio API (for event loop implementations): the loop stays as it was,
        # only this thread stops presenting it as running until the test is over.
        asyncio._set_running_loop(None)
    try:
        return (yield)
    finally:
        if browser:
            os.environ.pop(ASYNC_UNSAFE, None)
        if hidden:
            _show_playwright_loop()


def _uses_samba(item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    if names & {"samba", "ad_tree"}:
        return True
    callspec = getattr(item, "callspec", None)
    return "directory" in names and callspec is not None and callspec.params.get("directory") == "samba"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # Samba's AD DC listens on the fixed ports 389 and 636: one per machine, so under
    # pytest-xdist (--dist loadgroup) every test that uses it runs in the same worker.
    for item in items:
        if _uses_samba(item):
            item.add_marker(pytest.mark.xdist_group("samba"))
    if getattr(config.option, "loadgroup", False):  # a pytest-xdist worker, --dist loadgroup
        _name_groups_in_node_ids(items)


def _name_groups_in_node_ids(items) -> None:
    """What pytest-xdist's loadgroup does, for pytest 9.2: it tells the controller an item's
    group with a ``@group`` suffix on its node id, set through ``item._nodeid``, which pytest
    9.2 no longer reads (node ids are structured there); without this, groups are ignored."""
    from _pytest.nodeid import NodeId

    for item in items:
        names = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default"))
            for m in item.iter_markers("xdist_group")
        }
        if names and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")


PASSWORD = "correct horse battery staple 7"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Personas are made with a password; the production hasher would take most of the run."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(username: str, *roles: str, password: str = PASSWORD, totp: bool = True, **fields):
    """A user with the given roles and, unless totp=False, a confirmed TOTP device."""
    from identity.models import User
    from tests.secrets_registry import remember_secret

    remember_secret(password, "the personas' password" if password == PASSWORD else "a test user's password")
    user = User.objects.create_user(username=username, password=password, **fields)
    for role in roles:
        # get_or_create: a transactional test's flush also empties the groups the migration made.
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    if totp:
        TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)
    return user


def verified_client(client, user):
    """Log the client in as the user with both factors done (password and TOTP)."""
    client.force_login(user)
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


@pytest.fixture
def alice(db):
    """A requester: a PACS administrator."""
    return make_user("alice", "requester", email="alice@hospital.example")


@pytest.fixture
def bob(db):
    """An approver: helpdesk."""
    return make_user("bob", "approver", email="bob@hospital.example")


@pytest.fixture
def carol(db):
    """An auditor."""
    return make_user("carol", "auditor", email="carol@hospital.example")


@pytest.fixture
def pat(db):
    """A pam-admin."""
    return make_user("pat", "pam-admin", email="pat@hospital.example")


@pytest.fixture
def mallory(db):
    """An outsider: an account with no role at all."""
    return make_user("mallory", email="mallory@elsewhere.example")


_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    # A skipped test is a test that did not run: the suite must not pass with one.
    if _skipped and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped; a skip counts as a failure here.", red=True
        )


def _append_only_sql():
    import importlib

    return importlib.import_module("audit.migrations.0003_append_only_triggers").STATEMENTS["sqlite"]


@pytest.fixture(autouse=True)
def _audit_triggers_survive_sqlite_flush(request):
    """Keep the audit table's append-only triggers in place on SQLite test databases.

    Django empties the tables after a transactional test (live server, threads) with
    DELETE on SQLite, which the triggers refuse: they are dropped just before that
    flush and installed again at the start of every database test.
    """
    from django.db import connection

    marker = request.node.get_closest_marker("django_db")
    names = set(request.fixturenames)
    transactional = bool(marker and marker.kwargs.get("transaction")) or bool(
        names & {"transactional_db", "live_server", "django_db_reset_sequences"}
    )
    if connection.vendor != "sqlite" or not (marker or transactional or "db" in names):
        yield
        return
    request.getfixturevalue("transactional_db" if transactional else "db")
    install, remove = _append_only_sql()
    with connection.cursor() as cursor:
        for sql in install:
            cursor.execute(sql)
    yield
    if transactional:
        with connection.cursor() as cursor:
            for sql in remove:
                cursor.execute(sql)


@pytest.fixture(scope="session")
def live_server(live_server, django_db_setup, django_db_blocker):
    """pytest-django's live server, stopped before the test database is dropped.

    The server's request threads may still hold database connections (a browser's
    keep-alive socket); on PostgreSQL they would stop the test database from being
    dropped, so they are ended first.
    """
    yield live_server
    live_server.stop()
    from django.db import connection

    if connection.vendor == "postgresql":
        import time

        with django_db_blocker.unblock():
            with connection.cursor() as cursor:
                others = (
                    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                cursor.execute(f"SELECT pg_terminate_backend(pid) {others}")
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    cursor.execute(f"SELECT count(*) {others}")
                    if cursor.fetchone()[0] == 0:
                        break
                    time.sleep(0.05)
            connection.close()
