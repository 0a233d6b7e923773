"""Pages of gateway sessions: search, the live list, one session with its recordings and
their integrity, download, terminate, legal holds.

Thin: who sees what is in recordings.selectors, the changes in recordings.services and
recordings.retention.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template import TemplateDoesNotExist
from django.template.loader import select_template
from django.urls import NoReverseMatch, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST, require_safe

from audit.services import audit_record
from identity.models import User
from recordings import retention, selectors, services
from recordings.forms import TerminateForm
from recordings.models import Recording
from recordings.search import SessionSearchFilters, SessionSearchForm

LIVE_PAGE_LIMIT = 500
PLAYER_TEMPLATE = "sessions/_player.html"
SEARCH_FIELDS = tuple(f for f in SessionSearchFilters.__dataclass_fields__ if f not in ("before", "after"))
CONTENT_TYPES = {
    Recording.Kind.TERMINAL: "application/x-asciicast",
    Recording.Kind.EXEC: "application/octet-stream",
    Recording.Kind.EVENTS: "application/x-ndjson",
}


@never_cache
@require_safe
def search(request: HttpRequest) -> HttpResponse:
    """Sessions by user, target, account, grant, start time, end, and text that appeared in them.

    Newest first, paged by keyset; approvers, pam-admins and auditors only. Each search is
    recorded ("sessions.searched", with the filters).
    """
    selectors.sessions_search_require_access(user=request.user)
    form = SessionSearchForm(request.GET)
    page = None
    if form.is_valid():
        filters = form.to_filters()
        page = selectors.sessions_search_for(user=request.user, filters=filters)
        audit_record(
            action="sessions.searched",
            request=request,
            details={"filters": filters.as_details(), "sessions_shown": len(page.sessions)},
        )
    kept = {name: request.GET[name] for name in SEARCH_FIELDS if request.GET.get(name)}
    can_hold = selectors.can_hold(user=request.user)
    context = {
        "form": form,
        "page": page,
        "filter_query": urlencode(kept),
        "is_paged": "before" in request.GET or "after" in request.GET,
        "can_hold": can_hold,
        "holds": selectors.active_holds() if can_hold else [],
        "hold_username": kept.get("user", ""),
        "retention_days": settings.RECORDINGS_RETENTION_DAYS,
        "max_chars": settings.SESSIONS_SEARCH_MAX_CHARS,
    }
    return render(request, "sessions/search.html", context)


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


def _has_player() -> bool:
    try:
        select_template([PLAYER_TEMPLATE])
    except TemplateDoesNotExist:
        return False
    return True


def _replay_url(session) -> str | None:
    try:
        return reverse("replay:session", args=[session.pk])
    except NoReverseMatch:
        return None


@never_cache
@require_GET
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One session: who, which account, from where, how it ended, its recordings and whether
    each is intact (sha256 recomputed, Vault signature checked), legal holds and retention.

    Each view is recorded ("recording.viewed", with the integrity verdicts).
    """
    session = selectors.get_session_for(user=request.user, pk=pk)
    recordings = list(selectors.recordings_of(session=session))
    checks = selectors.recordings_integrity(recordings=recordings)
    audit_record(
        action="recording.viewed",
        request=request,
        obj=session,
        details={
            "user": session.user.username,
            "account": session.account,
            "integrity": {str(c.recording.pk): c.state for c in checks},
        },
    )
    can_hold = selectors.can_hold(user=request.user)
    context = {
        "session": session,
        "recordings": recordings,
        "checks": checks,
        "can_terminate": selectors.can_terminate(user=request.user, session=session),
        "can_download": selectors.can_download(user=request.user),
        "can_hold": can_hold,
        "form": TerminateForm(),
        # A hold, and its reason, may concern this session's user: shown to holders only.
        "holds": selectors.holds_on_session(session=session) if can_hold else [],
        "delete_after": retention.session_delete_after(session=session),
        "retention_days": settings.RECORDINGS_RETENTION_DAYS,
        "has_player": _has_player(),
        "player_template": PLAYER_TEMPLATE,
        "replay_url": _replay_url(session),
    }
    return render(request, "sessions/detail.html", context)


