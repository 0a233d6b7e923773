"""A policy's ticket pattern: a regular expression a pam-admin types, checked before it is used.

A pattern must compile, and matching it against a ticket reference (at most 64 characters)
must stay quick whatever the requester types: Python's ``re`` backtracks, so a pattern
with a repeated group that itself repeats or alternates (``(a+)+``, ``(a|a)*``) or with
many variable-length repetitions in a row (``\\d*\\d*\\d*\\d*``) can take minutes on a
hostile ticket. ``ticket_pattern_problem`` refuses those with a message for the pam-admin;
``ticket_pattern_matches`` never runs a pattern that has a problem.
"""

from __future__ import annotations

import re
from re import _constants as sre_constants  # the parser's opcodes; stable since 3.11
from re import _parser as sre_parse

TICKET_MAX_CHARS = 64
# An upper bound of the backtracking paths on a ticket of TICKET_MAX_CHARS: three unbounded
# repetitions in a row pass (64^3), four do not (64^4: about a second on a hostile ticket).
MAX_PATHS = 5_000_000
_UNBOUNDED = 1 << 62

_REPEATS = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT}


class _TooSlow(Exception):
    pass


def _paths(items) -> int:
    """An upper bound of the ways a sequence of parsed items can split a ticket, or _TooSlow."""
    total = 1
    for op, arg in items:
        if op in _REPEATS:
            low, high, sub = arg
            inner = _paths(sub)
            if high > 1 and (inner > 1 or _varies(sub)):
                raise _TooSlow  # a repeated group that itself varies: exponential
            span = min(high, TICKET_MAX_CHARS) - min(low, TICKET_MAX_CHARS) + 1
            cost = inner * max(span, 1)
        elif op in (sre_constants.SUBPATTERN, sre_constants.ATOMIC_GROUP):
            cost = _paths(arg[-1] if op == sre_constants.SUBPATTERN else arg)
        elif op == sre_constants.BRANCH:
            cost = sum(_paths(alternative) for alternative in arg[1])
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            cost = _paths(arg[1])
        elif op == sre_constants.GROUPREF_EXISTS:
            cost = _paths(arg[1]) + (_paths(arg[2]) if arg[2] else 1)
        else:
            cost = 1
        total *= cost
        if total > MAX_PATHS:
            raise _TooSlow
    return total


def _varies(items) -> bool:
    """Whether the items can match texts of different lengths or in more than one way."""
    for op, arg in items:
        if op in _REPEATS:
            if arg[0] != arg[1] or _varies(arg[2]):
                return True
        elif op == sre_constants.BRANCH:
            return True
        elif op in (sre_constants.SUBPATTERN, sre_constants.ATOMIC_GROUP):
            if _varies(arg[-1] if op == sre_constants.SUBPATTERN else arg):
                return True
        elif op in (sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS):
            return True
    return False


def ticket_pattern_problem(pattern: str) -> str | None:
    """Why the pattern cannot be a policy's ticket pattern, or None if it can."""
    try:
        re.compile(pattern)
        parsed = sre_parse.parse(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        return f"Not a valid regular expression: {exc}"
    try:
        _paths(parsed.data)
    except _TooSlow:
        return (
            "This pattern could take too long to check a ticket: it repeats a group that itself "
            "repeats or alternates, or has many variable-length parts in a row. Write it without "
            r"nested repetition, e.g. ^(INC|CHG)-\d{3,10}$ or ^[A-Z]{2,5}-\d+$."
        )
    except RecursionError:
        return "Not a valid regular expression: it is nested too deeply."
    return None


def ticket_pattern_matches(pattern: str, ticket: str, *, ignore_case: bool = False) -> bool:
    """Whether the whole ticket matches the pattern (in any case with ``ignore_case``);
    ValueError if the pattern has a problem."""
    problem = ticket_pattern_problem(pattern)
    if problem:
        raise ValueError(problem)
    if len(ticket) > TICKET_MAX_CHARS:
        return False
    return re.fullmatch(pattern, ticket, re.IGNORECASE if ignore_case else 0) is not None
