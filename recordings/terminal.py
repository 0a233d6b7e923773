"""The one terminal model: what a terminal shows for a stream of output, as lines of text.

Everything that reads recorded terminal output goes through here: the replay markers
(``recorder.TerminalRecorder`` labels each Enter with ``screen_line`` of the line the target
echoed), the search text (``search`` feeds each recording to a ``LineScreen``) and the exec
output preview of the replay page (``strip_controls``). One model, so a command's marker
label is exactly the line its search text holds.

It models lines, not a whole screen. Printable text overwrites at the cursor; carriage
return, backspace, tab, cursor left/right/column, erase in line (``ESC[K``, ``ESC[1K``,
``ESC[2K``), insert/delete/erase characters edit the current line, so a command line edited
with readline ends up as it was run. Text past the width wraps and is joined back (a long
command stays one string). The row the cursor is on is followed (newlines, cursor up/down,
``ESC[row;colH``, save/restore cursor): a move to the row it is already on only moves the
column, a move to another row ends the line (what a full-screen program draws elsewhere
becomes lines of its own; the row is unknown until the first absolute move, so until then
any vertical move ends the line). Colours, titles (OSC) and other escape sequences are
dropped, as are invalid UTF-8 bytes (U+FFFD). A line's text is its cells with trailing
blanks removed; runs of blank lines become one.

Why not pyte (a complete VT100 emulator, PyPI): fed the same PACS admin's shell output
(``bench/terminal_bench.py``), pyte 0.8.2 took 17x this model's CPU time (0.2 against 3.6 MB/s
of output), which would make indexing a 256 MiB session take over twenty minutes; and it keeps
a 2-D screen whose lines are lost when a full-screen program redraws them, so its text had
26 % fewer distinct words (none that this model missed). What it does beyond this model
(scroll regions, the alternate screen, character sets) does not change which words appeared
in a session. This model costs what the search's own did before it (within 10 % CPU).
"""

from __future__ import annotations

import re

MARKER_LABEL_MAX = 80  # characters of a screen line kept as a marker's label
WIDTH_MAX = 1000

# One token at a time: CSI (cursor, erase, colours), strings (OSC, DCS, PM, APC), other escapes,
# controls (C0, DEL, C1), and runs of text.
TOKENS = re.compile(
    r"(?P<csi>(?:\x1b\[|\x9b)(?P<params>[0-?]*)[ -/]*(?P<final>[@-~]))"
    r"|(?P<string>(?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?)"
    r"|(?P<esc>\x1b[ -/]*[0-~]?)"
    r"|(?P<ctl>[\x00-\x1f\x7f-\x9f])"
    r"|(?P<text>[^\x00-\x1f\x7f-\x9f]+)"
)

# Escape sequences and controls of raw output, newlines kept (so its lines are the output's
# lines): a cheap first look at raw bytes before a line is modelled (the recorder's echo search).
ESCAPES_BUT_NEWLINE = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]"
    rb"|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    rb"|\x1b[PX^_][^\x1b\n]*(?:\x1b\\)?"
    rb"|\x1b[ -/]*[0-~]?"
    rb"|[\x00-\x09\x0b-\x1f\x7f]"
)

# Escape sequences and controls but tab and newline: output shown as plain text (no pty).
_CONTROLS = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|[\x00-\x08\x0b-\x1f\x7f]"
)


def strip_controls(text: str) -> str:
    """Text with escape sequences and control characters (but tab and newline) removed: output
    of a program without a terminal, shown as it was written."""
    return _CONTROLS.sub("", text)


