"""Benchmark the session search over 100,000 indexed sessions, through the whole Django stack.

Run from the repository root with the project's Python:

    .venv/bin/python bench/search_bench.py [--sessions 100000] [--repeat 30] [--keep]

It runs once on SQLite, always, and once more on PostgreSQL when DATABASE_URL names one,
each in a child process with a throwaway database (SQLite: var/bench/search_bench.sqlite3;
PostgreSQL: "<name>_search_bench"), never the site's own. Each child bulk-creates the
sessions over the last year (50 users, 20 targets, 40 accounts and grants) with a
SessionText each: a realistic shell session on a PACS host (prompts, commands, log and
listing output, study UIDs, ~1.5 KB), its word index built the way the service builds it
(``recordings.search.words_of``; PostgreSQL ``array_to_tsvector`` into the GIN-indexed
``search_vector``, SQLite the FTS5 table). A handful contain a rare command
(``shred -u /var/pacs/archive/legacy-2009.tar``).

Then, as a verified auditor with Django's test Client (middleware, form, selector,
recording the search as ``sessions.searched``, template), it times p50/p95 over
``--repeat`` requests for: a rare word, a common word, a rare substring, a filter-only
query (user and the last 90 days), and page 2 of the common word and of the filter-only
query. It also times ``session_text_store`` (words and index of one text), the worker's
quick indexing step with nothing new to index (``sessions_index_recent``, run every
SESSIONS_INDEX_SECONDS) and the extraction of text from a 2 MB asciicast file. The results go
to bench/RESULTS.md under "## Session search".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared import (  # bench/shared.py
    ROOT,
    add_output_arguments,
    date_and_machine,
    machine_basics,
    publish,
    setup_django,
    throwaway_database,
    time_get,
    verified_client,
)

SECTION = "## Session search (bench/search_bench.py)"
RARE = "shred -u /var/pacs/archive/legacy-2009.tar"
RARE_SESSIONS = 7

COMMANDS = [
    ("systemctl status dcm4chee-arc", 40),
    ("systemctl restart dcm4chee-arc", 8),
    ("journalctl -u dcm4chee-arc --since today | tail -n 20", 15),
    ("df -h /var/pacs", 30),
    ("ls -l /var/pacs/archive/{year}/{month}", 35),
    ("du -sh /var/pacs/archive/{year}", 10),
    ("tail -n 30 /var/log/pacs/server.log", 30),
    ("grep -c ERROR /var/log/pacs/server.log", 12),
    ("psql -U pacs -c 'select count(*) from study'", 10),
    ("dcmsend -aec ARCHIVE01 archive01:11112 /var/pacs/outgoing/{uid}", 6),
    ("movescu -aec PACS01 -aem WS01 pacs01:104 -k StudyInstanceUID={uid}", 5),
    ("echoscu -aec VNA01 vna01:11112", 8),
    ("vi /etc/pacs/ae-titles.conf", 5),
    ("openssl x509 -in /etc/pacs/tls/server.pem -noout -enddate", 3),
    ("top -b -n 1 | head -15", 10),
    ("sudo -l", 4),
]
LOG_LEVELS = ["INFO", "INFO", "INFO", "WARN", "ERROR"]
LOG_MESSAGES = [
    "Association from {ae} accepted",
    "Stored instance {uid}",
    "C-MOVE {uid} to {ae}: 12 completed, 0 failed",
    "Query/Retrieve from {ae} took {n} ms",
    "Disk usage of /var/pacs/archive at {n}%",
    "TLS handshake with {ae} failed: certificate expired",
]
AES = ["PACS01", "VNA01", "WS01", "CT01", "MR02", "ARCHIVE01", "ROUTER01"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions to create (default 100,000)")
    parser.add_argument("--repeat", type=int, default=30, help="timed requests per query (default 30)")
    add_output_arguments(parser, keep="keep the throwaway databases afterwards")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the file a child writes its results to
    return parser.parse_args()


# --- Data ----------------------------------------------------------------------------------


def study_uid(rng: random.Random) -> str:
    return f"1.2.826.0.1.3680043.8.498.{rng.randrange(10**11)}.{rng.randrange(10**6)}"


def session_text(rng: random.Random, host: str, rare: bool) -> str:
    """What a PACS admin's session leaves in the index: prompts, commands, their output."""
    commands = [c for c, _ in COMMANDS]
    weights = [w for _, w in COMMANDS]
    lines = []
    for _ in range(rng.randint(3, 9)):
        command = rng.choices(commands, weights)[0].format(
            year=rng.randint(2009, 2024), month=f"{rng.randint(1, 12):02d}", uid=study_uid(rng)
        )
        lines.append(f"root@{host}:~# {command}")
        for _ in range(rng.randint(1, 6)):
            message = rng.choice(LOG_MESSAGES).format(
                ae=rng.choice(AES), uid=study_uid(rng), n=rng.randint(1, 99)
            )
            lines.append(
                f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.choice(LOG_LEVELS)} {message}"
            )
    if rare:
        lines.insert(rng.randrange(len(lines)), f"root@{host}:~# {RARE}")
    return "\n".join(lines)


