"""Let a DEL byte in a password through: escape 0x7F in the request head before aiohttp parses it.

nginx escapes only 0x00-0x1F, space and ``%`` in ``Auth-User``/``Auth-Pass``
(nginx-haproxy.md §1.3), so a password containing DEL (0x7F) arrives raw.  Both
of aiohttp's HTTP parsers answer such a header with ``400 Invalid header value
char``; nginx then finds no ``Auth-Status`` and the user sees ``* BAD internal
server error`` (§0 rule 10).  A DEL byte is legal in a password, so we turn it
into ``%7F`` in the first request head of each connection: exactly what nginx
would have sent had it escaped DEL too, and what ``decode_escaped`` turns back
into 0x7F.  In ``Auth-User`` the decoded DEL is then refused as a control
character by the login rules, with the ordinary "invalid login" answer.

Only the head of the first request on a connection is touched (nginx sends one
request per connection, §1.1); a body is never rewritten, so a Content-Length
stays right.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

_END = b"\r\n\r\n"


class DelEscaper(asyncio.Protocol):
    """Wraps aiohttp's protocol object and rewrites 0x7F in the first request head."""

    __slots__ = ("_in_head", "_inner", "_tail")

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        self._in_head = True
        self._tail = b""  # the last bytes of the head so far, to find _END across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            data = self._escape(data)
        self._inner.data_received(data)

    def _escape(self, data: bytes) -> bytes:
        if not self._tail and _END in data and b"\x7f" not in data:
            self._in_head = False  # the usual case: the whole head in one read, no DEL
            return data
        joined = self._tail + data
        end = joined.find(_END)
        if end < 0:
            head, rest = data, b""
            self._tail = joined[-(len(_END) - 1) :]
        else:
            cut = max(end + len(_END) - len(self._tail), 0)
            head, rest = data[:cut], data[cut:]
            self._in_head = False
            self._tail = b""
        return head.replace(b"\x7f", b"%7F") + rest

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class NginxSockSite(web.SockSite):
    """``web.SockSite`` whose connections go through :class:`DelEscaper`."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            lambda: DelEscaper(server()),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
        )
