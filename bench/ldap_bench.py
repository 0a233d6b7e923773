"""Benchmark the directory sync against a real slapd: full and incremental runs beside a raw ldapsearch.

Run from the repository root with the project's Python:

    .venv/bin/python bench/ldap_bench.py [--users 10000,100000]

For each size it starts a private slapd (tests/fixtures/slapd.py: back_mdb with
olcDbNoSync, memberof and refint overlays; no TLS, no logging), loads the users with
``slapadd -q`` while slapd is stopped (ldapadd would take ~7 s per 10,000), then adds
three groups through slapd with ``ldapadd`` (1 %, 0.5 % and 0.2 % of the users), so the
memberof overlay writes those members' ``memberOf`` (slapadd does not maintain it). The
three groups are mapped to requester, approver and auditor; a second later one user is
modified (slapadd gives every entry the same modifyTimestamp, unlike a real directory,
whose newest second holds a few changes: the incremental runs read that second again).
It never touches the site's
database: each size gets a throwaway one (SQLite: var/bench/ldap_bench_<n>.sqlite3, with
the site's settings; PostgreSQL when DATABASE_URL names one), migrated, dropped at the end.

Measured, in one process, for each size:

1. ``ldapsearch`` (the OpenLDAP client, paged: ``-E pr=500/noprompt``) of every user with
   the attributes the sync asks for, as the sync account, output to a file: the floor;
2. the sync's own read (``DirectoryClient.iter_users()``: python-ldap, paged, parsed);
3. ``directory_sync(full=True)`` into the empty database: every user created, with roles
   and one audit event each (the first run of a new site);
4. the same full run again with nothing changed;
5. an incremental run with nothing changed, and one after 1 % of the users changed their mail.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared import (  # bench/shared.py
    ROOT,
    add_output_arguments,
    add_quick_argument,
    create_throwaway_database,
    machine_basics,
    publish,
    say,
    stop_on_sigterm,
)

SECTION = "## Directory sync (bench/ldap_bench.py)"
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--users", default="10000,100000", help="directory sizes, comma-separated (default 10000,100000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each read, median kept (default 3)")
    add_quick_argument(parser, "1,000 users, one read each (a check that it runs)", users="1000", repeat=1)
    add_output_arguments(parser, keep="keep the throwaway databases afterwards")
    args = parser.parse_args()
    args.users = [int(n.replace("_", "")) for n in args.users.split(",") if n.strip()]
    if not args.users or min(args.users) < 1000:
        parser.error("--users: sizes of at least 1000")
    return args


def prepare_environment() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "pamsite.settings"
    os.environ["DEBUG"] = "false"  # DEBUG would keep every query in memory
    os.environ.setdefault("PAMSITE_VAR_DIR", str(ROOT / "var"))
    os.environ.setdefault("LOG_LEVEL", "warning")
    os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"
    for name in list(os.environ):
        if name.startswith("LDAP_"):
            os.environ.pop(name)


def user_ldif(people: str, count: int) -> str:
    from tests.fixtures.slapd import ldif_entry

    return "\n".join(
        ldif_entry(
            f"uid=user{i:06},{people}",
            {
                "objectClass": "inetOrgPerson",
                "uid": f"user{i:06}",
                "cn": f"User {i:06}",
                "sn": f"{i:06}",
                "givenName": "User",
                "mail": f"user{i:06}@hospital.example",
            },
        )
        for i in range(count)
    )


def start_directory(stack: contextlib.ExitStack, workdir: Path, count: int):
    """A slapd with ``count`` users (slapadd) and three groups (ldapadd); returns it and the timings."""
    from tests.fixtures.slapd import SUFFIX, Slapd

    server = Slapd(workdir, tls=False, log_level="none")
    stack.callback(server.stop)
    server.start()
    server.stop()
    people = f"ou=people,{SUFFIX}"
    groups = f"ou=groups,{SUFFIX}"
    head = (
        f"dn: {people}\nobjectClass: organizationalUnit\nou: people\n\n"
        f"dn: {groups}\nobjectClass: organizationalUnit\nou: groups\n\n"
    )
    started = time.perf_counter()
    server._slapadd(["-n1", "-q", "-F", str(workdir / "slapd.d")], head + user_ldif(people, count))
    load_seconds = time.perf_counter() - started
    server.start()
    started = time.perf_counter()
    mapping = []
    for name, role, every in (
        ("pacs-admins", "requester", 100),
        ("helpdesk", "approver", 200),
        ("auditors", "auditor", 500),
    ):
        dn = f"cn={name},{groups}"
        members = [f"uid=user{i:06},{people}" for i in range(0, count, every)]
        server.add(dn, {"objectClass": "groupOfNames", "cn": name, "member": members})
        mapping.append((dn, role))
    groups_seconds = time.perf_counter() - started
    # slapadd stamps every user with the same second; in a real directory the newest change is
    # one entry, not all of them: make it so (the incremental runs read that second again).
    time.sleep(1.1)
    server.modify(f"uid=user{0:06},{people}", ("replace", "mail", "newest@hospital.example"))
    return server, people, groups, mapping, load_seconds, groups_seconds


def point_settings(server, people: str, groups: str, mapping) -> None:
    from django.conf import settings

    from identity.ldap_client import reset_config

    settings.LDAP_SERVER_URI = [server.uri]
    settings.LDAP_START_TLS = False
    settings.LDAP_BIND_DN = server.sync_dn
    settings.LDAP_BIND_PASSWORD = server.sync_password
    settings.LDAP_USER_BASE = people
    settings.LDAP_GROUP_BASE = groups
    settings.LDAP_GROUP_ROLE_MAP = mapping
    settings.LDAP_SYNC_MAX_DEACTIVATE = 10
    reset_config()


def raw_ldapsearch(server, people: str, out: Path) -> tuple[float, int]:
    from identity.ldap_client import get_config

    password_file = out.parent / "sync.pw"
    password_file.write_text(server.sync_password)
    password_file.chmod(0o600)
    cmd = [
        shutil.which("ldapsearch") or "/usr/bin/ldapsearch",
        "-x",
        "-LLL",
        "-H",
        server.uri,
        "-D",
        server.sync_dn,
        "-y",
        str(password_file),
        "-E",
        "pr=500/noprompt",
        "-b",
        people,
        "(objectClass=inetOrgPerson)",
        *get_config().attrs.fetched(),
    ]
    started = time.perf_counter()
    with out.open("wb") as sink:
        subprocess.run(cmd, stdout=sink, check=True, timeout=600)
    seconds = time.perf_counter() - started
    with out.open("rb") as f:
        entries = sum(1 for line in f if line.startswith((b"dn:", b"dn::")))
    return seconds, entries


def python_read() -> tuple[float, int]:
    from identity.ldap_client import DirectoryClient

    started = time.perf_counter()
    with DirectoryClient() as client:
        count = sum(1 for _ in client.iter_users())
    return time.perf_counter() - started, count


AUDIT_SECONDS = [0.0]


def time_the_audit_trail() -> None:
    """Count the time the sync spends writing audit events (wrapping the function it calls)."""
    from identity import directory

    record = directory.audit_record

    def timed(**kwargs):
        started = time.perf_counter()
        try:
            return record(**kwargs)
        finally:
            AUDIT_SECONDS[0] += time.perf_counter() - started

    directory.audit_record = timed


def timed_sync(*, full: bool):
    """Wall time, this process's CPU time (the machine may be shared) and the audit trail's share."""
    from identity.directory import directory_sync

    AUDIT_SECONDS[0] = 0.0
    started, cpu = time.perf_counter(), time.process_time()
    result = directory_sync(full=full, dry_run=False)
    seconds = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"the sync failed: {result.error}")
    result.cpu_seconds = time.process_time() - cpu
    result.audit_seconds = AUDIT_SECONDS[0]
    return seconds, result


def machine_info() -> dict:
    slapd = subprocess.run(["/usr/sbin/slapd", "-VV"], capture_output=True, text=True, check=False)
    slapd_version = next((w for w in (slapd.stderr + slapd.stdout).split() if w[:1].isdigit()), "?")
    return {
        **machine_basics(),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "slapd": slapd_version,
    }


def bench_size(count: int, args, workdir: Path) -> dict:
    from django.db import connection

    from identity.models import User

    row: dict = {"users": count}
    with contextlib.ExitStack() as stack:
        say(f"== {count:,} users: loading slapd…")
        server, people, groups, mapping, row["load"], row["groups"] = start_directory(
            stack, workdir / f"slapd-{count}", count
        )
        say(f"   slapadd {row['load']:.1f} s, groups through ldapadd {row['groups']:.1f} s")
        name, destroy = create_throwaway_database(f"ldap_bench_{count}", keep=args.keep)
        stack.callback(destroy)
        point_settings(server, people, groups, mapping)

        searches = [raw_ldapsearch(server, people, workdir / "ldapsearch.ldif") for _ in range(args.repeat)]
        row["ldapsearch"] = statistics.median(s for s, _ in searches)
        assert all(n == count for _, n in searches), searches
        reads = [python_read() for _ in range(args.repeat)]
        row["read"] = statistics.median(s for s, _ in reads)
        say(f"   ldapsearch {row['ldapsearch']:.2f} s, python-ldap read {row['read']:.2f} s")

        row["full_first"], first = timed_sync(full=True)
        assert first.run.created == count, first.summary()
        row["full_first_cpu"] = first.cpu_seconds
        row["full_first_audit"] = first.audit_seconds
        say(f"   first full sync {row['full_first']:.1f} s ({first.summary()})")
        row["full_again"], again = timed_sync(full=True)
        assert not again.changes, again.summary()
        row["full_again_cpu"] = again.cpu_seconds
        say(f"   full sync, no change {row['full_again']:.1f} s")
        time.sleep(1.1)  # past the second of the high-water mark
        row["incremental"], inc = timed_sync(full=False)
        assert not inc.changes and not inc.run.full, inc.summary()
        row["incremental_seen"] = inc.run.seen
        say(f"   incremental, no change {row['incremental']:.2f} s ({inc.run.seen} read)")
        changed = count // 100
        ldif = "\n".join(
            f"dn: uid=user{i:06},{people}\nchangetype: modify\nreplace: mail\n"
            f"mail: moved{i:06}@hospital.example\n-\n"
            for i in range(0, count, 100)
        )
        server.modify_ldif(ldif)
        row["incremental_changed"], inc2 = timed_sync(full=False)
        assert inc2.run.updated == changed, inc2.summary()
        row["changed"] = changed
        row["incremental_changed_seen"] = inc2.run.seen
        say(f"   incremental, {changed} changed {row['incremental_changed']:.2f} s ({inc2.run.seen} read)")
        assert User.objects.filter(source="ldap", is_active=True).count() == count
        row["database"] = name
        # Read while the throwaway database exists: the site's own (DATABASE_URL) need not.
        row["machine"] = machine_info()
        connection.close()
    return row


def main() -> int:
    args = parse_args()
    prepare_environment()
    import django

    django.setup()
    stop_on_sigterm()
    time_the_audit_trail()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ldap-bench-") as tmp:
        for count in args.users:
            rows.append(bench_size(count, args, Path(tmp)))
    info = rows[-1]["machine"]  # at the end of the last size

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x"

    lines = [
        SECTION,
        "",
        f"- Date: {info['date']}",
        f"- Machine: `{info['uname']}`, {info['cpus']} CPUs, Python {info['python']}; load average at "
        f"the end {info['load']} (shared machine: the CPU columns are this process's own time)",
        f"- Directory: OpenLDAP slapd {info['slapd']} on loopback, back_mdb with olcDbNoSync, memberof + "
        "refint overlays; users loaded with `slapadd -q` (slapd stopped), then three groups "
        "(1 %, 0.5 %, 0.2 % of the users) added through slapd with ldapadd so the overlay writes their "
        "memberOf; mapped to requester, approver, auditor",
        f"- Database: {info['database']} (throwaway, migrated; the site's settings), no broker",
        "- Ratio: the sync's time over a raw paged `ldapsearch` (`-E pr=500/noprompt`, the same "
        "entries and attributes, as the sync account, to a file) in the same run; reads are the median "
        f"of {args.repeat}",
        "",
        "| Users | slapadd (s) | groups via ldapadd (s) | ldapsearch (s) | sync's read, python-ldap (s) "
        "| first full sync (s) | CPU (s) | of which audit events (s) | ratio | full sync, no change (s) "
        "| CPU (s) | ratio "
        "| incremental, no change (s) | incremental, 1 % changed (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['users']:,} | {r['load']:.1f} | {r['groups']:.1f} | {r['ldapsearch']:.2f} "
            f"| {r['read']:.2f} "
            f"| {r['full_first']:.1f} | {r['full_first_cpu']:.1f} | {r['full_first_audit']:.1f} "
            f"| {ratio(r['full_first'], r['ldapsearch'])} "
            f"| {r['full_again']:.2f} | {r['full_again_cpu']:.2f} "
            f"| {ratio(r['full_again'], r['ldapsearch'])} "
            f"| {r['incremental']:.2f} "
            f"| {r['incremental_changed']:.2f} |"
        )
    lines += [
        "",
        "The first full sync creates every user (one `identity.directory.created` audit event each, roles "
        "from the groups) in transactions of 200; most of its time is the audit trail (`audit_record`: "
        "one chained, hashed event per user, under the chain head's lock); a run with nothing to change "
        "reads the directory and compares. The incremental runs read users changed since the last run "
        "(those of the high-water mark's second again) plus the mapped groups' members, and compare roles "
        "for every user.",
    ]
    publish(args, SECTION, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
