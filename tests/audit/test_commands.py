"""manage.py verify_audit: exit status and message."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, ManagementUtility, call_command

from tests.audit.conftest import tamper


def test_an_intact_trail_exits_0_and_says_so(events, capsys):
    call_command("verify_audit")
    assert "Audit trail intact: 7 events, last sequence 7" in capsys.readouterr().out


def test_an_empty_trail_is_intact(db, capsys):
    call_command("verify_audit")
    assert "Audit trail intact: 0 events, last sequence 0" in capsys.readouterr().out


def test_a_broken_trail_fails_naming_the_first_bad_sequence(events):
    tamper("DELETE FROM audit_auditevent WHERE sequence = 4")
    with pytest.raises(CommandError) as excinfo:
        call_command("verify_audit")
    assert "sequence 4" in str(excinfo.value)
    assert "missing" in str(excinfo.value)


def test_a_broken_trail_exits_1_from_the_command_line(events, capsys):
    tamper("""UPDATE audit_auditevent SET details = '{"n": 0}' WHERE sequence = 5""")
    with pytest.raises(SystemExit) as excinfo:
        ManagementUtility(["manage.py", "verify_audit"]).execute()
    assert excinfo.value.code == 1
    assert "Audit trail broken at sequence 5: event 5 was altered" in capsys.readouterr().err


def test_from_sequence_checks_only_the_rest(events, capsys):
    call_command("verify_audit", "--from-sequence", "6")
    assert "Audit trail intact: 2 events, last sequence 7 (from sequence 6)" in capsys.readouterr().out


def test_from_sequence_below_1_is_refused(db):
    with pytest.raises(CommandError, match="starts at 1"):
        call_command("verify_audit", "--from-sequence", "0")
