"""Every URL pattern answers each persona, for GET and POST, as tests/authz_matrix.py says.

The URLconf is walked (tests/urlwalk.py): a pattern missing from the table fails, and so
does a table entry for a pattern that no longer exists. Object URLs point at real objects
owned by alice (her access request, grant, session, recording, SSH key...), built once for
the module with a signed-in web session per persona; every case runs in its own
transaction, rolled back after it, so a POST that changes or deletes an object (or ends a
session) leaves it intact for the next case. No Vault is needed: no
case gets as far as a checkout, a reveal or a recording signature, and VAULT_ADDR points
at a closed port so the status page reports Vault unreachable at once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.test import Client, override_settings
from django.urls import resolve, reverse
from django.utils import timezone

from tests.authz_matrix import METHODS, PERSONAS, SHADOWED, TABLE
from tests.conftest import make_user, verified_client
from tests.urlwalk import concrete, walk

pytestmark = pytest.mark.django_db

WALKED = {p.key: p for p in walk()}

# The object a pattern's <pk> names, for the patterns outside the admin (whose <object_id>
# is the object of the model in its path). Every one of them is alice's.
PK_OBJECT = {
    "identity:ssh_key_remove": "ssh_key",
    "identity:admin_reset": "alice",
    "identity:user": "alice",
    "identity:user_roles": "alice",
    "identity:user_deactivate": "alice",
    "identity:user_reactivate": "dora",
    "identity:user_password_reset": "alice",
    "identity:directory_mapping_remove": "mapping",
    "access:request": "request",
    "access:request_cancel": "request",
    "access:request_retry": "request",
    "access:request_decide": "request",
    "access:grant": "grant",
    "access:grant_checkin": "grant",
    "access:grant_revoke": "grant",
    "access:grant_reveal": "grant",
    # Only an emergency grant is reviewed: a normal one would stop every reviewer at
    # "not a break-glass grant" before the question of who may review it.
    "access:grant_review": "break_glass_grant",
    "access:target": "target",
    "access:account_setup": "account",
    "access:target_edit": "target",
    "access:account_new": "target",
    "access:account": "account",
    "access:account_edit": "account",
    "access:account_test": "account",
    "access:account_deactivate": "account",
    "access:account_reactivate": "account",
    "access:policy_edit": "policy",
    "access:policy_deactivate": "policy",
    "access:policy_reactivate": "policy",
    "sessions:detail": "session",
    "sessions:terminate": "session",
    "sessions:download": "recording",
    "sessions:hold_release": "hold",
    "replay:session": "session",
    "replay:watch": "session",
    "replay:watch-status": "session",
    "replay:cast": "recording",
    "replay:index": "recording",
    "replay:segment": "recording",
}

# The endpoints the replay and watch pages call answer only in a browser session that opened
# one of those pages (the page writes the audit row): the web session is primed as if it had,
# so what is tested is who may read the recording.
PRIMED = {"replay:watch-status", "replay:cast", "replay:index", "replay:segment"}

# POST bodies: the smallest that gets past the form, so that the answer is the authorisation
# decision (the selector's, then the service's), not "this field is required". Views whose
# empty form is answered before any decision other than the one under test get no body.
POST_BODIES: dict[str, Callable[[World], dict]] = {
    "identity:admin_reset": lambda w: {"reason": "phone lost, ticket INC-1"},
    "identity:user_roles": lambda w: {"roles": ["requester", "approver"]},
    "identity:user_deactivate": lambda w: {"deactivate-reason": "contract ended, INC-2"},
    "identity:user_reactivate": lambda w: {"reactivate-reason": "back from leave, INC-3"},
    "identity:user_password_reset": lambda w: {"method": "link"},
    # A username that is not locked: the pam-admin is told so and sent back to the page.
    "identity:lockout_release": lambda w: {"scope": "username", "value": "nobody-locked"},
    "identity:directory_mapping_add": lambda w: {
        "group_dn": "cn=vendors,ou=groups,dc=hospital,dc=example",
        "role": "requester",
    },
    "access:request_new": lambda w: {
        "account": w.account.slug,
        "duration_minutes": "30",
        "ticket": "INC-1234",
        "reason": "DICOM router queue stuck",
    },
    # Deny: an approval would check the credential out of Vault.
    "access:request_decide": lambda w: {"decision": "deny", "comment": "not now"},
    "access:grant_revoke": lambda w: {"reason": "leaver"},
    # A wrong code: the holder is stopped by the code check, before Vault is asked.
    "access:grant_reveal": lambda w: {"code": "000000"},
    "access:grant_review": lambda w: {"comment": "checked the session: fine"},
    "sessions:terminate": lambda w: {"reason": "vendor left the building"},
    "sessions:hold_place": lambda w: {"session": str(w.session.pk), "reason": "case 2024-17"},
}

QUERIES: dict[str, Callable[[World], str]] = {
    "replay:segment": lambda w: f"?from={w.cast_header_size}&to={w.cast_size}&cols=80&rows=24",
}

# Values for the parameters that are not an object's id.
ADMIN_VALUES = {"app_label": "access", "url": "no-such-page/"}


@dataclass
class World:
    """The personas and alice's objects, built once for the module."""

    users: dict[str, object]
    sessions: dict[str, str]  # persona -> session key
    objects: dict[str, object]
    recordings_root: Path
    cast_header_size: int
    cast_size: int
    vault_addr: str  # nothing listens there: the status page finds Vault unreachable at once
    admin_objects: dict[tuple[str, str], object] = field(default_factory=dict)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["objects"][name]
        except KeyError:
            raise AttributeError(name) from None

    def url(self, key: str) -> str:
        pattern = WALKED[key]
        values = dict(ADMIN_VALUES)
        if pattern.route.startswith("admin/"):
            parts = pattern.route.split("/")
            model = self.admin_objects.get((parts[1], parts[2])) if len(parts) > 2 else None
            if model is not None:
                values.update(object_id=model.pk, id=model.pk, pk=model.pk)
            grant_type = ContentType.objects.get_for_model(self.grant)
            values.update(content_type_id=grant_type.pk, object_id=values.get("object_id", self.grant.pk))
        elif "<token>" in pattern.route or "<str:token>" in pattern.route:
            values["token"] = self.objects["invitation_token"]
        elif "<" in pattern.route:
            values["pk"] = self.objects[PK_OBJECT[key]].pk
        return concrete(pattern.route, values) + (QUERIES[key](self) if key in QUERIES else "")


