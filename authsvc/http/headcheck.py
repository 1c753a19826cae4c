"""Whether a request head may reach aiohttp: RFC 9112's grammar, as strict as aiohttp (sans-IO).

serve gives aiohttp only heads that pass :func:`check_head`; any other head
is refused by serve itself with a fixed 400 that quotes nothing
(``wire.py``).  aiohttp's own 400 for a head its parser rejects quotes the
offending bytes, in the reply's body and in the traceback it logs, and
carries its ``Server`` header (docs/security.md, "Secrets in logs").  So
this check refuses every head aiohttp's parsers refuse: it may refuse more,
never less (``tests/fuzz/test_fuzz_http.py`` holds it against both of
aiohttp's parsers).  It also says how long the body is, so that serve can
give aiohttp that one request and nothing after it (docs/serve.md, "The fast
path").

The grammar: a request line ``method SP origin-form SP HTTP/1.x`` (RFC 9112
§3) with a method serve answers; field lines ``token ":" OWS value OWS``
(RFC 9112 §5, RFC 9110 §5.5) with values of visible characters, SP, HTAB
and bytes 0x80-0xFF; every line ends in CRLF, and none is folded (RFC 9112
§5.2: a server answers obs-fold with 400).  On top of that, what aiohttp
refuses after parsing: more headers than its limit, a repeated singleton
header, HTTP/1.1 without Host (RFC 9112 §3.2), a Content-Length that is not
digits, and ``Sec-WebSocket-Key1``.  ``Transfer-Encoding`` is refused too:
nginx, Prometheus and ``authsvc``'s control client send bodies with a
Content-Length, and a chunked body could not be bounded without parsing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The methods of serve's routes (GET, HEAD, POST) and the ones it answers 405.
METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"})
#: aiohttp's ``max_headers`` is 128 (its RequestHandler's default, which serve
#: keeps); llhttp refuses a 129th header, aiohttp's pure-Python parser counts
#: the request line too and refuses a 127th.  The lower of the two.
MAX_HEADERS = 126
# aiohttp refuses a second one of these (its parser's SINGLETON_HEADERS, RFC 9110 §5.3).
_SINGLETONS = frozenset({
    b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
    b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent",
})
_REFUSED_NAMES = frozenset({b"transfer-encoding", b"sec-websocket-key1"})
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_TARGET = re.compile(rb"/[\x21-\x7e]*")  # origin-form, printable ASCII (RFC 9112 §3.2.1)
_VERSION = re.compile(rb"HTTP/1\.([01])")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # field-content, OWS included
_DIGITS = re.compile(rb"[0-9]+")
_CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Refused:
    """The head cannot go to aiohttp; ``offset`` is where the first offending byte is."""

    offset: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """The head may go to aiohttp, with ``body`` bytes after its blank line (Content-Length)."""

    body: int


def check_head(head: bytes) -> Refused | Accepted:
    """Judge ``head``, everything before the blank line (CRLF CRLF) that ends it.

    The cost is linear in the head's length: each line is matched once.
    """
    end = head.find(_CRLF)
    request_line = head if end < 0 else head[:end]
    verdict = _request_line(request_line)
    if isinstance(verdict, Refused):
        return verdict
    minor = verdict
    seen: set[bytes] = set()
    count = 0
    body = 0
    while end >= 0:
        start = end + len(_CRLF)
        end = head.find(_CRLF, start)
        line = head[start:] if end < 0 else head[start:end]
        name_match = _TOKEN.match(line)
        colon = name_match.end() if name_match is not None else 0
        if colon == 0 or line[colon:colon + 1] != b":":
            return Refused(start + colon)  # folded, empty or not a token, or no colon
        value_end = _VALUE.match(line, colon + 1)
        assert value_end is not None  # matches the empty string at least
        if value_end.end() != len(line):
            return Refused(start + value_end.end())  # a control byte (a bare CR or LF too)
        count += 1
        name = line[:colon].lower()
        if count > MAX_HEADERS or name in _REFUSED_NAMES:
            return Refused(start)
        if name in _SINGLETONS:
            if name in seen:
                return Refused(start)
            seen.add(name)
        if name == b"content-length":
            value = line[colon + 1:].strip(b" \t")
            if _DIGITS.fullmatch(value) is None:
                return Refused(start + colon + 1)
            body = int(value)
    if minor == 1 and b"host" not in seen:
        return Refused(len(head))
    return Accepted(body)


def _request_line(line: bytes) -> Refused | int:
    """The HTTP minor version of a request line serve takes, else where it goes wrong."""
    method = _TOKEN.match(line)
    if method is None or method.group() not in METHODS:
        return Refused(0)
    space = method.end()
    if line[space:space + 1] != b" ":
        return Refused(space)
    target = _TARGET.match(line, space + 1)
    if target is None:
        return Refused(space + 1)
    space = target.end()
    if line[space:space + 1] != b" ":
        return Refused(space)
    version = _VERSION.match(line, space + 1)
    if version is None:
        return Refused(space + 1)
    if version.end() != len(line):
        return Refused(version.end())  # a bare LF, say, where CRLF must end the line
    return int(version.group(1))
