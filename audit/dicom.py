"""Audit events as DICOM audit messages (PS3.15 Annex A.5; IHE ATNA), the format PACS sites collect.

Only the events DICOM defines a message for are converted; :func:`dicom_audit_message`
returns None for the others (the forwarder skips them and still moves past them).
The XML follows the A.5.1 schema: ``EventIdentification``, one or more
``ActiveParticipant``, one ``AuditSourceIdentification``, then
``ParticipantObjectIdentification`` elements, in that order. It is built with
ElementTree, never by pasting text together, and written as ASCII (other characters
as character references) under an UTF-8 declaration, with characters XML 1.0 cannot
carry replaced by U+FFFD, so that anything a user typed stays well-formed XML.

======  ========  ===============================  ==============================================
Code    System    Meaning                          Used for
======  ========  ===============================  ==============================================
110114  DCM       User Authentication              EventID: ``auth.login.success``,
                                                   ``auth.login.failure``, ``auth.mfa.failure``
                                                   (web or SSH gateway), ``auth.logout``
110122  DCM       Login                            EventTypeCode of the logins and their failures
110123  DCM       Logout                           EventTypeCode of ``auth.logout``
110113  DCM       Security Alert                   EventID: ``security.*``, ``auth.lockout``,
                                                   ``access.break_glass.activated``
110126  DCM       Node Authentication              EventTypeCode of
                                                   ``security.alert.host_key_mismatch``
110127  DCM       Emergency Override Started       EventTypeCode of
                                                   ``access.break_glass.activated``
110132  DCM       Use of Restricted Function       EventTypeCode of other ``security.*`` alerts
                                                   (an untracked file transfer)
110137  DCM       User Security Attributes         EventTypeCode of ``auth.lockout``
                  Changed
110101  DCM       Audit Log Used                   EventID: ``audit.viewed``, ``audit.exported``,
                                                   ``audit.verified``, ``recording.viewed``,
                                                   ``recording.downloaded``
110150  DCM       Application                      RoleIDCode of pamsite reading the log
110182  DCM       Node ID                          ParticipantObjectIDTypeCode of the target
                                                   host of a host key alert
11      RFC-3881  User Identifier                  ParticipantObjectIDTypeCode of a user account
12      RFC-3881  URI                              ParticipantObjectIDTypeCode of the audit log,
                                                   a recording, another alert subject
======  ========  ===============================  ==============================================

Values of the schema's enumerated attributes:

- ``EventActionCode``: ``E`` (execute) for authentication and alerts, ``R`` (read) for Audit
  Log Used. (DICOM's tables call it EventActionCode; RFC 3881 called it EventActionIndicator.)
- ``EventOutcomeIndicator``: ``0`` success; ``4`` minor failure (a wrong password or
  code, a lockout: the attempt was stopped); ``8`` serious failure (``security.*``
  alerts: the gateway refused or flagged it); ``12`` (major failure) is not used.
  Break-glass is ``0``: an informative alert, the override was allowed.
- ``NetworkAccessPointTypeCode``: ``2`` IP address (the client's), ``1`` machine name
  (pamsite's host; also for a user event recorded without an address, as "unknown").
- ``ParticipantObjectTypeCode``: ``1`` person (the account that logged in), ``2`` system
  object (the audit log, an alert subject).
- ``ParticipantObjectTypeCodeRole``: ``11`` security user entity (the account),
  ``13`` security resource (the audit log, an alert subject).
- ``AuditSourceTypeCode``: ``6`` security server (pamsite grants and controls access).
- ``AuditSourceID``: ``AUDIT_FORWARD_HOSTNAME`` (this host); ``AuditEnterpriseSiteID``:
  ``PAMSITE_SITE_NAME``.

Extensions (A.5 allows them; a conformance statement lists them): User Authentication
carries the account as a participant object (A.5.3.12 needs none), and every message's
first participant object carries ``ParticipantObjectDetail`` ``pamsite-sequence`` and
``pamsite-hash``: the event's place in pamsite's hash chain.
"""

from __future__ import annotations

import base64
import re

# Builds XML only: nothing is parsed here, so the parser's weaknesses do not apply.
import xml.etree.ElementTree as ET  # nosec B405
from dataclasses import dataclass

from audit.formats import details_json, readable_name
from audit.hashing import canonical_time
from audit.models import AuditEvent

XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'

# Characters XML 1.0 cannot carry, even as references.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Code:
    """A coded value: ``csd-code``, ``codeSystemName`` and ``originalText`` (the code meaning)."""

    code: str
    system: str
    meaning: str


USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = Code("110127", "DCM", "Emergency Override Started")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "DCM", "User Security Attributes Changed")
AUDIT_LOG_USED = Code("110101", "DCM", "Audit Log Used")
APPLICATION = Code("110150", "DCM", "Application")
NODE_ID = Code("110182", "DCM", "Node ID")
USER_IDENTIFIER = Code("11", "RFC-3881", "User Identifier")
URI = Code("12", "RFC-3881", "URI")
# AuditSourceTypeCode is one of the schema's own digits, written without a code system.
SECURITY_SERVER_SOURCE = "6"

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"

# A wrong code at sign-in is a failed login too (the password step alone is not a login).
LOGIN_ACTIONS = {
    "auth.login.success": SUCCESS,
    "auth.login.failure": MINOR_FAILURE,
    "auth.mfa.failure": MINOR_FAILURE,
}
AUDIT_LOG_ACTIONS = {"audit.viewed", "audit.exported", "audit.verified"}
RECORDING_ACTIONS = {"recording.viewed", "recording.downloaded"}
ALERT_TYPES = {
    "security.alert.host_key_mismatch": NODE_AUTHENTICATION,
    "auth.lockout": USER_SECURITY_ATTRIBUTES_CHANGED,
    "access.break_glass.activated": EMERGENCY_OVERRIDE_STARTED,
}


def dicom_event_id(action: str) -> Code | None:
    """The EventID the action is reported under, or None when it has no DICOM message."""
    if action in LOGIN_ACTIONS or action == "auth.logout":
        return USER_AUTHENTICATION
    if action.startswith("security.") or action in ALERT_TYPES:
        return SECURITY_ALERT
    if action in AUDIT_LOG_ACTIONS or action in RECORDING_ACTIONS:
        return AUDIT_LOG_USED
    return None


def dicom_audit_message(
    event: AuditEvent, *, source_id: str, site_id: str = "", audit_log_uri: str
) -> bytes | None:
    """The event as a DICOM ``<AuditMessage>`` (bytes, with an XML declaration), or None.

    ``source_id`` names this host (AuditSourceID and the node that authenticates),
    ``site_id`` the site (AuditEnterpriseSiteID), ``audit_log_uri`` the audit trail's
    address (the object of Audit Log Used).
    """
    event_id = dicom_event_id(event.action)
    if event_id is None:
        return None
    root = ET.Element("AuditMessage")
    if event_id is USER_AUTHENTICATION:
        _user_authentication(root, event, source_id=source_id)
    elif event_id is SECURITY_ALERT:
        _security_alert(root, event, source_id=source_id)
    else:
        _audit_log_used(root, event, source_id=source_id, audit_log_uri=audit_log_uri)
    first_object = root.find("ParticipantObjectIdentification")
    source = ET.Element("AuditSourceIdentification", _attributes(AuditSourceID=source_id))
    if site_id:
        source.set("AuditEnterpriseSiteID", _xml_text(site_id))
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": SECURITY_SERVER_SOURCE})
    # The schema's order: the source comes after the participants, before the objects.
    position = list(root).index(first_object) if first_object is not None else len(root)
    root.insert(position, source)
    if first_object is not None:
        _detail(first_object, "pamsite-sequence", str(event.sequence))
        _detail(first_object, "pamsite-hash", event.hash)
    text = ET.tostring(root, encoding="unicode", short_empty_elements=True)
    return XML_DECLARATION + text.encode("ascii", "xmlcharrefreplace")


# --- the three messages ---------------------------------------------------------------


def _user_authentication(root: ET.Element, event: AuditEvent, *, source_id: str) -> None:
    """A.5.3.12: the person (with their address) and the node that authenticated them."""
    logout = event.action == "auth.logout"
    outcome = SUCCESS if logout else LOGIN_ACTIONS[event.action]
    _event_identification(
        root,
        event,
        USER_AUTHENTICATION,
        action_code="E",
        outcome=outcome,
        type_code=LOGOUT if logout else LOGIN,
        description=_reason(event) if outcome != SUCCESS else "",
    )
    username = event.actor_username or "unknown"
    _person(root, event, username=username, requestor=True, mandatory_address=True)
    channel = (event.details or {}).get("channel")
    process = "pamsite-gateway" if channel == "ssh" else "pamsite"
    _participant(root, user_id=process, requestor=False, address=source_id, address_type="1")
    _object(
        root,
        object_id=username,
        id_type=USER_IDENTIFIER,
        name=username,
        type_code="1",
        role="11",
    )


