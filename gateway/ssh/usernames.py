"""The SSH login name the gateway is given: ``alice`` or ``alice:ACCOUNT``.

``alice`` logs in and gets a menu of her live grants; ``alice:pacs01-root`` goes straight
to that account. Pure functions, no database: the name is checked here before anything
looks it up, so a name no person can have (control characters, a NUL that PostgreSQL
cannot even compare, thousands of characters) is refused with a message that says why
instead of reaching the login backends, the lockout counts or the audit trail.

- ``parse_login_name(text)``: the ``LoginName``, or ``LoginNameError`` (a ValueError) with a
  message safe to send to the client (it never repeats a control character, and repeats
  what was typed only when it is short and printable). ``str()`` of a LoginName gives the
  text back: ``parse_login_name(str(name)) == name``.
- ``login_name_problem(text)``: that message, or None for a usable name.
- ``parse_login(text)``: the gateway's ``(username, account or None)``, never raising. The
  same answer as ``parse_login_name`` for a usable name; for a name with a control or
  format character, or longer than any usable name, ``("", None)``, which matches no user
  (the login fails like an unknown user's, audited with an empty username); other unusable
  names are split as typed, so the existing messages after login still apply (an account
  that is not an account name, a user that does not exist).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

USERNAME_MAX = 150  # identity.User.username
ACCOUNT_MAX = 63  # access.Account.slug
LOGIN_MAX = USERNAME_MAX + 1 + ACCOUNT_MAX
# Django's username rule (identity.User, UnicodeUsernameValidator); the sync keeps to it too.
USERNAME_RE = re.compile(r"^[\w.@+-]+\Z")
ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
# Characters that are never part of a name: controls, format characters (zero-width,
# bidirectional overrides), surrogates, private use, unassigned, line and paragraph separators.
_NOT_TEXT = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_EXAMPLE = "Connect as USERNAME or USERNAME:ACCOUNT, e.g. alice:pacs01-root."
# SSH_DISCONNECT_ILLEGAL_USER_NAME (RFC 4253, 11.1): the reason code to refuse a name with.
DISCONNECT_ILLEGAL_USER_NAME = 15


class LoginNameError(ValueError):
    """The SSH login name cannot be a pamsite login; the message says why (safe to show)."""


@dataclass(frozen=True)
class LoginName:
    """A usable login name: the pamsite username and, if given, the account's slug."""

    username: str
    account: str | None = None

    def __str__(self) -> str:
        return self.username if self.account is None else f"{self.username}:{self.account}"


def _shown(text: str) -> str:
    """What was typed, for a message: only when short and printable (checked by the caller)."""
    return f"'{text}'" if len(text) <= 63 else f"'{text[:60]}…'"


def _bad_character(text: str) -> int | None:
    for position, char in enumerate(text):
        if unicodedata.category(char) in _NOT_TEXT:
            return position
    return None


def parse_login_name(text: str) -> LoginName:
    """``alice`` or ``alice:ACCOUNT`` as a LoginName; LoginNameError saying why if it is not one.

    Spaces around the name are ignored (as before); anything else must be exact.
    """
    if not isinstance(text, str):
        raise LoginNameError(f"The login name must be text. {_EXAMPLE}")
    if len(text) > LOGIN_MAX + 64:
        # Looked at no further: it cannot be a name, and a huge one is not worth scanning.
        raise LoginNameError(f"The login name is {len(text)} characters long; the longest is {LOGIN_MAX}.")
    bad = _bad_character(text)
    if bad is not None:
        raise LoginNameError(
            f"The login name has a control or invisible character in it (character {bad + 1}). "
            f"Type it again. {_EXAMPLE}"
        )
    text = text.strip(" ")
    if not text:
        raise LoginNameError(f"The login name is empty. {_EXAMPLE}")
    if len(text) > LOGIN_MAX:
        raise LoginNameError(f"The login name is {len(text)} characters long; the longest is {LOGIN_MAX}.")
    username, colon, account = text.partition(":")
    if ":" in account:
        raise LoginNameError(f"The login name has more than one ':'. {_EXAMPLE}")
    if not username:
        raise LoginNameError(f"The username is missing before the ':'. {_EXAMPLE}")
    if len(username) > USERNAME_MAX:
        raise LoginNameError(
            f"The username is {len(username)} characters long; the longest is {USERNAME_MAX}."
        )
    if not USERNAME_RE.match(username):
        raise LoginNameError(
            f"{_shown(username)} is not a username (letters, digits and . @ + - _ only). {_EXAMPLE}"
        )
    if not colon:
        return LoginName(username)
    if not account:
        raise LoginNameError(f"The account is missing after the ':'. {_EXAMPLE}")
    if not ACCOUNT_RE.match(account):
        raise LoginNameError(
            f"{_shown(account)} is not an account name (lower-case letters, digits and hyphens, "
            f"at most {ACCOUNT_MAX}). {_EXAMPLE}"
        )
    return LoginName(username, account)


def login_name_problem(text: str) -> str | None:
    """Why the text is not a usable login name, or None if it is."""
    try:
        parse_login_name(text)
    except LoginNameError as exc:
        return str(exc)
    return None


def parse_login(text: str) -> tuple[str, str | None]:
    """The gateway's ``(username, account or None)`` for a login name; never raises.

    ``alice:pacs01-root`` → ("alice", "pacs01-root"); ``alice`` → ("alice", None). A name
    that is not text, has a control or format character, or is longer than any usable
    name gives ("", None): no user has that name. Any other name is split at its last ':'
    as typed (the account lookup, or the user lookup, then says what is wrong).
    """
    if not isinstance(text, str) or len(text) > LOGIN_MAX + 64 or _bad_character(text) is not None:
        return "", None
    text = text.strip(" ")
    if len(text) > LOGIN_MAX:
        return "", None
    try:
        name = parse_login_name(text)
    except LoginNameError:
        if ":" in text:
            username, account = text.rsplit(":", 1)
            return username[:USERNAME_MAX], account[:200]
        return text[:USERNAME_MAX], None
    return name.username, name.account
