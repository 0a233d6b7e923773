"""Bad values in the directory: the sync skips or trims them, says why, and carries on.

Property test of the pure mapping (identity.ldap_client.entry_from_attrs): for any raw
attributes (empty, huge, binary, non-UTF-8, control characters, several values where one
is expected, missing), it never raises, and an entry it does not mark unusable makes a
user that passes the user model's own validation (username rule, lengths) with no control
character anywhere: never a cut or broken username or id.

Then the real sync against the real slapd and the real Active Directory (Samba AD DC), with
the bad values each takes: a DN of over 1,000 characters, control characters, an address
that is not one, a username pamsite cannot have (both); a 100 kB display name, two usernames
on one entry, binary values, a missing and a binary stable id (slapd); a NUL in a name and a
200-character sAMAccountName (AD, which refuses the others). One run, next to ordinary
users: it succeeds; the ordinary users are created; each bad entry is left alone or trimmed
with a line in the run's problems that names it and says why; nothing broken is stored.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.models import AuditEvent
from identity.directory import directory_sync
from identity.ldap_client import PRESETS, DirectoryEntry, LdapConfig, entry_from_attrs
from identity.models import User
from tests.badinput.helpers import BADINPUT, CHARS
from tests.fixtures.directory import slapd_only

pytestmark = pytest.mark.django_db

# The mapping is pure: many examples are cheap.
PURE = settings(BADINPUT, max_examples=300)

VALUE = st.one_of(
    st.binary(max_size=40),
    st.text(CHARS, max_size=40).map(lambda t: t.encode()),
    st.sampled_from(
        [
            b"",
            b" ",
            b"\x00",
            b"alice\x00",
            b"\xff\xfe",
            b"caf\xc3",
            b"\xed\xa0\x80",
            b"a\x07b",
            b"x\r\ny",
            b"bob:admin",
            b"al ice",
            b"ALICE",
            b"alice@hospital.example",
            b"not an address",
            b"a@b",
            b"\x1b[31mred",
            b"\x10\x32\x54\x76\x98\xba\xdc\xfe\x01\x23\x45\x67\x89\xab\xcd\xef",
        ]
    ),
    st.builds(
        lambda piece, n: piece * n,
        st.sampled_from([b"a", b"\xc3\xa9", b"\xff", b"x "]),
        st.integers(150, 60_000),
    ),
)
VALUES = st.lists(VALUE, max_size=3)
NAMES = [
    "uid",
    "cn",
    "mail",
    "givenName",
    "sn",
    "entryUUID",
    "pwdAccountLockedTime",
    "memberOf",
    "modifyTimestamp",
    "sAMAccountName",
    "displayName",
    "objectGUID",
    "userAccountControl",
    "whenChanged",
]
ATTRS = st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=len(NAMES))
DNS = st.one_of(
    st.just("cn=Alice,ou=people,dc=hospital,dc=example"),
    st.text(CHARS, max_size=60).map(lambda t: f"cn={t},dc=example"),
    st.integers(900, 3000).map(lambda n: "cn=" + "a" * n + ",dc=example"),
)


def no_control(text: str) -> bool:
    return not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text)


def assert_storable(entry: DirectoryEntry) -> None:
    """What the sync would store from this entry is a valid, unbroken user."""
    user = User(
        username=entry.username,
        email=entry.email,
        display_name=entry.display_name,
        first_name=entry.first_name,
        last_name=entry.last_name,
        source=User.Source.LDAP,
        external_id=entry.stable_id,
        directory_dn=entry.dn,
    )
    user.set_unusable_password()
    user.full_clean(validate_unique=False)
    for value in (
        entry.username,
        entry.stable_id,
        entry.email,
        entry.display_name,
        entry.first_name,
        entry.last_name,
        entry.dn,
    ):
        assert no_control(value), value


@PURE
@given(attrs=ATTRS, dn=DNS, preset=st.sampled_from(["openldap", "ad"]))
def test_any_attribute_values_give_a_storable_entry_or_a_reason(attrs, dn, preset):
    config = LdapConfig(preset=preset, attrs=PRESETS[preset])
    entry = entry_from_attrs(config, dn, attrs)
    for note in entry.notes:
        assert note and len(note) < 400 and no_control(note), note
    if entry.unusable:
        assert len(entry.unusable) < 400 and no_control(entry.unusable), entry.unusable
        return
    if entry.stable_id and entry.username:
        assert_storable(entry)


@pytest.mark.parametrize(
    ("attrs", "unusable", "note"),
    [
        ({"uid": [b"carl", b"carl2"], "entryUUID": [b"u1"]}, "uid has 2 values", None),
        ({"uid": [b"a" * 151], "entryUUID": [b"u1"]}, "151 characters long", None),
        ({"uid": [b"bob:admin"], "entryUUID": [b"u1"]}, "cannot have", None),
        ({"uid": [b"al ice"], "entryUUID": [b"u1"]}, "cannot have", None),
        ({"uid": [b"eve\x00"], "entryUUID": [b"u1"]}, "cannot have", None),
        ({"uid": [b"eve"], "entryUUID": [b"u1", b"u2"]}, "entryUUID has 2 values", None),
        ({"uid": [b"eve"], "entryUUID": [b"u" * 201]}, "201 characters", None),
        (
            {"uid": [b"eve"], "entryUUID": [b"u1"], "cn": [b"x" * 100_000]},
            None,
            "cn is 100000 characters long",
        ),
        ({"uid": [b"eve"], "entryUUID": [b"u1"], "cn": [b"Eve\x00\x07"]}, None, "control characters"),
        (
            {"uid": [b"eve"], "entryUUID": [b"u1"], "mail": [b"not an address"]},
            None,
            "is not an e-mail address",
        ),
        ({"uid": [b"eve"], "entryUUID": [b"u1"], "mail": [b"eve@x\nBcc: all@x"]}, None, "control characters"),
    ],
)
def test_each_bad_value_is_named(attrs, unusable, note):
    entry = entry_from_attrs(LdapConfig(), "cn=Eve,dc=example", attrs)
    if unusable:
        assert unusable in entry.unusable
    else:
        assert not entry.unusable
        assert any(note in n for n in entry.notes), entry.notes
        assert_storable(entry)


def test_a_binary_stable_id_is_kept_as_hex_so_two_never_collide():
    config = LdapConfig()
    one = entry_from_attrs(config, "cn=a,dc=x", {"uid": [b"a"], "entryUUID": [b"\xff\x00\x01"]})
    two = entry_from_attrs(config, "cn=b,dc=x", {"uid": [b"b"], "entryUUID": [b"\xff\x00\x02"]})
    assert (one.stable_id, two.stable_id) == ("hex:ff0001", "hex:ff0002")


# --- The real sync against slapd and Active Directory ------------------------------------------


@pytest.fixture
def odd_directory(directory, settings):
    """Ordinary users next to every kind of bad value the server takes, in the test's own tree.

    Returns the ordinary users' DNs, the bad entries' DNs by kind, and for each kind what the
    run must say: ("trimmed", words) or ("left alone", words).
    """
    from identity.ldap_client import reset_config

    t = directory
    slapd = directory.kind == "slapd"
    settings.LDAP_ATTR_DISPLAY_NAME = "displayName"
    reset_config()
    # Each RDN is short (slapd's back-mdb: ~250 bytes; AD: an OU name of 64 at most), the DN long.
    deep = t.people
    for letter in "OPQRS" if slapd else "OPQRSTUVWXYZABCDEF":
        deep = t.add_ou(letter * (200 if slapd else 64), deep)
    ok = {
        "alice": t.add_user("alice", cn="Alice Archer", mail="alice@hospital.example"),
        "bob": t.add_user("bob", cn="Bob Baker"),
    }
    bad = {
        "control": t.add_user("eve", cn="Eve", displayName="Eve\x07\x1b[31m Evil", sn="Ev\x7fil"),
        "not-an-address": t.add_user("nora", cn="Nora", mail="nora at hospital"),
        "space": t.add_user("al ice", cn="Al Ice"),
        "long-dn": t.add_user("dora", cn="Dora", ou=deep),
    }
    expected = {
        "control": ("trimmed", "control characters"),
        "not-an-address": ("trimmed", "is not an e-mail address"),
        "space": ("left alone", "cannot have"),
        "long-dn": ("left alone", "DN is"),
    }
    if slapd:
        bad["huge-name"] = t.add_user("hugo", cn="Hugo", displayName="H" * 100_000)
        bad["two-uids"] = t.add_user("carl", cn="Carl")
        t.server.modify(bad["two-uids"], ("add", "uid", "carl2"))
        bad["colon"] = t.add_user("bob:admin", cn="Bob Admin")
        expected["huge-name"] = ("trimmed", "displayName is 100000 characters long")
        expected["two-uids"] = ("left alone", "uid has 2 values")
        expected["colon"] = ("left alone", "cannot have")
    else:
        # AD refuses a display name over 256 characters, a second sAMAccountName and a ":" in
        # one, but keeps a NUL in a name and a sAMAccountName far over Windows' 20 characters.
        bad["nul"] = t.add_user("nul", cn="Nul", displayName="Nu\x00ll")
        bad["long-username"] = t.add_user("l" * 200, cn="Longname")
        expected["nul"] = ("trimmed", "control characters")
        expected["long-username"] = ("left alone", "200 characters long")
    return ok, bad, expected


def problems_about(result, dn: str) -> list[str]:
    head = dn if len(dn) <= 300 else dn[:300]
    return [p for p in result.problems if p.startswith(head)]


def test_the_sync_trims_or_skips_bad_values_says_why_and_creates_the_others(odd_directory, directory):
    _ok, bad, expected = odd_directory
    result = directory_sync(full=True, dry_run=False)
    assert result.ok, result.error
    assert result.run.state == "succeeded"
    users = {u.username: u for u in User.objects.filter(source=User.Source.LDAP)}
    assert {"alice", "bob"} <= set(users)
    for key, (what, says) in expected.items():
        lines = problems_about(result, bad[key])
        if what == "trimmed":
            assert any(says in p for p in lines), (key, result.problems)
        else:
            assert any(says in p and p.endswith("left alone.") for p in lines), (key, result.problems)
    # Trimmed, and kept.
    assert users["eve"].display_name == "Eve\ufffd\ufffd[31m Evil" and users["eve"].last_name == "Ev\ufffdil"
    assert users["nora"].email == ""
    if directory.kind == "slapd":
        assert len(users["hugo"].display_name) == 200
    else:
        assert users["nul"].display_name == "Nu\ufffdll"
    # Left alone: never created.
    left_alone = [key for key, (what, _) in expected.items() if what == "left alone"]
    assert len(users) == 2 + len(expected) - len(left_alone)
    assert not {"carl", "carl2", "al ice", "bob:admin", "dora", "l" * 150} & set(users)
    # Nothing broken was stored.
    for user in users.values():
        user.full_clean(validate_unique=False)
    assert result.run.skipped == len(left_alone)
    event = AuditEvent.objects.filter(action="identity.directory.synced").latest("sequence")
    assert event.details["problems"] == len(result.problems) and event.details["skipped"] == len(left_alone)
    assert result.run.problems == result.problems


def test_a_known_user_whose_entry_turns_bad_is_left_as_is_not_deactivated(directory):
    dn = directory.add_user("frank", cn="Frank")
    assert directory_sync(full=True, dry_run=False).ok
    if directory.kind == "slapd":
        directory.server.modify(dn, ("add", "uid", "frank2"))
        says = "uid has 2 values"
    else:  # sAMAccountName is single-valued: a name pamsite cannot take instead
        directory.set(dn, username="fr ank")
        says = "cannot have"
    result = directory_sync(full=True, dry_run=False)
    assert result.ok, result.error
    frank = User.objects.get(username="frank")
    assert frank.is_active
    assert any(says in p for p in problems_about(result, dn))


@slapd_only
def test_binary_values_and_a_missing_stable_id_never_stop_the_run(directory, settings):
    """Attributes of binary syntax mapped to user fields (a misconfigured attribute map, or
    AD's binary attributes): a binary stable id becomes hex, a missing one skips the entry."""
    settings.LDAP_ATTR_STABLE_ID = "userPKCS12"
    settings.LDAP_ATTR_DISPLAY_NAME = "jpegPhoto"
    from identity.ldap_client import reset_config

    reset_config()
    t = directory
    t.add_user("gina", cn="Gina", userPKCS12=b"\xff\x00\x01binary", jpegPhoto=b"\xff\xd8\xff\xe0\x00JFIF\xc3")
    t.add_user("hank", cn="Hank", userPKCS12=b"\x00\x02")  # and no jpegPhoto: no display name
    no_id = t.add_user("ivan", cn="Ivan")
    result = directory_sync(full=True, dry_run=False)
    assert result.ok, result.error
    gina = User.objects.get(username="gina")
    assert gina.external_id == "hex:" + b"\xff\x00\x01binary".hex()
    assert "\x00" not in gina.display_name and gina.display_name.startswith("\ufffd")
    hank = User.objects.get(username="hank")
    assert hank.external_id == "hex:0002" and hank.display_name == ""
    assert not User.objects.filter(username="ivan").exists()
    assert any("no stable id" in p for p in problems_about(result, no_id))
