"""Forwarding the audit trail to SIEMs and audit repositories (``AUDIT_FORWARD``): in order, nothing lost.

Recording an event never waits for a receiver: ``audit_record`` only writes the
database. A forwarder (``manage.py audit_forward --loop``, or the Celery task
``audit.forward``) reads the events after each destination's cursor
(:class:`audit.models.ForwardCursor`) in sequence order, in batches, sends each batch
as RFC 5424 syslog messages and moves the cursor past it only once the receiver has
taken it. A receiver that is down leaves the cursor where it is: the failure is logged
and kept on the cursor (the System status page shows it with the backlog), and the
forwarder tries again with a back-off; when the receiver is back it catches up from
the cursor. A batch cut short by a failure is sent again whole, so a receiver may
see an event twice only if it failed after taking part of a batch; the ``seq`` in
each message's structured data lets it drop the repeat.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from audit.destinations import Destination
from audit.dicom import dicom_audit_message
from audit.formats import cef_message, json_line, syslog_severity
from audit.hashing import canonical_time
from audit.models import AuditEvent, ChainHead, ForwardCursor
from audit.syslog import SyslogClient, SyslogError, octet_frame, rfc5424_message

logger = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 1.0


@dataclass
class ForwardResult:
    """What one pass did for one destination.

    ``sent`` messages were accepted; ``skipped`` events have no message in the
    destination's format (DICOM) and were passed over; ``cursor`` is where the
    destination's cursor stands now and ``head`` the newest event; ``error`` says
    why the pass stopped early; ``busy`` means another forwarder held the destination.
    """

    destination: str
    sent: int = 0
    skipped: int = 0
    cursor: int = 0
    head: int = 0
    error: str = ""
    busy: bool = False

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def backlog(self) -> int:
        return max(self.head - self.cursor, 0)

    def summary(self) -> str:
        if self.busy:
            return f"{self.destination}: another forwarder is at work on it"
        text = f"{self.destination}: {self.sent} sent"
        if self.skipped:
            text += f", {self.skipped} without a message in this format"
        text += f", cursor {self.cursor}, backlog {self.backlog}"
        return text + (f"; failed: {self.error}" if self.error else "")


@dataclass(frozen=True)
class MessageContext:
    """What every message names besides the event: this host, the site, the audit trail's address."""

    hostname: str
    site_id: str
    audit_log_uri: str

    @classmethod
    def from_settings(cls) -> MessageContext:
        return cls(
            hostname=settings.AUDIT_FORWARD_HOSTNAME or socket.gethostname(),
            site_id=settings.PAMSITE_SITE_NAME,
            audit_log_uri=settings.PAMSITE_BASE_URL.rstrip("/") + reverse("audit:events"),
        )


def syslog_frame(event: AuditEvent, *, fmt: str, context: MessageContext) -> bytes | None:
    """The event as one octet-counted RFC 5424 frame in ``fmt`` (json, cef, dicom); None: no such message.

    JSON is written in ASCII (other characters escaped) and DICOM XML with character
    references, so neither needs the UTF-8 BOM that RFC 5424 asks of UTF-8 messages;
    CEF is UTF-8 as CEF receivers expect, without a BOM.
    """
    if fmt == "json":
        body = json_line(event, ascii_only=True).encode("ascii")
    elif fmt == "cef":
        body = cef_message(event).encode("utf-8")
    elif fmt == "dicom":
        body = dicom_audit_message(
            event, source_id=context.hostname, site_id=context.site_id, audit_log_uri=context.audit_log_uri
        )
        if body is None:
            return None
    else:
        raise ValueError(f"unknown format {fmt!r}")
    message = rfc5424_message(
        severity=syslog_severity(event.action),
        timestamp=canonical_time(event.created_at),
        hostname=context.hostname,
        msgid=event.action,
        params={"seq": str(event.sequence), "hash": event.hash},
        msg=body,
    )
    return octet_frame(message)


def chain_head_sequence() -> int:
    """The newest event's sequence number (0: no events)."""
    return ChainHead.objects.filter(pk=1).values_list("last_sequence", flat=True).first() or 0


@dataclass
class _Retry:
    failures: int = 0
    retry_at: float = 0.0


