"""RFC 5424 messages and RFC 6587 octet-counted frames, and what each format puts in them."""

from __future__ import annotations

import pytest

from audit.formats import cef_extension_escape, cef_header_escape, is_failure, readable_name, syslog_severity
from audit.syslog import octet_frame, printable_ascii, rfc5424_message, sd_escape
from tests.audit.syslog_server import parse_rfc5424

pytestmark = pytest.mark.unit


def test_a_message_has_the_rfc5424_header_and_one_sd_element():
    message = rfc5424_message(
        severity=6,
        timestamp="2025-01-31T09:30:00.000123Z",
        hostname="pam01",
        msgid="auth.login.success",
        params={"seq": "7", "hash": "ab"},
        msg=b"{}",
    )
    assert message == (
        b"<86>1 2025-01-31T09:30:00.000123Z pam01 pamsite - auth.login.success "
        b'[pamsite@32473 seq="7" hash="ab"] {}'
    )


def test_structured_data_values_escape_quote_backslash_and_bracket():
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    message = rfc5424_message(
        severity=1, timestamp="T", hostname="h", msgid="m", params={"seq": '1"]\\'}, msg=b"x"
    )
    assert parse_rfc5424(message).params == {"seq": '1"]\\'}


def test_header_fields_are_printable_ascii_and_cut_to_length():
    assert printable_ascii("a b\tcé", 48) == "a_b_c_"
    assert printable_ascii("x" * 40, 32) == "x" * 32
    assert printable_ascii("", 32) == "-"
    message = rfc5424_message(
        severity=6, timestamp="T", hostname="my host", msgid="m" * 40, params={}, msg=b""
    )
    parsed = parse_rfc5424(message)
    assert (parsed.hostname, parsed.msgid) == ("my_host", "m" * 32)


def test_octet_counting_counts_bytes_not_characters():
    assert octet_frame("héllo".encode()) == b"6 h\xc3\xa9llo"


@pytest.mark.parametrize(
    ("action", "severity"),
    [
        ("security.alert.host_key_mismatch", 1),
        ("auth.lockout", 4),
        ("access.break_glass.activated", 4),
        ("auth.login.failure", 5),
        ("access.grant.release_failed", 5),
        ("gateway.session.refused", 5),
        ("auth.login.success", 6),
        ("access.request.denied", 6),
    ],
)
def test_severity_follows_the_kind_of_event(action, severity):
    assert syslog_severity(action) == severity


def test_failures_and_names():
    assert is_failure("mfa.enrol.failure") and not is_failure("auth.logout")
    assert readable_name("auth.login.failure") == "User login failed"
    assert readable_name("access.grant.checked_out") == "Access grant checked out"


def test_cef_escaping():
    assert cef_header_escape("a|b\\c\nd") == "a\\|b\\\\c d"
    assert cef_extension_escape("a=b\\c\r\nd|e") == "a\\=b\\\\c\\nd|e"
