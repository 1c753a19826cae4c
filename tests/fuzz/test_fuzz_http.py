"""Fuzz nginx's side of ``authsvc serve``: %XX decoding, request decoding, the raw head parser.

Properties: ``decode_escaped`` and ``parse_request`` raise nothing
(a request nginx would never send is a ``BadRequest``); ``parse_head`` answers
None or a request, never an exception; what the fast path in ``wire.py``
accepts, aiohttp's own parser (the one it would otherwise go to, with the
server's limits) accepts with the same headers; what ``headcheck.py`` passes
to aiohttp, both of aiohttp's parsers (llhttp and the pure-Python one) accept,
so aiohttp never answers a head with its own 400; what ``head.py`` refuses
before a head is complete, ``headcheck.py`` refuses too; and
``NginxProtocol`` makes the same decision however the head is cut into reads,
refusals before the blank line included.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Iterator, Sequence
from typing import cast

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy
from hypothesis import event, example, given
from hypothesis import strategies as st

from authsvc.http.auth_http import (
    AuthRequest,
    AuthService,
    BadRequest,
    Outcome,
    decode_escaped,
    parse_request,
)
from authsvc.http.head import HeadScan
from authsvc.http.headcheck import MAX_HEADERS, Accepted, Refused, check_head
from authsvc.http.protocol import InFlight, NginxProtocol
from authsvc.http.wire import (
    BAD_REQUEST_REPLY,
    MAX_FIELD_SIZE,
    MAX_HEAD,
    TOO_LONG_REPLY,
    HandOver,
    Malformed,
    Need,
    OneShot,
    ReplyCache,
    examine,
    parse_head,
)
from tests.fuzz.splits import SplitPlan, same_for_splits, split_plans
from tests.unit.auth_http_fakes import nginx_escape, nginx_request

PATH = "/auth"


def _text(raw: bytes) -> str:
    """A header value as aiohttp (and wire.py) hand it over."""
    return raw.decode("utf-8", "surrogateescape")


# --- %XX decoding and request decoding ---------------------------------------------


@given(st.binary(max_size=40))
def test_decode_escaped_undoes_nginx_escaping(raw: bytes) -> None:
    text, utf8 = decode_escaped(_text(nginx_escape(raw)))
    try:
        expected, valid = raw.decode("utf-8"), True
    except UnicodeDecodeError:
        expected, valid = raw.decode("latin-1"), False  # as an old client meant it
    assert (text, utf8) == (expected, valid)


#: Values dense in escapes, broken ones too ("%", "%4", "%g1"), and non-UTF-8 bytes.
_escaped_values = st.lists(st.sampled_from(
    [b"%", b"4", b"1", b"f", b"F", b"g", b"+", b"a", b"\xc3", b"\xa9", b"\xff", b"%25", b"%C3"]),
    max_size=16).map(b"".join)


@given(st.one_of(st.binary(max_size=40), _escaped_values).map(_text))
def test_decode_escaped_decodes_any_value(value: str) -> None:
    # The model: every %XX (hex digits, either case) is one byte, nothing else
    # changes ("+" stays), then UTF-8, or Latin-1 when that fails.
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]),
                 value.encode("utf-8", "surrogateescape"))
    try:
        expected = raw.decode("utf-8"), True
    except UnicodeDecodeError:
        expected = raw.decode("latin-1"), False
    assert decode_escaped(value) == expected


_NAMES = ["auth-protocol", "auth-user", "auth-pass", "auth-login-attempt", "auth-method",
          "client-ip", "auth-ssl", "x-authsvc-listener", "x-authsvc-local-name"]
_values = st.one_of(
    st.sampled_from(["imap", "pop3", "smtp", "IMAP ", "plain", "apop", "on", "1", "10",
                     "99999999", "123456789", "0", "-1", "", "bob%20x", "%", "%zz", "%00",
                     "\t", "192.0.2.7", "١٢"]),
    st.binary(max_size=12).map(_text),
)
@given(st.fixed_dictionaries({}, optional={"auth-protocol": st.just("imap"),
                                           "auth-user": st.just("bob")}),
       st.dictionaries(st.sampled_from(_NAMES), _values))
def test_parse_request_gives_a_request_or_bad_request(
    base: dict[str, str], fuzzed: dict[str, str]
) -> None:
    headers = base | fuzzed
    parsed = parse_request(headers)
    event(type(parsed).__name__)
    if isinstance(parsed, AuthRequest):
        assert parsed.protocol in ("imap", "pop3", "smtp")
        assert parsed.attempt >= 1
    else:
        assert isinstance(parsed, BadRequest)


def test_attempt_with_a_superscript_digit() -> None:
    parsed = parse_request({"auth-protocol": "imap", "auth-user": "bob",
                            "auth-login-attempt": "²"})
    assert isinstance(parsed, AuthRequest) and parsed.attempt == 1


# --- the raw head parser against aiohttp's ---------------------------------------------

_header_names = st.sampled_from([
    b"Host", b"Auth-User", b"auth-pass", b"Auth-Protocol", b"Auth-Login-Attempt",
    b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-A", b"Bad Name", b"", b"X:Y",
    b" Folded", b"\tAuth-User", b"Auth-User ", b"N\xc3\xa9",
])
_header_values = st.one_of(
    st.sampled_from([b"imap", b"0", b"00", b"5", b"chunked", b"close", b"keep-alive",
                     b"Keep-Alive, close", b"upgrade", b"a%20b", b" padded \t", b"\t", b"",
                     b"\xc3\xa9\xff", b"a\rb", b"a\nb", b"a\x00b", b"a\x7fb", b"a\tb"]),
    st.binary(max_size=10),
)
_request_lines = st.sampled_from([
    b"GET /auth HTTP/1.0", b"GET /auth HTTP/1.1", b"GET /auth?x=1 HTTP/1.0",
    b"GET /auth#f HTTP/1.0", b"POST /auth HTTP/1.0", b"GET /other HTTP/1.0",
    b"GET  /auth HTTP/1.0", b"get /auth HTTP/1.0", b"GET /auth HTTP/1.2", b"GET /auth",
    b"GET /a\xffuth HTTP/1.0", b"GET /au\x01th HTTP/1.0", b"GET /auth\tHTTP/1.0",
    b"GET /auth?\xff HTTP/1.0", b"GET /auth?a\tb HTTP/1.0",
    b"\r\nGET /auth HTTP/1.0", b"\nGET /auth HTTP/1.0",
])
heads = st.builds(
    lambda line, headers, end: line + b"".join(end + n + b":" + v for n, v in headers),
    _request_lines,
    st.lists(st.tuples(_header_names, _header_values.map(lambda v: b" " + v)), max_size=8),
    st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]),
) | st.builds(lambda user, password: nginx_request(user, password)[:-4],
              st.binary(max_size=12), st.binary(max_size=12))


def aiohttp_parse(head: bytes, parser_class: type[HttpRequestParser] = HttpRequestParser,
                  ) -> tuple[str, str, int, dict[str, str]] | None:
    """(method, path, minor, first value of each lower-cased name) as aiohttp reads it."""
    loop = asyncio.new_event_loop()
    try:
        parser = parser_class(BaseProtocol(loop), loop, 2**16,
                              max_line_size=MAX_FIELD_SIZE, max_field_size=MAX_FIELD_SIZE)
        try:
            messages, _, _ = parser.feed_data(head + b"\r\n\r\n")
        except HttpProcessingError:
            return None
    finally:
        loop.close()
    if not messages:
        return None
    message = messages[0][0]
    headers = {name.lower(): message.headers[name] for name in message.headers}
    return message.method, message.path, message.version.minor, headers


@given(heads)
@example(b"GET /auth HTTP/1.0\r\nX-A: " + b"a" * (MAX_FIELD_SIZE + 1))
@example(b"GET /auth?\xff HTTP/1.0")  # llhttp: "Invalid char in url query"
@example(b"GET /auth?a\tb HTTP/1.0")  # llhttp: "Invalid characters in url"
def test_what_the_fast_path_accepts_aiohttp_reads_the_same(head: bytes) -> None:
    head = head.replace(b"\x7f", b"%7F")  # as NginxProtocol does before either parser
    fast = parse_head(head, PATH)
    event("fast path" if fast else "handed to aiohttp")
    if fast is None:
        return
    minor, headers = fast
    slow = aiohttp_parse(head)
    assert slow is not None, "the fast path took a request aiohttp refuses"
    method, path, slow_minor, slow_headers = slow
    assert (method, path.split("?")[0], slow_minor) == ("GET", PATH, minor)
    assert headers == slow_headers


_methods = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                            b"CONNECT", b"TRACE", b"FOO", b"get", b"G\xc3\xa9T", b""])
_targets = st.one_of(
    st.sampled_from([b"/", b"/auth", b"/readyz?x=1#f", b"*", b"http://h/x", b"h:1", b"//x",
                     b"/a b", b"/%zz", b"/\xff", b"/a\tb", b"", b"/[::1]", b"/?a=b&c=%"]),
    st.binary(max_size=8).map(lambda raw: b"/" + raw),
)
_versions = st.sampled_from([b"HTTP/1.0", b"HTTP/1.1", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1",
                             b"HTTP/1.1 ", b"HTTP/1.10", b"HTTP/1"])
_more_names = st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Upgrade",
                               b"Connection", b"Sec-WebSocket-Key1", b"Content-Type",
                               b"User-Agent", b"Expect", b"Content-Encoding", b"X-A", b"X Y",
                               b"X\x00", b"", b" Fold", b"\xc3\xa9"])
_more_values = st.one_of(
    st.sampled_from([b"1", b"0", b"+1", b"1 ", b" 1", b"1,1", b"", b"x", b"chunked",
                     b"websocket", b"upgrade", b"gzip", b"100-continue", b"a\x00b", b"\x80",
                     b"a\x01b", b"\t", b"a\rb", b"a\nb", b"a\r\nb"]),
    st.binary(max_size=8),
)
wide_heads = heads | st.builds(
    lambda method, target, version, headers, end: (
        method + b" " + target + b" " + version
        + b"".join(end + n + b":" + v for n, v in headers)),
    _methods, _targets, _versions,
    st.lists(st.tuples(_more_names, _more_values.map(lambda v: b" " + v)), max_size=6),
    st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]),
) | st.binary(max_size=40)


@given(wide_heads)
@example(b"GET /auth HTTP/1.0\r\nAuth-Pass: x\r\n folded")
@example(b"GET /auth HTTP/1.0\r\nAuth-Pass: A B\x01C")
@example(b"GET /auth HTTP/1.0\r\nAuth-Pa FuzzPW")
@example(b"GET /auth HTTP/1.0\r\nAu\tth-Pass: x")
@example(b"GET /auth HTTP/1.0\nHost: x\nAuth-Pass: x")
@example(b"GET / HTTP/1.0" + b"\r\nX-A: 1" * MAX_HEADERS)
@example(b"GET / HTTP/1.0" + b"\r\nX-A: 1" * (MAX_HEADERS + 1))
def test_what_the_head_check_passes_both_aiohttp_parsers_accept(head: bytes) -> None:
    verdict = check_head(head)
    event(type(verdict).__name__)
    if isinstance(verdict, Refused):
        assert 0 <= verdict.offset <= len(head)
        return
    assert isinstance(verdict, Accepted)
    for parser_class in (HttpRequestParser, HttpRequestParserPy):
        assert aiohttp_parse(head, parser_class) is not None, parser_class


@given(wide_heads)
@example(b"GET /auth HTTP/1.0\r\nX\x7fY: v")  # DEL in a name: escaped, a token
@example(b"\nGET /auth HTTP/1.0\r\nHost: x")  # an empty line first (RFC 9112 §2.2)
@example(b"GET /auth\nHost: imap")  # HTTP/0.9's line (RFC 1945 §4.1)
def test_what_the_scan_refuses_the_head_check_refuses(head: bytes) -> None:
    # However the head goes on: check the head cut where the scan stopped,
    # and the head as it is.
    early = HeadScan().judge(head, len(head), complete=False)
    event(type(early).__name__)
    if isinstance(early, Refused):
        escaped = head.replace(b"\x7f", b"%7F")
        assert isinstance(check_head(escaped), Refused)
        assert isinstance(check_head(head[:early.offset + 1].replace(b"\x7f", b"%7F")), Refused)


def test_the_header_count_limit_is_aiohttp_s() -> None:
    head = nginx_request(b"bob")[:-4]
    pad = MAX_HEADERS - head.count(b"\r\n")
    most = head + b"".join(b"\r\nX-%d: x" % i for i in range(pad))
    for parser_class in (HttpRequestParser, HttpRequestParserPy):
        assert aiohttp_parse(most, parser_class) is not None
    assert isinstance(examine(most + b"\r\n\r\n", PATH), OneShot)
    too_many = most + b"\r\nX-Last: x"
    assert aiohttp_parse(too_many + b"\r\nX-1: x" * 2) is None  # llhttp: 129
    assert aiohttp_parse(too_many + b"\r\nX-1: x", HttpRequestParserPy) is None
    assert examine(too_many + b"\r\n\r\n", PATH) == Malformed(len(most) + 2, len(too_many) + 4)
    # Known as soon as the extra line starts, and for aiohttp's request as well.
    assert examine(most + b"\r\nX", PATH) == Malformed(len(most) + 2, len(most) + 3)
    assert examine(most + b"\r\n\r", PATH) is Need.MORE
    other = b"GET /readyz HTTP/1.1\r\nHost: x" + b"".join(
        b"\r\nX-%d: x" % i for i in range(MAX_HEADERS - 1))
    for parser_class in (HttpRequestParser, HttpRequestParserPy):
        assert aiohttp_parse(other, parser_class) is not None
    assert isinstance(examine(other + b"\r\n\r\n", PATH), HandOver)
    assert isinstance(examine(other + b"\r\nX: y\r\n\r\n", PATH), Malformed)


def test_fast_path_refuses_http11_without_host() -> None:
    head = b"GET /auth HTTP/1.1\r\nConnection: close\r\nAuth-Protocol: imap\r\nAuth-User: bob"
    assert aiohttp_parse(head) is None
    assert parse_head(head, PATH) is None


def test_fast_path_refuses_a_duplicate_host() -> None:
    head = nginx_request(b"bob")[:-4] + b"\r\nHost: other.example"
    assert aiohttp_parse(head) is None
    assert parse_head(head, PATH) is None


def test_fast_path_keeps_aiohttp_field_limit() -> None:
    head = b"GET /auth HTTP/1.0\r\nAuth-Protocol: imap\r\nX-A: " + b"a" * (MAX_FIELD_SIZE + 1)
    assert aiohttp_parse(head) is None
    assert parse_head(head, PATH) is None


# --- NginxProtocol: the same decision for every cut of the head ----------------------


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return False


class _Inner(asyncio.Protocol):
    """Stands in for aiohttp's protocol: records what it was handed."""

    def __init__(self) -> None:
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data


