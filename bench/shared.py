"""What the benchmarks share: their command line, a throwaway database, their section of RESULTS.md.

- ``add_output_arguments``: ``--keep``, ``--results`` and ``--no-results``, alike in every bench;
  ``add_quick_argument``: ``--quick``, a short run of the bench (what ``run.py --quick`` passes);
- ``setup_django``: the site's settings (no DEBUG: it would keep every query), then ``django.setup``;
- ``create_throwaway_database`` / ``throwaway_database``: a fresh, migrated database that is not
  the site's, dropped at the end;
- ``say``, ``percentile``; ``database_version``, ``machine_basics`` and ``date_and_machine``:
  what a report says about the machine;
- ``verified_client`` and ``time_get``: an MFA-verified auditor's Django test client, and the
  timing of the pages it gets;
- ``publish``: print a bench's section and write it into the results file;
- ``start_as_root``, ``stop_on_sigterm`` and ``run``: the main of a bench that starts servers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# --- Command line and main --------------------------------------------------------------------


def add_output_arguments(parser, *, keep: str = "keep the throwaway database afterwards") -> None:
    """``--keep`` (its help: ``keep``), ``--results`` and ``--no-results``."""
    parser.add_argument("--keep", action="store_true", help=keep)
    parser.add_argument(
        "--results", default=str(ROOT / "bench" / "RESULTS.md"), help="Markdown file to update"
    )
    parser.add_argument(
        "--no-results", action="store_true", help="print only; do not update the results file"
    )


def add_quick_argument(parser, help: str, **quick: object) -> None:
    """``--quick``: the ``quick`` defaults instead of the full run's (options given still win).

    Every bench has one, so that ``bench/run.py --quick`` can check in a few minutes that each
    still starts and runs to its end; its figures are not the ones to publish.
    """
    parser.add_argument("--quick", action="store_true", help=help)
    if "--quick" in sys.argv[1:]:
        parser.set_defaults(**quick)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # run the clean-up as for Ctrl-C


def stop_on_sigterm() -> None:
    """SIGTERM stops the bench as Ctrl-C does: servers stopped, throwaway data removed."""
    signal.signal(signal.SIGTERM, _terminate)


def start_as_root(name: str) -> bool:
    """As root: stop_on_sigterm() and True. Else False, having said why ``name`` needs root."""
    if os.geteuid() != 0:
        print(f"{name} needs root: it runs a private sshd and adds a throwaway user.", file=sys.stderr)
        return False
    stop_on_sigterm()
    return True


def run(main) -> None:
    """Exit with what ``main()`` returns; 130 after Ctrl-C or SIGTERM (its clean-up done)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("Interrupted: servers stopped, throwaway data removed.", file=sys.stderr)
        sys.exit(130)


def say(message: str) -> None:
    print(message, flush=True)


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the closest ranks; NaN without samples."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- Django and the throwaway database --------------------------------------------------------


def setup_django(**environ: str) -> None:
    """The site's settings (``environ`` added to the environment), without DEBUG; django.setup()."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamsite.settings")
    # DEBUG would keep the SQL of every query (every bulk insert) in memory.
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("PAMSITE_VAR_DIR", str(ROOT / "var"))
    os.environ.setdefault("LOG_LEVEL", "warning")  # not a line per login of the benchmark's users
    os.environ.update(environ)
    import django

    django.setup()


def create_throwaway_database(label: str, *, keep: bool, fast_sqlite: bool = False):
    """Point the default connection at a fresh, migrated database that is not the site's.

    SQLite: var/bench/<label>.sqlite3; PostgreSQL: "<name>_<label>". Returns its name and
    a function that drops it (unless ``keep``).
    """
    from django.db import connection, connections

    bench_dir = ROOT / "var" / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    test_settings = connection.settings_dict.setdefault("TEST", {})
    if connection.vendor == "sqlite":
        test_settings["NAME"] = str(bench_dir / f"{label}.sqlite3")
    else:
        test_settings["NAME"] = f"{connection.settings_dict['NAME']}_{label}"
    original_name = connection.settings_dict["NAME"]
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False, keepdb=False)
    if fast_sqlite and connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            # A throwaway database: durability does not matter, insert speed does.
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = OFF")

    def destroy():
        connections.close_all()
        if not keep:
            connection.creation.destroy_test_db(original_name, verbosity=0, keepdb=False)

    return name, destroy


@contextlib.contextmanager
def throwaway_database(label: str, *, keep: bool, fast_sqlite: bool = False):
    """create_throwaway_database as a context: its name inside; closed and dropped on the way out."""
    from django.db import connection

    name, destroy = create_throwaway_database(label, keep=keep, fast_sqlite=fast_sqlite)
    try:
        yield name
    finally:
        connection.close()
        destroy()


# --- The machine ------------------------------------------------------------------------------


def database_version() -> str:
    """The default connection's server: "postgresql 16.4", "sqlite 3.40.1"."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
        else:
            cursor.execute("SELECT sqlite_version()")
        version = cursor.fetchone()[0]
    return f"{connection.vendor} {version}"


def machine_basics() -> dict:
    """date, uname, cpus, python, database (database_version)."""
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "uname": uname or platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "database": database_version(),
    }


def date_and_machine(info: dict) -> list[str]:
    """The report's first lines about ``info`` (machine_basics)."""
    return [
        f"- Date: {info['date']}",
        f"- Machine: `{info['uname']}`, {info['cpus']} CPUs, Python {info['python']}",
    ]


# --- Pages through the whole Django stack ----------------------------------------------------


def verified_client(auditor, device):
    """A Django test client signed in as ``auditor``, verified with ``device`` (the second factor)."""
    from django.test import Client
    from django_otp import DEVICE_ID_SESSION_KEY

    client = Client(SERVER_NAME="localhost")
    client.force_login(auditor)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def time_get(client, url: str, params: dict, repeat: int):
    """GET ``url`` once to warm up, ``repeat`` times timed, once more with its SQL captured.

    Returns the milliseconds of the timed requests, the last response, its SQL queries
    (Django's captured_queries) and whether any of them is a COUNT.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url, params)  # warm-up
    assert response.status_code == 200, response.status_code
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = client.get(url, params)
        samples.append((time.perf_counter() - began) * 1000)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, params)
    counted = any("COUNT(" in q["sql"].upper() for q in queries.captured_queries)
    return samples, response, queries.captured_queries, counted


# --- Results ----------------------------------------------------------------------------------


def write_results(path: Path, section: str, text: str) -> None:
    """Replace one benchmark's section of the results file (or add it), leaving the others alone."""
    existing = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text.rstrip() + "\n\n", existing)
    else:
        updated = existing.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(updated.rstrip() + "\n")


def publish(args, section: str, text: str) -> None:
    """Print the section; write it into ``args.results`` unless ``args.no_results``."""
    say("")
    say(text)
    if not args.no_results:
        write_results(Path(args.results), section, text)
        say(f"Written to {args.results}")
