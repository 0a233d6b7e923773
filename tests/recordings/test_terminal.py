"""The terminal model (recordings/terminal.py): what a terminal shows for recorded output, the
one reading used by the replay markers and the search text. No server needed."""

from __future__ import annotations

import pytest

from recordings.terminal import LineScreen, screen_line, screen_text, strip_controls

pytestmark = pytest.mark.unit

PROMPT = "\x1b[01;32malice@pacs01\x1b[00m:\x1b[01;34m~\x1b[00m$ "


def lines(text: str, *, width: int | None = 80) -> list[str]:
    return screen_text(text, width=width).splitlines()


@pytest.mark.parametrize(
    ("output", "label"),
    [
        (b"$ lss\x08 \x08", "$ ls"),  # backspace echoed as BS SP BS
        (b"$ lss\x08\x1b[K", "$ ls"),  # backspace then erase to end of line
        (b"$ old command\r\x1b[K$ new", "$ new"),  # readline redraws the line
        (b"$ \x1b]0;alice@pacs01: ~\x07echo hi", "$ echo hi"),  # a title (OSC) is not text
        (b"$ vi\x1b[Dm\x1b[C", "$ vm"),  # cursor left, overwrite, right
        (b"\x1b[?2004h$ cat\x1b[?2004l", "$ cat"),  # bracketed paste mode switches
        (b"$ " + b"x" * 200, "$ " + "x" * 78),  # at most 80 characters
        (b"caf\xc3\xa9 \xff", "caf\u00e9"),  # invalid UTF-8 does not break the label
        (b"", ""),
    ],
)
def test_screen_line_shows_what_the_terminal_shows(output, label):
    assert screen_line(output) == label


# --- Erasing within the line ------------------------------------------------------------------


def test_erase_to_end_of_line_removes_from_the_cursor_on():
    assert lines("$ rm -rf /tmp/x\x1b[6D\x1b[K") == ["$ rm -rf"]
    assert lines("$ rm -rf /tmp/x\x1b[6D\x1b[0K") == ["$ rm -rf"]


def test_erase_to_start_of_line_blanks_up_to_and_including_the_cursor():
    # The cursor is on the "/" of "/tmp/x" (column 9): columns 0-9 become blanks.
    assert lines("$ rm -rf /tmp/x\x1b[6D\x1b[1K") == [" " * 10 + "tmp/x"]
    assert screen_line(b"$ rm -rf /tmp/x\x1b[6D\x1b[1K") == " " * 10 + "tmp/x"


def test_erase_to_start_of_line_then_text_overwrites_the_blanks():
    assert lines("$ typo here\x1b[1K\r$ ls") == ["$ ls"]
    assert lines("abcdef\x1b[3D\x1b[1KXY") == ["   XYf"]


def test_erase_the_whole_line_keeps_the_cursor_where_it_is():
    assert lines("$ ls\x1b[2K") == []
    assert lines("$ old\x1b[2KX") == ["     X"]
    assert lines("$ old\x1b[2K\r$ new") == ["$ new"]


def test_erase_characters_deletes_and_inserts():
    assert lines("$ lxs\x1b[2D\x1b[P") == ["$ ls"]  # delete one character
    assert lines("$ ls\x1b[1D\x1b[@a") == ["$ las"]  # insert one blank, then type
    assert lines("$ rm -rf\x1b[3D\x1b[3X") == ["$ rm"]  # erase three in place


# --- Carriage return, backspace, cursor moves -----------------------------------------------------


def test_carriage_return_overwrites_from_the_start():
    assert lines("progress  10%\rprogress 100%\r\n") == ["progress 100%"]
    assert lines("12345\rab") == ["ab345"]


def test_backspace_moves_left_and_stops_at_the_start():
    assert lines("ab\x08\x08\x08\x08X") == ["Xb"]
    assert lines("abc\x08\x08d") == ["adc"]


def test_cursor_left_and_right_move_within_the_line():
    assert lines("$ abc\x1b[3Dx\x1b[Cz") == ["$ xbz"]
    assert lines("ab\x1b[10Cc") == ["ab" + " " * 10 + "c"]
    assert lines("ab\x1b[99Dc") == ["cb"]  # not past the start
    assert lines("a\x1b[999C!", width=80) == ["a" + " " * 78 + "!"]  # not past the margin


def test_cursor_to_a_column():
    assert lines("$ lx\x1b[4Gs") == ["$ ls"]  # column 4 (1-based)
    assert lines("$ lx\x1b[Gz") == ["z lx"]  # no parameter: column 1


def test_cup_on_the_cursors_row_moves_within_the_line():
    # ESC[5;1H puts the cursor on row 5 (now known); ESC[5;3H stays on that row.
    assert lines("\x1b[5;1H$ lx\x1b[5;4Hs") == ["$ ls"]
    assert lines("\x1b[5;1Habcdef\x1b[5;1H\x1b[1KX") == ["Xbcdef"]


