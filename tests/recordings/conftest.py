"""The gateway tests' helpers. The fixtures (``pacs_target``, ``ssh_account``, ``static_account``,
``alice_key``) are plugins of the whole suite, in tests/fixtures/pacs.py; the helpers live in
the fixture modules and are importable from here too."""

from tests.fixtures.gateway import ended_session, live_session
from tests.fixtures.pacs import grant_for, policy_for

__all__ = ["ended_session", "grant_for", "live_session", "policy_for"]
