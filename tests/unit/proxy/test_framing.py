"""LineBuffer and the IMAP fragmentizer: same fragments however the input is cut."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from authsvc.proxy.imap.fragmentizer import (
    MAX_NUMBER,
    Announcement,
    Fragment,
    Fragmentizer,
    LineFragment,
    LiteralFragment,
    split_announcement,
)
from authsvc.proxy.linebuffer import LineBuffer, TooLong

from tests.helpers.feed import all_splits, same_for_all_splits


def test_all_splits_covers_whole_bytes_and_pairs() -> None:
    splits = list(all_splits(b"abc"))
    assert splits == [[b"abc"], [b"a", b"b", b"c"], [b"a", b"bc"], [b"ab", b"c"]]
    assert all(b"".join(s) == b"abc" for s in splits)


def lines(chunks: Sequence[bytes], max_line: int = 16) -> list[bytes | TooLong]:
    buf = LineBuffer(max_line)
    out: list[bytes | TooLong] = []
    for chunk in chunks:
        buf.feed(chunk)
        while (line := buf.next_line()) is not None:
            out.append(line)
    return out


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"USER bob\r\nPASS x y\r\n", [b"USER bob", b"PASS x y"]),
        (b"LF only\nnext\n", [b"LF only", b"next"]),
        (b"\r\n", [b""]),
        (b"no end yet", []),
        (b"\nx\r\n", [b"", b"x"]),  # an empty line of a bare LF
        (b"0123456789abcdef", [TooLong()]),  # 16 bytes, no LF among them: cannot fit
        (b"0123456789abcde", []),  # 15: the LF may still come
        (b"0123456789abcdef\r\nok\r\n", [TooLong(), b"ok"]),  # 18 bytes > 16
        (b"0123456789abcd\r\nok\r\n", [b"0123456789abcd", b"ok"]),  # exactly 16
        (b"x" * 100 + b"\r\n" + b"y" * 40 + b"\nok\n", [TooLong(), TooLong(), b"ok"]),
        (b"a\x00b\xff\r\n", [b"a\x00b\xff"]),  # bytes are not judged here
    ],
)
def test_line_buffer(data: bytes, expected: list[bytes | TooLong]) -> None:
    assert same_for_all_splits(data, lines) == expected


def test_line_buffer_needs_room_for_a_line_end() -> None:
    with pytest.raises(ValueError, match="room for CRLF"):
        LineBuffer(1)
    buf = LineBuffer(2)
    buf.feed(b"\r\n")
    assert buf.next_line() == b""


def test_line_buffer_memory_stays_bounded_on_a_megabyte_line() -> None:
    buf = LineBuffer(8192)
    buf.feed(b"A" * 1_000_000)
    assert buf.next_line() == TooLong()
    assert buf.buffered() == 0
    buf.feed(b"A" * 1_000_000 + b"\r\na NOOP\r\n")
    assert buf.next_line() == b"a NOOP"


def test_take_remaining_returns_unconsumed_bytes() -> None:
    buf = LineBuffer(64)
    buf.feed(b"a LOGIN x y\r\nb SELECT INBOX\r\nc NO")
    assert buf.next_line() == b"a LOGIN x y"
    assert buf.take_remaining() == b"b SELECT INBOX\r\nc NO"
    assert buf.buffered() == 0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a LOGIN {3}", LineFragment(b"a LOGIN ", Announcement(3, True))),
        (b"a LOGIN {3+}", LineFragment(b"a LOGIN ", Announcement(3, False))),
        (b"a LOGIN {0}", LineFragment(b"a LOGIN ", Announcement(0, True))),
        (b"a LOGIN {4294967295}", LineFragment(b"a LOGIN ", Announcement(MAX_NUMBER, True))),
        (b"a X {99999999999999999999}", LineFragment(b"a X ", Announcement(MAX_NUMBER + 1, True))),
        (b"a X {10000000000}", LineFragment(b"a X ", Announcement(MAX_NUMBER + 1, True))),
        (b"{3}", LineFragment(b"", Announcement(3, True))),  # the whole line announces
        (b"a LOGIN {}", LineFragment(b"a LOGIN {}")),
        (b"a LOGIN {x}", LineFragment(b"a LOGIN {x}")),
        (b"a LOGIN {+}", LineFragment(b"a LOGIN {+}")),
        (b"a NOOP", LineFragment(b"a NOOP")),
    ],
)
def test_split_announcement(line: bytes, expected: LineFragment) -> None:
    assert split_announcement(line) == expected


def fragments(chunks: Sequence[bytes]) -> list[Fragment]:
    """Fragments, accepting every literal of up to 64 bytes (as a front would)."""
    frag = Fragmentizer(64)
    out: list[Fragment] = []
    for chunk in chunks:
        frag.feed(chunk)
        while (piece := frag.next()) is not None:
            out.append(piece)
            if isinstance(piece, LineFragment) and piece.literal and piece.literal.length <= 64:
                frag.expect_literal(piece.literal.length)
    return out


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a NOOP\r\n", [LineFragment(b"a NOOP")]),
        (
            b"a LOGIN {3}\r\nbob {6+}\r\nse\r\nt!\r\n",
            [
                LineFragment(b"a LOGIN ", Announcement(3, True)),
                LiteralFragment(b"bob"),
                LineFragment(b" ", Announcement(6, False)),
                LiteralFragment(b"se\r\nt!"),  # CRLF inside a literal is data
                LineFragment(b""),
            ],
        ),
        (
            b"a LOGIN {0}\r\n {2}\r\n{}\r\nb NOOP\r\n",
            [
                LineFragment(b"a LOGIN ", Announcement(0, True)),
                LiteralFragment(b""),
                LineFragment(b" ", Announcement(2, True)),
                LiteralFragment(b"{}"),
                LineFragment(b""),
                LineFragment(b"b NOOP"),
            ],
        ),
        (
            # A refused literal is not read: what follows is the next command.
            b"a LOGIN {4294967295}\r\nb NOOP\r\n",
            [LineFragment(b"a LOGIN ", Announcement(MAX_NUMBER, True)), LineFragment(b"b NOOP")],
        ),
        (b"x" * 70 + b"\r\nb NOOP\n", [TooLong(), LineFragment(b"b NOOP")]),
        # A literal that ends the input is complete with its last byte.
        (b"a X {3}\r\nabc",
         [LineFragment(b"a X ", Announcement(3, True)), LiteralFragment(b"abc")]),
    ],
)
def test_fragmentizer(data: bytes, expected: list[Fragment]) -> None:
    assert same_for_all_splits(data, fragments) == expected


def test_fragmentizer_keeps_pipelined_bytes_and_clears_after_starttls() -> None:
    frag = Fragmentizer(64)
    frag.feed(b"a LOGIN b c\r\nd SELECT INBOX\r\n")
    assert frag.next() == LineFragment(b"a LOGIN b c")
    assert frag.take_remaining() == b"d SELECT INBOX\r\n"
    frag.feed(b"a STARTTLS\r\nb LOGIN injected x\r\n")
    assert frag.next() == LineFragment(b"a STARTTLS")
    frag.clear()
    assert frag.next() is None
