"""The asyncio side of the auth_http socket: the protocol adapter and the drain bookkeeping.

:class:`NginxProtocol` serves a connection that the accept callback
(``site.py``) could not settle from its first read, starting with the bytes
that read got: a head that arrived in
pieces, one whose DEL had to be escaped before aiohttp reads it, and every
request aiohttp answers.  It reads
through an asyncio transport and acts on :func:`authsvc.http.wire.decide`,
the same decision the accept callback uses, carrying over how far the
decision got (:class:`~authsvc.http.head.HeadScan`) so that a head arriving
one byte per read costs linear time, and gives aiohttp the one request it
may parse.  A head not complete within ``head_timeout`` (``[http]
head_timeout``, docs/serve.md) is closed with no reply: nginx sends its
request in one write.

:class:`InFlight` is the one record of replies still being written or
decided, for both adapters, so that stopping the site waits for every one of
them, including a task created in the same loop pass as the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from authsvc.http.auth_http import AuthService
from authsvc.http.head import HeadScan
from authsvc.http.wire import (
    BAD_REQUEST_REPLY,
    TOO_LONG_REPLY,
    HandOver,
    Malformed,
    Need,
    ReplyCache,
    ReplyLater,
    decide,
)

logger = logging.getLogger("authsvc.serve")

#: Seconds a refused connection is read and discarded after the reply, so that
#: closing it does not reset the reply away (nginx's ``lingering_time``).
LINGER_SECONDS = 2.0


class InFlight:
    """Tasks that write or decide a reply, for the drain at stop.

    A task is recorded when it is created, not when it first runs, so
    :meth:`drain` never misses one made in the same loop pass.  Lingering
    closes are recorded apart: they end on their own and are cut short at stop.
    """

    def __init__(self) -> None:
        self._replies: set[asyncio.Task[None]] = set()
        self._lingering: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], *, linger: bool = False) -> None:
        """Run ``work`` as a task, recorded until it ends."""
        tasks = self._lingering if linger else self._replies
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def __len__(self) -> int:
        return len(self._replies)

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for every reply, then cancel what is left."""
        for task in list(self._lingering):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self._replies:  # a reply may start another (the rest of a write)
                    await asyncio.gather(*self._replies, return_exceptions=True)
        for task in list(self._replies | self._lingering):
            task.cancel()


def log_malformed(peer: object, step: Malformed) -> None:
    """The one log line for a head refused with a 400: who, where and how long, never the bytes.

    A head nginx would never send may hold anything, a password included,
    so none of it is logged (docs/security.md, "Secrets in logs").
    """
    logger.warning("", extra={"fields": {"event": "bad_request", "peer": peer_text(peer),
                                         "offset": step.offset, "length": step.length}})


def peer_text(peer: object) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of an inet peer; ``unix`` otherwise."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unix"


class _Discard(asyncio.Protocol):
    """Where bytes go after a head was refused: nowhere."""


