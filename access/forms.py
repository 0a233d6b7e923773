from __future__ import annotations

from django import forms

from identity.forms import code_field


class RequestForm(forms.Form):
    account = forms.ChoiceField(label="Account")
    duration_minutes = forms.IntegerField(
        label="For how long (minutes)", min_value=5, max_value=7 * 24 * 60, initial=60
    )
    ticket = forms.CharField(label="Ticket reference", max_length=64, required=False)
    reason = forms.CharField(
        label="What is it for?", max_length=2000, widget=forms.Textarea(attrs={"rows": 3})
    )

    def __init__(self, *args, accounts=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"].choices = [
            (
                a.slug,
                f"{a.slug} — {a.get_kind_display()} on {a.target.name} (up to {p.max_duration_minutes} min, "
                f"{p.approvals_required} approval{'s' if p.approvals_required != 1 else ''})",
            )
            for a, p in accounts
        ]


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("deny", "Deny")])
    comment = forms.CharField(max_length=2000, required=False, widget=forms.TextInput())

    def clean(self):
        data = super().clean()
        if data.get("decision") == "deny" and not data.get("comment", "").strip():
            self.add_error("comment", "Say why you deny it: the requester sees your comment.")
        return data


class RevokeForm(forms.Form):
    reason = forms.CharField(label="Reason", max_length=1000, min_length=3)


class RevealForm(forms.Form):
    code = code_field("Fresh code from your authenticator app", max_length=10, autofocus=True)


class BreakGlassForm(forms.Form):
    account = forms.ModelChoiceField(queryset=None, to_field_name="slug")
    duration_minutes = forms.IntegerField(label="Minutes", min_value=5, max_value=240, initial=30)
    justification = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))

    def __init__(self, *args, accounts=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"].queryset = accounts


class ReviewForm(forms.Form):
    comment = forms.CharField(max_length=2000, min_length=5, widget=forms.Textarea(attrs={"rows": 3}))


class HostKeyConfirmForm(forms.Form):
    fingerprint = forms.CharField(widget=forms.HiddenInput)
    host_key = forms.CharField(widget=forms.HiddenInput)


class DatabaseSetupForm(forms.Form):
    host = forms.CharField(max_length=255)
    port = forms.IntegerField(min_value=1, max_value=65535, initial=5432)
    database = forms.CharField(max_length=63)
    admin_username = forms.CharField(label="Administrative user (for Vault)", max_length=63)
    admin_password = forms.CharField(
        label="Its password (goes to Vault only)", strip=False, widget=forms.PasswordInput
    )
    sslmode = forms.ChoiceField(
        choices=[(m, m) for m in ("verify-full", "verify-ca", "require", "prefer", "disable")],
        initial="require",
    )
    max_hours = forms.IntegerField(label="Longest grant (hours)", min_value=1, max_value=168, initial=24)


class StaticSetupForm(forms.Form):
    current_password = forms.CharField(
        label="The account's current password (goes to Vault only)", strip=False, widget=forms.PasswordInput
    )
