"""AUDIT_FORWARD: destination URLs, and start-up refusing a bad one with the variable's name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit.destinations import parse_destination, parse_destinations

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_a_tcp_destination_defaults_to_port_514_and_json():
    dest = parse_destination("syslog+tcp://siem.hospital.example")
    assert (dest.host, dest.port, dest.format, dest.tls) == ("siem.hospital.example", 514, "json", False)
    assert dest.name == "siem.hospital.example:514/json"
    assert dest.address == "syslog+tcp://siem.hospital.example:514"
    assert dest.timeout == 10


@pytest.mark.unit
def test_a_tls_destination_takes_a_ca_a_client_certificate_a_timeout_and_a_name(tmp_path):
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    dest = parse_destination(
        f"syslog+tls://[2001:db8::1]?format=dicom&ca={tmp_path}/ca.pem&cert={tmp_path}/client.pem"
        f"&key={tmp_path}/client.key&timeout=2.5&name=atna"
    )
    assert (dest.host, dest.port, dest.format, dest.tls) == ("2001:db8::1", 6514, "dicom", True)
    assert dest.ca == f"{tmp_path}/ca.pem" and dest.cert and dest.key
    assert (dest.timeout, dest.name, dest.address) == (2.5, "atna", "syslog+tls://[2001:db8::1]:6514")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("syslog+udp://siem:514", "the scheme must be one of syslog+tcp, syslog+tls"),
        ("https://siem", "the scheme must be"),
        ("syslog+tcp://:514", "names no host"),
        ("syslog+tcp://siem:99999", "is not a URL"),
        ("syslog+tcp://siem:port", "is not a URL"),
        ("syslog+tcp://user:pw@siem", "no user or password"),
        ("syslog+tcp://siem/path", "only scheme://host:port?options"),
        ("syslog+tcp://siem?format=leef", "format must be one of json, cef, dicom"),
        ("syslog+tcp://siem?fmt=json", "unknown option 'fmt'"),
        ("syslog+tcp://siem?format=json&format=cef", "option 'format' given twice"),
        ("syslog+tcp://siem?ca=/etc/hosts", "ca= is for syslog+tls destinations only"),
        ("syslog+tls://siem?ca=/nonexistent/ca.pem", "ca file '/nonexistent/ca.pem' does not exist"),
        ("syslog+tls://siem?cert=/etc/hosts", "needs both cert= and key="),
        ("syslog+tcp://siem?timeout=soon", "timeout must be a number"),
        ("syslog+tcp://siem?timeout=0", "between 0.1 and 300"),
        ("syslog+tcp://siem?name=a b", "name must be"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url, problem):
    with pytest.raises(ValueError, match="^.*" + problem.replace("+", r"\+").replace("?", r"\?")):
        parse_destination(url)


@pytest.mark.unit
def test_a_list_may_be_blank_or_name_several_but_not_the_same_name_twice():
    assert parse_destinations("") == ()
    assert parse_destinations(" , ") == ()
    both = parse_destinations("syslog+tcp://a?format=cef, syslog+tcp://a?format=json")
    assert [d.name for d in both] == ["a:514/cef", "a:514/json"]
    with pytest.raises(ValueError, match="share the name 'a:514/json'"):
        parse_destinations("syslog+tcp://a,syslog+tcp://a:514")


def _check(value: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PAMSITE_MODE", "SECRET_KEY"}}
    env["AUDIT_FORWARD"] = value
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


def test_start_up_refuses_a_bad_audit_forward_naming_the_variable():
    result = _check("syslog+tcp://siem:514?format=json,syslog+tls://atna?format=xml")
    assert result.returncode != 0
    assert "ImproperlyConfigured: AUDIT_FORWARD: 'syslog+tls://atna?format=xml': format must be one of" in (
        result.stderr
    )


def test_start_up_accepts_good_destinations():
    result = _check("syslog+tcp://siem:514?format=cef,syslog+tcp://atna:6514?format=dicom")
    assert result.returncode == 0, result.stderr