class NginxProtocol(asyncio.Protocol):
    """One connection: nginx's request answered here, anything else passed to aiohttp.

    ``aiohttp`` makes aiohttp's protocol (the runner's public ``server``).
    ``service`` None sends every request to aiohttp, DEL escaped.
    ``head_timeout``: seconds from the connection to a complete head (None:
    no limit), then the connection is closed with no reply.
    """

    def __init__(
        self,
        aiohttp: Callable[[], asyncio.Protocol],
        service: AuthService | None,
        path: str,
        in_flight: InFlight,
        replies: ReplyCache,
        *,
        head_timeout: float | None = None,
        first: bytes = b"",
    ) -> None:
        self._aiohttp = aiohttp
        self._service = service
        self._path = path if service is not None else None
        self._in_flight = in_flight
        self._replies = replies
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        #: Bytes still to pass to aiohttp: the rest of its one request (HandOver.size).
        self._left = 0
        self._buffer = bytearray()
        self._scan = HeadScan()
        self._answered = False
        self._waiting = False
        self._linger: asyncio.TimerHandle | None = None
        self._head_timeout = head_timeout
        self._deadline: asyncio.TimerHandle | None = None
        #: What the acceptor read before it handed the connection over.
        self._first = first

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._head_timeout is not None:
            self._deadline = asyncio.get_running_loop().call_later(
                self._head_timeout, self._expire)
        if self._first:
            first, self._first = self._first, b""
            self.data_received(first)

    def _expire(self) -> None:
        """The head did not complete in time: close, no reply (nothing was decided)."""
        self._deadline = None
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            if isinstance(self._inner, _Discard):
                return
            # aiohttp gets its one request and nothing after: a later head
            # is not checked, and aiohttp would quote it if it refused it.
            data = data[:self._left]
            self._left -= len(data)
            if data:
                self._inner.data_received(data)
            return
        if self._answered:
            return  # nginx sends nothing after its head; ignore anything that does
        transport = self._transport
        assert transport is not None
        self._buffer += data
        step = decide(self._buffer, self._path, self._service,
                      transport.get_extra_info("peername"), self._replies, self._scan)
        if step is Need.MORE:
            return
        self._buffer = bytearray()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if isinstance(step, HandOver):
            self._hand_over(transport, step.data, step.size)
            return
        self._answered = True
        if isinstance(step, bytes):
            transport.write(step)
            transport.close()
        elif isinstance(step, ReplyLater):
            self._waiting = True
            self._in_flight.spawn(self._reply_later(transport, step))
        elif isinstance(step, Malformed):
            log_malformed(transport.get_extra_info("peername"), step)
            self._refuse(transport, BAD_REQUEST_REPLY)
        else:
            assert step is Need.TOO_LONG
            self._refuse(transport, TOO_LONG_REPLY)

    async def _reply_later(self, transport: asyncio.Transport, step: ReplyLater) -> None:
        try:
            reply = await step.reply
            if not transport.is_closing():
                transport.write(reply)
        finally:
            transport.close()

    def _refuse(self, transport: asyncio.Transport, reply: bytes) -> None:
        """Answer an over-long or malformed head ourselves, quoting nothing; close gracefully.

        aiohttp would answer 400 quoting the bytes it refused (the first 100
        of an over-long line), and log them with the traceback: an
        ``Auth-Pass`` line would put part of a password in the reply and the
        log (docs/security.md).  nginx never sends such a head.  The client
        may still be sending it, and closing with unread bytes resets the
        connection, which can discard the reply before the client reads it;
        so, as nginx's lingering close does (``lingering_close`` in nginx's
        http core module docs), the write side
        is shut, what arrives is read and dropped, and the socket closes when
        the client does or after :data:`LINGER_SECONDS`.
        """
        self._inner = _Discard()
        transport.write(reply)
        if transport.can_write_eof():
            transport.write_eof()
            self._linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()

    def _hand_over(self, transport: asyncio.Transport, data: bytes, size: int) -> None:
        """From now on aiohttp owns the connection, starting with ``data``, for ``size`` bytes.

        The bytes were read already (or must reach aiohttp DEL-escaped), and
        neither asyncio nor aiohttp can put bytes back on a socket, so
        aiohttp's protocol is given them through the asyncio protocol
        interface.  Relaying through a socket pair instead would show aiohttp
        a unix socket, which the flush and throttle controls trust.
        aiohttp is given its one request (``size`` bytes) and nothing after:
        serve's aiohttp replies close the connection (``app.py``), so the
        bytes that follow are dropped, never parsed.
        """
        inner = self._aiohttp()
        self._inner = inner
        inner.connection_made(transport)
        self._left = max(0, size - len(data))
        inner.data_received(data[:size])

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            if isinstance(self._inner, _Discard):
                return None  # the client is done sending: close (lingering ends)
            return self._inner.eof_received()
        # Keep the socket open for our reply if the client half-closed after
        # its request; close at once if it left before sending one.
        return True if self._waiting else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self._deadline is not None:
            self._deadline.cancel()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
