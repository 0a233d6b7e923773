"""Benchmark the access workflow against real servers: checkout latency, concurrency, expiry sweeps.

Run from the repository root with the project's Python, as root (sshd, useradd):

    .venv/bin/python bench/access_bench.py [--runs 30] [--concurrency 50] [--grants 10000]

Like audit_bench.py it never touches the site's own database: it makes a throwaway one
(SQLite: var/bench/access_bench.sqlite3; PostgreSQL when DATABASE_URL names one:
"<name>_access_bench"), migrated, and drops it at the end. It starts its own servers
and stops them at the end, also on failure, Ctrl-C or SIGTERM:

- an OpenBao dev server (the venv's ``bao``) on a free port, set up by ``vault_bootstrap``
  with its root token and then used only through the AppRole, as the app is;
- a private sshd with a throwaway user: the static account, whose password is rotated;
- a throwaway database and group role on the machine's PostgreSQL (127.0.0.1:5432, trust
  auth; ``PAMSITE_TEST_POSTGRES_URL`` points elsewhere): the dynamic database account.

It calls the services (``access.services``), not the pages, and measures

1. request → approve → checkout latency per account kind, p50/p95 over ``--runs`` runs
   (after one warm-up run, whose SQL queries are counted), and the check-in with its
   release (database: lease revoked, role dropped) or rotation (static: over SSH);
2. ``--concurrency`` request → approve → checkout flows at once in threads, per kind;
3. the expiry sweep over ``--grants`` ended-but-active ssh-ca grants (bulk-inserted:
   no Vault lease), ``grants_expire_due()`` until it returns 0, then the release sweep
   ``grants_cleanup_due()`` over the same number of pending releases.

As in the embedded default (no broker: CELERY_BROKER_URL is ignored here), a grant's
release or rotation runs in the calling process right after the commit that ended it.
E-mail notifications go to Django's in-memory backend. The time spent inside the
credential sources (Vault, and the target for a rotation) is measured by wrapping
``vault.sources.checkout/release`` and ``access.rotation.static_rotate``; nothing else is changed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import re
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from shared import (  # bench/shared.py
    add_output_arguments,
    add_quick_argument,
    date_and_machine,
    machine_basics,
    percentile,
    publish,
    run,
    say,
    start_as_root,
)
from stack import start_sshd, start_vault_and_database  # bench/stack.py

SECTION = "## Access workflow (bench/access_bench.py)"
KINDS = ("ssh-ca", "database", "static")
DURATION_MINUTES = 60
TICKET = "INC-4711"
APPROVERS = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=30, help="timed request→approve→checkout runs per kind (default 30)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="concurrent checkouts per kind, in threads (default 50)"
    )
    parser.add_argument(
        "--grants", type=int, default=10_000, help="grants for the expiry sweep (default 10,000)"
    )
    add_quick_argument(
        parser,
        "3 runs, 5 concurrent, 200 grants per kind (a check that it runs)",
        runs=3,
        concurrency=5,
        grants=200,
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"account kinds to measure, comma-separated (default {','.join(KINDS)})",
    )
    add_output_arguments(parser)
    args = parser.parse_args()
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))} (choose from {', '.join(KINDS)})")
    if args.runs < 1 or args.concurrency < 1 or args.grants < 1:
        parser.error("--runs, --concurrency and --grants must be at least 1")
    return args


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.1f}"  # NaN: no sample


# --- The servers (OpenBao, sshd: bench/stack.py) ----------------------------------------------


def start_pg_target(stack: contextlib.ExitStack):
    """A throwaway database and group role on the machine's PostgreSQL (tests/fixtures/pgtarget.py)."""
    import psycopg

    from tests.fixtures.pgtarget import POSTGRES_URL, create_pg_target, drop_pg_target

    try:
        target = create_pg_target("bench_")
    except psycopg.OperationalError as exc:
        raise SystemExit(f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc}): start it") from None
    stack.callback(drop_pg_target, target)
    with target.admin() as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    return target, version


# --- The site: people, targets, accounts, policy ----------------------------------------------


@dataclass
class Site:
    requesters: list
    approvers: list
    accounts: dict  # kind -> Account
    policy: object


