"""Benchmark the audit trail at scale: page views and chain verification over a million events.

Run from the repository root with the project's Python:

    .venv/bin/python bench/audit_bench.py [--rows 1000000] [--keep]

It never touches the site's own database: it makes a throwaway one beside it, the
way Django's test runner does (SQLite: var/bench/audit_bench.sqlite3; PostgreSQL
when DATABASE_URL names one: "<name>_audit_bench"), fills it with valid chained
events through bulk inserts (the real chain, but not one locked transaction per
event), times the auditor's page and a full verify_chain, prints a Markdown table
and writes it into bench/RESULTS.md under its own heading.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time

from shared import (  # bench/shared.py
    add_output_arguments,
    add_quick_argument,
    date_and_machine,
    machine_basics,
    publish,
    setup_django,
    throwaway_database,
    time_get,
    verified_client,
)

SECTION = "## Audit trail (bench/audit_bench.py)"

# (action, weight): roughly what a PAM site records.
ACTIONS = [
    ("auth.login.password_ok", 20),
    ("auth.login.success", 20),
    ("auth.login.failure", 6),
    ("auth.mfa.failure", 2),
    ("auth.logout", 15),
    ("access.request.created", 6),
    ("access.request.approved", 5),
    ("access.request.denied", 1),
    ("access.grant.checked-out", 5),
    ("access.grant.checked-in", 4),
    ("access.grant.expired", 1),
    ("session.started", 5),
    ("session.ended", 5),
    ("vault.secret.shown", 1),
    ("vault.password.rotated", 2),
    ("mfa.enrolled", 1),
    ("audit.viewed", 1),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="events to insert (default 1,000,000)")
    parser.add_argument("--batch", type=int, default=5000, help="events per bulk insert (default 5000)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per page, median reported (default 5)"
    )
    add_quick_argument(parser, "20,000 events, 2 runs per page (a check that it runs)", rows=20_000, repeat=2)
    add_output_arguments(parser)
    return parser.parse_args()


def make_users(count: int):
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from identity.models import User

    unusable = make_password(None)
    users = User.objects.bulk_create([User(username=f"user{n:03d}", password=unusable) for n in range(count)])
    auditor = User.objects.create(username="bench-auditor", password=unusable)
    auditor.groups.add(Group.objects.get(name="auditor"))
    device = TOTPDevice.objects.create(user=auditor, name="bench", confirmed=True)
    return users, auditor, device


def insert_events(rows: int, batch: int, users) -> float:
    """Insert ``rows`` valid chained events in bulk; return the seconds it took."""
    from django.db import transaction

    from audit.hashing import GENESIS_HASH, event_hash
    from audit.models import AuditEvent, ChainHead

    rng = random.Random(20240611)  # the same events every run
    actions = [a for a, _ in ACTIONS]
    weights = [w for _, w in ACTIONS]
    end = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = end - dt.timedelta(days=365)
    step_us = int(365 * 24 * 3600 * 1_000_000 / rows)
    prev_hash = GENESIS_HASH
    began = time.perf_counter()
    sequence = 0
    while sequence < rows:
        chunk = []
        for _ in range(min(batch, rows - sequence)):
            sequence += 1
            action = rng.choices(actions, weights)[0]
            if action == "auth.login.failure" and rng.random() < 0.5:
                actor, username = None, f"guess{rng.randrange(10_000)}"
            else:
                actor = users[rng.randrange(len(users))]
                username = actor.username
            event = AuditEvent(
                sequence=sequence,
                created_at=start
                + dt.timedelta(microseconds=sequence * step_us + rng.randrange(step_us or 1)),
                actor_id=actor.pk if actor else None,
                actor_username=username,
                source_ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                action=action,
                object_type="access.grant" if action.startswith("access.") else "",
                object_id=str(rng.randrange(100_000)) if action.startswith("access.") else "",
                object_repr=f"grant {sequence}" if action.startswith("access.") else "",
                details={"n": sequence, "reason": "bench"} if rng.random() < 0.5 else {},
                prev_hash=prev_hash,
            )
            event.hash = prev_hash = event_hash(event.hashed_values())
            chunk.append(event)
        with transaction.atomic():
            AuditEvent.objects.bulk_create(chunk)
        if sequence % 100_000 < batch:
            print(f"  {sequence:>9,} events, {time.perf_counter() - began:6.1f} s", flush=True)
    ChainHead.objects.update_or_create(pk=1, defaults={"last_sequence": rows, "last_hash": prev_hash})
    return time.perf_counter() - began


def analyse():
    """Give the planner statistics, as autovacuum (PostgreSQL) or a periodic ANALYZE would."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_auditevent" if connection.vendor == "postgresql" else "ANALYZE")


