"""Cut IMAP client bytes into line and literal fragments before any parsing.

The idea is imap-codec's ``fragmentizer.rs``: an IMAP command is a line, or
a line ending in a literal announcement (``{n}`` or ``{n+}``, RFC 9051 §4.3,
RFC 7888) followed by exactly n raw bytes and another line, and so on.  Cutting
fragments first means literal bytes can never be read as a command, an
overlong line is skipped without losing sync, and memory is capped.

The fragmentizer reports an announcement but does not trust it: the front
machine decides whether to accept the literal (size limits, LITERAL+) and calls
:meth:`Fragmentizer.expect_literal` only then.  A refused synchronising
literal is never sent by a correct client, so the next bytes are a new command.
"""

from __future__ import annotations

from dataclasses import dataclass

from authsvc.proxy.linebuffer import LineBuffer, TooLong

#: RFC 9051 §9: number = 1*DIGIT, an unsigned 32-bit value.  Longer digit runs
#: are clamped to one past that, so "{99999999999999999999}" cannot cost a bignum.
MAX_NUMBER = 4_294_967_295
_MAX_DIGITS = 10


@dataclass(frozen=True, slots=True)
class Announcement:
    """``{n}`` (synchronising) or ``{n+}`` (LITERAL+, RFC 7888) at a line's end."""

    length: int
    synchronising: bool


@dataclass(frozen=True, slots=True)
class LineFragment:
    """A line without its CRLF; the announcement, if any, is cut off ``text``."""

    text: bytes
    literal: Announcement | None = None


@dataclass(frozen=True, slots=True)
class LiteralFragment:
    """The raw bytes of an accepted literal."""

    data: bytes


Fragment = LineFragment | LiteralFragment | TooLong


def split_announcement(line: bytes) -> LineFragment:
    """Separate a trailing ``{n}``/``{n+}`` from a line (RFC 9051 §9 ``literal``)."""
    if not line.endswith(b"}"):
        return LineFragment(line)
    start = line.rfind(b"{")
    if start < 0:
        return LineFragment(line)
    inner = line[start + 1 : -1]
    synchronising = not inner.endswith(b"+")
    digits = inner if synchronising else inner[:-1]
    if not digits or not digits.isdigit():
        return LineFragment(line)
    length = MAX_NUMBER + 1 if len(digits) > _MAX_DIGITS else int(digits)
    return LineFragment(line[:start], Announcement(length, synchronising))


class Fragmentizer:
    """Bytes in, fragments out, one at a time (pull with :meth:`next`)."""

    def __init__(self, max_line: int) -> None:
        self._lines = LineBuffer(max_line)
        self._literal: int | None = None

    def feed(self, data: bytes) -> None:
        """Append bytes read from the client."""
        self._lines.feed(data)

    def next(self) -> Fragment | None:
        """The next complete fragment, or None until more bytes arrive."""
        if self._literal is not None:
            data = self._lines.take(self._literal)
            if data is None:
                return None
            self._literal = None
            return LiteralFragment(data)
        line = self._lines.next_line()
        if line is None or isinstance(line, TooLong):
            return line
        return split_announcement(line)

    def expect_literal(self, length: int) -> None:
        """The front accepted the literal just announced: its bytes come next."""
        self._literal = length

    def take_remaining(self) -> bytes:
        """Unparsed bytes (commands pipelined behind LOGIN), emptying the buffer."""
        self._literal = None
        return self._lines.take_remaining()

    def clear(self) -> None:
        """Drop everything buffered (after STARTTLS, RFC 2595 §3.1)."""
        self._literal = None
        self._lines.clear()