def make_site(kinds: list[str], people: int, sshd, pg) -> Site:
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group

    from access.models import AccessPolicy, Account, Target
    from access.services import account_ref
    from identity.models import User
    from vault import sources

    unusable = make_password(None)
    requesters = User.objects.bulk_create(
        [
            User(username=f"requester{n:03d}", email=f"requester{n:03d}@hospital.example", password=unusable)
            for n in range(people)
        ]
    )
    approvers = User.objects.bulk_create(
        [
            User(username=f"approver{n}", email=f"approver{n}@hospital.example", password=unusable)
            for n in range(APPROVERS)
        ]
    )
    Group.objects.get(name="requester").user_set.add(*requesters)
    Group.objects.get(name="approver").user_set.add(*approvers)

    accounts = {}
    pacs = Target.objects.create(
        name="pacs01", kind=Target.Kind.PACS, host=sshd.host, port=sshd.port, host_key=sshd.host_key
    )
    if "ssh-ca" in kinds:
        account = Account.objects.create(
            target=pacs, slug="pacs01-service", kind=Account.Kind.SSH_CA, username="pacsservice"
        )
        sources.configure_ssh_role(account=account_ref(account))
        accounts["ssh-ca"] = account
    if "static" in kinds:
        user = sshd.create_user()
        account = Account.objects.create(
            target=pacs, slug="pacs01-local", kind=Account.Kind.STATIC, username=user.name
        )
        sources.static_set_password(account=account_ref(account), password=user.password)
        accounts["static"] = account
    if "database" in kinds:
        from tests.fixtures.pacs import make_database_account

        account = make_database_account(
            pg, name="pacsdb-bench", slug="pacsdb-admin", default_ttl=300, max_ttl=86400
        )
        accounts["database"] = account

    policy = AccessPolicy.objects.create(
        name="PACS administration (bench)",
        approvals_required=1,
        max_duration_minutes=120,
        ticket_required=True,
    )
    policy.groups.add(Group.objects.get(name="requester"))
    policy.accounts.add(*accounts.values())
    return Site(requesters=requesters, approvers=approvers, accounts=accounts, policy=policy)


# --- Timing of the credential sources (Vault; the target for a rotation) ----------------------


class SourceTimer:
    """Wraps vault.sources.checkout/release and access.rotation.static_rotate to add up their
    time per thread."""

    NAMES = (
        ("vault.sources", "checkout"),
        ("vault.sources", "release"),
        ("access.rotation", "static_rotate"),
    )

    def __init__(self):
        self.local = threading.local()
        self.originals = {}

    def install(self) -> None:
        import importlib

        for module_name, name in self.NAMES:
            module = importlib.import_module(module_name)
            original = self.originals[(module_name, name)] = getattr(module, name)
            setattr(module, name, self._timed(original))

    def uninstall(self) -> None:
        import importlib

        for (module_name, name), original in self.originals.items():
            setattr(importlib.import_module(module_name), name, original)

    def _timed(self, function):
        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.local.seconds = self.seconds() + time.perf_counter() - began

        return timed

    def seconds(self) -> float:
        return getattr(self.local, "seconds", 0.0)

    def reset(self) -> None:
        self.local.seconds = 0.0


class FlowError(Exception):
    """A flow did not end as it should (no grant, release not done)."""


@dataclass
class Flow:
    request_s: float
    approve_s: float
    source_s: float
    grant: object

    @property
    def total_s(self) -> float:
        return self.request_s + self.approve_s


def request_approve_checkout(requester, approver, account, timer: SourceTimer) -> Flow:
    """One requester asks, one approver approves; the approval checks the credential out."""
    from access import services
    from access.models import AccessRequest

    timer.reset()
    began = time.perf_counter()
    try:
        req = services.request_create(
            requester=requester,
            account=account,
            reason="bench: rotate the DICOM router certificate",
            ticket=TICKET,
            duration_minutes=DURATION_MINUTES,
        )
    except Exception as exc:
        raise FlowError(f"request_create: {type(exc).__name__}: {exc}") from exc
    asked = time.perf_counter()
    try:
        services.request_decide(access_request=req, approver=approver, approve=True, comment="ok")
    except Exception as exc:
        raise FlowError(f"request_decide (with the checkout): {type(exc).__name__}: {exc}") from exc
    approved = time.perf_counter()
    if req.state != AccessRequest.State.FULFILLED:
        raise FlowError(f"request {req.pk} is {req.state}, not fulfilled: {req.checkout_error or '-'}")
    return Flow(asked - began, approved - asked, timer.seconds(), req.grant)


