"""Django's async-safety guard is on in the tests and in the processes they start, as in
production: an ORM call on an event loop (the gateway's) fails there instead of passing here.
Only browser tests, whose Playwright runs an event loop in the test thread, lift it, for
themselves (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os

import pytest
from django.core.exceptions import SynchronousOnlyOperation

from identity.models import User
from tests.fixtures.gateway_process import GatewayProcess

GUARD_OFF = "DJANGO_ALLOW_ASYNC_UNSAFE"


@pytest.mark.django_db
def test_an_orm_call_on_an_event_loop_is_refused():
    assert GUARD_OFF not in os.environ

    async def count_users_on_the_loop():
        return User.objects.count()

    # asyncio.run works here even after a browser test: Playwright's loop is hidden.
    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(count_users_on_the_loop())


def test_the_gateway_process_keeps_the_guard_on_when_this_process_lifted_it(settings, tmp_path, monkeypatch):
    monkeypatch.setenv(GUARD_OFF, "true")  # as during a browser test
    process = GatewayProcess(settings, tmp_path)
    assert GUARD_OFF not in process.env
    assert process.env["PATH"] == os.environ["PATH"]


@pytest.mark.browser
def test_a_browser_test_runs_with_the_guard_lifted():
    """What the Playwright tests need: their own ORM calls run while its loop runs here."""
    assert os.environ.get(GUARD_OFF) == "true"