# Who each persona is. password_only and deactivated hold every role (and break-glass): what
# stops them is the missing second factor, or the deactivation, never a missing role.
ALL_ROLES = ("requester", "approver", "auditor", "pam-admin", "break-glass")
PERSONA_USERS = {
    "requester": ("alice", ("requester",)),  # the owner of every object
    "approver": ("bob", ("approver",)),
    "auditor": ("carol", ("auditor",)),
    "pam_admin": ("pat", ("pam-admin",)),
    "other_requester": ("dave", ("requester",)),
    "break_glass": ("gail", ("requester", "break-glass")),
    "password_only": ("halfway", ALL_ROLES),
    "deactivated": ("dora", ALL_ROLES),
}


# Nothing listens on port 1 of the loopback: a connection there is refused at once.
CLOSED_PORT = 1


def _public_key_line() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _build_world(root: Path) -> World:
    from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from access.models import AccessPolicy, AccessRequest, Account, Grant, Target
    from audit.services import audit_record
    from identity.models import DirectorySyncRun, LdapGroupMapping
    from identity.services import ssh_key_add
    from recordings.models import GatewaySession, LegalHold, Recording

    users, sessions = {}, {}
    for persona, (username, roles) in PERSONA_USERS.items():
        users[persona] = user = make_user(username, *roles, email=f"{username}@hospital.example")
        # A web session per persona, signed in once: each case sends its cookie.
        browser = Client()
        if persona == "password_only":
            browser.force_login(user)  # the password was right; no code yet
        else:
            verified_client(browser, user)
        sessions[persona] = browser.cookies[settings.SESSION_COOKIE_NAME].value
    # Signed in with both factors, then deactivated while her session was open.
    users["deactivated"].is_active = False
    users["deactivated"].save(update_fields=["is_active"])
    alice, bob, carol = users["requester"], users["approver"], users["auditor"]
    now = timezone.now()

    # A closed port: the host-key page's fetch fails at once instead of reaching an sshd.
    target = Target.objects.create(name="pacs01", host="127.0.0.1", port=CLOSED_PORT)
    account = Account.objects.create(
        target=target, slug="pacs01-svc", kind=Account.Kind.STATIC, username="svc"
    )
    policy = AccessPolicy.objects.create(
        name="PACS admins", approvals_required=1, max_duration_minutes=120, ticket_required=False
    )
    policy.allow_reveal = True
    policy.save()
    policy.groups.add(Group.objects.get(name="requester"))
    policy.accounts.add(account)

    pending = AccessRequest.objects.create(
        requester=alice, account=account, policy=policy, reason="PACS upgrade", duration_minutes=60,
        approvals_required=1,
    )  # fmt: skip
    fulfilled = AccessRequest.objects.create(
        requester=alice, account=account, policy=policy, reason="DICOM router", duration_minutes=60,
        approvals_required=1, state=AccessRequest.State.FULFILLED, decided_at=now,
    )  # fmt: skip
    grant = Grant.objects.create(
        request=fulfilled, user=alice, account=account, ends_at=now + dt.timedelta(hours=1)
    )
    emergency = AccessRequest.objects.create(
        requester=alice, account=account, policy=None, reason="PACS down at night", duration_minutes=30,
        approvals_required=0, break_glass=True, state=AccessRequest.State.FULFILLED, decided_at=now,
    )  # fmt: skip
    break_glass_grant = Grant.objects.create(
        request=emergency,
        user=alice,
        account=account,
        break_glass=True,
        ends_at=now + dt.timedelta(minutes=30),
    )

    session = GatewaySession.objects.create(
        user=alice, grant=grant, account=account.slug, client_address="192.0.2.10", gateway_node="gw1:1"
    )
    header = json.dumps({"version": 2, "width": 80, "height": 24, "timestamp": int(now.timestamp())}) + "\n"
    events = "".join(json.dumps([0.1 * i, "o", f"line {i}\r\n"]) + "\n" for i in range(1, 4))
    cast = root / f"session-{session.pk}" / "0.cast"
    cast.parent.mkdir(parents=True)
    cast.write_text(header + events, encoding="utf-8")
    # Not sealed: the session page reports it unchecked rather than asking Vault to verify it.
    recording = Recording.objects.create(
        session=session, channel=0, kind=Recording.Kind.TERMINAL, path=str(cast.relative_to(root))
    )
    hold = LegalHold.objects.create(session=session, reason="case 2024-17", created_by=carol)

    ssh_key = ssh_key_add(user=alice, name="laptop", public_key_line=_public_key_line(), request=None)
    mapping = LdapGroupMapping.objects.create(
        group_dn="cn=pacs-admins,ou=groups,dc=hospital,dc=example", role="requester", created_by=bob
    )
    sync_run = DirectorySyncRun.objects.create(
        full=True, state=DirectorySyncRun.State.SUCCEEDED, finished_at=now
    )
    audit_record(action="access.request.created", actor=alice, obj=pending, details={"account": account.slug})
    static_device = StaticDevice.objects.create(user=alice, name="backup", confirmed=True)
    StaticToken.objects.create(device=static_device, token=StaticToken.random_token())
    # An invited user who has not opened her link yet: the link's token is the URL's.
    from identity.users import user_invite

    invitation_token = (
        user_invite(
            acting_user=users["pam_admin"],
            username="ivan",
            first_name="Ivan",
            last_name="Invited",
            email="ivan@vendor.example",
            roles={"requester"},
            method="link",
        )
        .link.rstrip("/")
        .rsplit("/", 1)[1]
    )
    objects = {
        "alice": alice,
        "dora": users["deactivated"],
        "invitation_token": invitation_token,
        "target": target,
        "account": account,
        "policy": policy,
        "request": pending,
        "grant": grant,
        "break_glass_grant": break_glass_grant,
        "session": session,
        "recording": recording,
        "hold": hold,
        "ssh_key": ssh_key,
        "mapping": mapping,
    }
    admin_objects = {
        ("auth", "group"): Group.objects.get(name="requester"),
        ("otp_totp", "totpdevice"): TOTPDevice.objects.get(user=alice),
        ("otp_static", "staticdevice"): static_device,
        ("identity", "user"): alice,
        ("identity", "directorysyncrun"): sync_run,
        ("identity", "ldapgroupmapping"): mapping,
        ("access", "target"): target,
        ("access", "account"): account,
        ("access", "accesspolicy"): policy,
        ("recordings", "gatewaysession"): session,
        ("recordings", "recording"): recording,
    }
    return World(
        users=users,
        sessions=sessions,
        objects=objects,
        recordings_root=root,
        cast_header_size=len(header.encode()),
        cast_size=len((header + events).encode()),
        vault_addr=f"http://127.0.0.1:{CLOSED_PORT}",
        admin_objects=admin_objects,
    )


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    """Alice's objects and the personas, in a transaction that is rolled back after the module.

    Each case's own transaction nests inside it (a savepoint), as Django's TestCase does
    with setUpTestData, so no case sees what another one changed.
    """
    root = tmp_path_factory.mktemp("recordings")
    fast = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            with override_settings(PASSWORD_HASHERS=fast, RECORDINGS_ROOT=root):
                built = _build_world(root)
            yield built
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


