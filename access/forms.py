from __future__ import annotations

import re

from django import forms
from django.contrib.auth.models import Group

from access.models import Account, SslMode, Target
from access.ticket_patterns import TICKET_MAX_CHARS, ticket_pattern_problem
from identity.forms import code_field

REASON_MAX_CHARS = 2000


class BoundedText(forms.CharField):
    """Text whose length limit the server checks, with a message giving the limit and the length.

    No ``maxlength`` attribute reaches the browser: a browser cuts pasted text to it without
    a word, and the person never learns that most of the reason was lost. Too long, the form
    comes back with everything typed still in it.
    """

    def __init__(self, *, max_length: int, **kwargs):
        self.limit = max_length
        super().__init__(**kwargs)

    def validate(self, value):
        super().validate(value)
        if value and len(value) > self.limit:
            raise forms.ValidationError(
                f"Too long: at most {self.limit:,} characters, and this has {len(value):,}. "
                "Shorten it (what you typed is kept here) and send it again.",
                code="max_length",
            )


TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")


class TagsField(forms.CharField):
    """Labels typed as words separated by commas ("radiology, night-shift"), kept as a list."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", "Words separated by commas, e.g. radiology, night-shift.")
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return ", ".join(value)
        return value

    def to_python(self, value):
        text = super().to_python(value)
        tags = []
        for raw in re.split(r"[,\n]", text or ""):
            tag = raw.strip().lower()
            if not tag:
                continue
            if not TAG_PATTERN.match(tag):
                raise forms.ValidationError(
                    f"{raw.strip()[:60]!r} is not a tag: use letters, digits, '-', '_' or '.' "
                    "(at most 40, no spaces), and commas between tags.",
                    code="invalid",
                )
            if tag not in tags:
                tags.append(tag)
        return tags


class PortsField(forms.CharField):
    """TCP port numbers typed with commas between them ("5432, 104"), kept as a sorted list."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return ", ".join(str(p) for p in value)
        return value

    def to_python(self, value):
        text = super().to_python(value)
        ports = set()
        for raw in re.split(r"[,\s]+", text or ""):
            if not raw:
                continue
            if not raw.isdigit() or not 1 <= int(raw) <= 65535:
                raise forms.ValidationError(
                    f"{raw[:20]!r} is not a TCP port: give numbers from 1 to 65535 with commas "
                    "between them, e.g. 104, 5432.",
                    code="invalid",
                )
            ports.add(int(raw))
        return sorted(ports)


# --- Requests ----------------------------------------------------------------------------


class RequestForm(forms.Form):
    account = forms.ChoiceField(label="Account")
    duration_minutes = forms.IntegerField(
        label="For how long (minutes)", min_value=5, max_value=7 * 24 * 60, initial=60
    )
    ticket = BoundedText(label="Ticket reference", max_length=TICKET_MAX_CHARS, required=False)
    reason = BoundedText(
        label="What is it for?", max_length=REASON_MAX_CHARS, widget=forms.Textarea(attrs={"rows": 3})
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
        # The ticket rule of each account's policy, shown before anyone gets it wrong.
        self.ticket_rules = {a.slug: p.ticket_rule for a, p in accounts}
        self.fields["reason"].help_text = f"At most {REASON_MAX_CHARS:,} characters."

    def ticket_rule(self) -> str:
        """The rule of the account chosen (or shown first): what the ticket must look like."""
        chosen = self.data.get("account") if self.is_bound else self.initial.get("account")
        if chosen in self.ticket_rules:
            return self.ticket_rules[chosen]
        return next(iter(self.ticket_rules.values()), "")


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("deny", "Deny")])
    comment = BoundedText(max_length=2000, required=False, widget=forms.TextInput())

    def clean(self):
        data = super().clean()
        if data.get("decision") == "deny" and not data.get("comment", "").strip():
            self.add_error("comment", "Say why you deny it: the requester sees your comment.")
        return data


class RevokeForm(forms.Form):
    reason = BoundedText(label="Reason", max_length=1000, min_length=3)


class RevealForm(forms.Form):
    code = code_field("Fresh code from your authenticator app", max_length=10, autofocus=True)


