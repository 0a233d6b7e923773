"""The audit trail: append-only, hash-chained events and the chain's head."""

from __future__ import annotations

import json

from django.conf import settings
from django.db import models

from audit.hashing import GENESIS_HASH, HASHED_FIELDS, event_hash


class AppendOnlyError(Exception):
    """Raised on an attempt to change or delete an audit event through the ORM."""


class AuditEventQuerySet(models.QuerySet):
    """Refuses bulk updates and deletes: the database triggers would too, but later and less clearly."""

    def update(self, **kwargs):
        raise AppendOnlyError("Audit events are append-only: they cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Audit events are append-only: they cannot be deleted.")

    delete.queryset_only = True


class AuditEvent(models.Model):
    """One security-relevant event: who did what to which object, when and from where.

    Events are written only by ``audit.services.audit_record``, which numbers them
    without gaps under a lock and chains them: ``hash`` is the SHA-256 of the event's
    canonical form (``audit.hashing``), which includes ``prev_hash``, the hash of the
    event before. Rows are never updated or deleted: ``save()`` and ``delete()``
    refuse, and database triggers refuse UPDATE and DELETE on the table.
    ``audit.chain.verify_chain`` detects any edited, inserted or deleted row.
    """

    sequence = models.BigIntegerField(
        primary_key=True, help_text="1, 2, 3… without gaps, in order of recording."
    )
    created_at = models.DateTimeField(db_index=True)
    # Users are deactivated, never deleted, so the actor of an event always exists.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Kept as typed even when no such user exists (a failed login), and after a rename.
    actor_username = models.CharField(max_length=150, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=100, help_text='Dotted, e.g. "auth.login.success".')
    object_type = models.CharField(max_length=100, blank=True, help_text='"app_label.modelname"')
    object_id = models.CharField(max_length=100, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-sequence"]
        get_latest_by = "sequence"
        indexes = [
            # Each filter of the auditor's page, newest first by sequence (keyset pagination).
            models.Index(fields=["actor_username", "sequence"], name="audit_event_actor_seq"),
            # Pattern operators on PostgreSQL so that an action prefix ("auth.") can use
            # the index whatever the database's collation; other databases ignore them.
            models.Index(
                fields=["action", "sequence"],
                name="audit_event_action_seq",
                opclasses=["varchar_pattern_ops", "int8_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action} by {self.actor_username or 'system'}"

    def save(self, **kwargs):
        """Insert a new, already chained event; refuse to change an existing one."""
        if not self._state.adding or kwargs.get("update_fields") or kwargs.get("force_update"):
            raise AppendOnlyError("Audit events are append-only: an existing event cannot be changed.")
        if not self.hash or self.hash != event_hash(self.hashed_values()):
            raise AppendOnlyError(
                "Audit events are recorded with audit.services.audit_record(), which chains them."
            )
        kwargs["force_insert"] = True
        super().save(**kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit events are append-only: they cannot be deleted.")

    def hashed_values(self) -> dict:
        """The fields the hash covers, by name."""
        return {name: getattr(self, name) for name in HASHED_FIELDS}

    @property
    def details_json(self) -> str:
        """The details as compact JSON with sorted keys, for display."""
        return json.dumps(self.details, sort_keys=True, ensure_ascii=False)


class ChainHead(models.Model):
    """The one row that records the last event of the chain: its sequence and hash.

    ``audit_record`` locks this row (SELECT … FOR UPDATE) to number events, so
    concurrent writers take turns. Verification compares it with the last event,
    which catches deletion of the newest events (the chain itself cannot).
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_sequence = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="audit_chainhead_single_row")]

    def __str__(self) -> str:
        return f"audit chain head at {self.last_sequence}"


class ForwardCursor(models.Model):
    """How far the audit trail has been forwarded to one destination of ``AUDIT_FORWARD``.

    ``last_sequence`` is the last event the destination accepted (or, in the DICOM
    format, passed over because DICOM has no message for it): the forwarder sends the
    events after it, in order, and moves it only once the receiver has taken them, so
    a receiver that is down loses nothing and gets no event twice from one forwarder.
    ``lease_owner``/``lease_until`` let one forwarder at a time work on a destination
    (the loop process and the Celery task may both run); a lease left by a killed
    process expires. Rows are keyed by the destination's name and never deleted:
    a destination added again resumes where it stopped.
    """

    name = models.CharField(max_length=100, unique=True)
    last_sequence = models.BigIntegerField(default=0)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"audit forwarding to {self.name} at {self.last_sequence}"

    @property
    def failing(self) -> bool:
        """The last attempt failed: an error newer than the last success."""
        if self.last_error_at is None:
            return False
        return self.last_success_at is None or self.last_error_at > self.last_success_at
