"""Forms of the session pages."""

from __future__ import annotations

from django import forms

from recordings.services import REASON_MAX_LENGTH


class TerminateForm(forms.Form):
    """Why an approver or pam-admin ends a live session.

    The reason is not required here: the service checks it (and the permission before
    it), so a requester who posts an empty form is refused rather than told what to type.
    """

    reason = forms.CharField(
        label="Reason (the user reads it; kept in the audit trail)",
        max_length=REASON_MAX_LENGTH,
        required=False,
    )
    # Which page the form was on, to go back to it.
    back = forms.ChoiceField(choices=[("detail", "detail"), ("live", "live")], required=False)
