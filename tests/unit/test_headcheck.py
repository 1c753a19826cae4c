"""The head check in front of aiohttp: where a head goes wrong, and what it lets through."""

from __future__ import annotations

import pytest

from authsvc.http.headcheck import MAX_HEADERS, Accepted, Refused, check_head
from authsvc.http.wire import BAD_REQUEST_REPLY, HandOver, Malformed, examine

GOOD = b"GET /readyz HTTP/1.1\r\nHost: x\r\nAccept: */*"


@pytest.mark.parametrize(("head", "offset"), [
    (b"GET /auth HTTP/1.0\r\nAuth-Pass: x\r\n folded", 34),  # obs-fold: the line's first byte
    (b"GET /auth HTTP/1.0\r\nAuth-Pass: A B\x01C", 34),  # the control byte itself
    (b"GET /auth HTTP/1.0\r\nAuth-Pa FuzzPW", 27),  # the space where ':' must be
    (b"GET /auth HTTP/1.0\r\nAu\tth-Pass: x", 22),
    (b"GET /auth HTTP/1.0\nHost: x\nAuth-Pass: x", 18),  # the bare LF
    (b"GET /auth HTTP/1.0\r\nX: a\rb", 24),  # a bare CR
    (b"GET /auth HTTP/1.0\r\n: x", 20),  # no name
    (b"FOO /auth HTTP/1.0", 0),  # a method serve does not answer
    (b"GET auth HTTP/1.0", 4),  # not origin-form
    (b"GET /a\xffb HTTP/1.0", 6),
    (b"GET /auth HTTP/1.2", 10),
    (b"GET /auth HTTP/1.1", 18),  # HTTP/1.1 without Host: judged at the end
    (b"GET / HTTP/1.0\r\nContent-Length: 1\r\nContent-Length: 1", 35),
    (b"GET / HTTP/1.0\r\nContent-Length: +1", 31),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked", 26),
    (b"GET / HTTP/1.1\r\nHost: x\r\nhost: y", 25),
])
def test_refused_at_the_first_offending_byte(head: bytes, offset: int) -> None:
    assert check_head(head) == Refused(offset)


def test_accepted_heads_and_their_body() -> None:
    assert check_head(GOOD) == Accepted(0)
    post = b"POST /cache/flush HTTP/1.1\r\nHost: x\r\nContent-Length: 12"
    assert check_head(post) == Accepted(12)
    assert check_head(b"GET /auth HTTP/1.0\r\nX-A: \t\xc3\xa9 v \t") == Accepted(0)
    many = b"GET / HTTP/1.0" + b"\r\nX-A: 1" * MAX_HEADERS
    assert check_head(many) == Accepted(0)
    assert check_head(many + b"\r\nX-A: 1") == Refused(len(many) + 2)


def test_examine_refuses_what_aiohttp_would_quote_and_bounds_what_it_gets() -> None:
    bad = b"GET /auth HTTP/1.1\r\nHost: x\r\nAuth-Pa secret\r\n\r\n"
    assert examine(bad, "/auth") == Malformed(36, len(bad))  # the space after the name
    assert BAD_REQUEST_REPLY.startswith(b"HTTP/1.0 400 ") and BAD_REQUEST_REPLY.endswith(
        b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    post = b"POST /cache/flush HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
    step = examine(post + b"a=bGET /x", "/auth")
    assert isinstance(step, HandOver) and step.size == len(post) + 3
    pipelined = GOOD + b"\r\n\r\n"
    step = examine(pipelined + b"GET /auth HTTP/1.1\r\nAuth-Pa secret\r\n\r\n", "/auth")
    assert isinstance(step, HandOver) and step.size == len(pipelined)


def test_the_offset_logged_is_in_the_bytes_as_read() -> None:
    # check_head reads the head with each DEL escaped to "%7F"; the offset in
    # the log line is where the byte is in what the client sent.
    second_host = b"GET /a\x7f\x7f HTTP/1.0\r\nX\x7f: 1\r\nHost: a\r\nHost: b"
    assert examine(second_host + b"\r\n\r\n", None) == Malformed(
        second_host.index(b"Host: b"), len(second_host) + 4)
    bad_version = b"GET /\x7f\x7f\x7f HTTX/1.0"
    assert examine(bad_version + b"\r\n\r\n", None) == Malformed(
        bad_version.index(b"HTTX"), len(bad_version) + 4)
    # Refused before the blank line: how much had arrived.
    early = b"GET /auth HTTP/1.0\r\nAuth-Pass: a\x01b"
    assert examine(early, "/auth") == Malformed(early.index(b"\x01"), len(early))
