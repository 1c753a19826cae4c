"""nginx's request on the auth_http socket, sans-IO: what the bytes are and what to do with them.

nginx sends one ``GET <uri> HTTP/1.0`` per login on a fresh connection, reads
the reply headers and closes (nginx's ``ngx_mail_auth_http_module``;
docs/serve.md "The request").  :func:`decide` is the one decision for a new
connection: from the bytes read so far it says reply now (bytes), reply
later (:class:`ReplyLater`), read on, refuse the head, or hand the
connection to aiohttp (:class:`HandOver`).  A request of exactly nginx's
shape, matched whole by one regular expression (:func:`examine`), is
answered by :meth:`AuthService.answer_now
<authsvc.http.auth_http.AuthService.answer_now>`, the first half of the
``answer()`` the aiohttp handler awaits; aiohttp's request machinery is not
involved.  Anything else (HTTP/1.1 keep-alive, a body, another path,
``/readyz``) goes to aiohttp, which parses it as usual, when it passes
:func:`~authsvc.http.headcheck.check_head`.  A head that cannot pass (a byte no
parser takes, too many headers, a request line serve does not answer) is
refused with a fixed 400 (:data:`BAD_REQUEST_REPLY`), and a head past
aiohttp's size limits with a 431; neither quotes anything.  Whatever can be
told before the head is complete is told at the first byte that settles it
(:class:`~authsvc.http.head.HeadScan`, linear however the head is cut into
reads); ``check_head`` judges the complete head once.
The I/O is in ``site.py`` (the accept callback) and ``protocol.py`` (an
asyncio protocol), which act on :func:`decide`'s answer and nothing else.

DEL (0x7F): nginx escapes only 0x00-0x1F, space and ``%`` in
``Auth-User``/``Auth-Pass`` (``NGX_ESCAPE_MAIL_AUTH`` in nginx's
``ngx_string.c``), so a password containing DEL arrives raw, and both aiohttp
parsers answer such a header with ``400 Invalid header value char``; nginx
then finds no ``Auth-Status`` and the user sees ``* BAD internal server
error``.  We turn 0x7F into ``%7F`` in the request head first: what nginx
would have sent had it escaped DEL too, and what ``decode_escaped`` turns
back into 0x7F.  In ``Auth-User`` the decoded DEL is then refused as a
control character, with the ordinary "invalid login" answer.  Only the head
of the first request on a connection is rewritten; a body never is, so a
Content-Length stays right.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from authsvc.http.auth_http import AuthService, Outcome
from authsvc.http.head import MAX_FIELD_SIZE as MAX_FIELD_SIZE
from authsvc.http.head import MAX_HEAD as MAX_HEAD
from authsvc.http.head import HeadScan
from authsvc.http.head import Need as Need
from authsvc.http.headcheck import MAX_HEADERS as MAX_HEADERS
from authsvc.http.headcheck import Refused, check_head

_END = b"\r\n\r\n"
# The whole head in one match: the request line (a target of visible ASCII, as
# llhttp takes it: no tab, no byte past 0x7E), then "Name: value" lines whose
# names are RFC 9110 §5.6.2 tokens and whose values hold no control character
# but HTAB (so no bare CR or LF either; a folded line starts with a space).
_FIELD_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = r"[^\x00-\x08\x0a-\x1f\x7f]*"
_HEAD = re.compile(
    rf"GET ([!-~]+) HTTP/1\.([01])((?:\r\n{_FIELD_NAME}:{_VALUE})*)")
_FIELD = re.compile(r"\r\n([^:]+):([^\r]*)")


def parse_head(head: bytes | bytearray, path: str) -> tuple[int, dict[str, str]] | None:
    """(HTTP minor version, headers by lower-cased name) of a one-shot ``GET <path>``.

    ``head`` is everything before the blank line.  None means "not the simple
    request nginx sends", for aiohttp to handle: another method or path, a
    body, keep-alive, or any line that is not a plain ``Name: value``.
    """
    # aiohttp reads header values as UTF-8 with surrogateescape; so do we, so
    # that decode_escaped() gets the same text from either path.
    text = head.decode("utf-8", "surrogateescape")
    match = _HEAD.fullmatch(text)
    if match is None or match.group(1).split("?", 1)[0] != path:
        return None
    headers: dict[str, str] = {}
    long_lines_possible = len(text) > MAX_FIELD_SIZE
    for name, value in _FIELD.findall(match.group(3)):
        if long_lines_possible and len(name) + 1 + len(value) > MAX_FIELD_SIZE:
            return None
        key = name.lower()
        if key in headers:
            # nginx never repeats a header; aiohttp refuses a repeated singleton
            # (Host, Content-Length: RFC 9110 §5.3, request smuggling), so a
            # repeat of any name goes to aiohttp to decide.
            return None
        headers[key] = value.strip(" \t")
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        return None
    minor = int(match.group(2))
    if minor == 1 and "host" not in headers:
        return None  # RFC 9112 §3.2: aiohttp answers 400; nginx sends 1.0 with Host
    connection = (headers.get("connection") or "").lower()
    keep_alive = "keep-alive" in connection if minor == 0 else "close" not in connection
    if keep_alive:
        return None
    return minor, headers


def serialize(minor: int, headers: dict[str, str]) -> bytes:
    """The reply: status line, our headers, ``Content-Length: 0``, and (1.1) ``close``."""
    lines = [f"HTTP/1.{minor} 200 OK"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Content-Length: 0")
    if minor == 1:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class ReplyCache:
    """Serialized replies by (HTTP minor version, headers): most logins repeat."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._replies: dict[tuple[int, tuple[tuple[str, str], ...]], bytes] = {}

    def get(self, minor: int, headers: dict[str, str]) -> bytes:
        key = (minor, tuple(headers.items()))
        reply = self._replies.get(key)
        if reply is None:
            if len(self._replies) >= self._size:
                self._replies.clear()
            reply = self._replies[key] = serialize(minor, headers)
        return reply