class _Service:
    """Stands in for AuthService: echoes the headers it was given, so they are compared.

    ``later``: answer "not yet" (an awaitable), NginxProtocol's other way of
    replying.
    """

    def __init__(self, later: bool) -> None:
        self.later = later

    def answer_now(self, headers: dict[str, str],
                   peer: str | None) -> Outcome | Awaitable[Outcome]:
        outcome = Outcome({"Auth-Status": "OK", "X-Seen": repr(sorted(headers.items()))}, "ok")
        if not self.later:
            return outcome

        async def later() -> Outcome:
            return outcome

        return later()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def serve(loop: asyncio.AbstractEventLoop, chunks: Sequence[bytes],
          later: bool = False) -> tuple[str, bytes]:
    """("fast", reply bytes) or ("aiohttp", bytes handed over) for these reads."""

    async def run() -> tuple[str, bytes]:
        inner = _Inner()
        in_flight = InFlight()
        protocol = NginxProtocol(lambda: inner, cast(AuthService, _Service(later)), PATH,
                                 in_flight, ReplyCache())
        transport = _Transport()
        protocol.connection_made(transport)
        for chunk in chunks:
            protocol.data_received(chunk)
        await in_flight.drain(5)
        if inner.received:
            return "aiohttp", inner.received
        return "fast", transport.written

    return loop.run_until_complete(run())