def time_page(client, params: dict, repeat: int) -> tuple[float, int, int, bool]:
    """Median milliseconds over ``repeat`` views (after a warm-up); events shown; SQL queries; any COUNT."""
    from django.urls import reverse

    samples, response, queries, counted = time_get(client, reverse("audit:events"), params, repeat)
    shown = max(response.content.count(b"<tr>") - 1, 0)  # less the header row
    return statistics.median(samples), shown, len(queries), counted


def main() -> int:
    args = parse_args()
    setup_django()
    from django.db import connection
    from django.utils import timezone

    from audit.chain import verify_chain

    with throwaway_database("audit_bench", keep=args.keep, fast_sqlite=True) as name:
        print(f"Throwaway {connection.vendor} database: {name}")
        users, auditor, device = make_users(50)
        print(f"Inserting {args.rows:,} chained events in batches of {args.batch:,}…")
        insert_seconds = insert_events(args.rows, args.batch, users)
        analyse()
        client = verified_client(auditor, device)

        middle = args.rows // 2
        # The page reads datetime-local values in the site's time zone.
        now = timezone.localtime()
        mid_day = now - dt.timedelta(days=182)
        fmt = "%Y-%m-%dT%H:%M"
        day = {"since": mid_day.strftime(fmt), "until": (mid_day + dt.timedelta(days=1)).strftime(fmt)}
        month = {"since": (now - dt.timedelta(days=30)).strftime(fmt), "until": now.strftime(fmt)}
        year = {"since": (now - dt.timedelta(days=366)).strftime(fmt), "until": now.strftime(fmt)}
        scenarios = [
            ("First page (newest)", {}),
            (f"Deep keyset page (before={middle:,})", {"before": middle}),
            ("Oldest page (before=100)", {"before": 100}),
            ("Actor (user017)", {"actor": "user017"}),
            ("Actor, deep page", {"actor": "user017", "before": middle}),
            ('Action prefix ("access.")', {"action": "access."}),
            ('Rare action prefix ("vault.")', {"action": "vault."}),
            ("Time range (one day, mid-history)", day),
            ("Time range (last 30 days, both ends given)", month),
            ("Time range (whole year, both ends given)", year),
            ("From a year ago (one end given)", {"since": year["since"]}),
            ('Actor + action prefix ("auth.") + time range', {"actor": "user017", "action": "auth.", **day}),
        ]
        rows = []
        for label, params in scenarios:
            ms, shown, queries, counted = time_page(client, params, args.repeat)
            rows.append((label, ms, shown, queries, counted))
            print(f"  {label}: {ms:.1f} ms")

        print("Verifying the whole chain…")
        began = time.perf_counter()
        result = verify_chain()
        verify_seconds = time.perf_counter() - began
        if not result.ok:
            print(f"verify_chain failed: {result.summary}", file=sys.stderr)
            return 1

        info = machine_basics()
        lines = [
            SECTION,
            "",
            *date_and_machine(info),
            f"- Database: {info['database']} (throwaway, analysed after loading)",
            f"- Events: {args.rows:,}; bulk insert with the real chain: {insert_seconds:.1f} s "
            f"({args.rows / insert_seconds:,.0f} events/s)",
            f"- Page size: AUDIT_PAGE_SIZE; each page time is the median of {args.repeat} views through the "
            "whole Django stack (middleware, selector, recording the view as audit.viewed, template)",
            "",
            "| Page | Median (ms) | Events shown | SQL queries | COUNT(*) |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        lines += [
            f"| {label} | {ms:.1f} | {shown} | {queries} | {'yes' if counted else 'no'} |"
            for label, ms, shown, queries, counted in rows
        ]
        lines += [
            "",
            "| Verification | Seconds | Events/s |",
            "| --- | ---: | ---: |",
            f"| verify_chain() over {result.checked:,} events | {verify_seconds:.1f} | "
            f"{result.checked / verify_seconds:,.0f} |",
        ]
        publish(args, SECTION, "\n".join(lines) + "\n")
        return 0


if __name__ == "__main__":
    sys.exit(main())