def check_in(grant, requester, timer: SourceTimer) -> tuple[float, float]:
    """The holder checks in; the release or rotation runs after the commit. (seconds, of which sources)."""
    from access import services
    from access.models import Grant

    timer.reset()
    began = time.perf_counter()
    services.grant_checkin(grant=grant, acting_user=requester)
    took = time.perf_counter() - began
    grant.refresh_from_db()
    if grant.state != Grant.State.CHECKED_IN or grant.cleanup != Grant.Cleanup.DONE:
        raise FlowError(f"grant {grant.pk}: {grant.state}, cleanup {grant.cleanup}: {grant.cleanup_error}")
    return took, timer.seconds()


# --- 1. Sequential latency --------------------------------------------------------------------


@dataclass
class LatencyResult:
    kind: str
    request: list[float] = field(default_factory=list)
    approve: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    source: list[float] = field(default_factory=list)
    checkin: list[float] = field(default_factory=list)
    checkin_source: list[float] = field(default_factory=list)
    queries: tuple[int, int, int] = (0, 0, 0)
    errors: list[str] = field(default_factory=list)


def measure_latency(site: Site, kind: str, runs: int, timer: SourceTimer) -> LatencyResult:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from access import services

    account = site.accounts[kind]
    requester, approver = site.requesters[0], site.approvers[0]
    result = LatencyResult(kind)

    # Warm-up (connections, AppRole login, caches), with its SQL queries counted.
    with CaptureQueriesContext(connection) as asked:
        req = services.request_create(
            requester=requester,
            account=account,
            reason="bench: warm-up",
            ticket=TICKET,
            duration_minutes=DURATION_MINUTES,
        )
    with CaptureQueriesContext(connection) as approved:
        services.request_decide(access_request=req, approver=approver, approve=True, comment="ok")
    with CaptureQueriesContext(connection) as checked_in:
        check_in(req.grant, requester, timer)
    result.queries = (len(asked), len(approved), len(checked_in))

    for n in range(runs):
        try:
            flow = request_approve_checkout(requester, approver, account, timer)
            result.request.append(flow.request_s)
            result.approve.append(flow.approve_s)
            result.total.append(flow.total_s)
            result.source.append(flow.source_s)
            took, source = check_in(flow.grant, requester, timer)
            result.checkin.append(took)
            result.checkin_source.append(source)
        except Exception as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
        if (n + 1) % 10 == 0 or n + 1 == runs:
            say(f"  {kind}: {n + 1}/{runs} runs, total p50 {ms(percentile(result.total, 50))} ms")
    return result


# --- 2. Concurrency ---------------------------------------------------------------------------


@dataclass
class ConcurrencyResult:
    kind: str
    threads: int
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    grant_pks: list[int] = field(default_factory=list)


def measure_concurrency(site: Site, kind: str, threads: int, timer: SourceTimer) -> ConcurrencyResult:
    from django.db import connections

    from access.models import Account
    from identity.models import User

    result = ConcurrencyResult(kind, threads)
    barrier = threading.Barrier(threads)
    spans: list[tuple[float, float] | None] = [None] * threads
    outcomes: list[object] = [None] * threads
    requester_names = [site.requesters[i % len(site.requesters)].username for i in range(threads)]
    approver_names = [site.approvers[i % len(site.approvers)].username for i in range(threads)]

    def worker(i: int) -> None:
        try:
            # What each web request would load for itself.
            requester = User.objects.get(username=requester_names[i])
            approver = User.objects.get(username=approver_names[i])
            account = Account.objects.select_related("target").get(pk=site.accounts[kind].pk)
        except Exception as exc:
            outcomes[i] = f"set-up: {type(exc).__name__}: {exc}"
            barrier.abort()
            connections.close_all()
            return
        try:
            barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            outcomes[i] = "another thread failed before the start"
            connections.close_all()
            return
        began = time.perf_counter()
        try:
            outcomes[i] = request_approve_checkout(requester, approver, account, timer)
        except Exception as exc:
            outcomes[i] = f"{type(exc).__name__}: {exc}"
        finally:
            spans[i] = (began, time.perf_counter())
            connections.close_all()

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    started = [s for s in spans if s]
    result.wall = max(e for _, e in started) - min(b for b, _ in started) if started else float("nan")
    for outcome, span in zip(outcomes, spans, strict=True):
        if isinstance(outcome, Flow):
            result.latencies.append(span[1] - span[0])
            result.grant_pks.append(outcome.grant.pk)
        else:
            result.errors.append(str(outcome))
    return result


