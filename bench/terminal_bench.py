"""Benchmark the terminal model (recordings/terminal.py) against pyte, on recorded terminal output.

Run from the repository root with the project's Python:

    .venv/bin/python bench/terminal_bench.py [--megabytes 8] [--repeat 3]

pyte (PyPI, a complete VT100 emulator) is not one of the project's requirements; to compare,
put it on the path first, e.g. ``pip install --target /tmp/pyte pyte==0.8.2`` and
``PYTHONPATH=/tmp/pyte``. Without it only the model is timed.

The output is what a PACS admin's shell sessions send to the terminal: a coloured prompt with
a window title, commands typed with readline edits (backspace, erase to the end and to the
start of the line, cursor left/right), log and listing output, and one part in five from a
full-screen program (a ``top``-like screen redrawn with cursor positioning). Both read it as
the search does: every line once, in order (pyte: the lines that scroll off the top, then the
screen). Reported: CPU seconds and MB/s of output for each (CPU time, not wall: the machine
may be shared), median of ``--repeat`` runs, and how far the two agree on the lines' words.
Needs no database or server; prints only (nothing is written to RESULTS.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recordings.terminal import LineScreen  # the repository root is on the path now

PROMPT = "\x1b]0;root@pacs01: ~\x07\x1b[01;32mroot@pacs01\x1b[00m:\x1b[01;34m~\x1b[00m# "
COMMANDS = [
    "systemctl status dcm4chee-arc",
    "journalctl -u dcm4chee-arc --since today | tail -n 20",
    "ls -l /var/pacs/archive/2024/03",
    "tail -n 30 /var/log/pacs/server.log",
    "dcmsend -aec ARCHIVE01 archive01:11112 /var/pacs/outgoing/1.2.826.0.1.3680043",
    "grep -c ERROR /var/log/pacs/server.log",
]
MESSAGES = [
    "2024-03-{d:02d} INFO Association from PACS01 accepted",
    "2024-03-{d:02d} INFO Stored instance 1.2.826.0.1.3680043.8.498.{n}",
    "2024-03-{d:02d} WARN \x1b[33mDisk usage of /var/pacs/archive at {d}%\x1b[0m",
    "-rw-r----- 1 pacs pacs {n:>9} Mar {d:2d} 10:{d:02d} CT-{n}.dcm",
]


def typed(rng: random.Random, command: str) -> str:
    """A command as the shell echoes it while it is typed and edited."""
    edit = rng.randrange(4)
    if edit == 0:  # a typo fixed with backspace
        return command[:-2] + "xx\x08\x08\x1b[K" + command[-2:]
    if edit == 1:  # cursor left, overwrite, back to the end
        return command + "\x1b[4D" + command[-4:]
    if edit == 2:  # the line redrawn from its start
        return "old\r\x1b[K" + PROMPT + command
    return command


def full_screen(rng: random.Random) -> str:
    rows = [
        f"\x1b[{row};1H\x1b[K{rng.randrange(10**5):>6} pacs  20 0 {rng.random():.2f} java"
        for row in range(2, 24)
    ]
    return "\x1b[H\x1b[2J\x1b[1;1Htop - 10:00:00 up 12 days, load average: 0.42" + "".join(rows)


def output(megabytes: float, seed: int = 7) -> list[str]:
    """Chunks of terminal output, about ``megabytes`` MB in all."""
    rng = random.Random(seed)
    chunks, size = [], 0
    while size < megabytes * 1024 * 1024:
        if rng.randrange(5) == 0:
            chunk = full_screen(rng) + "\x1b[24;1H"
        else:
            command = rng.choice(COMMANDS)
            lines = [
                rng.choice(MESSAGES).format(d=rng.randint(1, 28), n=rng.randrange(10**6))
                for _ in range(rng.randint(2, 30))
            ]
            chunk = PROMPT + typed(rng, command) + "\r\n" + "\r\n".join(lines) + "\r\n"
        chunks.append(chunk)
        size += len(chunk.encode())
    return chunks


def with_model(chunks: list[str]) -> str:
    screen = LineScreen(120, 24)
    for chunk in chunks:
        screen.feed(chunk)
    return screen.close()


def with_pyte(chunks: list[str]) -> str:
    import pyte

    class Lines(pyte.Screen):
        """A pyte screen that keeps each line that scrolls off its top."""

        def __init__(self, *args):
            super().__init__(*args)
            self.gone: list[str] = []

        def index(self):
            top, bottom = self.margins or (0, self.lines - 1)
            if self.cursor.y == bottom:
                line = self.buffer[top]
                self.gone.append("".join(line[x].data for x in range(self.columns)).rstrip())
            super().index()

    screen = Lines(120, 24)
    stream = pyte.Stream(screen)
    for chunk in chunks:
        stream.feed(chunk)
    return "\n".join([*screen.gone, *(line.rstrip() for line in screen.display)])


def timed(function, chunks: list[str], repeat: int) -> tuple[float, str]:
    samples, text = [], ""
    for _ in range(repeat):
        began = time.process_time()  # CPU time: the machine is shared, wall time is noisy
        text = function(chunks)
        samples.append(time.process_time() - began)
    return statistics.median(samples), text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=8, help="MB of output (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, median kept (default 3)")
    args = parser.parse_args()
    chunks = output(args.megabytes)
    megabytes = sum(len(c.encode()) for c in chunks) / 1024 / 1024
    print(f"{megabytes:.1f} MB of terminal output in {len(chunks):,} chunks")
    seconds, text = timed(with_model, chunks, args.repeat)
    print(f"recordings.terminal.LineScreen: {seconds:.2f} s CPU, {megabytes / seconds:.1f} MB/s")
    try:
        import pyte  # noqa: F401
    except ImportError:
        print("pyte: not installed (see this file's docstring to compare)")
        return 0
    pyte_seconds, pyte_text = timed(with_pyte, chunks, max(1, min(args.repeat, 2)))
    print(
        f"pyte {importlib.metadata.version('pyte')}: {pyte_seconds:.2f} s CPU, "
        f"{megabytes / pyte_seconds:.1f} MB/s "
        f"({pyte_seconds / seconds:.0f}x the model's time)"
    )
    words = set(re.findall(r"\w+", text.lower()))
    pyte_words = set(re.findall(r"\w+", pyte_text.lower()))
    print(
        f"distinct words: model {len(words):,}, pyte {len(pyte_words):,}, "
        f"only in the model {len(words - pyte_words):,}, only in pyte {len(pyte_words - words):,}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
