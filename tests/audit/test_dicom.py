"""DICOM PS3.15 A.5 audit messages: well-formed, the schema's structure, and the right codes per event.

The official schema (RELAX NG compact, A.5.1) is not available offline here, so
:func:`check_schema` checks what it requires by hand: the element groups and their
order, mandatory attributes, enumerated values and the coded-value attributes.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from xml.etree import ElementTree as ET

import pytest

from audit.dicom import dicom_audit_message, dicom_event_id
from audit.services import audit_record

SOURCE = "pam01.hospital.example"
LOG_URI = "https://pam.hospital.example/audit/"

CODED = {"csd-code", "codeSystemName", "originalText", "displayName"}
OUTCOMES = {"0", "4", "8", "12"}
ACTION_CODES = {"C", "R", "U", "D", "E"}
NAP_TYPES = {"1", "2", "3", "4", "5"}
OBJECT_TYPES = {"1", "2", "3", "4"}
OBJECT_ROLES = {str(n) for n in range(1, 27)}


def check_coded(element: ET.Element) -> tuple[str, str, str]:
    """A CodedValueType: csd-code, codeSystemName and originalText present, nothing else but displayName."""
    assert set(element.attrib) <= CODED, element.attrib
    for name in ("csd-code", "codeSystemName", "originalText"):
        assert element.get(name), f"{element.tag} lacks {name}"
    assert len(element) == 0
    return element.get("csd-code"), element.get("codeSystemName"), element.get("originalText")


def check_schema(root: ET.Element) -> None:
    """What the A.5.1 schema requires of an AuditMessage."""
    assert root.tag == "AuditMessage" and not root.attrib
    tags = [child.tag for child in root]
    # EventIdentification, ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*
    assert tags[0] == "EventIdentification"
    participants = tags[1 : tags.index("AuditSourceIdentification")]
    assert participants and set(participants) == {"ActiveParticipant"}
    assert tags.count("AuditSourceIdentification") == 1
    assert set(tags[tags.index("AuditSourceIdentification") + 1 :]) <= {"ParticipantObjectIdentification"}

    event = root[0]
    assert set(event.attrib) <= {"EventActionCode", "EventDateTime", "EventOutcomeIndicator"}
    assert event.get("EventActionCode", "E") in ACTION_CODES
    assert event.get("EventOutcomeIndicator") in OUTCOMES
    when = dt.datetime.fromisoformat(event.get("EventDateTime").replace("Z", "+00:00"))
    assert when.tzinfo is not None  # A.5.2.5: with the time zone
    children = [child.tag for child in event]
    assert children[0] == "EventID" and children.count("EventID") == 1
    assert set(children[1:]) <= {"EventTypeCode", "EventOutcomeDescription"}
    if "EventOutcomeDescription" in children:
        assert children[-1] == "EventOutcomeDescription"
    for child in event:
        if child.tag != "EventOutcomeDescription":
            check_coded(child)

    for participant in root.findall("ActiveParticipant"):
        allowed = {
            "UserID",
            "AlternativeUserID",
            "UserName",
            "UserIsRequestor",
            "NetworkAccessPointID",
            "NetworkAccessPointTypeCode",
        }
        assert set(participant.attrib) <= allowed
        assert participant.get("UserID") is not None
        assert participant.get("UserIsRequestor") in {"true", "false"}
        if participant.get("NetworkAccessPointID") is not None:
            assert participant.get("NetworkAccessPointTypeCode") in NAP_TYPES
        for child in participant:
            assert child.tag in {"RoleIDCode", "MediaIdentifier"}
            check_coded(child)

    source = root.find("AuditSourceIdentification")
    assert set(source.attrib) <= {"AuditEnterpriseSiteID", "AuditSourceID"}
    assert source.get("AuditSourceID")
    for child in source:
        assert child.tag == "AuditSourceTypeCode"
        code = child.get("csd-code")
        assert code in {str(n) for n in range(1, 10)} or child.get("codeSystemName")

    for obj in root.findall("ParticipantObjectIdentification"):
        assert obj.get("ParticipantObjectID")
        assert obj.get("ParticipantObjectTypeCode", "1") in OBJECT_TYPES
        assert obj.get("ParticipantObjectTypeCodeRole", "1") in OBJECT_ROLES
        children = [child.tag for child in obj]
        assert children[0] == "ParticipantObjectIDTypeCode"
        check_coded(obj[0])
        assert children[1] in {"ParticipantObjectName", "ParticipantObjectQuery"}
        assert set(children[2:]) <= {"ParticipantObjectDetail", "ParticipantObjectDescription"}
        for detail in obj.findall("ParticipantObjectDetail"):
            assert set(detail.attrib) == {"type", "value"}
            base64.b64decode(detail.get("value"), validate=True)


def message(event) -> ET.Element:
    data = dicom_audit_message(event, source_id=SOURCE, site_id="St Elsewhere", audit_log_uri=LOG_URI)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    data.decode("ascii")  # other characters are written as references
    root = ET.fromstring(data)  # noqa: S314  (pamsite's own output, under test)
    check_schema(root)
    return root


def code_of(root: ET.Element, path: str) -> tuple[str, str, str]:
    return check_coded(root.find(path))


def detail(obj: ET.Element, kind: str) -> str:
    (element,) = [d for d in obj.findall("ParticipantObjectDetail") if d.get("type") == kind]
    return base64.b64decode(element.get("value")).decode()


def test_a_login_is_user_authentication_login_success(db):
    event = audit_record(
        action="auth.login.success",
        actor_username="alice",
        source_ip="192.0.2.10",
        details={"method": "totp"},
    )
    root = message(event)

    assert code_of(root, "EventIdentification/EventID") == ("110114", "DCM", "User Authentication")
    assert code_of(root, "EventIdentification/EventTypeCode") == ("110122", "DCM", "Login")
    ident = root.find("EventIdentification")
    assert ident.get("EventActionCode") == "E"
    assert ident.get("EventOutcomeIndicator") == "0"
    assert ident.find("EventOutcomeDescription") is None
    person, node = root.findall("ActiveParticipant")
    assert person.attrib == {
        "UserID": "alice",
        "UserIsRequestor": "true",
        "NetworkAccessPointID": "192.0.2.10",
        "NetworkAccessPointTypeCode": "2",
    }
    assert node.get("UserID") == "pamsite" and node.get("UserIsRequestor") == "false"
    assert node.get("NetworkAccessPointID") == SOURCE and node.get("NetworkAccessPointTypeCode") == "1"
    source = root.find("AuditSourceIdentification")
    assert source.get("AuditSourceID") == SOURCE
    assert source.get("AuditEnterpriseSiteID") == "St Elsewhere"
    assert source.find("AuditSourceTypeCode").get("csd-code") == "6"
    (account,) = root.findall("ParticipantObjectIdentification")
    assert account.get("ParticipantObjectID") == "alice"
    assert (account.get("ParticipantObjectTypeCode"), account.get("ParticipantObjectTypeCodeRole")) == (
        "1",
        "11",
    )
    assert code_of(account, "ParticipantObjectIDTypeCode") == ("11", "RFC-3881", "User Identifier")
    assert detail(account, "pamsite-sequence") == str(event.sequence)
    assert detail(account, "pamsite-hash") == event.hash
    assert dt.datetime.fromisoformat(ident.get("EventDateTime").replace("Z", "+00:00")) == event.created_at


@pytest.mark.parametrize(
    ("action", "details", "reason"),
    [
        ("auth.login.failure", {"reason": "bad_password", "step": "password"}, "bad_password"),
        ("auth.mfa.failure", {"reason": "wrong_code", "channel": "ssh"}, "wrong_code"),
    ],
)
def test_a_failed_login_is_user_authentication_login_minor_failure(db, action, details, reason):
    event = audit_record(action=action, actor_username="mallory", source_ip="2001:db8::9", details=details)
    root = message(event)

    assert code_of(root, "EventIdentification/EventID")[0] == "110114"
    assert code_of(root, "EventIdentification/EventTypeCode")[0] == "110122"
    ident = root.find("EventIdentification")
    assert ident.get("EventOutcomeIndicator") == "4"
    assert reason in ident.find("EventOutcomeDescription").text
    person, node = root.findall("ActiveParticipant")
    assert person.get("NetworkAccessPointID") == "2001:db8::9"
    assert node.get("UserID") == ("pamsite-gateway" if details.get("channel") == "ssh" else "pamsite")


def test_a_login_recorded_without_an_address_still_has_the_mandatory_access_point(db):
    root = message(audit_record(action="auth.login.failure", actor_username="", details={"reason": "x"}))
    person = root.find("ActiveParticipant")
    assert person.get("UserID") == "unknown"
    assert (person.get("NetworkAccessPointID"), person.get("NetworkAccessPointTypeCode")) == ("unknown", "1")


def test_a_logout_is_user_authentication_logout(db):
    root = message(audit_record(action="auth.logout", actor_username="alice", source_ip="192.0.2.10"))
    assert code_of(root, "EventIdentification/EventID")[0] == "110114"
    assert code_of(root, "EventIdentification/EventTypeCode") == ("110123", "DCM", "Logout")
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "0"


def test_a_host_key_mismatch_is_a_security_alert_on_the_node(db):
    event = audit_record(
        action="security.alert.host_key_mismatch",
        actor_username="alice",
        source_ip="192.0.2.10",
        object_type="recordings.session",
        object_id="4",
        details={"target": "pacs01.hospital.example", "message": "offered ssh-ed25519 SHA256:abc"},
    )
    root = message(event)

    assert code_of(root, "EventIdentification/EventID") == ("110113", "DCM", "Security Alert")
    assert code_of(root, "EventIdentification/EventTypeCode") == ("110126", "DCM", "Node Authentication")
    ident = root.find("EventIdentification")
    assert (ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == ("E", "8")
    reporter, performer = root.findall("ActiveParticipant")
    assert (reporter.get("UserID"), reporter.get("UserIsRequestor")) == ("pamsite", "true")
    assert (performer.get("UserID"), performer.get("UserIsRequestor")) == ("alice", "false")
    (subject,) = root.findall("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "pacs01.hospital.example"
    assert subject.get("ParticipantObjectTypeCode") == "2"
    assert code_of(subject, "ParticipantObjectIDTypeCode") == ("110182", "DCM", "Node ID")
    description = detail(subject, "Alert Description")
    assert description.startswith("Target host key mismatch: ")
    assert "SHA256:abc" in description


@pytest.mark.parametrize(
    ("action", "type_code", "outcome"),
    [
        ("security.alert.transfer_untracked", "110132", "8"),
        ("auth.lockout", "110137", "4"),
        ("access.break_glass.activated", "110127", "0"),
    ],
)
def test_other_security_alerts_carry_their_type(db, action, type_code, outcome):
    event = audit_record(action=action, actor_username="bob", source_ip="192.0.2.3", details={"what": "x"})
    root = message(event)
    assert code_of(root, "EventIdentification/EventID")[0] == "110113"
    assert code_of(root, "EventIdentification/EventTypeCode")[0] == type_code
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == outcome
    (subject,) = root.findall("ParticipantObjectIdentification")
    assert detail(subject, "Alert Description")


@pytest.mark.parametrize("action", ["audit.viewed", "audit.exported", "audit.verified"])
def test_reading_the_audit_trail_is_audit_log_used(db, action):
    event = audit_record(
        action=action, actor_username="carol", source_ip="192.0.2.20", details={"format": "csv"}
    )
    root = message(event)

    assert code_of(root, "EventIdentification/EventID") == ("110101", "DCM", "Audit Log Used")
    ident = root.find("EventIdentification")
    assert (ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == ("R", "0")
    person, application = root.findall("ActiveParticipant")
    assert (person.get("UserID"), person.get("UserIsRequestor")) == ("carol", "true")
    assert person.get("NetworkAccessPointID") == "192.0.2.20"
    assert application.get("UserIsRequestor") == "false"
    assert code_of(application, "RoleIDCode") == ("110150", "DCM", "Application")
    (log,) = root.findall("ParticipantObjectIdentification")
    assert log.get("ParticipantObjectID") == LOG_URI
    assert (log.get("ParticipantObjectTypeCode"), log.get("ParticipantObjectTypeCodeRole")) == ("2", "13")
    assert code_of(log, "ParticipantObjectIDTypeCode") == ("12", "RFC-3881", "URI")
    assert log.find("ParticipantObjectName").text == "Security Audit Log"


@pytest.mark.parametrize("action", ["recording.viewed", "recording.downloaded"])
def test_replaying_a_recording_is_audit_log_used_on_the_recording(db, action):
    event = audit_record(
        action=action,
        actor_username="carol",
        object_type="recordings.recording",
        object_id="12",
        object_repr="session 4, channel 0",
    )
    root = message(event)
    assert code_of(root, "EventIdentification/EventID")[0] == "110101"
    (recording,) = root.findall("ParticipantObjectIdentification")
    assert recording.get("ParticipantObjectID") == "urn:pamsite:recordings.recording:12"
    assert recording.find("ParticipantObjectName").text == "session 4, channel 0"
    # No address recorded: the person is there without an access point (optional here).
    assert root.find("ActiveParticipant").get("NetworkAccessPointID") is None


@pytest.mark.parametrize(
    "action",
    ["access.request.created", "auth.login.password_ok", "identity.ssh_key.added", "vault.bootstrap"],
)
def test_events_dicom_has_no_message_for_are_left_out(db, action):
    assert dicom_event_id(action) is None
    event = audit_record(action=action, actor_username="alice")
    assert dicom_audit_message(event, source_id=SOURCE, audit_log_uri=LOG_URI) is None


def test_what_users_type_cannot_break_the_xml(db):
    nasty = 'é<x a="1">&amp;\x01\x1b]0;\ud800 ]]> --> <!-- \u2028'
    event = audit_record(
        action="auth.login.failure",
        actor_username=nasty[:150],
        source_ip="192.0.2.1",
        details={"reason": nasty},
    )
    root = message(event)
    person = root.find("ActiveParticipant")
    # Kept but for the characters XML cannot carry (replaced by U+FFFD).
    assert person.get("UserID").startswith('é<x a="1">&amp;\ufffd\ufffd]0;')
    assert root.find("EventIdentification/EventOutcomeDescription").text.endswith("<!-- \u2028")
    assert root.find(".//x") is None  # text, never markup
    assert ipaddress.ip_address(person.get("NetworkAccessPointID"))
