"""Times and durations as people read them, on every page and in every message.

In the ground layer so that each layer (pages, e-mails, the gateway's texts) says them the same
way. Times are shown in the site's ``TIME_ZONE`` with the zone's name from the value itself
(``CET``, ``CEST``, ``UTC``: right on both sides of a daylight-saving change), never a zone name
written into the text.
"""

from __future__ import annotations

import datetime
import math

from django.utils import timezone

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def duration_words(seconds: float | int | datetime.timedelta | None) -> str:
    """A length of time in words: ``45 s``, ``29 min``, ``1 h 5 min``, ``2 d 3 h``.

    Two units at most, the smaller one left out when it is zero; rounded down (1,787 s is
    ``29 min``: what is left is never overstated). Negative lengths are ``0 s``; None is "".
    """
    if seconds is None:
        return ""
    if isinstance(seconds, datetime.timedelta):
        seconds = seconds.total_seconds()
    if not math.isfinite(seconds):
        return ""
    whole = max(0, int(seconds))
    if whole < MINUTE:
        return f"{whole} s"
    if whole < HOUR:
        return f"{whole // MINUTE} min"
    if whole < DAY:
        hours, minutes = divmod(whole // MINUTE, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(whole // HOUR, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def local_time(moment: datetime.datetime, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    """``moment`` in the site's time zone, formatted (``%Z``: the zone's name at that moment)."""
    return timezone.localtime(moment).strftime(fmt)
