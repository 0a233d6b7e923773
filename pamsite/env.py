"""Strict readers for configuration from environment variables.

Every setting of pamsite comes from the environment, with a default that works on a
fresh clone. A value that cannot be parsed stops start-up with ImproperlyConfigured
naming the variable, so a typo in a deployment never silently falls back to a default.
A secret may also be given as ``NAME_FILE``: the path of a file holding it (Docker and
systemd credentials, Kubernetes secrets).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "", *, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(name, default)


def env_secret(name: str, default: str = "", *, environ: Mapping[str, str] | None = None) -> str:
    """Read NAME, or the contents of the file named by NAME_FILE (never both)."""
    environ = os.environ if environ is None else environ
    file_var = f"{name}_FILE"
    if name in environ and file_var in environ:
        raise ImproperlyConfigured(f"Set either {name} or {file_var}, not both.")
    if file_var in environ:
        path = Path(environ[file_var])
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{file_var}: cannot read {path}: {exc.strerror or exc}") from None
    return environ.get(name, default)


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if name not in environ:
        return default
    value = environ[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false (1/0, yes/no, on/off), not {environ[name]!r}.")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    auto: Callable[[], int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """A whole number; with ``auto``, the value "auto" means ``auto()`` (kept within the bounds)."""
    environ = os.environ if environ is None else environ
    if name not in environ:
        return default
    raw = environ[name].strip()
    if auto is not None and raw.lower() == "auto":
        value = auto()
        if maximum is not None:
            value = min(value, maximum)
        return max(value, minimum) if minimum is not None else value
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {raw!r}.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}.")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, not {value}.")
    return value


def env_list(name: str, default: list[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    """A comma-separated list; blanks are dropped."""
    environ = os.environ if environ is None else environ
    if name not in environ:
        return list(default)
    return [item.strip() for item in environ[name].split(",") if item.strip()]


def env_choice(
    name: str, default: str, choices: tuple[str, ...], *, environ: Mapping[str, str] | None = None
) -> str:
    environ = os.environ if environ is None else environ
    value = environ.get(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}.")
    return value
