"""Configuration from the environment: defaults, _FILE secrets, clear errors, production mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from pamsite.env import env_bool, env_choice, env_int, env_list, env_secret, usable_cpus

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.unit
def test_env_int_names_the_variable_on_bad_input():
    with pytest.raises(ImproperlyConfigured, match="SESSION_IDLE_TIMEOUT_MINUTES must be a whole number"):
        env_int("SESSION_IDLE_TIMEOUT_MINUTES", 15, environ={"SESSION_IDLE_TIMEOUT_MINUTES": "fifteen"})
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("X", 1, minimum=1, environ={"X": "0"})
    assert env_int("X", 7, environ={}) == 7


@pytest.mark.unit
def test_auto_is_a_number_only_where_the_setting_allows_it():
    assert env_int("W", 1, minimum=1, maximum=64, auto=lambda: 6, environ={"W": " Auto "}) == 6
    assert env_int("W", 1, minimum=1, maximum=64, auto=lambda: 200, environ={"W": "auto"}) == 64
    assert env_int("W", 1, minimum=1, maximum=64, auto=lambda: 3, environ={"W": "2"}) == 2
    with pytest.raises(ImproperlyConfigured, match="W must be a whole number"):
        env_int("W", 1, environ={"W": "auto"})
    assert usable_cpus() == len(os.sched_getaffinity(0)) >= 1


@pytest.mark.unit
def test_env_bool_accepts_the_usual_spellings_only():
    assert env_bool("X", False, environ={"X": "yes"}) is True
    assert env_bool("X", True, environ={"X": "0"}) is False
    with pytest.raises(ImproperlyConfigured, match="X must be true or false"):
        env_bool("X", False, environ={"X": "maybe"})


@pytest.mark.unit
def test_env_list_and_choice():
    assert env_list("H", ["a"], environ={"H": "x.example, y.example,"}) == ["x.example", "y.example"]
    assert env_list("H", ["a"], environ={}) == ["a"]
    with pytest.raises(ImproperlyConfigured, match="MODE must be one of dev, production"):
        env_choice("MODE", "dev", ("dev", "production"), environ={"MODE": "staging"})


@pytest.mark.unit
def test_secret_from_file(tmp_path):
    secret_file = tmp_path / "secret_id"
    secret_file.write_text("s3cr3t-value\n")
    assert env_secret("VAULT_SECRET_ID", environ={"VAULT_SECRET_ID_FILE": str(secret_file)}) == "s3cr3t-value"
    with pytest.raises(ImproperlyConfigured, match="VAULT_SECRET_ID_FILE: cannot read"):
        env_secret("VAULT_SECRET_ID", environ={"VAULT_SECRET_ID_FILE": str(tmp_path / "missing")})
    with pytest.raises(ImproperlyConfigured, match="either VAULT_SECRET_ID or VAULT_SECRET_ID_FILE"):
        env_secret(
            "VAULT_SECRET_ID", environ={"VAULT_SECRET_ID": "a", "VAULT_SECRET_ID_FILE": str(secret_file)}
        )


def _check(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "PAMSITE_MODE", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fresh_clone_defaults_pass_the_checks(tmp_path):
    result = _check({"PAMSITE_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_bad_value_stops_startup_naming_the_variable(tmp_path):
    result = _check({"PAMSITE_VAR_DIR": str(tmp_path), "SESSION_IDLE_TIMEOUT_MINUTES": "soon"})
    assert result.returncode != 0
    assert "SESSION_IDLE_TIMEOUT_MINUTES must be a whole number" in result.stderr


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = _check(
        {"PAMSITE_VAR_DIR": str(tmp_path), "PAMSITE_MODE": "production", "ALLOWED_HOSTS": "pam.example"}
    )
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_production_refuses_to_start_without_vault_credentials(tmp_path):
    result = _check(
        {
            "PAMSITE_VAR_DIR": str(tmp_path),
            "PAMSITE_MODE": "production",
            "ALLOWED_HOSTS": "pam.example",
            "SECRET_KEY": "k" * 60,
        }
    )
    assert result.returncode != 0
    assert "VAULT_ROLE_ID" in result.stderr


def test_production_deploy_check_is_clean(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("p" * 30 + "Q9#z" * 10)
    env = {
        "PAMSITE_VAR_DIR": str(tmp_path),
        "PAMSITE_MODE": "production",
        "ALLOWED_HOSTS": "pam.example",
        "SECRET_KEY_FILE": str(key_file),
        "VAULT_ROLE_ID": "role",
        "VAULT_SECRET_ID": "secret",
    }
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
def test_database_url_switches_to_postgresql(settings):
    import dj_database_url

    parsed = dj_database_url.parse("postgres://pamsite@db.example:5432/pamsite")
    assert parsed["ENGINE"] == "django.db.backends.postgresql"
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