@given(heads, split_plans)
def test_nginx_protocol_same_decision_for_every_split(
    loop: asyncio.AbstractEventLoop, head: bytes, plan: SplitPlan
) -> None:
    # Only the first request: bytes behind its blank line go to aiohttp when they
    # come in the same read and are ignored when later, and both paths answer
    # that first request alone and close (HTTP/1.0 or "close", no body), so
    # nginx sees the same either way.
    data = head + b"\r\n\r\n"
    data = data[: data.index(b"\r\n\r\n") + 4]
    kind, reply = same_for_splits(data, plan, lambda chunks: serve(loop, chunks))
    # A decision that had to wait gives the same bytes as one made at once.
    assert same_for_splits(data, plan, lambda chunks: serve(loop, chunks, later=True)) == (
        kind, reply)
    event(kind)


def test_a_head_over_max_head_is_refused_however_it_arrives(
    loop: asyncio.AbstractEventLoop,
) -> None:
    head = nginx_request(b"bob")[:-4] + b"\r\nX-Pad: " + b"a" * MAX_HEAD
    data = head + b"\r\n\r\n"
    refused = ("fast", TOO_LONG_REPLY)
    assert serve(loop, [data[: MAX_HEAD + 1], data[MAX_HEAD + 1 :]]) == refused
    assert serve(loop, [data]) == refused


