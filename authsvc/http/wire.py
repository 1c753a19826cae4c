"""nginx's side of the socket: answer its one-shot auth requests directly, hand the rest to aiohttp.

nginx sends one ``GET <uri> HTTP/1.0`` per login on a fresh connection, reads
the reply headers and closes (ngx_mail_auth_http_module.c).
:func:`examine` (sans-IO) says what the bytes read so far are: such a request,
matched whole by one regular expression, is answered by
:meth:`AuthService.answer_now <authsvc.http.auth_http.AuthService.answer_now>`,
the first half of the ``answer()`` the aiohttp handler awaits; aiohttp's
request machinery is not involved.  ``site.py`` does this inside its accept
callback when the first read holds the request; :class:`NginxProtocol` does
it on an asyncio connection otherwise.  Anything else on the socket (HTTP/1.1
keep-alive, a body, another path, ``/readyz``, a malformed head) is handed,
bytes unchanged, to aiohttp, which parses it as usual; a head past aiohttp's
size limits is refused here with a 431 that quotes nothing.

DEL (0x7F): nginx escapes only 0x00-0x1F, space and ``%`` in
``Auth-User``/``Auth-Pass`` (nginx's ngx_string.c), so a password containing DEL
arrives raw,
and both aiohttp parsers answer such a header with ``400 Invalid header value
char``; nginx then finds no ``Auth-Status`` and the user sees ``* BAD internal
server error`` (docs/serve.md, "Decoding").  We turn 0x7F into ``%7F`` in the
request head
first: what nginx would have sent had it escaped DEL too, and what
``decode_escaped`` turns back into 0x7F.  In ``Auth-User`` the decoded DEL is
then refused as a control character, with the ordinary "invalid login" answer.
Only the head of the first request on a connection is rewritten; a body never
is, so a Content-Length stays right.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from authsvc.http.auth_http import AuthService, Outcome

_END = b"\r\n\r\n"
#: A head longer than this is not nginx's: aiohttp gets it (and its limits apply).
MAX_HEAD = 65536
#: aiohttp's per-line limit as ``server.py`` configures it; a longer line is
#: handed to aiohttp, which answers 400, so both paths refuse the same heads.
MAX_FIELD_SIZE = 32768
# The whole head in one match: the request line, then "Name: value" lines whose
# names are RFC 9110 §5.6.2 tokens and whose values hold no control character
# but HTAB (so no bare CR or LF either; a folded line starts with a space).
_FIELD_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = r"[^\x00-\x08\x0a-\x1f\x7f]*"
_HEAD = re.compile(
    rf"GET ([^ \x00-\x08\x0a-\x1f\x7f]+) HTTP/1\.([01])((?:\r\n{_FIELD_NAME}:{_VALUE})*)")
_FIELD = re.compile(r"\r\n([^:]+):([^\r]*)")


def parse_head(head: bytes, path: str) -> tuple[int, dict[str, str]] | None:
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


def _too_long(head: bytes) -> bool:
    """Past aiohttp's limits: the whole head, or any one line (escaped bytes)."""
    if len(head) > MAX_HEAD:
        return True
    # Only a head this long can hold an over-long line; nginx's are tiny.
    return len(head) > MAX_FIELD_SIZE and max(map(len, head.split(b"\r\n"))) > MAX_FIELD_SIZE


class Need(enum.Enum):
    """:func:`examine` found no complete head yet (MORE), or one past the limits."""

    MORE = "more"
    TOO_LONG = "too long"


@dataclass(frozen=True, slots=True)
class HandOver:
    """Not nginx's one-shot request: aiohttp gets these bytes (DEL escaped, else unchanged)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class OneShot:
    """nginx's request, to be answered here: HTTP minor version and headers."""

    minor: int
    headers: dict[str, str]


