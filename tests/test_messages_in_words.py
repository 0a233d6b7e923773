"""Messages people read say what happened and what to do in words: no internal function name,
class name or Python repr. The gateway's message when Vault lacks an account's password or
SSH role (once it said "static_set_password"), Vault answers without a reason, a grant's
failed credential release, an account made inactive in the Django admin, an audit chain
break, and every message the credential sources can raise."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import hvac.exceptions
import pytest
from django.urls import reverse

from access import services
from access.models import Grant
from audit.models import AuditEvent
from tests.fixtures.gateway import ended_session
from tests.fixtures.pacs import grant_for
from tests.recordings.test_services import make_grant
from vault import sources
from vault.client import get_client

ROOT = Path(__file__).resolve().parent.parent
SET_UP = 'a pam-admin must set the account up in Vault (Targets page: the account, "Set it up in Vault")'


def _function_names(*folders: str) -> set[str]:
    names = set()
    for folder in folders:
        assert (ROOT / folder).is_dir(), f"{folder}/ is not a folder of the project"
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "_" in node.name.strip("_"):
                    names.add(node.name)
    return names


def _as_root(vault, method: str, path: str) -> None:
    """Change Vault behind pamsite's back (its own policy may not delete these)."""
    vault.server.api(method, path, token=vault.root_token)


def _names_in(text: str, names: set[str]) -> list[str]:
    if not names:
        return []
    return sorted(set(_names_pattern(frozenset(names)).findall(text)))


@functools.cache
def _names_pattern(names: frozenset[str]) -> re.Pattern:
    """One pattern for all the names (a pattern per name and string took minutes): a name is an
    identifier, so where one matches between word boundaries no other can."""
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b")


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_gateway_says_in_words_that_vault_lacks_a_static_password(
    gateway, alice, bob, static_account, bootstrapped_vault
):
    grant_for(alice, bob, static_account)
    mount, path = get_client().config.kv_mount, services.account_ref(static_account).secret_path
    _as_root(bootstrapped_vault, "DELETE", f"{mount}/metadata/{path}")  # lost, say
    result = gateway.ssh(alice, "alice:pacs01-svc", "id")
    said = result.stderr.decode()
    assert result.returncode != 0
    assert "No password in Vault for pacs01-svc" in said and SET_UP in said, said
    assert not _names_in(said, _function_names("vault", "targets", "access", "recordings", "gateway")), said
    assert "cannot log in" in ended_session(alice).end_message.lower()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_gateway_says_in_words_that_vault_lacks_an_ssh_role(
    gateway, alice, bob, ssh_account, bootstrapped_vault
):
    """What a Vault that lost its state answered ("Unknown role"): the user is told what to ask for."""
    grant_for(alice, bob, ssh_account)
    mount, role = get_client().config.ssh_mount, services.account_ref(ssh_account).role_name
    _as_root(bootstrapped_vault, "DELETE", f"{mount}/roles/{role}")
    result = gateway.ssh(alice, "alice:pacs01-admin", "id")
    said = result.stderr.decode()
    assert "No SSH role" in said and SET_UP in said, said
    assert "configure_ssh_role" not in said


@pytest.mark.django_db
def test_a_vault_error_without_a_reason_is_said_in_words(approle_settings):
    client = get_client()
    for error, words in (
        (hvac.exceptions.InternalServerError(), "it had an internal error (HTTP 500): see Vault's log"),
        (hvac.exceptions.BadGateway(), "a proxy in front of it could not reach it (HTTP 502)"),
        (hvac.exceptions.UnexpectedError(), "it gave no reason: see Vault's log"),
    ):
        message = str(client._translate(error, "kv/data/x"))
        assert message == f"Vault rejected the request for kv/data/x: {words}"
        assert type(error).__name__ not in message


@pytest.mark.django_db
def test_a_release_that_fails_unexpectedly_is_not_shown_as_a_python_repr(alice, monkeypatch, caplog):
    grant = make_grant(alice)
    Grant.objects.filter(pk=grant.pk).update(state=Grant.State.CHECKED_IN, cleanup=Grant.Cleanup.PENDING)

    def broken(**kwargs):
        return {}["password"]  # a bug in a credential source: KeyError('password')

    monkeypatch.setattr(sources, "release", broken)
    assert services.grant_cleanup(grant_pk=grant.pk) is False
    grant.refresh_from_db()
    assert grant.cleanup_error == "pamsite failed unexpectedly (its log has the details); it tries again"
    event = AuditEvent.objects.get(action="access.grant.release_failed")
    assert "KeyError" not in event.details["error"] and "'password'" not in event.details["error"]
    assert "KeyError" in caplog.text  # the details are in the log, for whoever fixes it


@pytest.mark.django_db
def test_an_account_made_inactive_in_the_admin_ends_grants_with_a_reason_in_words(client, alice):
    from tests.conftest import make_user, verified_client

    grant = make_grant(alice)
    account = grant.account
    pat = make_user("pat", "pam-admin", is_staff=True)
    verified_client(client, pat)
    url = reverse("admin:access_account_change", args=[account.pk])
    form = {
        "target": str(account.target_id),
        "slug": account.slug,
        "kind": account.kind,
        "username": account.username,
        "tags": "[]",
        "database_sslmode": "",
    }
    assert client.post(url, form).status_code == 302  # is_active unticked
    grant.refresh_from_db()
    assert grant.state == Grant.State.REVOKED
    assert (
        grant.end_reason
        == f"account {account.slug} deactivated: made inactive in the Configuration admin by pat"
    )


@pytest.mark.unit
def test_no_message_of_the_credential_sources_names_a_function():
    """Every string in vault/ that is not a docstring: no function of pamsite named in it (but
    the manage.py commands, which are how an operator runs them)."""
    names = _function_names(
        "vault", "targets", "access", "recordings", "gateway", "web", "identity", "audit"
    ) - {"vault_bootstrap"}
    found = []
    for path in (ROOT / "vault").glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        # A __repr__ is for whoever debugs, not a message.
        docstrings |= {
            id(constant)
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == "__repr__"
            for constant in ast.walk(node)
        }
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) and id(node) not in docstrings else None
            if isinstance(text, str) and " " in text and (named := _names_in(text, names)):
                found.append(f"{path.name}:{node.lineno}: {named}: {node.value[:80]}")
    assert not found, found
