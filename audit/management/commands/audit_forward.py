"""manage.py audit_forward: send the audit trail to the SIEMs and audit repositories of AUDIT_FORWARD."""

from __future__ import annotations

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from audit.forwarding import Forwarder

logger = logging.getLogger("audit.forwarding")

# Batches per destination per pass of the loop, so one destination catching up does
# not hold back the others.
BATCHES_PER_PASS = 20


class Command(BaseCommand):
    """Forward the events after each destination's cursor, in order; the cursor moves once they are taken.

    ``--once`` (the default) sends everything pending and exits: 0 when every
    destination took it, 1 naming each one that failed (its cursor stays). ``--loop``
    keeps running (the forwarder process): it polls every AUDIT_FORWARD_INTERVAL
    seconds, keeps connections open, retries a failing receiver with a back-off up to
    AUDIT_FORWARD_MAX_BACKOFF seconds, and stops cleanly on SIGTERM or Ctrl-C.
    """

    help = (
        "Send the audit trail to the AUDIT_FORWARD destinations (RFC 5424 syslog over TCP or TLS; "
        "JSON, CEF or DICOM audit messages), in order, from each destination's cursor."
    )

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--once", action="store_true", help="send what is pending and exit (default)")
        mode.add_argument("--loop", action="store_true", help="keep forwarding until stopped")
        parser.add_argument(
            "--destination", metavar="NAME", help="only this destination (its name on the status page)"
        )

    def handle(self, *args, once: bool, loop: bool, destination: str | None, **options):
        destinations = tuple(settings.AUDIT_FORWARD)
        if destination:
            destinations = tuple(d for d in destinations if d.name == destination)
            if not destinations:
                names = ", ".join(d.name for d in settings.AUDIT_FORWARD) or "none"
                raise CommandError(
                    f"No destination named {destination!r} in AUDIT_FORWARD (there are: {names})."
                )
        if loop:
            self._loop(destinations)
            return
        if not destinations:
            self.stdout.write("AUDIT_FORWARD is empty: nothing to forward.")
            return
        with Forwarder(destinations=destinations) as forwarder:
            results = forwarder.run_once()
        for result in results:
            self.stdout.write(result.summary())
        failed = [result for result in results if not result.ok]
        if failed:
            raise CommandError(
                "Forwarding failed for "
                + "; ".join(
                    f"{r.destination} ({r.error}; cursor stays at {r.cursor}, {r.backlog} events waiting)"
                    for r in failed
                )
            )

    def _loop(self, destinations) -> None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if not destinations:
            # Idle rather than exit, so that a process manager does not restart it over and over.
            logger.info("AUDIT_FORWARD is empty: the audit forwarder has nothing to do.")
            stop.wait()
            return
        interval = settings.AUDIT_FORWARD_INTERVAL
        logger.info(
            "Audit forwarder started: %s.", ", ".join(str(destination) for destination in destinations)
        )
        with Forwarder(destinations=destinations) as forwarder:
            while not stop.is_set():
                more = False
                try:
                    close_old_connections()
                    for result in forwarder.run_once(max_batches=BATCHES_PER_PASS):
                        more = more or (result.ok and not result.busy and result.backlog > 0)
                except Exception:  # the database, most likely: log, wait, try again
                    logger.exception("Audit forwarding pass failed; trying again in %s s.", interval)
                    more = False
                if not more:
                    waits = [forwarder.waiting(d) for d in destinations]
                    stop.wait(min([interval, *[w for w in waits if w > 0]]))
        logger.info("Audit forwarder stopped.")
