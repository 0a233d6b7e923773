"""What the benchmarks share: a throwaway database and their section of RESULTS.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def write_results(path: Path, section: str, text: str) -> None:
    """Replace one benchmark's section of the results file (or add it), leaving the others alone."""
    existing = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text.rstrip() + "\n\n", existing)
    else:
        updated = existing.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(updated.rstrip() + "\n")