def check_in_all(grant_pks: list[int], timer: SourceTimer) -> list[str]:
    """Check the concurrent test's grants in one by one (database: revoke their leases)."""
    from access.models import Grant

    errors = []
    for grant in Grant.objects.filter(pk__in=grant_pks).select_related("user"):
        try:
            check_in(grant, grant.user, timer)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors


# --- 3. Expiry and release sweeps -------------------------------------------------------------


@dataclass
class SweepResult:
    grants: int
    insert_s: float = 0.0
    expire_s: float = 0.0
    expire_calls: list[tuple[int, float]] = field(default_factory=list)
    expired: int = 0
    released_inline: int = 0
    cleanup_after: int = 0
    cleanup_s: float = 0.0
    expire_queries: int = 0
    cleanup_queries: int = 0
    cleanup_calls: list[tuple[int, float]] = field(default_factory=list)
    cleaned: int = 0


class QueryCounter:
    """A database execute wrapper that counts statements (without keeping them)."""

    def __init__(self):
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


def sweep_until_none(sweep, calls: list[tuple[int, float]]) -> tuple[int, float, int]:
    """Call ``sweep`` (grants_expire_due, grants_cleanup_due) until it returns 0, each call's
    (grants, seconds) added to ``calls``; (grants in all, seconds, SQL statements)."""
    from django.db import connection

    counter = QueryCounter()
    total = 0
    began = time.perf_counter()
    while True:
        call = time.perf_counter()
        with connection.execute_wrapper(counter):
            done = sweep()
        calls.append((done, time.perf_counter() - call))
        total += done
        if done:
            elapsed = time.perf_counter() - began
            say(f"  {sweep.__name__}(): {done} ({total:,} so far, {elapsed:.1f} s)")
        if done == 0:
            break
    return total, time.perf_counter() - began, counter.count


def measure_sweeps(site: Site, count: int) -> SweepResult:
    from django.db import transaction
    from django.utils import timezone

    from access import services
    from access.models import AccessRequest, Grant

    account = site.accounts.get("ssh-ca")
    if account is None:
        raise SystemExit("The expiry sweep needs the ssh-ca kind (--kinds)")
    result = SweepResult(count)
    now = timezone.now()
    ended = now - dt.timedelta(hours=1)
    began = time.perf_counter()
    with transaction.atomic():
        requests = AccessRequest.objects.bulk_create(
            [
                AccessRequest(
                    requester=site.requesters[n % len(site.requesters)],
                    account=account,
                    policy=site.policy,
                    reason="bench: expiry sweep",
                    ticket=TICKET,
                    duration_minutes=DURATION_MINUTES,
                    approvals_required=1,
                    state=AccessRequest.State.FULFILLED,
                    created_at=ended - dt.timedelta(minutes=DURATION_MINUTES + 1),
                    decided_at=ended - dt.timedelta(minutes=DURATION_MINUTES),
                )
                for n in range(count)
            ],
            batch_size=1000,
        )
        grants = Grant.objects.bulk_create(
            [
                Grant(
                    request=req,
                    user_id=req.requester_id,
                    account=account,
                    starts_at=ended - dt.timedelta(minutes=DURATION_MINUTES),
                    ends_at=ended + dt.timedelta(microseconds=n),
                    login=account.username,
                )
                for n, req in enumerate(requests)
            ],
            batch_size=1000,
        )
    result.insert_s = time.perf_counter() - began
    # Inserted together: one range of primary keys.
    mine = Grant.objects.filter(pk__gte=min(g.pk for g in grants), pk__lte=max(g.pk for g in grants))
    say(f"  inserted {count:,} active grants that ended an hour ago in {result.insert_s:.1f} s")

    result.expired, result.expire_s, result.expire_queries = sweep_until_none(
        services.grants_expire_due, result.expire_calls
    )
    result.released_inline = mine.filter(state=Grant.State.EXPIRED, cleanup=Grant.Cleanup.DONE).count()
    result.cleanup_after = services.grants_cleanup_due()

    # The release sweep itself: the same grants' releases queued again, as after a broker
    # outage or failed attempts (grants_cleanup_due takes 500 per call).
    mine.update(cleanup=Grant.Cleanup.PENDING, cleanup_next_at=timezone.now(), cleanup_attempts=0)
    result.cleaned, result.cleanup_s, result.cleanup_queries = sweep_until_none(
        services.grants_cleanup_due, result.cleanup_calls
    )
    return result


