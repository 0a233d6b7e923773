"""Benchmark audit forwarding: events/s to a local syslog receiver per format, and catch-up after an outage.

Run from the repository root with the project's Python:

    .venv/bin/python bench/audit_forward_bench.py [--events 100000] [--outage-events 20000] [--keep]

It never touches the site's own database: it makes a throwaway one beside it
(SQLite: var/bench/audit_forward_bench.sqlite3; PostgreSQL when DATABASE_URL names
one: "<name>_audit_forward_bench"), fills it with valid chained events through bulk
inserts (as bench/audit_bench.py does), then:

1. forwards all of them with ``audit.forwarding.audit_forward`` (the service behind
   ``audit_forward --once``, the loop and the Celery task) to a syslog receiver on
   127.0.0.1 running in its own process, once per format (json, cef, dicom over TCP,
   and json over TLS with a throwaway CA), each from a fresh cursor; the receiver
   counts the octet-counted frames and checks that the sequence numbers arrive in
   order, without gaps or repeats;
2. with the receiver down, records ``--outage-events`` events through ``audit_record``
   (the real, locked path) while forwarding attempts fail, then starts the receiver
   and times how long the backlog takes to drain.

It prints a Markdown section and writes it into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

from audit_bench import insert_events, make_users  # bench/audit_bench.py
from shared import (  # bench/shared.py
    ROOT,
    add_output_arguments,
    add_quick_argument,
    date_and_machine,
    machine_basics,
    publish,
    setup_django,
    throwaway_database,
)

SECTION = "## Audit forwarding (bench/audit_forward_bench.py)"
SEQ = re.compile(rb'seq="(\d+)"')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events in the trail (default 100,000)")
    parser.add_argument(
        "--outage-events",
        type=int,
        default=20_000,
        help="events recorded while the receiver is down (default 20,000)",
    )
    add_quick_argument(
        parser, "5,000 events, 500 during the outage (a check that it runs)", events=5_000, outage_events=500
    )
    add_output_arguments(parser)
    return parser.parse_args()


# --- the receiver, in its own process ---------------------------------------------------


def _receiver_main(port, tls_files, stats, ready) -> None:
    """Accept connections; count frames and bytes; count sequence numbers that go back or skip."""
    count, nbytes, last_seq, backwards, gaps = stats
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    context = None
    if tls_files:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls_files)
    ready.set()

    def serve(conn):
        if context is not None:
            conn = context.wrap_socket(conn, server_side=True)
        buffer = b""
        while True:
            try:
                chunk = conn.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            frames, position = 0, 0
            while True:
                space = buffer.find(b" ", position)
                if space < 0:
                    break
                end = space + 1 + int(buffer[position:space])
                if end > len(buffer):
                    break
                match = SEQ.search(buffer, space, min(end, space + 200))
                seq = int(match.group(1))
                if seq <= last_seq.value:
                    backwards.value += 1
                elif last_seq.value and seq != last_seq.value + 1:
                    gaps.value += 1
                last_seq.value = seq
                frames += 1
                position = end
            nbytes.value += position
            count.value += frames
            buffer = buffer[position:]

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


class Receiver:
    """A syslog receiver process on 127.0.0.1:``port``; ``stop`` kills it (the receiver goes down)."""

    def __init__(self, port: int, tls_files: tuple[str, str] | None = None):
        ctx = multiprocessing.get_context("fork")
        self.stats = tuple(ctx.Value("q", 0, lock=False) for _ in range(5))
        ready = ctx.Event()
        self.process = ctx.Process(
            target=_receiver_main, args=(port, tls_files, self.stats, ready), daemon=True
        )
        self.process.start()
        if not ready.wait(10):
            raise RuntimeError("the receiver did not start")

    @property
    def count(self) -> int:
        return self.stats[0].value

    def reset(self, last_seq: int) -> None:
        for value in self.stats:
            value.value = 0
        self.stats[2].value = last_seq

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.count < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver got {self.count} of {count} messages")
            time.sleep(0.01)

    def check(self, *, messages: int, last_seq: int, gaps_allowed: bool = False) -> None:
        """``messages`` arrived, ending at ``last_seq``, never going back (nor skipping unless allowed)."""
        count, _, seen_last, backwards, gaps = (v.value for v in self.stats)
        if count != messages or backwards or seen_last != last_seq or (gaps and not gaps_allowed):
            raise RuntimeError(
                f"receiver: {count} messages (expected {messages}), last seq {seen_last} "
                f"(expected {last_seq}), {backwards} repeated or out of order, {gaps} gaps"
            )

    def stop(self) -> None:
        self.process.kill()
        self.process.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the runs ---------------------------------------------------------------------------


def forward_run(fmt: str, *, tls_files, events: int) -> dict:
    """Forward the whole trail in one format from a fresh cursor; time it; check what arrived."""
    from audit.destinations import parse_destination
    from audit.dicom import dicom_event_id
    from audit.forwarding import audit_forward
    from audit.models import AuditEvent

    port = free_port()
    scheme = "syslog+tls" if tls_files else "syslog+tcp"
    options = f"format={fmt}&name=bench-{fmt}-{scheme[7:]}"
    if tls_files:
        options += f"&ca={tls_files.ca}"
    dest = parse_destination(f"{scheme}://127.0.0.1:{port}?{options}")
    receiver = Receiver(port, (str(tls_files.server_cert), str(tls_files.server_key)) if tls_files else None)
    try:
        began = time.perf_counter()
        (result,) = audit_forward(destinations=[dest])
        seconds = time.perf_counter() - began
        if not result.ok or result.cursor != events:
            raise RuntimeError(f"{fmt}: {result.summary()}")
        receiver.wait_for(result.sent)
        if fmt == "dicom":
            actions = AuditEvent.objects.order_by("-sequence").values_list("sequence", "action")
            last = next(seq for seq, action in actions.iterator() if dicom_event_id(action))
            # Events DICOM has no message for are passed over: the sequence skips them.
            receiver.check(messages=result.sent, last_seq=last, gaps_allowed=True)
        else:
            receiver.check(messages=events, last_seq=events)
        nbytes = receiver.stats[1].value
    finally:
        receiver.stop()
    return {
        "label": f"{fmt} over {'TLS' if tls_files else 'TCP'}",
        "events": events,
        "sent": result.sent,
        "skipped": result.skipped,
        "seconds": seconds,
        "bytes": nbytes,
    }


def outage_run(outage_events: int, head: int) -> dict:
    """Receiver down while events are recorded through audit_record; then time the drain."""
    from audit.destinations import parse_destination
    from audit.forwarding import audit_forward
    from audit.models import ForwardCursor
    from audit.services import audit_record

    # The bulk-inserted trail ends up to a minute ahead of the clock; audit_record logs each
    # event it dates after the last one's time. Expected here.
    logging.getLogger("audit.services").setLevel(logging.ERROR)
    port = free_port()
    dest = parse_destination(f"syslog+tcp://127.0.0.1:{port}?format=json&name=bench-outage")
    ForwardCursor.objects.update_or_create(name=dest.name, defaults={"last_sequence": head})

    began = time.perf_counter()
    attempts = failed = 0
    for n in range(outage_events):
        audit_record(
            action="auth.login.success",
            actor_username=f"user{n % 50:03d}",
            source_ip="10.0.0.1",
            details={"n": n},
        )
        if n % 2000 == 1999:  # the forwarder keeps trying meanwhile; each attempt fails at once
            attempts += 1
            (result,) = audit_forward(destinations=[dest])
            failed += not result.ok
    record_seconds = time.perf_counter() - began
    (still_down,) = audit_forward(destinations=[dest])
    backlog = still_down.backlog
    if still_down.cursor != head or backlog != outage_events:
        raise RuntimeError(f"the cursor moved while the receiver was down: {still_down.summary()}")

    receiver = Receiver(port)
    try:
        receiver.reset(last_seq=head)
        began = time.perf_counter()
        (up,) = audit_forward(destinations=[dest])
        drain_seconds = time.perf_counter() - began
        receiver.wait_for(outage_events)
        receiver.check(messages=outage_events, last_seq=head + outage_events)
    finally:
        receiver.stop()
    if not up.ok or up.backlog:
        raise RuntimeError(f"drain: {up.summary()}")
    return {
        "events": outage_events,
        "record_seconds": record_seconds,
        "attempts": attempts + 1,
        "failed": failed + 1,
        "backlog": backlog,
        "drain_seconds": drain_seconds,
    }


def main() -> int:
    args = parse_args()
    setup_django()
    from django.conf import settings
    from django.db import connection

    sys.path.insert(0, str(ROOT))
    from tests.audit.syslog_server import make_tls_files  # the tests' throwaway CA

    with throwaway_database("audit_forward_bench", keep=args.keep, fast_sqlite=True) as name:
        print(f"Throwaway {connection.vendor} database: {name}")
        users, _auditor, _device = make_users(50)
        print(f"Inserting {args.events:,} chained events…")
        insert_events(args.events, 5000, users)
        # The throwaway CA's key and certificates: removed when the bench ends (also on failure).
        (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
        tls_dir = tempfile.TemporaryDirectory(prefix="forward-tls-", dir=ROOT / "var" / "bench")
        tls_files = make_tls_files(Path(tls_dir.name))
        # Warm the database's page cache, as on a site that runs: each run below then reads alike.
        from audit.models import AuditEvent

        for _ in AuditEvent.objects.values_list("sequence", "details").iterator(chunk_size=5000):
            pass

        runs = []
        for fmt, tls in (("json", False), ("cef", False), ("dicom", False), ("json", True)):
            run = forward_run(fmt, tls_files=tls_files if tls else None, events=args.events)
            runs.append(run)
            print(f"  {run['label']}: {run['events'] / run['seconds']:,.0f} events/s")
        print(f"Receiver down; recording {args.outage_events:,} events through audit_record…")
        outage = outage_run(args.outage_events, head=args.events)
        print(f"  drained {outage['events']:,} events in {outage['drain_seconds']:.2f} s")

        info = machine_basics()
        lines = [
            SECTION,
            "",
            *date_and_machine(info),
            f"- Database: {info['database']} (throwaway; WAL, synchronous=OFF)",
            f"- Trail: {args.events:,} chained events (bulk-inserted, the mix of bench/audit_bench.py); "
            f"batches of AUDIT_FORWARD_BATCH = {settings.AUDIT_FORWARD_BATCH} events",
            "- Through `audit.forwarding.audit_forward` (what `audit_forward --once`, the loop and the "
            "Celery task run): read a batch by sequence, format each event, write the octet-counted "
            "RFC 5424 frames, wait until the receiver's TCP stack acknowledged every byte, move the cursor. "
            "The receiver is a separate process on 127.0.0.1 that parses the framing and checks the "
            "sequence numbers (in order, no gap, no repeat); it shares the machine's cores with the "
            "forwarder.",
            "",
            "| Format | Events | Messages sent | Passed over | Seconds | Events/s | Messages/s | MB sent | "
            "Bytes/message |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for run in runs:
            lines.append(
                f"| {run['label']} | {run['events']:,} | {run['sent']:,} | {run['skipped']:,} | "
                f"{run['seconds']:.1f} | {run['events'] / run['seconds']:,.0f} | "
                f"{run['sent'] / run['seconds']:,.0f} | {run['bytes'] / 1e6:.1f} | "
                f"{run['bytes'] / max(run['sent'], 1):,.0f} |"
            )
        lines += [
            "",
            "DICOM has messages only for logins and their failures, logouts, security alerts and "
            "audit-log use; the other events are passed over (the cursor still moves).",
            "",
            "| Outage (json over TCP) | Value |",
            "| --- | ---: |",
            f"| Events recorded through `audit_record` while the receiver was down | {outage['events']:,} |",
            f"| Recording rate meanwhile (forwarding never blocks recording) | "
            f"{outage['events'] / outage['record_seconds']:,.0f} events/s |",
            f"| Forwarding attempts meanwhile, all failed, cursor unchanged | {outage['failed']} of "
            f"{outage['attempts']} |",
            f"| Backlog when the receiver came back | {outage['backlog']:,} |",
            f"| Time to drain it, from the receiver back to the cursor at the head | "
            f"{outage['drain_seconds']:.2f} s ({outage['events'] / outage['drain_seconds']:,.0f} events/s) |",
            "",
            "The forwarder process (`audit_forward --loop`) notices the receiver is back at its next retry: "
            f"at most AUDIT_FORWARD_MAX_BACKOFF = {settings.AUDIT_FORWARD_MAX_BACKOFF} s after it returns "
            "(the wait doubles from 1 s), plus the drain time above.",
        ]
        publish(args, SECTION, "\n".join(lines) + "\n")
        return 0


if __name__ == "__main__":
    sys.exit(main())