def test_an_over_long_line_is_refused_however_it_arrives(
    loop: asyncio.AbstractEventLoop,
) -> None:
    head = nginx_request(b"bob")[:-4] + b"\r\nAuth-Pass: " + b"x" * MAX_FIELD_SIZE
    data = head + b"\r\n\r\n"
    refused = ("fast", TOO_LONG_REPLY)
    assert serve(loop, [data]) == refused
    assert serve(loop, [data[:40000], data[40000:]]) == refused


@pytest.mark.parametrize("head", [
    b"GET /auth HTTP/1.0\r\nAuth-Pass: a\x01b",
    b"GET /auth HTTP/1.0\nHost: x\n",
    b"GET /auth HTTP/1.0\r\nAuth-Pass: a\rb",
    b"GET /auth HTTP/1.0\r\nAuth Pass: a",
    b"GET /auth HTTP/1.0\r\n\tAuth-Pass: a",
    b"GET /au\x00th HTTP/1.0",
])
def test_a_head_that_cannot_become_valid_is_refused_before_its_end(
    loop: asyncio.AbstractEventLoop, head: bytes,
) -> None:
    refused = ("fast", BAD_REQUEST_REPLY)
    assert serve(loop, [head]) == refused
    assert serve(loop, [head[i:i + 1] for i in range(len(head))]) == refused
    assert serve(loop, [head + b"\r\nX: y\r\n\r\n"]) == refused


