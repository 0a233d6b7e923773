#!/usr/bin/env python3
"""`make bench`: run every benchmark in bench/ to its end (each writes its section of bench/RESULTS.md).

    .venv/bin/python bench/run.py [--quick] [--baseline DIR] [--only gateway,soak] [--skip ldap]

Every ``*_bench.py`` runs, alphabetically, except that the soak (soak_bench.py: 50 gateway
sessions and 100 web users for 5 minutes) runs last: it is the longest, and it loads the
machine that the others measure on. Each runs as its own process; one that fails (an exit
status other than 0, a crash, a target missed) is reported with the end of its output and
the others still run. The summary at the end says which ran, how long, which failed and why;
the exit status is 1 if any failed.

``--quick`` runs each bench's short version (its ``--quick``; the few that have none get
small sizes from QUICK_ARGS below) with ``--no-results``: a check, in minutes, that every
bench still starts and completes; RESULTS.md is left alone. ``--baseline DIR`` (a checkout
of an older commit, e.g. ``git worktree add /tmp/base 98f9764``) is passed to the benches
that measure before and after in one run (BASELINE_BENCHES).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
LAST = ("soak_bench.py",)
# The short version of a bench that has no --quick of its own.
QUICK_ARGS = {"search_bench.py": ["--sessions", "2000", "--repeat", "3"]}
BASELINE_BENCHES = ("gateway_bench.py",)
TAIL_LINES = 15  # of a failed bench's output, in the summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="each bench's short version, results not written (a check)"
    )
    parser.add_argument("--baseline", metavar="DIR", help="an older checkout to measure beside this tree")
    parser.add_argument("--only", default="", help="benches to run, e.g. gateway,soak (default all)")
    parser.add_argument("--skip", default="", help="benches to leave out, e.g. ldap,replay")
    args = parser.parse_args()
    if args.baseline and not (Path(args.baseline) / "manage.py").is_file():
        parser.error(f"--baseline {args.baseline}: no manage.py there (a checkout of the project?)")
    return args


def names(value: str) -> set[str]:
    """``gateway,soak_bench.py`` → {"gateway_bench.py", "soak_bench.py"}."""
    out = set()
    for name in filter(None, (x.strip() for x in value.split(","))):
        name = name.removesuffix(".py").removesuffix("_bench")
        out.add(f"{name}_bench.py")
    return out


def scripts(args) -> list[Path]:
    found = sorted(BENCH.glob("*_bench.py"), key=lambda p: (p.name in LAST, p.name))
    only, skip = names(args.only), names(args.skip)
    unknown = (only | skip) - {p.name for p in found}
    if unknown:
        raise SystemExit(f"no such bench: {', '.join(sorted(unknown))} (in {BENCH})")
    return [p for p in found if (not only or p.name in only) and p.name not in skip]


def has_quick(script: Path) -> bool:
    """Whether the bench's --help lists --quick."""
    shown = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=BENCH.parent, capture_output=True, text=True, timeout=120
    )
    return "--quick" in shown.stdout


def argv_for(script: Path, args) -> tuple[list[str], str]:
    """The bench's command line, and a note when its quick run is not short."""
    argv = [sys.executable, str(script)]
    note = ""
    if args.quick:
        if script.name in QUICK_ARGS:
            argv += QUICK_ARGS[script.name]
        elif has_quick(script):
            argv.append("--quick")
        else:
            note = "no --quick: ran in full"
        argv.append("--no-results")
    if args.baseline and script.name in BASELINE_BENCHES:
        argv += ["--baseline", str(Path(args.baseline).resolve())]
    return argv, note


def run_one(argv: list[str]) -> tuple[int, list[str]]:
    """Run a bench with its output shown as it comes; its exit status and its last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            argv, cwd=BENCH.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
    except OSError as exc:
        return 127, [f"could not start: {exc}"]
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
        return proc.wait(), list(tail)
    except KeyboardInterrupt:
        # The bench got the same Ctrl-C (same process group) and cleans up: let it finish that.
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def main() -> int:
    args = parse_args()
    outcomes = []  # (name, status, seconds, note, tail)
    began = time.perf_counter()
    try:
        for script in scripts(args):
            argv, note = argv_for(script, args)
            print(f"== {script.name}: {' '.join(argv[1:])}", flush=True)
            t0 = time.perf_counter()
            status, tail = run_one(argv)
            outcomes.append((script.name, status, time.perf_counter() - t0, note, tail))
            print(f"== {script.name}: {'ok' if status == 0 else f'FAILED (exit {status})'}", flush=True)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        summary(outcomes, time.perf_counter() - began, args)
        return 130
    return summary(outcomes, time.perf_counter() - began, args)


def summary(outcomes, seconds: float, args) -> int:
    failed = [o for o in outcomes if o[1] != 0]
    print(f"\n== Summary ({'quick: results not written; ' if args.quick else ''}{seconds:.0f} s in all)")
    for name, status, took, note, _tail in outcomes:
        state = "ok" if status == 0 else f"FAILED (exit {status})"
        print(f"  {name:28} {state:18} {took:7.0f} s{'  (' + note + ')' if note else ''}")
    for name, status, _took, _note, tail in failed:
        print(f"\n-- {name} failed (exit {status}); its last lines:")
        print("\n".join(f"   {line}" for line in tail) or "   (no output)")
    if failed:
        print(f"\nfailed: {', '.join(o[0] for o in failed)}")
        return 1
    if not args.quick:
        print(f"results: {BENCH / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
