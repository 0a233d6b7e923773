"""Walk the URLconf: every pattern, with its full route, its namespaced name, and a concrete URL.

Shared by the tests that must cover every page (tests/test_url_protection.py,
tests/test_authz_matrix.py), so a view added later is found without anyone listing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver

# Values that make a pattern's parameters resolve to something real-looking.
SAMPLES = {"app_label": "identity", "model_name": "user", "object_id": "1", "pk": "1", "content_type_id": "1"}


@dataclass(frozen=True)
class WalkedPattern:
    """One URL pattern of the URLconf, as reached from the root."""

    route: str  # the full route, e.g. "access/grants/<int:pk>/" (regex parts kept as written)
    name: str | None  # "namespace:name" as Django resolves it; None for an unnamed pattern

    @property
    def key(self) -> str:
        """The name, or the route for an unnamed pattern (a redirect, the admin's catch-all)."""
        return self.name or self.route


def walk(patterns=None, prefix: str = "", namespaces: tuple[str, ...] = ()) -> Iterator[WalkedPattern]:
    """Every URLPattern under ``patterns`` (the root URLconf by default), depth first, in order."""
    if patterns is None:
        patterns = get_resolver().url_patterns
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            inner = (*namespaces, entry.namespace) if entry.namespace else namespaces
            yield from walk(entry.url_patterns, route, inner)
        elif isinstance(entry, URLPattern):
            name = ":".join((*namespaces, entry.name)) if entry.name else None
            yield WalkedPattern(route=route, name=name)


def concrete(route: str, values: Mapping[str, str] | None = None) -> str:
    """The route as a path, each parameter replaced by ``values[name]`` (else SAMPLES, else "1")."""
    chosen = {**SAMPLES, **(values or {})}

    def value(match: re.Match) -> str:
        return str(chosen.get(match.group(1), "1"))

    path = route.replace("^", "").replace("$", "").replace("\\Z", "").replace("\\", "")
    # Regex groups first: "(?P<name>...)" also holds the "<name>" a path converter looks like.
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", value, path)
    path = re.sub(r"<(?:\w+:)?(\w+)>", value, path)
    path = re.sub(r"\(\?:[^)]*\)\??", "", path)
    return "/" + path
