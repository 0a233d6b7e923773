"""Applying a pam-admin's changes to a target, an account or a policy, and saying what changed.

One helper for the configuration services (``access.targets``, ``access.services``'
policies): the audit trail records each change as ``{field, from, to}``.
"""

from __future__ import annotations


def _shown(value):
    """A field's value as the audit trail shows it (a group by name)."""
    if hasattr(value, "_meta"):
        return str(value)
    return value


def assign_changes(obj, values: dict, fields: tuple[str, ...]) -> list[dict]:
    """Set ``values`` (those of ``fields`` only) on obj; the changes as ``{field, from, to}``."""
    changes = []
    for name in fields:
        if name not in values:
            continue
        before, after = getattr(obj, name), values[name]
        if before != after:
            changes.append({"field": name, "from": _shown(before), "to": _shown(after)})
            setattr(obj, name, after)
    return changes