def load(count: int, batch: int = 2000) -> dict:
    """Users, targets, grants and ``count`` ended sessions with their text and word index."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group
    from django.db import connection, transaction
    from django.utils import timezone
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from access.models import AccessRequest, Account, Grant, Target
    from identity.models import User
    from recordings.models import GatewaySession, SessionText
    from recordings.search import words_of

    rng = random.Random(20241128)
    unusable = make_password(None)
    users = User.objects.bulk_create([User(username=f"user{n:02d}", password=unusable) for n in range(50)])
    auditor = User.objects.create(username="bench-auditor", password=unusable)
    auditor.groups.add(Group.objects.get(name="auditor"))
    device = TOTPDevice.objects.create(user=auditor, name="bench", confirmed=True)
    targets = [
        Target.objects.create(name=f"pacs{n:02d}", host=f"pacs{n:02d}.hospital.example") for n in range(20)
    ]
    grants = []
    now = timezone.now()
    for n in range(40):
        target = targets[n % 20]
        account = Account.objects.create(
            target=target, slug=f"{target.name}-{'root' if n < 20 else 'svc'}", kind="ssh-ca", username="root"
        )
        user = users[n % 50]
        req = AccessRequest.objects.create(
            requester=user,
            account=account,
            reason="bench",
            duration_minutes=60,
            approvals_required=0,
            state="fulfilled",
        )
        grants.append(Grant.objects.create(request=req, user=user, account=account, ends_at=now))
    rare_at = set(rng.sample(range(count), RARE_SESSIONS))
    start = now - dt.timedelta(days=365)
    step = dt.timedelta(days=365) / count
    postgresql = connection.vendor == "postgresql"
    began = time.perf_counter()
    text_chars = 0
    for first in range(0, count, batch):
        sessions, texts = [], []
        for n in range(first, min(first + batch, count)):
            grant = grants[rng.randrange(len(grants))]
            started = start + step * n + dt.timedelta(seconds=rng.randrange(60))
            sessions.append(
                GatewaySession(
                    user_id=grant.user_id,
                    grant=grant,
                    account=grant.account.slug,
                    client_address=f"10.20.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                    gateway_node="gw1:100",
                    started_at=started,
                    ended_at=started + dt.timedelta(minutes=rng.randint(1, 90)),
                    end_reason=rng.choice(["closed"] * 8 + ["grant-ended", "revoked"]),
                )
            )
            texts.append(session_text(rng, grant.account.target.name, n in rare_at))
        with transaction.atomic():
            GatewaySession.objects.bulk_create(sessions)
            rows = [
                SessionText(session=s, text=t, indexed_at=now) for s, t in zip(sessions, texts, strict=True)
            ]
            SessionText.objects.bulk_create(rows)
            words = [(" ".join(words_of(t)[0]), s.pk) for s, t in zip(sessions, texts, strict=True)]
            with connection.cursor() as cursor:
                if postgresql:
                    cursor.executemany(
                        "UPDATE recordings_sessiontext SET search_vector = "
                        "array_to_tsvector(string_to_array(%s, ' ')) WHERE session_id = %s",
                        words,
                    )
                else:
                    cursor.executemany(
                        "INSERT INTO recordings_sessiontext_fts (words, rowid) VALUES (%s, %s)", words
                    )
        text_chars += sum(len(t) for t in texts)
        if (first + batch) % 20_000 == 0:
            print(f"  {first + batch:>7,} sessions, {time.perf_counter() - began:5.1f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE" if not postgresql else "VACUUM ANALYZE")
    return {
        "auditor": auditor,
        "device": device,
        "load_seconds": time.perf_counter() - began,
        "avg_chars": text_chars / count,
        "user": users[7].username,
    }


# --- Timing ----------------------------------------------------------------------------------


def time_search(client, params: dict, repeat: int) -> dict:
    from django.urls import reverse

    samples, response, queries, counted = time_get(client, reverse("sessions:search"), params, repeat)
    content = response.content.decode()
    older = re.search(r'before=(\d+)" rel="next"', content)
    samples.sort()
    return {
        "p50": statistics.median(samples),
        "p95": samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))],
        "shown": content.count('class="session-link"'),
        "older": int(older.group(1)) if older else None,
        "queries": len(queries),
        "count": counted,
    }


def time_store(repeat: int = 200) -> float:
    """Milliseconds per session_text_store of a typical text (words + index), median."""
    from django.db import transaction

    from recordings.models import GatewaySession
    from recordings.search import session_text_store

    rng = random.Random(7)
    ids = list(GatewaySession.objects.order_by("pk").values_list("pk", flat=True)[:repeat])
    samples = []
    for pk in ids:
        text = session_text(rng, "pacs01", False)
        began = time.perf_counter()
        with transaction.atomic():
            session_text_store(session_pk=pk, text=text)
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def time_index_recent(repeat: int = 20) -> float:
    """Milliseconds (median) of the worker's quick indexing step with nothing new to index: what
    every SESSIONS_INDEX_SECONDS costs the database among all the sessions."""
    from recordings.search import sessions_index_recent

    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        sessions_index_recent()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def time_extract() -> tuple[float, int]:
    """Seconds to extract the text of a 2 MB asciicast recording, and the characters kept."""
    import orjson
    from django.conf import settings

    from recordings.models import GatewaySession, Recording
    from recordings.search import session_text_extract

    rng = random.Random(3)
    session = GatewaySession.objects.order_by("-pk").first()
    with tempfile.TemporaryDirectory() as folder:
        settings.RECORDINGS_ROOT = Path(folder)
        path = Path(folder) / "bench" / "channel-0.cast"
        path.parent.mkdir()
        lines = [orjson.dumps({"version": 2, "width": 120, "height": 40})]
        t, size = 0.0, 0
        while size < 2 * 1024 * 1024:
            t += 0.05
            text = session_text(rng, "pacs01", False).replace("\n", "\r\n")
            chunk = f"\x1b[01;32mroot@pacs01\x1b[00m:~# {text}\r\n"
            lines.append(orjson.dumps([round(t, 6), "o", chunk]))
            size += len(lines[-1])
        path.write_bytes(b"\n".join(lines) + b"\n")
        Recording.objects.create(
            session=session,
            channel=99,
            kind="terminal",
            path="bench/channel-0.cast",
            finalized_at=session.ended_at,
        )
        began = time.perf_counter()
        text, _truncated, _partial = session_text_extract(session=session)
        return time.perf_counter() - began, len(text)


def machine_info() -> dict:
    return {**machine_basics(), "load": ", ".join(f"{x:.1f}" for x in os.getloadavg())}


def child(args: argparse.Namespace) -> int:
    setup_django()
    from django.db import connection
    from django.utils import timezone

    with throwaway_database("search_bench", keep=args.keep, fast_sqlite=True) as name:
        print(f"Throwaway {connection.vendor} database: {name}")
        print(f"Creating {args.sessions:,} sessions with their text and word index…", flush=True)
        loaded = load(args.sessions)
        client = verified_client(loaded["auditor"], loaded["device"])
        fmt = "%Y-%m-%dT%H:%M"
        now = timezone.localtime()
        filters = {"user": loaded["user"], "since": (now - dt.timedelta(days=90)).strftime(fmt)}
        results = []

        def run(label, params):
            result = time_search(client, params, args.repeat)
            results.append({"label": label, **result})
            print(
                f"  {label}: p50 {result['p50']:.1f} ms, p95 {result['p95']:.1f} ms, {result['shown']} shown"
            )
            return result

        run("Rare word (`shred`, 7 sessions)", {"q": "shred"})
        common = run("Common word (`systemctl`, most sessions)", {"q": "systemctl"})
        run("Common word, page 2", {"q": "systemctl", "before": common["older"]})
        run("Rare substring (`/var/pacs/archive/legacy-2009`)", {"q": "/var/pacs/archive/legacy-2009"})
        run("Two words, one rare (`shred dcm4chee*`)", {"q": "shred dcm4chee*"})
        only = run("Filter only (a user, last 90 days)", filters)
        if only["older"]:
            run("Filter only, page 2", {**filters, "before": only["older"]})
        run("No filter (newest first)", {})
        store_ms = time_store()
        recent_ms = time_index_recent()
        extract_s, extract_chars = time_extract()
        info = machine_info()
        Path(args.child).write_text(
            json.dumps(
                {
                    "info": info,
                    "results": results,
                    "load_seconds": loaded["load_seconds"],
                    "avg_chars": loaded["avg_chars"],
                    "sessions": args.sessions,
                    "repeat": args.repeat,
                    "store_ms": store_ms,
                    "recent_ms": recent_ms,
                    "extract_s": extract_s,
                    "extract_chars": extract_chars,
                }
            )
        )
        return 0


def main() -> int:
    args = parse_args()
    if args.child:
        return child(args)
    runs = [
        ("SQLite", {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_URL_FILE")})
    ]
    if os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        runs.append(("PostgreSQL", dict(os.environ)))
    outputs = []
    for label, env in runs:
        print(f"== {label}", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, __file__, "--child", out.name, "--sessions", str(args.sessions)]
            command += ["--repeat", str(args.repeat)] + (["--keep"] if args.keep else [])
            if subprocess.run(command, env=env, cwd=ROOT, check=False).returncode:
                print(f"The {label} run failed", file=sys.stderr)
                return 1
            outputs.append((label, json.loads(Path(out.name).read_text())))

    first = outputs[0][1]
    lines = [
        SECTION,
        "",
        *date_and_machine(first["info"]),
        f"- Sessions: {first['sessions']:,} ended sessions over a year, each with its text "
        f"(~{first['avg_chars']:,.0f} characters: prompts, commands, log output, study UIDs) and word index; "
        f"{RARE_SESSIONS} contain `{RARE}`",
        f"- Each figure: {first['repeat']} searches after a warm-up, through the whole Django stack "
        "(test Client, MFA-verified auditor: middleware, form, selector, the `sessions.searched` audit row, "
        "template); page size 50; keyset pages (no COUNT)",
        "",
    ]
    for label, data in outputs:
        lines += [
            f"### {label}: {data['info']['database']}",
            "",
            f"Load average at the end (1, 5, 15 min; the machine is shared): {data['info']['load']}. "
            f"Loading (bulk insert, word index, ANALYZE): {data['load_seconds']:.0f} s. "
            f"`session_text_store` of one typical text: {data['store_ms']:.1f} ms (median of 200). "
            f"The worker's quick indexing step (`sessions_index_recent`) with nothing new: "
            f"{data.get('recent_ms', 0):.1f} ms (median of 20). "
            f"Extracting the text of a 2 MB asciicast file: {data['extract_s'] * 1000:.0f} ms "
            f"({data['extract_chars']:,} characters kept).",
            "",
            "| Search | p50 (ms) | p95 (ms) | Sessions shown | SQL queries | COUNT(*) |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        lines += [
            f"| {r['label']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['shown']} | {r['queries']} | "
            f"{'yes' if r['count'] else 'no'} |"
            for r in data["results"]
        ]
        lines.append("")
    publish(args, SECTION, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