@pytest.fixture(scope="module")
def _web_client():
    """One test client for the module: a new one loads the middleware again, and WhiteNoise's
    scan of the static files would then cost more than the request itself."""
    return Client()


@pytest.fixture
def web(_web_client):
    """The module's test client with no cookie: a fresh browser for each case."""
    _web_client.cookies.clear()
    return _web_client


@pytest.fixture(autouse=True)
def _world_settings(settings, world):
    settings.RECORDINGS_ROOT = world.recordings_root
    settings.VAULT_ADDR = world.vault_addr
    settings.VAULT_TIMEOUT = 2


def _answer(response) -> str:
    """The table's word for a response (see tests/authz_matrix.py)."""
    status = response.status_code
    if 200 <= status < 300:
        return "ok"
    if status in (301, 302, 303, 307, 308):
        path = urlsplit(response["Location"]).path
        if path == reverse("identity:login"):
            return "login"
        if path in (reverse("identity:verify"), reverse("identity:enrol")):
            return "otp"
        return "redir"
    return str(status)


def _finish(response) -> None:
    """Read a streamed body to its end, as a server would (the test client then closes it
    with the database connection left open; closing it by hand would close the connection)."""
    if response.streaming:
        b"".join(response.streaming_content)


def _sign_in(client, persona: str, world: World) -> None:
    if persona != "anonymous":
        client.cookies[settings.SESSION_COOKIE_NAME] = world.sessions[persona]