def examine(buffer: bytes, path: str | None) -> Need | HandOver | OneShot:
    """What to do with everything read so far on a new connection (sans-IO).

    ``path`` is the auth path, or None when every request goes to aiohttp.
    The answer depends only on the bytes, never on how they were cut into
    reads: a head is judged once its blank line has arrived.
    """
    end = buffer.find(_END)
    if end < 0:
        return Need.TOO_LONG if _too_long(buffer.replace(b"\x7f", b"%7F")) else Need.MORE
    head = buffer[:end].replace(b"\x7f", b"%7F")
    if _too_long(head):
        return Need.TOO_LONG
    rest = buffer[end + len(_END):]
    parsed = None if rest or path is None else parse_head(head, path)
    if parsed is None:
        return HandOver(head + _END + rest)
    return OneShot(*parsed)


class _Discard(asyncio.Protocol):
    """Where bytes go after an over-long head was refused: nowhere."""


class NginxProtocol(asyncio.Protocol):
    """One connection: nginx's request answered here, anything else passed to aiohttp.

    ``initial`` is what was read from the socket before this protocol took it
    over (``site.py``'s acceptor reads first).
    """

    def __init__(
        self,
        make_inner: Callable[[], asyncio.Protocol],
        service: AuthService | None,
        path: str,
        in_flight: set[NginxProtocol],
        replies: ReplyCache,
        initial: bytes = b"",
    ) -> None:
        self._replies = replies
        self._make_inner = make_inner
        self._service = service
        self._path = path if service is not None else None
        self._in_flight = in_flight
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._buffer = initial
        self._answered = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        initial, self._buffer = self._buffer, b""
        if initial:
            self.data_received(initial)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        if self._answered:
            return  # nginx sends nothing after its head; ignore anything that does
        buffer = self._buffer + data if self._buffer else data
        step = examine(buffer, self._path)
        if step is Need.MORE:
            self._buffer = buffer
            return
        self._buffer = b""
        if step is Need.TOO_LONG:
            self._refuse()
        elif isinstance(step, HandOver):
            self._hand_over(step.data)
        else:
            assert isinstance(step, OneShot)
            assert self._service is not None
            self._answer(self._service, step)

    def _answer(self, service: AuthService, request: OneShot) -> None:
        """Reply at once when the decision needs no waiting, else from a task."""
        transport = self._transport
        assert transport is not None
        self._answered = True
        peer = transport.get_extra_info("peername")
        result = service.answer_now(request.headers, peer[0] if isinstance(peer, tuple) else None)
        if isinstance(result, Outcome):
            transport.write(self._replies.get(request.minor, result.headers))
            transport.close()
            return
        self._task = asyncio.get_running_loop().create_task(
            self._answer_later(transport, result, request.minor))

    async def _answer_later(self, transport: asyncio.Transport, pending: Awaitable[Outcome],
                            minor: int) -> None:
        self._in_flight.add(self)
        try:
            outcome = await pending
            if not transport.is_closing():
                transport.write(self._replies.get(minor, outcome.headers))
        finally:
            transport.close()
            self._in_flight.discard(self)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The answer still being decided, if any."""
        return self._task

    def _refuse(self) -> None:
        """Answer an over-long head ourselves, quoting nothing, and close.

        aiohttp would answer 400 quoting the first 100 bytes of an over-long
        line, and log them with the traceback: an ``Auth-Pass`` line would put
        part of a password in the reply and the log (docs/security.md).
        nginx never sends such a head.
        """
        assert self._transport is not None
        self._inner = _Discard()
        self._transport.write(TOO_LONG_REPLY)
        self._transport.close()

    def _hand_over(self, data: bytes) -> None:
        """From now on aiohttp owns the connection, starting with ``data``."""
        assert self._transport is not None
        inner = self._make_inner()
        self._inner = inner
        inner.connection_made(self._transport)
        inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        # Keep the socket open for our reply if the client half-closed after
        # its request; close at once if it left before sending one.
        return True if self._task is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
