"""A request head on the auth_http socket, judged byte by byte as it arrives (sans-IO).

:class:`HeadScan` answers two questions about the bytes read so far on a new
connection: where the head ends (its blank line), and whether the head can
still pass :func:`~authsvc.http.headcheck.check_head`, the check a complete
head must pass before aiohttp may parse it.  It remembers how far both got,
so a head that arrives one byte per read costs time linear in its length,
not quadratic.

Refused at the first byte that settles it, before the head is complete
(:func:`~authsvc.http.headcheck.check_head` refuses every head that starts
so, and ``tests/fuzz/test_fuzz_http.py`` checks that):

* a control character other than HTAB in a header value, any control
  character in the request line (RFC 9112 §3), a CR not followed by LF, a LF
  not after a CR (RFC 9112 §2.2), or an empty line before the request line;
* a header line whose name is not an RFC 9110 §5.6.2 token followed by ``:``,
  including a folded line (RFC 9112 §5.2: a server rejects obs-fold with 400
  or unfolds it);
* a header past :data:`~authsvc.http.headcheck.MAX_HEADERS`.

The rest of the grammar (method, target, version, repeated or refused
headers) is checked once, on the complete head, by ``check_head``.

Past :data:`MAX_HEAD` for the whole head, or :data:`MAX_FIELD_SIZE` for one
line, the head is too long.  Lengths count DEL as three bytes: serve escapes
it to ``%7F`` before any parser reads the head (``wire.py``).  Whichever
limit a head passes first, in byte order, decides the refusal, so the answer
does not depend on how the head was cut into reads.
"""

from __future__ import annotations

import enum
import re

from authsvc.http.headcheck import MAX_HEADERS, Refused

#: A head longer than this is not nginx's: refused with a 431.
MAX_HEAD = 65536
#: aiohttp's per-line limit as ``server.py`` configures it; a longer line is
#: refused with a 431, as aiohttp would refuse it.
MAX_FIELD_SIZE = 32768

_END = b"\r\n\r\n"
_CR, _LF, _COLON = 0x0D, 0x0A, 0x3A
_REQUEST_RUN = re.compile(rb"[^\x00-\x1f]*")
# DEL too: escaped, it is "%7F", three token characters.
_NAME_RUN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z\x7f-]*")
_VALUE_RUN = re.compile(rb"[^\x00-\x08\x0a-\x1f]*")


class Need(enum.Enum):
    """A head not settled yet (MORE), or one past the size limits (TOO_LONG)."""

    MORE = "more"
    TOO_LONG = "too long"


class _State(enum.Enum):
    REQUEST = enum.auto()
    NAME = enum.auto()
    VALUE = enum.auto()


_RUNS = {_State.REQUEST: _REQUEST_RUN, _State.NAME: _NAME_RUN, _State.VALUE: _VALUE_RUN}


class HeadScan:
    """How far the end search and the check of one connection's head got.

    Feed it the same growing buffer each time (``find_end`` then ``judge``);
    each call looks only at what it has not seen.
    """

    def __init__(self) -> None:
        self._searched = 0  # no blank line starts before this offset
        self._pos = 0  # bytes before this are judged
        self._state = _State.REQUEST
        self._line_start = 0
        self._head_extra = 0  # two per DEL judged so far (escaped to %7F)
        self._line_extra = 0
        self._headers = 0
        self._fault: Need | Refused | None = None

    def find_end(self, buffer: bytes | bytearray) -> int:
        """Offset of the blank line (``CRLFCRLF``) ending the head, or -1."""
        end = buffer.find(_END, self._searched)
        self._searched = max(0, len(buffer) - 3) if end < 0 else end
        return end

    def judge(self, buffer: bytes | bytearray, stop: int, *,
              complete: bool) -> Need | Refused | None:
        """``Need.TOO_LONG`` or a :class:`Refused` (with the raw byte offset) once
        ``buffer[:stop]`` settles it, else None.

        ``complete``: ``stop`` is the head's end (:meth:`find_end` found it);
        else it is the length of the buffer.
        """
        if self._fault is not None:
            return self._fault
        fault = self._scan(buffer, stop)
        if fault is None and complete and stop == self._pos and self._state is _State.NAME and (
                self._pos > self._line_start):
            fault = Refused(stop)  # the head ends in a name with no colon
        self._fault = fault
        return fault

    def _too_long(self, end: int) -> bool:
        # The CRLF ending a line belongs to the head only once a byte of the
        # next line is here: until then it may start the blank line, and the
        # head judged whole (wire.py) stops before it.
        head = end - 2 if end == self._line_start > 0 else end
        return (end - self._line_start + self._line_extra > MAX_FIELD_SIZE
                or head + self._head_extra > MAX_HEAD)

    def _scan(self, buffer: bytes | bytearray, stop: int) -> Need | Refused | None:
        pos = self._pos
        try:
            while pos < stop:
                state = self._state
                if (state is _State.NAME and pos == self._line_start
                        and self._headers >= MAX_HEADERS and buffer[pos] != _CR):
                    return Refused(pos)  # one header more than check_head takes
                match = _RUNS[state].match(buffer, pos, stop)
                assert match is not None  # the pattern matches the empty string
                end = match.end()
                if end > pos:
                    dels = 2 * buffer.count(b"\x7f", pos, end)
                    self._head_extra += dels
                    self._line_extra += dels
                pos = end
                if self._too_long(end):
                    return Need.TOO_LONG
                if pos == stop:
                    return None
                byte = buffer[pos]
                if byte == _COLON and state is _State.NAME and pos > self._line_start:
                    self._state = _State.VALUE
                    pos += 1
                    continue
                if byte != _CR or (state is _State.REQUEST and pos == 0):
                    return Refused(pos)  # a control character, a bare LF, an empty line
                if state is _State.NAME and pos > self._line_start:
                    return Refused(pos)  # a name with no colon
                if pos + 1 == stop:
                    return None  # the LF may still come
                if buffer[pos + 1] != _LF:
                    return Refused(pos)  # a bare CR
                if state is _State.NAME:
                    return None  # the blank line: find_end reports it
                if state is _State.VALUE:
                    self._headers += 1
                pos += 2
                self._line_start, self._line_extra = pos, 0
                self._state = _State.NAME
            return None
        finally:
            self._pos = pos
