"""Cut a byte stream into lines, with a length limit; nothing else.

POP3 commands (RFC 1939 §3), store replies and the line parts of IMAP
commands all end in CRLF.  We also take a bare LF, as Perdition and Dovecot
do, and strip the CR.  A line longer than the limit is reported once, then
skipped up to its LF, so a 1 MB line costs at most ``max_line`` bytes of
memory and never shifts the next command.

Every answer depends only on the bytes fed so far, never on how they were
split into reads: the unit tests feed each input whole, byte by byte and at
every two-chunk split (tests/helpers/feed.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TooLong:
    """A line passed the limit; its rest is being skipped."""


class LineBuffer:
    """Bytes in, complete lines (without CRLF) out."""

    def __init__(self, max_line: int) -> None:
        if max_line < 2:
            raise ValueError("max_line must leave room for CRLF")
        self._max = max_line
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> None:
        """Append bytes read from the peer."""
        self._buf += data

    def next_line(self) -> bytes | TooLong | None:
        """The next line without its line end, TooLong once per overlong line, or None."""
        if self._skip_rest():
            return None
        # The limit counts the line end, so look for LF only within it: the
        # answer is then the same however the bytes were split.
        end = self._buf.find(b"\n", 0, self._max)
        if end < 0:
            if len(self._buf) < self._max:
                return None
            del self._buf[: self._max]
            self._skipping = True
            self._skip_rest()  # drop what is already here, memory stays bounded
            return TooLong()
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _skip_rest(self) -> bool:
        """Discard an overlong line up to its LF; True while its end has not come."""
        if not self._skipping:
            return False
        end = self._buf.find(b"\n")
        if end < 0:
            self._buf.clear()
            return True
        del self._buf[: end + 1]
        self._skipping = False
        return False

    def take(self, count: int) -> bytes | None:
        """Exactly ``count`` raw bytes (an IMAP literal), or None until they are here."""
        if self._skipping or len(self._buf) < count:
            return None
        data = bytes(self._buf[:count])
        del self._buf[:count]
        return data

    def buffered(self) -> int:
        """How many bytes are waiting."""
        return len(self._buf)

    def take_remaining(self) -> bytes:
        """Everything not yet consumed (pipelined commands to forward), emptying the buffer."""
        data = b"" if self._skipping else bytes(self._buf)
        self._buf.clear()
        self._skipping = False
        return data

    def clear(self) -> None:
        """Forget everything buffered (after STARTTLS: RFC 2595 §3.1, RFC 3207 §4.2)."""
        self._buf.clear()
        self._skipping = False
