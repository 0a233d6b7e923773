"""The auditor's filters for the audit trail page."""

from __future__ import annotations

from django import forms
from django.core.validators import RegexValidator

from audit.selectors import AuditEventFilters

# The largest value of a bigint column: a larger cursor would be a database error.
MAX_SEQUENCE = 2**63 - 1
MIN_YEAR, MAX_YEAR = 1970, 9000

DATETIME_LOCAL_FORMATS = [
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
]


class DateTimeLocalInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, attrs=None):
        super().__init__(attrs, format="%Y-%m-%dT%H:%M")


class ReasonableTimesMixin:
    """A filter form's ``since``/``until`` limited to years the database can convert."""

    def clean_since(self):
        return _reasonable_time(self.cleaned_data["since"])

    def clean_until(self):
        return _reasonable_time(self.cleaned_data["until"])


def _reasonable_time(value):
    # Years at the ends of the calendar overflow when converted to UTC for the query.
    if value is not None and not (MIN_YEAR <= value.year <= MAX_YEAR):
        raise forms.ValidationError(f"Pick a time between the years {MIN_YEAR} and {MAX_YEAR}.")
    return value


class AuditFilterForm(ReasonableTimesMixin, forms.Form):
    """Actor, action (exact, or a prefix ending in "." or "*"), a time range and a keyset cursor.

    Every field is optional and bounded, so anything typed into the URL gives a form
    error rather than a database error.
    """

    actor = forms.CharField(
        required=False, max_length=150, strip=True, label="Actor", help_text="Username, exact."
    )
    action = forms.CharField(
        required=False,
        max_length=100,
        strip=True,
        label="Action",
        help_text='Exact, e.g. "auth.login.failure", or a prefix: "auth." or "auth.login*".',
        validators=[
            RegexValidator(
                r"^[a-z0-9_.*-]*$",
                "Actions are lower-case letters, digits, dots, hyphens and underscores.",
            ),
            RegexValidator(r"^[^*]*\*?$", 'A "*" may only end a prefix.'),
        ],
    )
    since = forms.DateTimeField(
        required=False,
        label="From",
        input_formats=DATETIME_LOCAL_FORMATS,
        widget=DateTimeLocalInput(),
        help_text="Inclusive, in the site's time zone.",
    )
    until = forms.DateTimeField(
        required=False,
        label="To",
        input_formats=DATETIME_LOCAL_FORMATS,
        widget=DateTimeLocalInput(),
        help_text="Exclusive.",
    )
    before = forms.IntegerField(required=False, min_value=1, max_value=MAX_SEQUENCE, widget=forms.HiddenInput)
    after = forms.IntegerField(required=False, min_value=0, max_value=MAX_SEQUENCE, widget=forms.HiddenInput)

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            self.add_error("until", "The end of the range must be after its start.")
        if cleaned.get("before") is not None and cleaned.get("after") is not None:
            raise forms.ValidationError("A page is either before or after an event, not both.")
        return cleaned

    def to_filters(self) -> AuditEventFilters:
        """The cleaned values as selector filters; only once the form is valid."""
        data = self.cleaned_data
        return AuditEventFilters(
            actor=data["actor"],
            action=data["action"],
            since=data["since"],
            until=data["until"],
            before=data["before"],
            after=data["after"],
        )