class BreakGlassForm(forms.Form):
    account = forms.ModelChoiceField(queryset=None, to_field_name="slug")
    duration_minutes = forms.IntegerField(label="Minutes", min_value=5, max_value=240, initial=30)
    justification = BoundedText(max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))

    def __init__(self, *args, accounts=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"].queryset = accounts


class ReviewForm(forms.Form):
    comment = BoundedText(max_length=2000, min_length=5, widget=forms.Textarea(attrs={"rows": 3}))


# --- Targets and accounts (pam-admins) ---------------------------------------------------


class HostKeyConfirmForm(forms.Form):
    fingerprint = forms.CharField(widget=forms.HiddenInput)
    host_key = forms.CharField(widget=forms.HiddenInput)


PORT_ERRORS = {
    "min_value": "A TCP port is a number from 1 to 65535.",
    "max_value": "A TCP port is a number from 1 to 65535.",
    "invalid": "A TCP port is a number from 1 to 65535.",
}


class TargetForm(forms.Form):
    """A target's settings; one subclass per kind of target (``TARGET_FORMS``)."""

    name = forms.CharField(
        max_length=63,
        help_text="Lower-case letters, digits and hyphens, e.g. pacs01. Users type it at the gateway.",
    )
    host = forms.CharField(label="Host name or IP address", max_length=255)
    port = forms.IntegerField(min_value=1, max_value=65535, error_messages=PORT_ERRORS)
    description = BoundedText(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    tags = TagsField(
        help_text="Words separated by commas, e.g. radiology, night-shift. Policies can name them."
    )

    def values(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.fields}


class SshTargetForm(TargetForm):
    """A PACS, VNA or other host reached over SSH (its host key is pinned next)."""

    port = forms.IntegerField(
        label="SSH port", min_value=1, max_value=65535, error_messages=PORT_ERRORS, initial=22
    )
    forward_ports = PortsField(
        label="Ports users may forward to (optional)",
        help_text="e.g. 104, 5432: TCP ports on this host that grant holders may reach with ssh -L.",
    )


class DatabaseTargetForm(TargetForm):
    """A PostgreSQL database server (no SSH: no host key; its own port is always forwardable)."""

    port = forms.IntegerField(
        label="PostgreSQL port", min_value=1, max_value=65535, error_messages=PORT_ERRORS, initial=5432
    )


class WebConsoleTargetForm(TargetForm):
    """An administration web console."""

    port = forms.IntegerField(
        label="HTTPS port", min_value=1, max_value=65535, error_messages=PORT_ERRORS, initial=443
    )


TARGET_FORMS = {
    Target.Kind.PACS: SshTargetForm,
    Target.Kind.VNA: SshTargetForm,
    Target.Kind.OTHER: SshTargetForm,
    Target.Kind.DATABASE: DatabaseTargetForm,
    Target.Kind.WEB_CONSOLE: WebConsoleTargetForm,
}


class AccountForm(forms.Form):
    """An account's settings; one subclass per kind of account (``ACCOUNT_FORMS``).

    The slug is asked only when the account is made: it names the account in Vault.
    """

    slug = forms.CharField(
        label="Account name",
        max_length=63,
        help_text="Lower-case letters, digits and hyphens, e.g. pacs01-root. Users type it at the gateway.",
    )
    username = forms.CharField(label="Login on the target", max_length=63)
    description = BoundedText(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    tags = TagsField()

    def __init__(self, *args, creating: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if not creating:
            del self.fields["slug"]

    def values(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.fields}


class SshCaAccountForm(AccountForm):
    username = forms.CharField(
        label="Login on the target (the certificate's principal)", max_length=63, help_text="e.g. root"
    )
    vault_role = forms.CharField(
        label="Vault SSH role (optional)",
        max_length=100,
        required=False,
        help_text="Default: the account name.",
    )


class StaticAccountForm(AccountForm):
    kv_path = forms.CharField(
        label="Vault KV path (optional)",
        max_length=200,
        required=False,
        help_text="Default: accounts/<account name>.",
    )


class DatabaseAccountForm(AccountForm):
    username = forms.CharField(
        label="Group role",
        max_length=63,
        help_text="The PostgreSQL role each grant's short-lived user is made a member of, e.g. pacs_admin.",
    )
    database_name = forms.CharField(label="Database", max_length=63)
    database_sslmode = forms.ChoiceField(
        label="TLS mode (sslmode)",
        choices=SslMode.choices,
        initial=SslMode.PREFER,
        help_text="How the connection test, and users' clients, speak TLS to this PostgreSQL.",
    )
    vault_role = forms.CharField(
        label="Vault database role (optional)",
        max_length=100,
        required=False,
        help_text="Default: the account name.",
    )


ACCOUNT_FORMS = {
    Account.Kind.SSH_CA: SshCaAccountForm,
    Account.Kind.STATIC: StaticAccountForm,
    Account.Kind.DATABASE: DatabaseAccountForm,
}


class ActivationForm(forms.Form):
    """Deactivate or reactivate something, with the reason kept in the audit trail."""

    reason = BoundedText(label="Reason", max_length=1000, min_length=3)


class DatabaseSetupForm(forms.Form):
    host = forms.CharField(max_length=255)
    port = forms.IntegerField(min_value=1, max_value=65535, error_messages=PORT_ERRORS, initial=5432)
    database = forms.CharField(max_length=63)
    admin_username = forms.CharField(label="Administrative user (for Vault)", max_length=63)
    admin_password = forms.CharField(
        label="Its password (goes to Vault only)", strip=False, widget=forms.PasswordInput
    )
    sslmode = forms.ChoiceField(label="TLS mode (sslmode)", choices=SslMode.choices, initial=SslMode.REQUIRE)
    max_hours = forms.IntegerField(label="Longest grant (hours)", min_value=1, max_value=168, initial=24)


class StaticSetupForm(forms.Form):
    current_password = forms.CharField(
        label="The account's current password (goes to Vault only)", strip=False, widget=forms.PasswordInput
    )


# --- Policies (pam-admins) -----------------------------------------------------------------


class PolicyForm(forms.Form):
    """Who may request what, and on which terms."""

    name = forms.CharField(max_length=100, help_text="e.g. PACS administrators, vendor engineers")
    groups = forms.ModelMultipleChoiceField(
        queryset=Group.objects.order_by("name"),
        widget=forms.CheckboxSelectMultiple,
        label="Who may request",
        help_text="Members of these groups (roles, and groups mapped from the directory).",
    )
    accounts = forms.ModelMultipleChoiceField(
        queryset=Account.objects.select_related("target").order_by("slug"),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Accounts",
    )
    targets = forms.ModelMultipleChoiceField(
        queryset=Target.objects.order_by("name"),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Every account of these targets",
    )
    tags = TagsField(
        label="Every account or target with one of these tags",
        help_text="Words separated by commas, e.g. radiology.",
    )
    approvals_required = forms.TypedChoiceField(
        label="Approvals needed",
        coerce=int,
        choices=[(0, "0: granted at once"), (1, "1 approver"), (2, "2 approvers"), (3, "3 approvers")],
        initial=1,
    )
    max_duration_minutes = forms.IntegerField(
        label="Longest access (minutes)", min_value=5, max_value=7 * 24 * 60, initial=60
    )
    ticket_required = forms.BooleanField(label="A ticket reference is required", required=False, initial=True)
    ticket_pattern = forms.CharField(
        label="Ticket pattern (regular expression)",
        max_length=200,
        required=False,
        initial=r"^(INC|CHG|RITM)-?\d{3,10}$",
        help_text="The whole ticket must match it. Empty: any ticket.",
    )
    ticket_example = forms.CharField(
        label="Ticket example",
        max_length=TICKET_MAX_CHARS,
        required=False,
        initial="INC-12345",
        help_text='Shown on the request form: "Ticket required, like INC-12345". It must match the pattern.',
    )
    ticket_case_insensitive = forms.BooleanField(
        label="Accept the ticket in any case (inc-12345 too)", required=False
    )
    allow_reveal = forms.BooleanField(
        label="The holder may see a database or static password once",
        required=False,
        help_text="Only for consoles the gateway cannot reach; shown after a fresh code, audited.",
    )

    def clean_ticket_pattern(self):
        pattern = self.cleaned_data["ticket_pattern"].strip()
        problem = ticket_pattern_problem(pattern) if pattern else None
        if problem:
            raise forms.ValidationError(problem)
        return pattern

    def clean(self):
        data = super().clean()
        if data.get("ticket_required") and not data.get("ticket_example", "").strip():
            self.add_error(
                "ticket_example", "Give an example ticket: requesters see it before they type theirs."
            )
        return data

    def values(self) -> dict:
        return dict(self.cleaned_data)