def _prime(client, world: World) -> None:
    from recordings.replay import AUDITED_KEY

    session = client.session
    session[AUDITED_KEY] = [world.session.pk]
    session.save()


CASES = [
    pytest.param(key, method, persona, expected, id=f"{method} {key} as {persona}")
    for (key, method), row in TABLE.items()
    for persona, expected in row.items()
]


@pytest.mark.parametrize(("key", "method", "persona", "expected"), CASES)
def test_the_site_answers_as_the_table_says(web, world, key, method, persona, expected):
    if key not in WALKED:
        pytest.fail(f"{key} is in tests/authz_matrix.py but no longer in the URLconf: remove its rows")
    url = world.url(key)
    _sign_in(web, persona, world)
    if key in PRIMED:
        _prime(web, world)
    if method == "GET":
        response = web.get(url)
    else:
        response = web.post(url, POST_BODIES[key](world) if key in POST_BODIES else {})
    got = _answer(response)
    where = f" → {response['Location']}" if response.has_header("Location") else ""
    _finish(response)
    assert got == expected, (
        f"{method} {url} ({key}) as {persona}: the table says {expected}, "
        f"the site answered {got} ({response.status_code}{where})"
    )


def test_every_pattern_of_the_urlconf_is_in_the_table():
    missing = [key for key in WALKED if (key, "GET") not in TABLE or (key, "POST") not in TABLE]
    assert not missing, (
        "URL patterns with no GET and POST rows in tests/authz_matrix.py (add them, with who may "
        "open each): " + ", ".join(missing)
    )


def test_every_table_entry_is_still_in_the_urlconf():
    stale = sorted({key for key, _ in TABLE} - set(WALKED))
    assert not stale, "rows of tests/authz_matrix.py for patterns no longer in the URLconf: " + ", ".join(
        stale
    )


def test_the_table_has_every_persona_and_method_for_each_row():
    assert METHODS == ("GET", "POST")
    for (key, method), row in TABLE.items():
        assert tuple(row) == PERSONAS, f"{method} {key}: a column is missing"


def test_each_url_tried_reaches_its_own_pattern(world):
    """The URL built for a pattern resolves to that pattern (so its row tests the right view),
    but for the patterns the table names as shadowed by an earlier one."""
    for key in WALKED:
        match = resolve(urlsplit(world.url(key)).path)
        reached = match.view_name if match.url_name else match.route
        if key in SHADOWED:
            assert reached != key, f"{key} is no longer shadowed: take it out of SHADOWED"
            continue
        assert reached == key, f"{world.url(key)} reached {reached}, not {key}"


def test_there_is_an_object_for_each_model_in_the_admin(world):
    """Each model's admin pages are tried on a real row (else every change page would be a 404)."""
    in_admin = {tuple(p.route.split("/")[1:3]) for key, p in WALKED.items() if key.endswith("_changelist")}
    assert in_admin == set(world.admin_objects), "build an object in _build_world for each admin model"
    for (app_label, model_name), obj in world.admin_objects.items():
        assert isinstance(obj, apps.get_model(app_label, model_name))
