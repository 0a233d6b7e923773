"""An audit event as data for others: the export row, JSON, CEF, and how serious it is.

The export row (:func:`event_document`) carries every field the event's hash covers,
under the names an auditor reads, so that a row exported or forwarded can be
checked against its hash without the database (``time`` is the canonical
``created_at``; see ``audit.hashing``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from typing import Any

from audit.hashing import canonical_time
from audit.models import AuditEvent

# The export's columns, in order.
EXPORT_FIELDS = (
    "sequence",
    "time",
    "actor",
    "actor_id",
    "source_ip",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "details",
    "prev_hash",
    "hash",
)

# Syslog severities (RFC 5424 section 6.2.1) used here.
ALERT, WARNING, NOTICE, INFORMATIONAL = 1, 4, 5, 6

# Actions that are security alerts though not named "security.*".
ALERT_ACTIONS = {"auth.lockout": WARNING, "access.break_glass.activated": WARNING}

# Readable names for the events a SIEM analyst meets most; others are derived from the action.
NAMES = {
    "auth.login.success": "User logged in",
    "auth.login.failure": "User login failed",
    "auth.login.password_ok": "Password accepted, code pending",
    "auth.login.key_ok": "SSH key accepted, code pending",
    "auth.mfa.failure": "Wrong one-time code",
    "auth.lockout": "Account or address locked out",
    "auth.logout": "User logged out",
    "access.break_glass.activated": "Emergency access activated",
    "access.secret.revealed": "Secret shown",
    "security.alert.host_key_mismatch": "Target host key mismatch",
    "security.alert.transfer_untracked": "File transfer could not be followed",
    "security.alert.access_without_grant": "Repeated connections without a grant",
    "security.alert.break_glass_without_vault": "Emergency access without Vault",
    "security.alert.connection_limit": "Gateway connection limit reached",
    "audit.viewed": "Audit trail viewed",
    "audit.exported": "Audit trail exported",
    "audit.verified": "Audit trail verified",
}

# CEF severity (0-10) per syslog severity.
CEF_SEVERITY = {ALERT: 10, WARNING: 7, NOTICE: 5, INFORMATIONAL: 3}
CEF_VENDOR = CEF_PRODUCT = "pamsite"
CEF_VERSION = "1.0"


def is_failure(action: str) -> bool:
    """A failed or refused attempt: ``auth.login.failure``, ``gateway.session.refused``, ``…_failed``."""
    last = action.rsplit(".", 1)[-1]
    return "fail" in last or "refused" in last


def is_security_alert(action: str) -> bool:
    return action.startswith("security.") or action in ALERT_ACTIONS


def syslog_severity(action: str) -> int:
    """Alert for ``security.*``, warning for lockouts and break-glass, notice for failures, else info."""
    if action.startswith("security."):
        return ALERT
    if action in ALERT_ACTIONS:
        return ALERT_ACTIONS[action]
    if is_failure(action):
        return NOTICE
    return INFORMATIONAL


def readable_name(action: str) -> str:
    """A short human name for the action: "User login failed" for ``auth.login.failure``."""
    if action in NAMES:
        return NAMES[action]
    words = action.replace("_", " ").replace("-", " ").split(".")
    return " ".join(words).capitalize()


def event_document(event: AuditEvent) -> dict[str, Any]:
    """The event as plain data, in :data:`EXPORT_FIELDS` order (``time``: ISO 8601 UTC, microseconds)."""
    return {
        "sequence": event.sequence,
        "time": canonical_time(event.created_at),
        "actor": event.actor_username,
        "actor_id": event.actor_id,
        "source_ip": event.source_ip,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def details_json(details: Any) -> str:
    """Details as compact JSON with sorted keys, non-ASCII kept."""
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def json_line(event: AuditEvent, *, ascii_only: bool = False) -> str:
    """The event as one line of JSON (no newline inside: control characters are escaped)."""
    return json.dumps(event_document(event), separators=(",", ":"), ensure_ascii=ascii_only)


# --- CEF (ArcSight Common Event Format, version 0) ------------------------------------


def cef_header_escape(value: str) -> str:
    """Header fields: backslash and pipe are escaped; a line break would end the event."""
    value = value.replace("\\", "\\\\").replace("|", "\\|")
    return value.replace("\r", " ").replace("\n", " ")


def cef_extension_escape(value: str) -> str:
    """Extension values: backslash, equals sign and line breaks are escaped."""
    return (
        value.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def cef_message(event: AuditEvent) -> str:
    """``CEF:0|pamsite|pamsite|1.0|<action>|<name>|<severity>|rt=… suser=… src=… act=… …``."""
    action = event.action
    header = [
        "CEF:0",
        CEF_VENDOR,
        CEF_PRODUCT,
        CEF_VERSION,
        action,
        readable_name(action),
        str(CEF_SEVERITY[syslog_severity(action)]),
    ]
    created = event.created_at.astimezone(dt.UTC)
    extension: list[tuple[str, str]] = [
        ("rt", str(int(created.timestamp() * 1000))),
        ("externalId", str(event.sequence)),
        ("act", action),
        ("outcome", "failure" if is_failure(action) else "success"),
    ]
    if event.actor_username:
        extension.append(("suser", event.actor_username))
    if event.actor_id is not None:
        extension.append(("suid", str(event.actor_id)))
    if event.source_ip:
        if ipaddress.ip_address(event.source_ip).version == 4:
            extension.append(("src", event.source_ip))
        else:
            extension += [("c6a2Label", "Source IPv6 Address"), ("c6a2", event.source_ip)]
    if event.object_type:
        extension += [
            ("cs2Label", "object"),
            ("cs2", f"{event.object_type}:{event.object_id}"),
            ("cs3Label", "objectName"),
            ("cs3", event.object_repr),
        ]
    extension += [
        ("cs1Label", "details"),
        ("cs1", details_json(event.details)),
        ("cs4Label", "hash"),
        ("cs4", event.hash),
        ("cs5Label", "prevHash"),
        ("cs5", event.prev_hash),
    ]
    head = "|".join([header[0], *(cef_header_escape(part) for part in header[1:])])
    return head + "|" + " ".join(f"{key}={cef_extension_escape(value)}" for key, value in extension)
