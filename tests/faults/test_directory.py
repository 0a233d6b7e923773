"""The directory killed in the middle of a sync (the hospital's directory crashing): slapd, and
Samba AD DC."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from django.contrib.auth.models import Group

from audit.chain import verify_chain
from audit.models import AuditEvent
from identity.directory import directory_sync
from identity.ldap_client import DirectoryClient, get_config, reset_config
from identity.models import DirectorySyncRun, User
from tests.fixtures.netfault import TcpProxy
from tests.fixtures.samba import point_settings_at_ad
from tests.fixtures.slapd import SUFFIX, LdapTree, Slapd, point_settings_at

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

USERS = 300


@pytest.fixture
def own_slapd(tmp_path):
    """A slapd of this test's own (the suite's one must live on), with no TLS and no log."""
    server = Slapd(tmp_path / "slapd", tls=False, log_level="none")
    try:
        yield server.start()
    finally:
        server.stop()


def _roles_by_user() -> dict[str, set[str]]:
    roles: dict[str, set[str]] = {}
    for username, role in User.objects.filter(source=User.Source.LDAP).values_list(
        "username", "groups__name"
    ):
        roles.setdefault(username, set())
        if role:
            roles[username].add(role)
    return roles


def test_slapd_killed_mid_sync_fails_the_run_changes_nothing_and_the_next_run_completes(
    own_slapd, settings, tmp_path
):
    """slapd is killed (SIGKILL) half-way through the users of a full sync, then again as the
    sync reads the role groups: each run is recorded as failed with the reason, nobody is
    deactivated and no role is taken away (a cut-short read looks like everybody leaving).
    After slapd restarts the next sync completes and applies the real changes."""
    tree = LdapTree(own_slapd, f"ou=t{secrets.token_hex(4)},{SUFFIX}")
    own_slapd.add_many(
        [
            (tree.base, {"objectClass": "organizationalUnit", "ou": tree.base.split(",")[0][3:]}),
            (tree.people, {"objectClass": "organizationalUnit", "ou": "people"}),
            (tree.groups, {"objectClass": "organizationalUnit", "ou": "groups"}),
        ]
    )
    names = [f"user{number:04d}" for number in range(USERS)]
    own_slapd.add_many(
        [
            (
                tree.user_dn(name),
                {
                    "objectClass": "inetOrgPerson",
                    "cn": name,
                    "sn": name,
                    "uid": name,
                    "mail": f"{name}@h.example",
                },
            )
            for name in names
        ]
    )
    staff = tree.add_group("pacs-admins", *(tree.user_dn(name) for name in names))
    helpdesk = tree.add_group("helpdesk", *(tree.user_dn(name) for name in names[:10]))
    proxy = TcpProxy("127.0.0.1", own_slapd.port).start()
    point_settings_at(
        settings,
        own_slapd,
        tree,
        LDAP_SERVER_URI=[f"ldap://127.0.0.1:{proxy.port}"],
        LDAP_GROUP_ROLE_MAP=[(staff, "requester"), (helpdesk, "approver")],
        LDAP_TIMEOUT=3,
    )
    reset_config()

    def kill() -> None:
        own_slapd.process.kill()
        own_slapd.process.wait()

    try:
        _killed_mid_sync(
            proxy,
            names,
            leave=lambda: own_slapd.delete(tree.user_dn(names[-1])),
            move=lambda: tree.remove_member(helpdesk, tree.user_dn(names[0])),
            kill=kill,
            killed=lambda: own_slapd.process.poll() is not None,
            restart=own_slapd.start,  # same data, same port
            # The requests are plain LDAP here: the group's search is seen going by.
            in_groups=lambda users_bytes: proxy.on_request(b"cn=helpdesk", kill),
        )
    finally:
        proxy.down()


def test_samba_ad_killed_mid_sync_fails_the_run_changes_nothing_and_the_next_run_completes(
    samba, ad_tree, settings
):
    """The same with Active Directory over LDAPS (Samba AD DC killed with SIGKILL, then
    started again on its data): the run fails saying the server could not be reached (not
    that its certificate is wrong), nothing changes, and the next run applies everything."""
    tree = ad_tree
    names = [f"user{number:04d}" for number in range(USERS)]
    dns = tree.add_users(names)
    staff = tree.add_group("pacs-admins", *dns)
    helpdesk = tree.add_group("helpdesk", *dns[:10])
    proxy = TcpProxy("127.0.0.1", 636).start()
    uri = f"ldaps://127.0.0.1:{proxy.port}"
    point_settings_at_ad(
        settings,
        samba,
        tree,
        LDAP_SERVER_URI=[uri],
        LDAP_GROUP_ROLE_MAP=[(staff, "requester"), (helpdesk, "approver")],
        LDAP_TIMEOUT=3,
    )

    def in_groups(users_bytes: int) -> None:
        # LDAPS hides the requests from the proxy: count the bytes of reading the users (TLS,
        # bind, the pages of users), then kill a little after them, amid the groups' members.
        proxy.on_reply_bytes(users_bytes + 2000, samba.kill)

    try:
        _killed_mid_sync(
            proxy,
            names,
            leave=lambda: tree.delete(dns[-1]),
            move=lambda: tree.remove_member(helpdesk, dns[0]),
            kill=samba.kill,
            killed=lambda: not samba.running(),
            restart=samba.start,
            in_groups=in_groups,
        )
    finally:
        proxy.down()
        if not samba.running():
            samba.start()


def _killed_mid_sync(
    proxy: TcpProxy,
    names: list[str],
    *,
    leave: Callable[[], None],
    move: Callable[[], None],
    kill: Callable[[], None],
    killed: Callable[[], bool],
    restart: Callable[[], object],
    in_groups: Callable[[int], None],
) -> None:
    first = directory_sync(full=True, dry_run=False)
    assert first.ok, first.error
    full_read = proxy.reply_bytes
    proxy.reply_bytes = 0
    with DirectoryClient(get_config()) as client:
        assert len(list(client.iter_users())) == USERS
    users_bytes = proxy.reply_bytes
    before = _roles_by_user()
    assert len(before) == USERS and before["user0000"] == {"requester", "approver"}
    # What really changes in the directory meanwhile: a leaver, and a mover off the helpdesk.
    leave()
    move()
    uri = get_config().uris[0]

    for where, arm in (
        ("reading the users", lambda: proxy.on_reply_bytes(full_read // 3, kill)),
        ("reading the role groups", lambda: in_groups(users_bytes)),
    ):
        events = AuditEvent.objects.count()
        proxy.reply_bytes = 0
        arm()
        result = directory_sync(full=True, dry_run=False)
        assert killed(), f"the directory was not killed while {where}"
        assert not result.ok
        run = DirectorySyncRun.objects.get(pk=result.run.pk)
        assert run.state == DirectorySyncRun.State.FAILED
        assert f"Cannot reach the directory server {uri}" in run.error, (where, run.error)
        assert (run.created, run.updated, run.deactivated) == (0, 0, 0)
        assert User.objects.filter(source=User.Source.LDAP, is_active=True).count() == USERS
        assert _roles_by_user() == before
        added = list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True))[events:]
        assert added == ["identity.directory.sync_failed"], where  # and no change of anyone
        restart()

    done = directory_sync(full=True, dry_run=False)
    assert done.ok, done.error
    assert done.run.deactivated == 1 and not User.objects.get(username=names[-1]).is_active
    after = _roles_by_user()
    assert after["user0000"] == {"requester"} and after["user0001"] == {"requester", "approver"}
    assert User.objects.filter(source=User.Source.LDAP, is_active=True).count() == USERS - 1
    assert set(Group.objects.get(name="approver").user_set.values_list("username", flat=True)) == set(
        names[1:10]
    )
    assert verify_chain().ok