# --- Report -----------------------------------------------------------------------------------


def machine_info(bao_version: str, sshd_version: str, pg_version: str) -> dict:
    from django.db import connection

    info = machine_basics()
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            journal = cursor.fetchone()[0]
        mode = connection.settings_dict.get("OPTIONS", {}).get("transaction_mode") or "DEFERRED"
        info["database"] += f", journal_mode={journal}, transactions BEGIN {mode} (as the site configures it)"
    info["servers"] = (
        f"OpenBao {bao_version} (dev server, in memory, AppRole); {sshd_version}; "
        f"PostgreSQL {pg_version} (database target)"
    )
    return info


def per_grant(queries: int, grants: int) -> str:
    return f"{queries / grants:.1f}" if grants else "-"


def error_summary(errors: list[str], limit: int = 3) -> list[str]:
    counted = Counter(" ".join(re.sub(r"\d+", "N", e).split())[:240] for e in errors)
    return [f"{n} x {message}" for message, n in counted.most_common(limit)]


def report(args, info, latency, concurrency, sweeps) -> str:
    lines = [
        SECTION,
        "",
        *date_and_machine(info),
        f"- Database: {info['database']} (throwaway, migrated)",
        f"- Servers: {info['servers']}",
        "- Through `access.services` (not HTTP); no broker, so a grant's release or rotation runs right "
        "after the commit that ended it, in the same call (the embedded default); e-mail to the "
        'in-memory backend. "Vault" = time inside `vault.sources` (Vault; the target over SSH for a '
        "rotation).",
    ]
    if latency:
        lines += [
            "",
            f"Request → approve → checkout, sequential, {args.runs} runs per kind after one warm-up "
            "(one requester, one approver, one policy needing one approval; 60-minute grants):",
            "",
            "| Account kind | Request p50 (ms) | Approve + checkout p50 (ms) | Total p50 (ms) "
            "| Total p95 (ms) | of which Vault p50 (ms) | Check-in + release/rotation p50 (ms) "
            "| p95 (ms) | of which Vault/target p50 (ms) | SQL queries (request/approve/check-in) | Errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in latency:
            lines.append(
                f"| {r.kind} | {ms(percentile(r.request, 50))} | {ms(percentile(r.approve, 50))} "
                f"| {ms(percentile(r.total, 50))} | {ms(percentile(r.total, 95))} "
                f"| {ms(percentile(r.source, 50))} | {ms(percentile(r.checkin, 50))} "
                f"| {ms(percentile(r.checkin, 95))} | {ms(percentile(r.checkin_source, 50))} "
                f"| {'/'.join(map(str, r.queries))} | {len(r.errors)} |"
            )
    if concurrency:
        lines += [
            "",
            f"{args.concurrency} concurrent request → approve → checkout flows (threads, each its own "
            "request, its own database connection, started together at a barrier):",
            "",
            "| Account kind | Threads | Wall time (s) | Throughput (checkouts/s) | p50 (ms) | p95 (ms) "
            "| max (ms) | Errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in concurrency:
            ok = len(r.latencies)
            lines.append(
                f"| {r.kind} | {r.threads} | {r.wall:.2f} | {ok / r.wall:.1f} "
                f"| {ms(percentile(r.latencies, 50))} "
                f"| {ms(percentile(r.latencies, 95))} | {ms(max(r.latencies, default=float('nan')))} "
                f"| {len(r.errors)} |"
            )
    if sweeps:
        s = sweeps
        expire_rate = s.expired / s.expire_s if s.expire_s else float("nan")
        clean_rate = s.cleaned / s.cleanup_s if s.cleanup_s else float("nan")
        lines += [
            "",
            f"Expiry sweep over {s.grants:,} ssh-ca grants whose time was up (bulk-inserted in "
            f"{s.insert_s:.1f} s; `grants_expire_due()` ends at most 1000 per call, "
            "`grants_cleanup_due()` releases at most 500):",
            "",
            "| Sweep | Grants | Calls | Seconds | Grants/s | SQL statements per grant |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| `grants_expire_due()` until 0 (each release runs inline after its commit) | {s.expired:,} "
            f"| {len(s.expire_calls)} | {s.expire_s:.1f} | {expire_rate:,.0f} "
            f"| {per_grant(s.expire_queries, s.expired)} |",
            f"| `grants_cleanup_due()` right after (releases left over) | {s.cleanup_after:,} "
            "| 1 | - | - | - |",
            f"| `grants_cleanup_due()` until 0 over the same {s.grants:,} releases queued again "
            f"| {s.cleaned:,} | {len(s.cleanup_calls)} | {s.cleanup_s:.1f} | {clean_rate:,.0f} "
            f"| {per_grant(s.cleanup_queries, s.cleaned)} |",
        ]
    notes = []
    if any(r.errors for r in latency):
        for r in latency:
            notes += [f"{r.kind} (sequential): {e}" for e in error_summary(r.errors)]
    for r in concurrency:
        notes += [f"{r.kind} ({r.threads} threads): {e}" for e in error_summary(r.errors)]
    if sweeps and sweeps.released_inline != sweeps.expired:
        notes.append(f"only {sweeps.released_inline:,} of {sweeps.expired:,} expired grants were released")
    if notes:
        lines += ["", "Errors:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --- Main -------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    if not start_as_root("access_bench"):
        return 2
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        started = start_vault_and_database(stack, "access_bench", keep=args.keep)
        bao = started.bao
        say(f"OpenBao dev server at {bao.addr} (started in {bao.start_seconds:.1f} s)")
        from django.db import connection

        from tests.fixtures.sshd import SshdTarget  # the fixture's own sshd, as it is

        say(f"Throwaway {connection.vendor} database: {started.database}")
        sshd = start_sshd(stack, started, SshdTarget)
        say(f"sshd at {sshd.host}:{sshd.port}")
        pg, pg_version = start_pg_target(stack)
        say(f"PostgreSQL target database {pg.database} at {pg.host}:{pg.port}")
        site = make_site(args.kinds, max(args.concurrency, 1), sshd, pg)

        from vault.client import get_client

        bao_version = get_client().health().version
        sshd_version = (
            subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True, check=False)
            .stderr.split(",")[0]
            .strip()
        )

        timer = SourceTimer()
        timer.install()
        stack.callback(timer.uninstall)

        latency = []
        for kind in args.kinds:
            say(f"Latency, {kind}: {args.runs} runs")
            latency.append(measure_latency(site, kind, args.runs, timer))

        concurrency = []
        for kind in args.kinds:
            say(f"Concurrency, {kind}: {args.concurrency} threads")
            result = measure_concurrency(site, kind, args.concurrency, timer)
            say(
                f"  {len(result.latencies)} checkouts in {result.wall:.2f} s, {len(result.errors)} errors"
                + (f" (first: {result.errors[0]})" if result.errors else "")
            )
            concurrency.append(result)
            if kind == "database":
                # Give the leases back (the other kinds' grants hold nothing in Vault).
                for error in check_in_all(result.grant_pks, timer):
                    say(f"  check-in failed: {error}")

        sweeps = None
        if "ssh-ca" in args.kinds:
            say(f"Expiry sweep over {args.grants:,} grants")
            sweeps = measure_sweeps(site, args.grants)

        info = machine_info(bao_version, sshd_version, pg_version)
        publish(args, SECTION, report(args, info, latency, concurrency, sweeps))
        failed = sum(len(r.errors) for r in latency) + sum(len(r.errors) for r in concurrency)
    say(f"Done in {time.perf_counter() - began:.0f} s (servers stopped, throwaway data removed)")
    return 1 if failed else 0


if __name__ == "__main__":
    run(main)
