"""The auditor's pages: the audit trail with filters, and chain verification."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from audit.forms import AuditFilterForm
from audit.selectors import audit_chain_verify_for, audit_events_for, audit_trail_require_access
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