@dataclass
class Forwarder:
    """Forwards to every destination, keeping one connection to each between passes.

    ``run_once`` is one pass: for each destination not waiting out a back-off, send
    what is pending (up to ``max_batches`` batches, so one destination catching up
    does not starve the others). The loop command calls it again and again; the
    one-shot service and the Celery task make a Forwarder, run one pass and close it.
    """

    destinations: Iterable[Destination] | None = None
    batch_size: int | None = None
    max_backoff: float | None = None
    client_factory: Callable[[Destination], SyslogClient] = SyslogClient
    clock: Callable[[], float] = time.monotonic
    _clients: dict = field(default_factory=dict, init=False, repr=False)
    _retries: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.destinations = tuple(settings.AUDIT_FORWARD if self.destinations is None else self.destinations)
        self.batch_size = self.batch_size or settings.AUDIT_FORWARD_BATCH
        if self.max_backoff is None:
            self.max_backoff = float(settings.AUDIT_FORWARD_MAX_BACKOFF)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.context = MessageContext.from_settings()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def waiting(self, destination: Destination) -> float:
        """Seconds until the destination may be tried again (0: now)."""
        retry = self._retries.get(destination.name)
        return max(retry.retry_at - self.clock(), 0.0) if retry else 0.0

    def run_once(self, *, max_batches: int | None = None) -> list[ForwardResult]:
        """One pass over the destinations that are not backing off."""
        return [
            self.forward(destination, max_batches=max_batches)
            for destination in self.destinations
            if not self.waiting(destination)
        ]

    def forward(self, destination: Destination, *, max_batches: int | None = None) -> ForwardResult:
        """Send the events after the destination's cursor, batch by batch, moving the cursor after each."""
        result = ForwardResult(destination=destination.name, head=chain_head_sequence())
        cursor = ForwardCursor.objects.filter(name=destination.name).values_list("last_sequence", flat=True)
        result.cursor = cursor.first() or 0
        if result.cursor >= result.head:
            return result  # nothing to do: no write, no lease
        ForwardCursor.objects.get_or_create(name=destination.name)
        if not self._take_lease(destination):
            result.busy = True
            return result
        try:
            self._send_pending(destination, result, max_batches)
        finally:
            self._release_lease(destination)
        result.head = chain_head_sequence()
        return result

    def _send_pending(self, destination: Destination, result: ForwardResult, max_batches: int | None) -> None:
        result.cursor = ForwardCursor.objects.values_list("last_sequence", flat=True).get(
            name=destination.name
        )
        client = self._clients.get(destination.name)
        if client is None:
            client = self._clients[destination.name] = self.client_factory(destination)
        batches = 0
        while max_batches is None or batches < max_batches:
            events = list(
                AuditEvent.objects.filter(sequence__gt=result.cursor).order_by("sequence")[: self.batch_size]
            )
            if not events:
                break
            frames = [syslog_frame(event, fmt=destination.format, context=self.context) for event in events]
            payload = b"".join(frame for frame in frames if frame is not None)
            try:
                if payload:
                    client.send(payload)
            except SyslogError as exc:
                self._failed(destination, result, str(exc))
                return
            now = timezone.now()
            moved = {"last_sequence": events[-1].sequence, "updated_at": now}
            if payload:
                moved["last_success_at"] = now
            moved["lease_until"] = now + self._lease_time(destination)
            if not ForwardCursor.objects.filter(name=destination.name, lease_owner=self.owner).update(
                **moved
            ):
                # Another forwarder took the destination over (this one stalled past its lease).
                logger.warning(
                    "Audit forwarding to %s: lost the lease; stopping this pass.", destination.name
                )
                result.busy = True
                return
            sent = sum(frame is not None for frame in frames)
            result.sent += sent
            result.skipped += len(frames) - sent
            result.cursor = events[-1].sequence
            batches += 1
        self._succeeded(destination, result)

    def _failed(self, destination: Destination, result: ForwardResult, error: str) -> None:
        result.error = error
        now = timezone.now()
        ForwardCursor.objects.filter(name=destination.name).update(
            last_error=error[:1000], last_error_at=now, updated_at=now
        )
        retry = self._retries.setdefault(destination.name, _Retry())
        retry.failures += 1
        delay = min(FIRST_RETRY_SECONDS * 2 ** (retry.failures - 1), self.max_backoff)
        retry.retry_at = self.clock() + delay
        waiting = max(chain_head_sequence() - result.cursor, 0)
        logger.warning(
            "Audit forwarding to %s failed: %s. The cursor stays at %d (%d events waiting); "
            "next try in %.0f s.",
            destination.name,
            error,
            result.cursor,
            waiting,
            delay,
        )

    def _succeeded(self, destination: Destination, result: ForwardResult) -> None:
        retry = self._retries.pop(destination.name, None)
        if retry is not None:
            logger.info(
                "Audit forwarding to %s works again after %d failed attempt(s): "
                "%d events sent, cursor at %d.",
                destination.name,
                retry.failures,
                result.sent,
                result.cursor,
            )

    def _lease_time(self, destination: Destination) -> dt.timedelta:
        # Longer than one batch can take (connecting, then waiting for the receiver).
        return dt.timedelta(seconds=max(60.0, 4 * destination.timeout))

    def _take_lease(self, destination: Destination) -> bool:
        now = timezone.now()
        free = Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=self.owner)
        taken = ForwardCursor.objects.filter(free, name=destination.name).update(
            lease_owner=self.owner, lease_until=now + self._lease_time(destination)
        )
        return bool(taken)

    def _release_lease(self, destination: Destination) -> None:
        try:
            ForwardCursor.objects.filter(name=destination.name, lease_owner=self.owner).update(
                lease_owner="", lease_until=None
            )
        except Exception:  # the database is what failed: the lease expires by itself
            logger.exception("Audit forwarding to %s: could not release the lease.", destination.name)


def audit_forward(
    *, destinations: Iterable[Destination] | None = None, batch_size: int | None = None
) -> list[ForwardResult]:
    """Forward everything pending to every destination (default ``AUDIT_FORWARD``), then disconnect.

    ``manage.py audit_forward --once`` and the Celery task ``audit.forward`` call this.
    A destination that fails keeps its cursor; the result says why.
    """
    with Forwarder(destinations=destinations, batch_size=batch_size) as forwarder:
        return forwarder.run_once()
