"""Property: whatever bytes a target sends, the recordings stay valid and complete.

Terminal (pty) channels: arbitrary byte chunks (invalid UTF-8, multibyte characters split
across chunks, ANSI/OSC/DCS escape sequences, C1 controls, NUL, 100-300 kB chunks), with
resizes, Enter markers, flushes and time passing between them, make a valid asciicast v2
file: a JSON header, then one JSON array per line ``[time, "o"|"i"|"r"|"m", text]`` with
times that never go back, whose output text is exactly the input decoded as UTF-8 with
invalid bytes replaced (U+FFFD), and which the real ``asciinema cat`` plays, printing
exactly that text. Exec (non-pty) channels keep the exact bytes in ``.bin`` with an index
that describes every byte once, in order.

Recordings are sealed with the real OpenBao (``approle_settings``) as the gateway does.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from itertools import count, pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recordings import recorder as recorder_module
from recordings.models import GatewaySession
from recordings.recorder import ExecRecorder, TerminalRecorder
from tests.badinput.helpers import BADINPUT, CHARS, FEW

pytestmark = pytest.mark.django_db

ASCIINEMA = Path(sys.executable).parent / "asciinema"

ESCAPES = st.sampled_from(
    [
        b"\x1b[31m",
        b"\x1b[0m",
        b"\x1b[38;5;196;48;2;1;2;3m",
        b"\x1b]0;window title\x07",
        b"\x1b]8;;https://evil.example/\x1b\\link\x1b]8;;\x1b\\",
        b"\x1b]52;c;c2VjcmV0\x07",  # OSC 52: set the clipboard
        b"\x1bP1$r0m\x1b\\",  # DCS
        b"\x1b[?1049h\x1b[2J\x1b[H",
        b"\x1bc",
        b"\x9b31m",  # C1 CSI (invalid UTF-8 on its own)
        b"\xc2\x9b31m",  # C1 CSI as UTF-8
        b"\x1b",
        b"\x00",
        b"\r\n",
        b"\r",
        b"\x08\x08\x1b[K",
        b"\x7f",
        b"\x07",
    ]
)
INVALID = st.sampled_from(
    [
        b"\xff",
        b"\xfe\xff",
        b"\xc0\x80",  # overlong NUL
        b"\xed\xa0\x80",  # a surrogate, encoded
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"\xe2\x82",  # a truncated euro sign
        b"\xf0\x9f\x98",  # a truncated emoji
        b"\x80",
        b"\xc3",
        b"\xef\xbb\xbf",  # BOM
    ]
)
TEXT = st.text(CHARS, min_size=1, max_size=20).map(lambda t: t.encode("utf-8"))
PIECE = st.one_of(st.binary(max_size=48), TEXT, TEXT, ESCAPES, ESCAPES, INVALID)
# Output as one byte string, cut into chunks at arbitrary points (multibyte characters and
# escape sequences end up split across chunks).
STREAM = st.lists(PIECE, max_size=30).map(b"".join)
HUGE = st.builds(
    lambda seed, size: random.Random(seed).randbytes(size),
    st.integers(0, 2**32),
    st.integers(100_000, 300_000),
)
DELAYS = st.sampled_from([0.0, 0.0, 0.001, 0.009, 0.011, 0.3, 2.0])


class FakeClock:
    """The recorder's clock, advanced by the test (flushes and coalescing depend on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(recorder_module, "time", fake)
    return fake


@pytest.fixture
def sessions(alice):
    """A new session for each example (a channel has one recording per session)."""
    return lambda: GatewaySession.objects.create(
        user=alice, account="pacs01-root", client_address="192.0.2.10", gateway_node="gw1"
    )


@pytest.fixture
def roots(approle_settings, tmp_path):
    """A fresh recordings folder for each example (file names come from the session's id)."""
    numbers = count()
    return lambda: tmp_path / f"example-{next(numbers)}"


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in pairwise(edges)]


@st.composite
def terminal_script(draw):
    """What a pty channel sees: output chunks, resizes, Enters, flushes and pauses."""
    ops = []
    for _ in range(draw(st.integers(1, 6))):
        data = draw(st.one_of(STREAM, STREAM, STREAM, HUGE)) if draw(st.integers(0, 9)) == 0 else draw(STREAM)
        for chunk in cut(data, draw(st.lists(st.integers(0, 10**6), max_size=6))):
            ops.append(("write", chunk))
            ops.append(("tick", draw(DELAYS)))
        ops.append(
            draw(
                st.one_of(
                    st.tuples(st.just("resize"), st.integers(1, 10_000), st.integers(1, 10_000)),
                    st.tuples(st.just("input"), st.sampled_from([b"\r", b"ls\r", b"x", b"\n", b"\x03"])),
                    st.tuples(st.just("flush")),
                    st.tuples(st.just("tick"), DELAYS),
                )
            )
        )
    return ops


