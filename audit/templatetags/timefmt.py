"""Template filters for times and durations: ``{% load timefmt %}``.

``{{ grant.seconds_left|duration }}`` → ``29 min``, ``1 h 5 min``, ``45 s`` (seconds, or a
timedelta; ``audit.timefmt.duration_words``). Times take Django's ``date`` filter with the
zone's name from the value: ``{{ moment|date:"Y-m-d H:i T" }}``.
"""

from django import template

from audit.timefmt import duration_words

register = template.Library()


@register.filter
def duration(value) -> str:
    """A number of seconds (or a timedelta) in words; "" for anything else."""
    try:
        return duration_words(value if hasattr(value, "total_seconds") else float(value))
    except (TypeError, ValueError):
        return ""