def _security_alert(root: ET.Element, event: AuditEvent, *, source_id: str) -> None:
    """A.5.3.11: pamsite reports; the user who set it off performs; the subject and a description."""
    action = event.action
    if action.startswith("security."):
        outcome = SERIOUS_FAILURE
    elif action == "auth.lockout":
        outcome = MINOR_FAILURE
    else:
        outcome = SUCCESS  # an informative alert: the override was allowed
    type_code = ALERT_TYPES.get(action, USE_OF_RESTRICTED_FUNCTION)
    _event_identification(root, event, SECURITY_ALERT, action_code="E", outcome=outcome, type_code=type_code)
    _participant(root, user_id="pamsite", requestor=True, address=source_id, address_type="1")
    if event.actor_username:
        _person(root, event, username=event.actor_username, requestor=False, mandatory_address=False)

    details = event.details or {}
    if action == "security.alert.host_key_mismatch" and details.get("target"):
        subject_id, id_type, name = str(details["target"]), NODE_ID, str(details["target"])
    elif action == "auth.lockout":
        subject_id = event.actor_username or event.source_ip or "unknown"
        id_type, name = USER_IDENTIFIER, subject_id
    else:
        subject_id, id_type, name = _object_uri(event), URI, event.object_repr or _object_uri(event)
    subject = _object(root, object_id=subject_id, id_type=id_type, name=name, type_code="2", role="13")
    description = readable_name(action)
    if details:
        description += ": " + details_json(details)
    _detail(subject, "Alert Description", description)


def _audit_log_used(root: ET.Element, event: AuditEvent, *, source_id: str, audit_log_uri: str) -> None:
    """A.5.3.2: the person and the application reading the log; the log itself."""
    _event_identification(root, event, AUDIT_LOG_USED, action_code="R", outcome=SUCCESS)
    _person(root, event, username=event.actor_username or "unknown", requestor=True, mandatory_address=False)
    application = _participant(root, user_id="pamsite", requestor=False, address=source_id, address_type="1")
    _coded(application, "RoleIDCode", APPLICATION)
    if event.action in RECORDING_ACTIONS:
        object_id, name = _object_uri(event), event.object_repr or "Session recording"
    else:
        object_id, name = audit_log_uri, "Security Audit Log"
    _object(root, object_id=object_id, id_type=URI, name=name, type_code="2", role="13")


# --- elements -------------------------------------------------------------------------


def _event_identification(
    root: ET.Element,
    event: AuditEvent,
    event_id: Code,
    *,
    action_code: str,
    outcome: str,
    type_code: Code | None = None,
    description: str = "",
) -> None:
    element = ET.SubElement(
        root,
        "EventIdentification",
        _attributes(
            EventActionCode=action_code,
            EventDateTime=canonical_time(event.created_at),
            EventOutcomeIndicator=outcome,
        ),
    )
    _coded(element, "EventID", event_id)
    if type_code is not None:
        _coded(element, "EventTypeCode", type_code)
    if description:
        ET.SubElement(element, "EventOutcomeDescription").text = _xml_text(description)


def _person(
    root: ET.Element, event: AuditEvent, *, username: str, requestor: bool, mandatory_address: bool
) -> ET.Element:
    if event.source_ip:
        return _participant(
            root, user_id=username, requestor=requestor, address=event.source_ip, address_type="2"
        )
    if mandatory_address:
        return _participant(root, user_id=username, requestor=requestor, address="unknown", address_type="1")
    return _participant(root, user_id=username, requestor=requestor)


def _participant(
    root: ET.Element, *, user_id: str, requestor: bool, address: str = "", address_type: str = ""
) -> ET.Element:
    attributes = {"UserID": user_id, "UserIsRequestor": "true" if requestor else "false"}
    if address:
        attributes |= {"NetworkAccessPointID": address, "NetworkAccessPointTypeCode": address_type}
    return ET.SubElement(root, "ActiveParticipant", _attributes(**attributes))


def _object(
    root: ET.Element, *, object_id: str, id_type: Code, name: str, type_code: str, role: str
) -> ET.Element:
    element = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        _attributes(
            ParticipantObjectID=object_id,
            ParticipantObjectTypeCode=type_code,
            ParticipantObjectTypeCodeRole=role,
        ),
    )
    _coded(element, "ParticipantObjectIDTypeCode", id_type)
    ET.SubElement(element, "ParticipantObjectName").text = _xml_text(name)
    return element


def _detail(element: ET.Element, kind: str, value: str) -> None:
    """A ParticipantObjectDetail: the value base64-encoded, as the schema requires."""
    encoded = base64.b64encode(value.encode("utf-8", "replace")).decode("ascii")
    ET.SubElement(element, "ParticipantObjectDetail", _attributes(type=kind, value=encoded))


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning}
    )


def _attributes(**values: str) -> dict[str, str]:
    return {name: _xml_text(value) for name, value in values.items()}


def _xml_text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def _object_uri(event: AuditEvent) -> str:
    """A URN naming the event's object (``urn:pamsite:recordings.session:12``)."""
    if not event.object_type:
        return f"urn:pamsite:audit.event:{event.sequence}"
    return f"urn:pamsite:{event.object_type}:{event.object_id}"


def _reason(event: AuditEvent) -> str:
    details = event.details or {}
    reason = details.get("reason") or "failed"
    return f"{readable_name(event.action)}: {reason}"