@never_cache
@require_safe
def download(request: HttpRequest, pk: int) -> HttpResponse:
    """A recording's file as it is on disk; ``?file=index`` for an exec recording's timing index.

    Approvers, pam-admins and auditors only; recorded ("recording.downloaded").
    """
    recording = selectors.get_recording_for(user=request.user, pk=pk)
    if recording.deleted_at is not None:
        raise Http404("This recording's files were deleted (retention); only its row remains.")
    want_index = request.GET.get("file") == "index"
    if want_index and not recording.index_path:
        raise Http404("This recording has no timing index.")
    relative = recording.index_path if want_index else recording.path
    content_type = "text/plain; charset=utf-8" if want_index else CONTENT_TYPES[recording.kind]
    root = Path(settings.RECORDINGS_ROOT)
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise Http404("No such recording file.")
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise Http404("The file is missing from the recordings folder.") from None
    try:
        audit_record(
            action="recording.downloaded",
            request=request,
            obj=recording,
            details={
                "session": recording.session_id,
                "path": relative,
                "size": path.stat().st_size,
                "sha256": recording.index_sha256 if want_index else recording.sha256,
            },
        )
    except BaseException:
        handle.close()
        raise
    filename = f"session-{recording.session_id}-{Path(relative).name}"
    return FileResponse(handle, as_attachment=True, filename=filename, content_type=content_type)


@require_POST
def terminate(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask the gateway to end the session; back to the page the form was on."""
    session = selectors.get_session_for(user=request.user, pk=pk)
    form = TerminateForm(request.POST)
    valid = form.is_valid()
    # An over-long reason fails the form; the service says so with its own message.
    reason = form.cleaned_data["reason"] if valid else request.POST.get("reason", "")
    already = session.terminate_requested_at is not None
    if "\x00" in reason:
        # A NUL character (never typed in a browser) cannot be stored: the form says so.
        messages.error(request, "Not terminated: " + " ".join(form.errors["reason"]))
        return redirect("sessions:detail", session.pk)
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


def _back(request: HttpRequest) -> HttpResponse:
    """Back to the session page a hold form was on (its id in ``back``), else the search page."""
    back = request.POST.get("back", "")
    if back.isdigit() and len(back) < 19:
        return redirect("sessions:detail", int(back))
    return redirect("sessions:search")


@require_POST
def hold_place(request: HttpRequest) -> HttpResponse:
    """Place a legal hold on a session (from its page) or on a user (by username); back where it came from."""
    selectors.holds_require_access(user=request.user)
    form = retention.LegalHoldForm(request.POST)
    if not form.is_valid():
        problems = "; ".join(
            f"{form[name].label if name in form.fields else 'form'}: {' '.join(errors)}"
            for name, errors in form.errors.items()
        )
        messages.error(request, f"No hold placed: {problems}")
        return _back(request)
    data = form.cleaned_data
    session = (
        selectors.get_session_for(user=request.user, pk=data["session"]) if data.get("session") else None
    )
    user = None
    if session is None:
        username = data.get("username", "")
        user = User.objects.filter(username=username).first() if username else None
        if user is None:
            problem = f"there is no user {username!r}" if username else "name the session or the user to hold"
            messages.error(request, f"No hold placed: {problem}.")
            return _back(request)
    try:
        hold = retention.legal_hold_place(
            acting_user=request.user,
            reason=data.get("reason", request.POST.get("reason", "")),
            session=session,
            user=user,
            http_request=request,
        )
    except ValidationError as exc:
        messages.error(request, "No hold placed: " + " ".join(exc.messages))
    else:
        what = f"session {session.pk}" if session else f"every session of {user.username}"
        messages.success(
            request, f"Legal hold #{hold.pk} placed on {what}: the recordings are kept until it is released."
        )
    return _back(request)


@require_POST
def hold_release(request: HttpRequest, pk: int) -> HttpResponse:
    """Release a legal hold; back to the session's page or the search page."""
    hold = selectors.get_hold_for(user=request.user, pk=pk)
    try:
        retention.legal_hold_release(hold=hold, acting_user=request.user, http_request=request)
    except ValidationError as exc:
        messages.error(request, "Not released: " + " ".join(exc.messages))
    else:
        messages.success(request, f"Legal hold #{hold.pk} released.")
    return _back(request)
