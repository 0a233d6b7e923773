"""The web process runs at most WEB_MAX_CONCURRENT_REQUESTS requests at once (pamsite.asgi)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pamsite.asgi import ConcurrencyLimit

pytestmark = pytest.mark.unit


def run(coroutine_function):
    """asyncio.run on a thread of its own: the suite's browser tests keep an event loop in this one."""
    result = {}

    def target():
        result["value"] = asyncio.run(coroutine_function())

    worker = threading.Thread(target=target)
    worker.start()
    worker.join(timeout=30)
    return result["value"]


class SlowApp:
    """An ASGI app that answers after a short pause and counts the requests inside it."""

    def __init__(self):
        self.inside = 0
        self.most = 0
        self.order: list[int] = []

    async def __call__(self, scope, receive, send):
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            await asyncio.sleep(0.01)
            self.order.append(scope.get("n", -1))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            self.inside -= 1


async def _request(app, n: int, kind: str = "http") -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": kind, "n": n}, receive, send)
    return sent


def test_at_most_the_limit_of_requests_run_at_once_and_every_one_is_answered_in_turn():
    inner = SlowApp()
    app = ConcurrencyLimit(inner, 3)

    async def burst():
        return await asyncio.gather(*(_request(app, n) for n in range(20)))

    answers = run(burst)
    assert inner.most == 3
    assert all(a[0]["status"] == 200 and a[1]["body"] == b"ok" for a in answers)
    assert sorted(inner.order) == list(range(20))
    assert inner.order[:3] == [0, 1, 2]  # first come, first served


def test_a_failing_request_gives_its_place_back():
    class Failing:
        async def __call__(self, scope, receive, send):
            raise RuntimeError("view failed")

    app = ConcurrencyLimit(Failing(), 1)

    async def twice():
        failures = 0
        for _ in range(2):
            try:
                await _request(app, 0)
            except RuntimeError:
                failures += 1
        return failures, app._slots._value

    # The second request got in (the first one's place was given back) and failed in turn.
    assert run(twice) == (2, 1)


def test_non_http_scopes_are_not_queued():
    inner = SlowApp()
    app = ConcurrencyLimit(inner, 1)

    async def websocket_connections():
        await asyncio.gather(*(_request(app, n, kind="websocket") for n in range(5)))

    run(websocket_connections)
    assert inner.most == 5


def test_the_site_is_served_through_the_limit(settings):
    from pamsite import asgi

    assert isinstance(asgi.application, ConcurrencyLimit)
    assert asgi.application.limit == settings.WEB_MAX_CONCURRENT_REQUESTS
