from __future__ import annotations

from django import forms
from django.contrib.auth.forms import AuthenticationForm


class LoginForm(AuthenticationForm):
    error_messages = {
        "invalid_login": "The username or password is not right. Check both and try again "
        "(passwords are case-sensitive).",
        "inactive": "This account is disabled. Ask a pam-admin if you need access.",
    }


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=20,
        strip=True,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "inputmode": "numeric",
                "autofocus": True,
                "class": "code",
            }
        ),
        help_text="The 6-digit code from your authenticator app, or one of your backup codes.",
    )


class EnrolForm(forms.Form):
    code = forms.CharField(
        label="Code from the app",
        max_length=10,
        strip=True,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "inputmode": "numeric",
                "autofocus": True,
                "class": "code",
            }
        ),
    )


class SelfResetForm(forms.Form):
    password = forms.CharField(label="Your password", strip=False, widget=forms.PasswordInput)
    code = forms.CharField(
        label="A current code or backup code",
        max_length=20,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "class": "code"}),
    )


class BackupCodesForm(forms.Form):
    code = forms.CharField(
        label="Current code from your authenticator app",
        max_length=10,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "class": "code"}
        ),
    )


class AdminResetForm(forms.Form):
    reason = forms.CharField(
        label="Reason (kept in the audit trail)",
        max_length=500,
        min_length=5,
        widget=forms.TextInput(
            attrs={"placeholder": "e.g. lost phone, identity checked by call-back, INC-1234"}
        ),
    )
