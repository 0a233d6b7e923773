"""Pages of gateway sessions: the live list, one session with its recordings, terminate.

Thin: who sees what is in sessions.selectors, the change in sessions.services.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from sessions import selectors, services
from sessions.forms import TerminateForm

LIVE_PAGE_LIMIT = 500


@never_cache
@require_GET
def live(request: HttpRequest) -> HttpResponse:
    """Live sessions (everyone's for overseers), with a Terminate form where allowed."""
    sessions = list(selectors.live_sessions_for(user=request.user)[: LIVE_PAGE_LIMIT + 1])
    rows = [(s, selectors.can_terminate(user=request.user, session=s)) for s in sessions[:LIVE_PAGE_LIMIT]]
    context = {
        "rows": rows,
        "truncated": len(sessions) > LIVE_PAGE_LIMIT,
        "limit": LIVE_PAGE_LIMIT,
        "any_terminable": any(can for _, can in rows),
    }
    return render(request, "sessions/live.html", context)


@never_cache
@require_GET
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One session: who, which account, from where, how it ended, its recordings."""
    session = selectors.get_session_for(user=request.user, pk=pk)
    context = {
        "session": session,
        "recordings": selectors.recordings_of(session=session),
        "can_terminate": selectors.can_terminate(user=request.user, session=session),
        "form": TerminateForm(),
    }
    return render(request, "sessions/detail.html", context)


@require_POST
def terminate(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask the gateway to end the session; back to the page the form was on."""
    session = selectors.get_session_for(user=request.user, pk=pk)
    form = TerminateForm(request.POST)
    valid = form.is_valid()
    # An over-long reason fails the form; the service says so with its own message.
    reason = form.cleaned_data["reason"] if valid else request.POST.get("reason", "")
    already = session.terminate_requested_at is not None
    try:
        services.session_terminate(
            session=session, acting_user=request.user, reason=reason, http_request=request
        )
    except ValidationError as exc:
        messages.error(request, "Not terminated: " + " ".join(exc.messages))
    else:
        if already:
            by = session.terminate_requested_by.username if session.terminate_requested_by else "someone"
            messages.info(
                request,
                f"Termination was already requested by {by}: "
                "the gateway closes the session within a few seconds.",
            )
        else:
            messages.success(
                request, "Termination requested: the gateway closes the session within a few seconds."
            )
    if valid and form.cleaned_data["back"] == "live":
        return redirect("sessions:live")
    return redirect("sessions:detail", session.pk)