def test_cup_to_another_row_ends_the_line():
    assert lines("\x1b[5;1H$ top\x1b[6;1Hload average") == ["$ top", "load average"]
    # Before any absolute move the row is unknown: a CUP is a move to another line.
    assert lines("$ echo \x1b[3;1H$ top") == ["$ echo", "$ top"]
    assert screen_line(b"$ echo \x1b[3;1H$ top") == "$ top"


def test_cursor_up_and_down_end_the_line_and_keep_the_column():
    assert lines("one\r\ntwo\x1b[Aaaa") == ["one", "two", "   aaa"]
    assert lines("\x1b[1;1Htop\x1b[Ax") == ["topx"]  # already on the top row: no move


def test_save_and_restore_cursor_on_the_same_row_is_a_move_within_the_line():
    assert lines("\x1b[3;1H$ ab\x1b7cd\x1b8X") == ["$ abXd"]
    assert lines("\x1b[3;1H$ ab\x1b[scd\x1b[uX") == ["$ abXd"]


# --- Tabs, wrapping, newlines, text ------------------------------------------------------------


def test_tabs_go_to_the_next_multiple_of_eight():
    assert lines("a\tb\tc") == ["a       b       c"]
    assert lines("12345678\tx") == ["12345678        x"]
    assert lines("x" * 78 + "\t\tend", width=80) == ["x" * 78 + " end"]  # not past the margin


def test_a_line_past_the_width_wraps_and_is_joined_back():
    long = "ls " + "/var/pacs/archive/2024 " * 10
    assert lines(long, width=40) == [long.rstrip()]
    assert screen_line(long.encode(), width=40, limit=None) == long.rstrip()


def test_carriage_return_after_a_wrap_goes_to_the_start_of_the_wrapped_row():
    # readline at the margin: a blank and CR make the terminal wrap; the text then overwrites it.
    assert lines("x" * 10 + " \rabc", width=10) == ["x" * 10 + "abc"]
    assert screen_line(b"x" * 10 + b" \rabc", width=10) == "x" * 10 + "abc"


def test_newlines_end_lines_and_blank_runs_become_one():
    assert lines("a\r\n\r\n\r\n\r\nb\nc") == ["a", "", "b", "c"]


def test_utf8_text_is_kept_and_invalid_bytes_dropped():
    assert lines("Befund \u00fcbermittelt \u2014 CT-0042 \u6e2c\u8a66") == [
        "Befund \u00fcbermittelt \u2014 CT-0042 \u6e2c\u8a66"
    ]
    assert screen_line("caf\u00e9 d\u00e9j\u00e0".encode()) == "caf\u00e9 d\u00e9j\u00e0"
    assert screen_line(b"ok\xff\xfe!") == "ok!"
    # Overwriting a multibyte character replaces it whole (cells are characters).
    assert lines("\u00e9\u00e9\u00e9\rx") == ["x\u00e9\u00e9"]


def test_colours_titles_and_modes_leave_no_trace():
    text = screen_text(PROMPT + "\x1b]0;title\x07\x1b[?1049h\x1b(B\x1b=ls\x1b[?1049l\r\n")
    assert text == "alice@pacs01:~$ ls\n"
    assert "\x1b" not in text


def test_huge_counts_are_bounded():
    screen = LineScreen(None)
    screen.feed("a\x1b[999999999Cb")
    assert len(screen.line()) < 2000


def test_strip_controls_keeps_text_tabs_and_newlines():
    assert strip_controls("a\tb\x1b[31mred\x1b[0m\r\n\x07c\x1b]0;t\x07") == "a\tbred\nc"


# --- One reading for markers and search ----------------------------------------------------------


EDITED_LINES = [
    PROMPT + "rm -rf /tmp/x\x1b[6D\x1b[1K",  # erase to the start of the line
    PROMPT + "systemctl stop pacs\x08\x08\x08\x08\x1b[Kstart pacs",  # backspaces, erase to end
    PROMPT + "ls /var\x1b[3Dxyz\x1b[2C",  # cursor left, overwrite, right
    PROMPT + "old\r\x1b[2K" + PROMPT + "dcmsend\x1b[3G\x1b[P",  # erase the line, column, delete
    PROMPT + "echo a\tb",  # a tab
    PROMPT + "\x1b[5;1Hvi\x1b[5;2Hm",  # CUP (the row unknown first, then the same row)
    PROMPT + "echo " + "x" * 100 + " \rtail",  # wrapped at 80, CR on the wrapped row
    PROMPT + "echo caf\u00e9 \u2014 \u6e2c\ufffd",  # UTF-8, an invalid byte
]


@pytest.mark.parametrize("output", EDITED_LINES)
def test_the_marker_label_is_the_line_the_search_text_holds(output):
    """What labels a marker (``screen_line`` of the output since the last newline) and what the
    search indexes (``LineScreen`` over the whole output) are the same text for that line."""
    earlier = "motd\r\n" + PROMPT + "hostname\r\npacs01\r\n"
    screen = LineScreen(80, 24)
    screen.feed(earlier + output + "\r\nsome output\r\n")
    searched = screen.close().splitlines()
    label = screen_line(output.encode(), width=80, limit=None)
    assert label
    assert searched[searched.index("some output") - 1] == label