def read_cast(path: Path) -> tuple[dict, list[list]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the file ends in the middle of a line"
    lines = raw[:-1].split(b"\n")
    header = json.loads(lines[0].decode("utf-8"))
    return header, [json.loads(line.decode("utf-8")) for line in lines[1:]]


@BADINPUT
@given(script=terminal_script(), width=st.integers(1, 500), height=st.integers(1, 200))
def test_any_terminal_output_makes_a_valid_asciicast_that_asciinema_plays(
    sessions, roots, clock, tmp_path, script, width, height
):
    root = roots()
    rec = TerminalRecorder(
        session=sessions(), channel=0, width=width, height=height, term="xterm-256color", title="t", root=root
    )
    sent = bytearray()
    for op in script:
        if op[0] == "write":
            rec.write(op[1])
            sent += op[1]
        elif op[0] == "tick":
            clock.now += op[1]
        elif op[0] == "resize":
            rec.resize(op[1], op[2])
        elif op[0] == "input":
            rec.input(op[1])
        else:
            rec.flush()
    recording = rec.close()
    path = root / recording.path

    header, events = read_cast(path)
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (width, height)
    assert isinstance(header["timestamp"], int)
    times = []
    for event in events:
        assert isinstance(event, list) and len(event) == 3, event
        t, code, payload = event
        assert isinstance(t, int | float) and t >= 0
        assert code in ("o", "i", "r", "m")
        assert isinstance(payload, str)
        if code == "r":
            w, h = payload.split("x")
            assert int(w) >= 1 and int(h) >= 1
        if code == "m":
            assert len(payload) <= recorder_module.MARKER_LABEL_MAX and "\x1b" not in payload
        assert code != "i", "typed input is never recorded"
        times.append(t)
    assert times == sorted(times), "event times go back"
    expected = bytes(sent).decode("utf-8", errors="replace")
    assert "".join(e[2] for e in events if e[1] == "o") == expected

    played = subprocess.run(
        [str(ASCIINEMA), "cat", str(path)],
        capture_output=True,
        timeout=60,
        env={"HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"},
        start_new_session=True,
        check=False,
    )
    assert played.returncode == 0, played.stderr.decode(errors="replace")
    assert played.stdout == expected.encode("utf-8")


@pytest.mark.parametrize(
    "chunks",
    [
        [b"caf\xc3", b"\xa9"],  # a character split across two reads
        [b"\xe2", b"\x82", b"\xac"],  # three reads for one character
        [b"\xf0\x9f", b"\x98\x80", b"!"],
        [b"\xe2\x82"],  # the session ends inside a character
        [b"\xff\xfe", b"ok"],
        [b"\x1b]0;", b"title\x07", b"\x1b[3", b"1mred"],
        [b"\x00" * 1000],
        [b"a" * 300_000],
    ],
)
def test_split_and_broken_characters_are_kept_or_replaced_exactly(sessions, roots, clock, chunks):
    root = roots()
    rec = TerminalRecorder(session=sessions(), channel=0, width=80, height=24, root=root)
    for chunk in chunks:
        rec.write(chunk)
        clock.now += 0.3  # every chunk its own flush
    recording = rec.close()
    _, events = read_cast(root / recording.path)
    assert "".join(e[2] for e in events if e[1] == "o") == b"".join(chunks).decode("utf-8", errors="replace")


@st.composite
def exec_script(draw):
    ops = []
    for _ in range(draw(st.integers(1, 12))):
        stream = draw(st.sampled_from(["o", "o", "e"]))
        data = (
            draw(st.one_of(st.binary(max_size=2000), STREAM, INVALID))
            if draw(st.integers(0, 15))
            else draw(HUGE)
        )
        ops.append((stream, data))
        ops.append(("tick", draw(DELAYS)))
        if draw(st.integers(0, 5)) == 0:
            ops.append(("flush", None))
    return ops


@FEW
@given(script=exec_script())
def test_any_exec_output_is_kept_byte_for_byte_with_an_index_of_every_chunk(sessions, roots, clock, script):
    root = roots()
    rec = ExecRecorder(session=sessions(), channel=1, root=root)
    sent = bytearray()
    per_stream = {"o": bytearray(), "e": bytearray()}
    for op, data in script:
        if op == "tick":
            clock.now += data
        elif op == "flush":
            rec.flush()
        else:
            (rec.write if op == "o" else rec.write_stderr)(data)
            sent += data
            per_stream[op] += data
    recording = rec.close()
    raw = (root / recording.path).read_bytes()
    assert raw == bytes(sent)
    offset, last_t = 0, 0.0
    rebuilt = {"o": bytearray(), "e": bytearray()}
    for line in (root / recording.index_path).read_text(encoding="ascii").splitlines():
        t, start, length, stream = line.split(" ")
        assert float(t) >= last_t and int(start) == offset and int(length) > 0 and stream in ("o", "e")
        rebuilt[stream] += raw[offset : offset + int(length)]
        offset += int(length)
        last_t = float(t)
    assert offset == len(raw)
    assert rebuilt == per_stream
