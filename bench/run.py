#!/usr/bin/env python3
"""`make bench`: run every benchmark in bench/ (each writes its section of bench/RESULTS.md).

Every ``*_bench.py`` runs, alphabetically, except that the soak (soak_bench.py: 50 gateway
sessions and 100 web users for 5 minutes) runs last: it is the longest, and it loads the
machine that the others measure on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
LAST = ("soak_bench.py",)


def main() -> int:
    failed = []
    for script in sorted(BENCH.glob("*_bench.py"), key=lambda p: (p.name in LAST, p.name)):
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=BENCH.parent).returncode:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    print(f"results: {BENCH / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