class LineScreen:
    """Enough of a terminal to turn output into the lines a user saw (see the module docstring).

    ``feed()`` text (decoded output), read the finished lines with ``close()`` (also ends the
    current one) or the current line with ``line()``. ``size`` is the characters of finished
    lines so far, for callers that stop at a budget. ``width=None``: no margin (no wrapping).
    """

    __slots__ = ("_col", "_row", "_saved", "_wrapped", "_y", "height", "parts", "size", "width")

    def __init__(self, width: int | None = 80, height: int = 24):
        self.width = width if width is not None and 1 <= width <= WIDTH_MAX else None
        if width is not None and self.width is None:
            self.width = 80
        self.height = height if 1 <= height <= WIDTH_MAX else 24
        self.parts: list[str] = []
        self.size = 0
        self._row: list[str] = []
        self._wrapped: list[str] = []  # the rows of the current line before it wrapped
        self._col = 0
        self._y: int | None = None  # the cursor's row, once an absolute move has told it
        self._saved: tuple[int | None, int] = (None, 0)

    def resize(self, width: int, height: int) -> None:
        self.width = max(1, min(width, WIDTH_MAX))
        self.height = max(1, min(height, WIDTH_MAX))
        if self._y is not None:
            self._y = min(self._y, self.height - 1)

    def feed(self, text: str) -> None:
        for match in TOKENS.finditer(text):
            kind = match.lastgroup
            if kind == "text":
                self._put(match.group())
            elif kind == "csi":
                self._csi(match.group("params"), match.group("final"))
            elif kind == "ctl":
                self._control(match.group())
            elif kind == "esc":
                self._escape(match.group())

    def line(self) -> str:
        """The current (unfinished) line's text, wrapped rows joined."""
        return ("".join(self._wrapped) + "".join(self._row)).rstrip()

    def close(self) -> str:
        """All the lines, the current one included, each ending with a newline."""
        if self._row:
            self._end_row()
        return "".join(self.parts)

    # --- Within the line ---------------------------------------------------------------

    def _put(self, text: str) -> None:
        if "\ufffd" in text:
            text = text.replace("\ufffd", "")
        width = self.width
        while text:
            if width is None:
                part, text = text, ""
            else:
                if self._col >= width:  # past the margin: the terminal wraps
                    self._end_row(soft=True)
                    self._down(1)
                part, text = text[: width - self._col], text[width - self._col :]
            row = self._row
            if self._col > len(row):
                row.extend(" " * (self._col - len(row)))
            row[self._col : self._col + len(part)] = part
            self._col += len(part)

    def _last_column(self) -> int:
        # No margin: still a bound, so ESC[999999999C cannot make a line of a billion blanks.
        return self.width - 1 if self.width is not None else max(len(self._row), WIDTH_MAX)

    def _control(self, char: str) -> None:
        if char in "\n\x0b\x0c\x84":  # LF, VT, FF, IND: a new line (output as written: from col 0)
            self._end_row()
            self._down(1)
        elif char == "\r":
            self._col = 0
        elif char == "\b":
            self._col = max(min(self._col, self._last_column() + 1) - 1, 0)
        elif char == "\t":
            self._col = min((self._col // 8 + 1) * 8, self._last_column())
        elif char == "\x85":  # NEL
            self._end_row()
            self._down(1)
        elif char == "\x8d":  # RI
            self._up(1)

    def _escape(self, sequence: str) -> None:
        if sequence in ("\x1bE", "\x1bD"):  # next line, index
            self._end_row(keep_col=sequence == "\x1bD")
            self._down(1)
        elif sequence == "\x1bM":  # reverse index
            self._up(1)
        elif sequence == "\x1bc":  # reset
            self._break()
            self._y = None
        elif sequence == "\x1b7":
            self._saved = (self._y, self._col)
        elif sequence == "\x1b8":
            self._restore()

    def _csi(self, params: str, final: str) -> None:
        if params and params[0] in "<=>?":
            return  # private modes (bracketed paste, cursor keys, the alternate screen)
        numbers = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []
        first = numbers[0] if numbers else 0
        n = max(first, 1)
        row = self._row
        if final == "K":
            if first == 0:
                del row[self._col :]
            elif first == 1:  # from the start of the line to the cursor, inclusive
                row[: self._col + 1] = " " * min(self._col + 1, len(row))
            else:
                row.clear()
        elif final == "D":
            self._col = max(min(self._col, self._last_column()) - n, 0)
        elif final in "Ca":
            self._col = min(self._col + n, self._last_column())
        elif final in "G`":
            self._col = min(n - 1, self._last_column())
        elif final == "P":
            del row[self._col : self._col + n]
        elif final == "@":
            if self._col < len(row):
                row[self._col : self._col] = " " * n
                if self.width is not None:
                    del row[self.width :]
        elif final == "X":
            end = min(self._col + n, len(row))
            row[self._col : end] = " " * max(end - self._col, 0)
        elif final in "Hf":
            column = numbers[1] if len(numbers) > 1 else 0
            self._move_to(n - 1, max(column, 1) - 1)
        elif final == "d":
            self._move_to(n - 1, self._col)
        elif final in "Ak":
            self._up(n)
        elif final in "Be":
            self._down(n, moves=True)
        elif final == "E":
            self._down(n, moves=True)
            self._col = 0
        elif final == "F":
            self._up(n)
            self._col = 0
        elif final == "J":
            if first == 0:
                del row[self._col :]
            elif first == 1:
                row[: self._col + 1] = " " * min(self._col + 1, len(row))
            else:  # the screen is cleared: what was on this line was seen, the line goes on blank
                self._break()
        elif final == "s":
            self._saved = (self._y, self._col)
        elif final == "u":
            self._restore()

    # --- Between lines -----------------------------------------------------------------

    def _move_to(self, y: int, col: int) -> None:
        y = max(0, min(y, self.height - 1))
        if y != self._y:
            self._break()
            self._y = y
        self._col = min(col, self._last_column())

    def _restore(self) -> None:
        y, col = self._saved
        if y is None or y != self._y:
            self._break()
        self._y = y
        self._col = col

    def _down(self, n: int, *, moves: bool = False) -> None:
        """The cursor goes down ``n`` rows (a newline scrolls at the bottom; a move stops there)."""
        if self._y is None:
            if moves:
                self._break()
            return
        bottom = self.height - 1
        if moves and self._y < bottom:
            self._break()
        self._y = min(self._y + n, bottom)

    def _up(self, n: int) -> None:
        if self._y is None or self._y > 0:
            self._break()
        if self._y is not None:
            self._y = max(self._y - n, 0)

    def _break(self) -> None:
        """The cursor leaves the row: what is on it is a line (nothing: no blank line)."""
        if self._row or self._wrapped:
            self._end_row(keep_col=True)

    def _end_row(self, soft: bool = False, keep_col: bool = False) -> None:
        text = "".join(self._row)
        if soft:
            piece = text
            self._wrapped.append(text)
        else:
            self._wrapped.clear()
            piece = text.rstrip() + "\n"
            if piece == "\n" and (not self.parts or self.parts[-1] == "\n"):
                piece = ""  # runs of blank lines become one
        if piece:
            self.parts.append(piece)
            self.size += len(piece)
        self._row = []
        if not keep_col or soft:
            self._col = 0


def screen_text(text: str, *, width: int | None = 80, height: int = 24) -> str:
    """The lines a terminal of this size shows for ``text``, each ending with a newline."""
    screen = LineScreen(width, height)
    screen.feed(text)
    return screen.close()


def screen_line(raw: bytes, *, width: int | None = None, limit: int | None = MARKER_LABEL_MAX) -> str:
    """The text a terminal shows for one line of output (no newline in it).

    The last line ``LineScreen`` makes of it (after any move to another row in it), with
    trailing blanks removed: the same text the search holds for that line. At most ``limit``
    characters (None: all of them). ``width``: the terminal's, where known (None: no margin).
    """
    screen = LineScreen(width)
    screen.feed(raw.decode("utf-8", errors="replace"))
    shown = screen.line()
    return shown if limit is None else shown[:limit]
