"""authsvc/http/wire.py's ``examine`` and head.py's ``HeadScan``: one answer however a head is cut.

``NginxProtocol`` (``authsvc/http/protocol.py``) keeps one growing buffer and
one :class:`~authsvc.http.head.HeadScan` per connection and asks
:func:`~authsvc.http.wire.examine` after every read; :func:`reads` does the
same.  Each head is fed whole, one byte at a time and at every two-chunk
split (``tests/helpers/feed.py``), and the one answer all of them give is
compared with the expected one.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from authsvc.http import head as head_module
from authsvc.http import wire
from authsvc.http.head import HeadScan
from authsvc.http.headcheck import MAX_HEADERS
from authsvc.http.wire import HandOver, Malformed, Need, OneShot, examine
from tests.helpers.feed import same_for_all_splits

PATH = "/auth"
END = b"\r\n\r\n"

#: What a connection's reads come to: how ``Malformed`` is logged (the bytes
#: read so far) depends on the reads, so only its offset is compared; what
#: arrives after a hand-over goes to aiohttp, so it is added to the bytes handed over.
Answer = OneShot | tuple[str, int] | tuple[bytes, int] | Need


def reads(chunks: Sequence[bytes]) -> Answer:
    """The answer for these reads, as NginxProtocol gets it (one buffer, one scan)."""
    buffer = bytearray()
    scan = HeadScan()
    for index, chunk in enumerate(chunks):
        buffer += chunk
        step = examine(buffer, PATH, scan)
        if step is Need.MORE:
            continue
        if isinstance(step, Malformed):
            assert step.offset < step.length <= len(buffer)
            return ("malformed", step.offset)
        if isinstance(step, HandOver):
            return (step.data + b"".join(chunks[index + 1:]), step.size)
        return step
    return Need.MORE


def answer(data: bytes) -> Answer:
    return same_for_all_splits(data, reads)


NGINX = b"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-User: bob\r\nAuth-Pass: p%20w" + END


@pytest.mark.parametrize(("data", "expected"), [
    (NGINX, OneShot(0, {"host": "127.0.0.1", "auth-user": "bob", "auth-pass": "p%20w"})),
    # DEL goes to the parser escaped (wire.py's docstring).
    (b"GET /auth HTTP/1.0\r\nAuth-Pass: a\x7fb" + END, OneShot(0, {"auth-pass": "a%7Fb"})),
    (b"GET /auth?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close" + END,
     OneShot(1, {"host": "x", "connection": "close"})),
    (NGINX[:-4], Need.MORE),
    (NGINX[:-1], Need.MORE),
    (b"", Need.MORE),
], ids=["nginx", "del", "http11-close", "no-blank-line", "three-of-four", "nothing"])
def test_what_nginx_sends_is_answered_here(data: bytes, expected: Answer) -> None:
    assert answer(data) == expected


KEEP_ALIVE = b"GET /auth HTTP/1.1\r\nHost: x" + END
FLUSH = b"POST /cache/flush HTTP/1.1\r\nHost: x\r\nContent-Length: 3" + END


@pytest.mark.parametrize(("data", "expected"), [
    (KEEP_ALIVE, (KEEP_ALIVE, len(KEEP_ALIVE))),
    (b"GET /readyz HTTP/1.0" + END, (b"GET /readyz HTTP/1.0" + END, 24)),
    # The body is aiohttp's to read; the request ends after Content-Length bytes.
    (FLUSH + b"abc", (FLUSH + b"abc", len(FLUSH) + 3)),
    (b"GET /readyz HTTP/1.0\r\nX-A: a\x7fb" + END,
     (b"GET /readyz HTTP/1.0\r\nX-A: a%7Fb" + END, 36)),  # the escaped request's length
], ids=["keep-alive", "readyz", "body", "del"])
def test_any_other_request_goes_to_aiohttp(data: bytes, expected: Answer) -> None:
    assert answer(data) == expected


MANY = b"GET /auth HTTP/1.0" + b"\r\nX: y" * MAX_HEADERS


@pytest.mark.parametrize(("data", "offset"), [
    (b"GET /auth HTTP/1.0\r\nAuth-Pass: a\x01b", 32),
    (b"GET /auth HTTP/1.0\nHost: x", 18),  # a bare LF
    (b"GET /auth HTTP/1.0\r\nX: a\rb", 24),  # a bare CR
    (b"\r\nGET /auth HTTP/1.0", 0),  # an empty line first
    (b"GET /a\x00th HTTP/1.0", 6),
    (b"GET /auth HTTP/1.0\r\nAuth Pass: a", 24),  # a name that is not a token
    (b"GET /auth HTTP/1.0\r\nX: a\r\n b", 26),  # obs-fold
    (b"GET /auth HTTP/1.0\r\nX\r\nY: z", 21),  # a name with no colon
    (b"GET /auth HTTP/1.0\r\n: x", 20),  # a colon with no name
    (b"GET /auth HTTP/1.0\r\nX:\x01", 22),  # the value's first byte
    (MANY + b"\r\nX: y", len(MANY) + 2),  # one header too many
])
def test_a_head_that_cannot_pass_is_refused_before_its_end(data: bytes, offset: int) -> None:
    # HeadScan: at the first byte that settles it, blank line or not.
    assert answer(data) == ("malformed", offset)
    assert answer(data + END) == ("malformed", offset)


@pytest.mark.parametrize(("data", "offset"), [
    (b"GET /auth HTTP/1.0\r\nX", 21),  # the head ends inside a name
    (b"BREW /auth HTTP/1.0", 0),
    (b"GET auth HTTP/1.0", 4),
    (b"GET /auth HTTP/2.0", 10),
    (b"GET /auth HTTP/1.1", 18),  # no Host (RFC 9112 §3.2)
    (b"GET /auth HTTP/1.0\r\nHost: x\r\nHost: y", 29),
    (b"POST /cache/flush HTTP/1.0\r\nTransfer-Encoding: chunked", 28),
    (b"POST /cache/flush HTTP/1.0\r\nContent-Length: x", 43),
    # DEL counts as one byte in the offset, though checked as "%7F".
    (b"GET /a\x7f HTTP/1.0\r\nHost: x\r\nHost: y", 27),
])
def test_a_head_that_fails_the_check_is_refused_at_its_end(data: bytes, offset: int) -> None:
    # check_head, once the blank line has come; until then the head may go on.
    assert answer(data) is Need.MORE
    assert answer(data + END) == ("malformed", offset)


def test_a_head_past_the_limits_is_too_long(monkeypatch: pytest.MonkeyPatch) -> None:
    # The limits made small, so that every split of a head past them is cheap to try.
    for module in (head_module, wire):
        monkeypatch.setattr(module, "MAX_HEAD", 64)
        monkeypatch.setattr(module, "MAX_FIELD_SIZE", 32)
    line = b"GET /auth HTTP/1.0\r\nX-A: " + b"a" * 27  # a 32-byte field line
    assert answer(line + END) == OneShot(0, {"x-a": "a" * 27})
    assert answer(line + b"a" + END) is Need.TOO_LONG
    assert answer(line + b"a") is Need.TOO_LONG  # known at the byte past the limit
    # DEL counts as "%7F": 30 bytes with one DEL are 32, two DELs 34.
    assert answer(line[:-3] + b"\x7f" + END) == OneShot(0, {"x-a": "a" * 24 + "%7F"})
    assert answer(line[:-4] + b"\x7f\x7f" + END) is Need.TOO_LONG
    # The request line has the same limit.
    request = b"GET /" + b"r" * 18 + b" HTTP/1.0"  # 32 bytes
    assert answer(request + END) == (request + END, len(request) + 4)
    assert answer(request.replace(b"/", b"/r") + END) is Need.TOO_LONG
    assert answer(request.replace(b"/", b"/r")) is Need.TOO_LONG
    # The whole head: 64 bytes before its blank line at most.
    head = b"GET /auth HTTP/1.0\r\nX-A: " + b"a" * 16 + b"\r\nX-B: " + b"b" * 16
    assert len(head) == 64
    assert answer(head + END) == OneShot(0, {"x-a": "a" * 16, "x-b": "b" * 16})
    assert answer(head + b"b" + END) is Need.TOO_LONG
    assert answer(head + b"b") is Need.TOO_LONG
    # A CRLF may start the blank line: it counts once the next line has begun.
    assert answer(head + b"\r\n") is Need.MORE
    assert answer(head + b"\r\nX") is Need.TOO_LONG
    # Whichever limit comes first in byte order decides, not the read that shows it.
    assert answer(line + b"\x01" + END) == ("malformed", len(line))
    assert answer(line + b"a\x01" + END) is Need.TOO_LONG
