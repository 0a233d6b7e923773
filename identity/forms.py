from __future__ import annotations

from django import forms
from django.contrib.auth.forms import AuthenticationForm

from identity.users import ROLE_CHOICES


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


# --- The Users page, invitations, passwords ---------------------------------------------------


def role_choices():
    return ROLE_CHOICES


class InviteForm(forms.Form):
    """A pam-admin invites a local user (identity.users.user_invite checks the rest)."""

    METHOD_CHOICES = [
        ("link", "A one-time link (they open it and choose their password)"),
        ("password", "A one-time password (they sign in with it and choose a new one)"),
    ]

    username = forms.CharField(
        label="Username",
        max_length=150,
        help_text="What they type to sign in and to connect to the gateway, e.g. “jsmith”. "
        "Letters, digits and @ . + - _ only.",
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}
        ),
    )
    first_name = forms.CharField(label="First name", max_length=150, required=False)
    last_name = forms.CharField(label="Last name", max_length=150, required=False)
    email = forms.EmailField(
        label="E-mail",
        required=False,
        help_text="For notifications (approvals, expiring grants), and to send the link to.",
    )
    roles = forms.MultipleChoiceField(
        label="Roles", choices=role_choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    method = forms.ChoiceField(
        label="How they get in the first time",
        choices=METHOD_CHOICES,
        initial="link",
        widget=forms.RadioSelect,
    )
    email_link = forms.BooleanField(
        label="Also e-mail the link to them",
        required=False,
        help_text="The link is shown to you once either way.",
    )


class PasswordResetForm(forms.Form):
    """A pam-admin resets a local user's password (a new one-time link or password)."""

    method = forms.ChoiceField(
        label="Give them",
        choices=InviteForm.METHOD_CHOICES,
        initial="link",
        widget=forms.RadioSelect,
    )
    email_link = forms.BooleanField(label="Also e-mail the link to them", required=False)


class RolesForm(forms.Form):
    roles = forms.MultipleChoiceField(
        label="Roles", choices=role_choices, required=False, widget=forms.CheckboxSelectMultiple
    )


class ReasonForm(forms.Form):
    """The reason for deactivating or reactivating someone (kept in the audit trail)."""

    reason = forms.CharField(
        label="Reason (kept in the audit trail; the user reads it if they are connected)",
        min_length=5,
        max_length=500,
        widget=forms.TextInput(attrs={"placeholder": "e.g. contract ended, INC-1234"}),
    )


# Longer is not safer, and each check (the validators, the hash) reads all of it.
PASSWORD_MAX_LENGTH = 1024


class NewPasswordForm(forms.Form):
    """Two copies of a new password; Django's validators run in the service."""

    new_password1 = forms.CharField(
        label="New password",
        strip=False,
        max_length=PASSWORD_MAX_LENGTH,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    new_password2 = forms.CharField(
        label="New password again",
        strip=False,
        max_length=PASSWORD_MAX_LENGTH,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self):
        cleaned = super().clean()
        one, two = cleaned.get("new_password1"), cleaned.get("new_password2")
        if one and two and one != two:
            self.add_error("new_password2", "The two passwords are not the same: type the new one twice.")
        return cleaned


class PasswordChangeForm(NewPasswordForm):
    """My account: the current password, then the new one twice."""

    password = forms.CharField(
        label="Current password",
        strip=False,
        max_length=PASSWORD_MAX_LENGTH,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    field_order = ["password", "new_password1", "new_password2"]
