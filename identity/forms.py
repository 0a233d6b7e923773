from __future__ import annotations

from django import forms
from django.contrib.auth.forms import AuthenticationForm


class LoginForm(AuthenticationForm):
    error_messages = {
        "invalid_login": "The username or password is not right. Check both and try again "
        "(passwords are case-sensitive).",
        "inactive": "This account is disabled. Ask a pam-admin if you need access.",
    }

    def clean_username(self):
        # AuthenticationForm sets the field's max_length after the field is made, so it is
        # never checked: a longer name would reach the backends (and the lockout's 150-character
        # column on PostgreSQL).
        username = self.cleaned_data["username"]
        limit = self.fields["username"].max_length or 150
        if len(username) > limit:
            raise forms.ValidationError(f"A username has at most {limit} characters.", code="max_length")
        return username


def code_field(
    label: str, *, max_length: int, autofocus: bool = False, help_text: str = ""
) -> forms.CharField:
    """A field for a TOTP or backup code, as authenticator-aware browsers expect it."""
    attrs = {"autocomplete": "one-time-code", "inputmode": "numeric", "class": "code"}
    if autofocus:
        attrs["autofocus"] = True
    return forms.CharField(
        label=label,
        max_length=max_length,
        strip=True,
        widget=forms.TextInput(attrs=attrs),
        help_text=help_text,
    )


class CodeForm(forms.Form):
    code = code_field(
        "Code",
        max_length=20,
        autofocus=True,
        help_text="The 6-digit code from your authenticator app, or one of your backup codes.",
    )


class EnrolForm(forms.Form):
    code = code_field("Code from the app", max_length=10, autofocus=True)


class SelfResetForm(forms.Form):
    password = forms.CharField(label="Your password", strip=False, widget=forms.PasswordInput)
    code = code_field("A current code or backup code", max_length=20)


class BackupCodesForm(forms.Form):
    code = code_field("Current code from your authenticator app", max_length=10)


class AdminResetForm(forms.Form):
    reason = forms.CharField(
        label="Reason (kept in the audit trail)",
        max_length=500,
        min_length=5,
        widget=forms.TextInput(
            attrs={"placeholder": "e.g. lost phone, identity checked by call-back, INC-1234"}
        ),
    )


class SSHKeyForm(forms.Form):
    name = forms.CharField(
        label="Name",
        max_length=100,
        required=False,
        help_text="Where the key lives, e.g. “work laptop”. Blank: the comment at the end of the key.",
    )
    public_key = forms.CharField(
        label="Public key",
        # No max_length here: the key's checks come first, so a pasted private key of
        # any length gets the message that says so (and is not sent back in the form).
        strip=True,
        widget=forms.Textarea(
            attrs={
                "rows": 4,
                "class": "mono",
                "spellcheck": "false",
                "autocomplete": "off",
                "placeholder": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA… you@laptop",
            }
        ),
        help_text="The contents of your .pub file (for example ~/.ssh/id_ed25519.pub): one line.",
    )
