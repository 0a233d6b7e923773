"""Writing the audit trail: the one function that records an event."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import Any

from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.hashing import GENESIS_HASH, canonical_ip, clean_text, event_hash, json_normalise
from audit.models import AuditEvent, ChainHead
from common.net import client_ip

# A details key containing any of these is refused, at any depth: secrets never go
# into the audit trail (which auditors read, export and forward to a SIEM).
SECRET_KEY_MARKERS = ("password", "secret", "token", "otp", "key", "code")

logger = logging.getLogger(__name__)

ACTION_RE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")


class AuditChainError(Exception):
    """The chain cannot be extended: its head row is missing while events exist."""


@transaction.atomic
def audit_record(
    *,
    action: str,
    actor=None,
    actor_username: str | None = None,
    request: HttpRequest | None = None,
    source_ip: str | None = None,
    obj: models.Model | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    details: dict | None = None,
) -> AuditEvent:
    """Append one event to the audit trail, inside the caller's transaction.

    ``action`` is dotted and lower case (``"auth.login.success"``). The actor and the
    source address come from ``request`` (its authenticated user; ``common.net.client_ip``)
    unless given; ``actor_username`` defaults to the actor's username and is kept as
    given for an unknown user (a failed login). ``obj`` fills ``object_type``
    (``"app_label.modelname"``), ``object_id`` and ``object_repr`` where not given.

    Secrets never go into the audit trail: ``details`` with a key that contains
    "password", "secret", "token", "otp", "key" or "code", at any depth, is refused
    with ValueError, as are details that are not JSON and an ill-formed action.

    Events are numbered under a lock on the chain head that is held until the
    caller's transaction ends, so every audited transaction in the site takes its
    turn here: call this after the transaction's other writes and keep slow outside
    calls (Vault, LDAP, e-mail) out of the transaction. A rollback takes the event
    with it, and its sequence number is reused: no gap.
    """
    if not isinstance(action, str) or len(action) > 100 or not ACTION_RE.match(action):
        raise ValueError(
            f'Audit action {action!r} is not a dotted lower-case name like "auth.login.success".'
        )
    details = json_normalise(details or {})
    if not isinstance(details, dict):
        raise ValueError("Audit details must be a dict.")
    _refuse_secret_keys(details, path="details")

    if request is not None:
        user = getattr(request, "user", None)
        if actor is None and user is not None and user.is_authenticated:
            actor = user
        if source_ip is None:
            source_ip = client_ip(request)
    if actor is not None and not actor.is_authenticated:
        actor = None  # AnonymousUser
    if actor_username is None:
        actor_username = actor.get_username() if actor is not None else ""
    if obj is not None:
        # A model may keep the name its audit rows had before it was renamed.
        object_type = object_type or getattr(obj, "audit_object_type", "") or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
        object_repr = object_repr or str(obj)
    try:
        source_ip = canonical_ip(source_ip)
    except ValueError:
        raise ValueError(f"Audit source_ip {source_ip!r} is not an IP address.") from None

    head = _locked_head()
    event = AuditEvent(
        sequence=head.last_sequence + 1,
        created_at=_next_time(head),
        actor=actor,
        # Truncated here, not by the database: SQLite would keep the excess and
        # PostgreSQL refuse it, and the hash must match what is stored.
        actor_username=clean_text(actor_username)[:150],
        source_ip=source_ip,
        action=action,
        object_type=clean_text(object_type)[:100],
        object_id=clean_text(str(object_id))[:100],
        object_repr=clean_text(object_repr)[:200],
        details=details,
        prev_hash=head.last_hash,
    )
    event.hash = event_hash(event.hashed_values())
    event.save()
    head.last_sequence = event.sequence
    head.last_hash = event.hash
    head.save(update_fields=["last_sequence", "last_hash"])
    return event


def _locked_head() -> ChainHead:
    """The chain head, locked until the transaction ends.

    On PostgreSQL the row lock makes concurrent writers wait their turn. SQLite ignores
    FOR UPDATE, but it lets one connection write at a time and will not commit a
    transaction that read a head another writer has since replaced, so there the
    chain cannot fork either: the loser gets "database is locked".

    An event's insert checks its actor's row (a key-share lock on the user). So a service
    that locks a user and then writes an event locks the user FOR NO KEY UPDATE
    (``select_for_update(no_key=True)``): a plain FOR UPDATE would wait for another writer
    that holds this head and is checking the same user, while that writer waits for the head.
    """
    try:
        return ChainHead.objects.select_for_update().get(pk=1)
    except ChainHead.DoesNotExist:
        pass
    # The migration creates the head; it is missing only after a flush of the whole
    # database (tests) or if someone deleted it. Create it (a concurrent creator makes
    # this insert wait, then do nothing), lock it, and refuse to restart a chain that
    # already has events.
    ChainHead.objects.bulk_create(
        [ChainHead(pk=1, last_sequence=0, last_hash=GENESIS_HASH)], ignore_conflicts=True
    )
    head = ChainHead.objects.select_for_update().get(pk=1)
    if head.last_sequence == 0 and AuditEvent.objects.exists():
        raise AuditChainError(
            "The audit chain head is missing although events exist; run `manage.py verify_audit`."
        )
    return head


def _next_time(head: ChainHead) -> dt.datetime:
    """Now, but strictly after the last event's time: times increase along the chain.

    Taken under the lock, the clock already follows sequence order on one machine;
    this makes it hold across machines whose clocks disagree, so that a time range
    is a sequence range (the auditor's page relies on it) and verification can
    check it. A server whose clock runs ahead makes the others' events carry its
    time until their clocks catch up: that is logged.
    """
    now = timezone.now()
    if not head.last_sequence:
        return now
    last = AuditEvent.objects.filter(sequence=head.last_sequence).values_list("created_at", flat=True).first()
    if last is None or now > last:
        return now
    if last - now > dt.timedelta(seconds=1):
        logger.warning(
            "Audit event time held at the previous event's: this clock is %.3f s behind it.",
            (last - now).total_seconds(),
        )
    return last + dt.timedelta(microseconds=1)


def _refuse_secret_keys(value: Any, *, path: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            lowered = key.lower()
            marker = next((m for m in SECRET_KEY_MARKERS if m in lowered), None)
            if marker:
                raise ValueError(
                    f"Audit {path} key {key!r} looks like a secret (contains {marker!r}); "
                    "secrets never go into the audit trail."
                )
            _refuse_secret_keys(item, path=f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_secret_keys(item, path=f"{path}[{index}]")
