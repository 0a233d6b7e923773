"""Durations in words (one filter for every page, the same words in the gateway's texts)."""

from __future__ import annotations

import datetime

import pytest
from django.template import Context, Template

from audit.timefmt import duration_words


@pytest.mark.unit
@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1787, "29 min"),  # was shown as "1787 s"
        (3900, "1 h 5 min"),
        (45, "45 s"),
        (45.9, "45 s"),  # rounded down: what is left is never overstated
        (0, "0 s"),
        (-3, "0 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3600, "1 h"),
        (7200 + 59, "2 h"),
        (86400 + 3 * 3600 + 120, "1 d 3 h"),
        (2 * 86400, "2 d"),
        (datetime.timedelta(minutes=90), "1 h 30 min"),
        (None, ""),
        (float("nan"), ""),
    ],
)
def test_a_duration_is_said_in_words(seconds, words):
    assert duration_words(seconds) == words


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1787, "29 min"),
        ("3900", "1 h 5 min"),
        (datetime.timedelta(seconds=45), "45 s"),
        ("soon", ""),
        (None, ""),
    ],
)
def test_the_duration_filter_says_seconds_or_a_timedelta_in_words(value, shown):
    template = Template("{% load timefmt %}[{{ value|duration }}]")
    assert template.render(Context({"value": value})) == f"[{shown}]"
