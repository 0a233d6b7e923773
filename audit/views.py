"""The auditor's pages: the audit trail with filters, its export, and chain verification."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST, require_safe

from audit import export as exports
from audit.forms import AuditFilterForm
from audit.selectors import (
    audit_chain_verify_for,
    audit_events_export_for,
    audit_events_for,
    audit_trail_require_access,
)
from audit.services import audit_record

FILTER_FIELDS = ("actor", "action", "since", "until")


@require_safe
@never_cache
def event_list(request: HttpRequest) -> HttpResponse:
    """The audit trail, newest first, filtered and paged by keyset; auditors only.

    Each page view is itself recorded ("audit.viewed", with the filters).
    """
    audit_trail_require_access(user=request.user)
    form = AuditFilterForm(request.GET)
    page = None
    if form.is_valid():
        filters = form.to_filters()
        page = audit_events_for(user=request.user, filters=filters)
        audit_record(
            action="audit.viewed",
            request=request,
            details={"filters": filters.as_details(), "events_shown": len(page.events)},
        )
    # The pager's links keep the filters as typed (already validated) and change only the cursor.
    kept = {name: request.GET[name] for name in FILTER_FIELDS if request.GET.get(name)}
    context = {
        "form": form,
        "page": page,
        "filter_query": urlencode(kept),
        "is_paged": "before" in request.GET or "after" in request.GET,
    }
    return render(request, "audit/event_list.html", context)


@require_GET
@never_cache
def export(request: HttpRequest, fmt: str) -> HttpResponse:
    """Every event matching the filters, oldest first, as CSV or JSON lines; auditors only.

    Recorded first, as "audit.exported" (filters, format): the export holds the events
    before that one. The response is streamed a batch at a time, so an export of the
    whole trail never sits in memory.
    """
    audit_trail_require_access(user=request.user)
    content_type, extension = exports.EXPORT_FORMATS[fmt]
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        problems = "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())
        return HttpResponseBadRequest(f"These filters cannot be used: {problems}", content_type="text/plain")
    filters = form.to_filters().without_cursor()
    exported = audit_record(
        action="audit.exported", request=request, details={"filters": filters.as_details(), "format": fmt}
    )
    batches = audit_events_export_for(
        user=request.user,
        filters=filters,
        through_sequence=exported.sequence - 1,
        batch_size=exports.EXPORT_BATCH_SIZE,
    )
    chunks = exports.csv_chunks(batches) if fmt == "csv" else exports.jsonl_chunks(batches)
    response = StreamingHttpResponse(_served(request, chunks), content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="pamsite-audit-{stamp}.{extension}"'
    return response


def _served(request: HttpRequest, chunks: Iterator[bytes]) -> Iterator[bytes] | AsyncIterator[bytes]:
    """The chunks in the form the server streams: under ASGI (daphne) Django would first
    collect a synchronous iterator into a list, so there each chunk is produced in turn
    in the thread that runs the ORM."""
    if not isinstance(request, ASGIRequest):
        return chunks

    async def produce() -> AsyncIterator[bytes]:
        step = sync_to_async(next, thread_sensitive=True)
        while (chunk := await step(chunks, None)) is not None:
            yield chunk

    return produce()


@require_POST
def verify(request: HttpRequest) -> HttpResponse:
    """Verify the hash chain now and say whether it is intact; auditors only. Recorded as "audit.verified"."""
    result = audit_chain_verify_for(user=request.user)
    audit_record(
        action="audit.verified",
        request=request,
        details={
            "ok": result.ok,
            "checked": result.checked,
            "first_bad_sequence": result.first_bad_sequence,
            "reason": result.reason,
        },
    )
    if result.ok:
        messages.success(request, result.summary)
    else:
        messages.error(request, result.summary)
    return redirect("audit:events")