#: The reply to a head past MAX_HEAD or with a line past MAX_FIELD_SIZE.
TOO_LONG_REPLY = (
    b"HTTP/1.0 431 Request Header Fields Too Large\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)
#: The reply to a head that cannot go to aiohttp (``head.py``, ``headcheck.py``):
#: aiohttp would answer 400 too, but quote the offending bytes and name itself.
BAD_REQUEST_REPLY = (
    b"HTTP/1.0 400 Bad Request\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)


def _too_long(head: bytes | bytearray) -> bool:
    """Past aiohttp's limits: the whole head, or any one line (escaped bytes)."""
    if len(head) > MAX_HEAD:
        return True
    # Only a head this long can hold an over-long line; nginx's are tiny.
    return len(head) > MAX_FIELD_SIZE and max(map(len, head.split(b"\r\n"))) > MAX_FIELD_SIZE


@dataclass(frozen=True, slots=True)
class HandOver:
    """Not nginx's one-shot request: aiohttp gets these bytes (DEL escaped, else unchanged).

    ``size`` is how many bytes of ``data`` and what follows make the first
    request (head, blank line, Content-Length bytes): aiohttp gets those and
    nothing after, so it never parses a head that
    :func:`~authsvc.http.headcheck.check_head` has not passed.
    """

    data: bytes
    size: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Malformed:
    """A head that cannot go to aiohttp: :data:`BAD_REQUEST_REPLY`, then close.

    ``offset`` is where its first offending byte is (in the bytes as read),
    ``length`` the head's length through its blank line, or the bytes read so
    far when it was refused before that: what the log says instead of the bytes.
    """

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class OneShot:
    """nginx's request, to be answered here: HTTP minor version and headers."""

    minor: int
    headers: dict[str, str]


def examine(buffer: bytes | bytearray, path: str | None,
            scan: HeadScan | None = None) -> Need | HandOver | Malformed | OneShot:
    """What to do with everything read so far on a new connection (sans-IO).

    ``path`` is the auth path, or None when every request goes to aiohttp.
    ``scan`` carries over how far earlier calls on this connection got (the
    buffer only grows); without it the buffer is judged from its start.
    The answer depends only on the bytes, never on how they were cut into
    reads: a head is refused at the first byte that settles it
    (:class:`~authsvc.http.head.HeadScan`), else judged once its blank line
    has arrived (:func:`~authsvc.http.headcheck.check_head`).
    """
    end = buffer.find(_END) if scan is None else scan.find_end(buffer)
    if end < 0:
        early = (scan or HeadScan()).judge(buffer, len(buffer), complete=False)
        if isinstance(early, Refused):
            return Malformed(early.offset, len(buffer))
        return early or Need.MORE
    head = bytes(buffer[:end]).replace(b"\x7f", b"%7F")
    rest = buffer[end + len(_END):]
    parsed = None if rest or path is None else parse_head(head, path)
    if parsed is not None and len(parsed[1]) <= MAX_HEADERS and not _too_long(head):
        return OneShot(*parsed)  # its one regular expression found no bad byte
    early = (scan or HeadScan()).judge(buffer, end, complete=True)
    if isinstance(early, Refused):
        return Malformed(early.offset, end + len(_END))
    if early is Need.TOO_LONG:
        return Need.TOO_LONG
    verdict = check_head(head)
    if isinstance(verdict, Refused):
        offset = verdict.offset if len(head) == end else _unescaped(buffer, verdict.offset)
        return Malformed(offset, end + len(_END))
    return HandOver(head + _END + bytes(rest), len(head) + len(_END) + verdict.body)


def _unescaped(buffer: bytes | bytearray, offset: int) -> int:
    """The offset in ``buffer`` of the byte at ``offset`` in its DEL-escaped head."""
    shift = 0
    at = buffer.find(b"\x7f")
    while at >= 0 and at + shift < offset:
        if offset < at + shift + 3:
            return at  # inside the "%7F" of this DEL
        shift += 2
        at = buffer.find(b"\x7f", at + 1)
    return offset - shift


@dataclass(frozen=True, slots=True)
class ReplyLater:
    """The reply needs waiting (map, throttle, DNS): write what ``reply`` gives, then close."""

    reply: Coroutine[Any, Any, bytes]


#: What :func:`decide` says: bytes to write now and close; ``Need.TOO_LONG``
#: (write :data:`TOO_LONG_REPLY` and close gracefully, the client may still be
#: sending); :class:`Malformed` (the same with :data:`BAD_REQUEST_REPLY`);
#: ``Need.MORE`` (read on); a reply later; or aiohttp's request.
Step = bytes | Need | ReplyLater | HandOver | Malformed


def decide(buffer: bytes | bytearray, path: str | None, service: AuthService | None,
           peer: object, replies: ReplyCache, scan: HeadScan | None = None) -> Step:
    """The one decision for a new connection, from everything read so far (sans-IO).

    Both I/O adapters (``site.py``'s accept callback and
    ``protocol.py``'s :class:`~authsvc.http.protocol.NginxProtocol`) act on
    the answer and nothing else.  ``service`` is None (and ``path`` with it)
    when every request goes to aiohttp; ``peer`` is the socket's peer address;
    ``scan`` is as for :func:`examine`.
    """
    step = examine(buffer, path, scan)
    if not isinstance(step, OneShot):
        return step
    assert service is not None
    result = service.answer_now(step.headers, peer[0] if isinstance(peer, tuple) else None)
    if isinstance(result, Outcome):
        return replies.get(step.minor, result.headers)
    return ReplyLater(_reply_later(result, step.minor, replies))


async def _reply_later(pending: Awaitable[Outcome], minor: int, replies: ReplyCache) -> bytes:
    outcome = await pending
    return replies.get(minor, outcome.headers)