def test_too_many_headers_are_refused_however_they_arrive(
    loop: asyncio.AbstractEventLoop,
) -> None:
    head = nginx_request(b"bob")[:-4] + b"".join(b"\r\nX-%d: x" % i for i in range(200))
    data = head + b"\r\n\r\n"
    refused = ("fast", BAD_REQUEST_REPLY)
    assert serve(loop, [data]) == refused
    assert serve(loop, [data[:1000], data[1000:]]) == refused
    assert serve(loop, [data[i:i + 1] for i in range(len(data))]) == refused
    assert serve(loop, [data[:1000], data[1000:]], later=True) == refused


def test_the_first_limit_passed_decides_the_refusal(loop: asyncio.AbstractEventLoop) -> None:
    # A bad byte, then a line past MAX_FIELD_SIZE: 400.  The other way round: 431.
    bad_first = b"GET /auth HTTP/1.0\r\nX-A: \x01" + b"a" * MAX_FIELD_SIZE + b"\r\n\r\n"
    long_first = b"GET /auth HTTP/1.0\r\nX-A: " + b"a" * MAX_FIELD_SIZE + b"\x01\r\n\r\n"
    for data, reply in ((bad_first, BAD_REQUEST_REPLY), (long_first, TOO_LONG_REPLY)):
        assert serve(loop, [data]) == ("fast", reply)
        assert serve(loop, [data[:40], data[40:]]) == ("fast", reply)
        assert serve(loop, [data[:40000], data[40000:]]) == ("fast", reply)
