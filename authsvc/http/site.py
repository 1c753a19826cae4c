"""The auth_http listening socket: accept, answer nginx's requests in place, hand on the rest.

nginx opens a new connection for every login, sends one small request and
closes after the reply (docs/serve.md "The request").  asyncio's own server
spends a task, a transport, two ``epoll_ctl`` calls and half a dozen
callbacks on every such connection, more than the decision itself costs
(docs/benchmarks.md).  :class:`Acceptor` therefore accepts on the listening
socket itself and, for each new connection, reads what has arrived and
acts on :func:`authsvc.http.wire.decide`: when that holds nginx's whole
request and the route is cached, it writes the reply and closes, all inside
the one accept callback.

Everything else gets the ordinary machinery:

* a decision that must wait for the map, the throttle or DNS: a task that
  writes the reply when it is known;
* a head too long (431), or one that cannot go to aiohttp (400:
  ``head.py`` before the head is complete, ``headcheck.py`` once it is), even
  if not complete: a fixed reply that quotes nothing, then a lingering
  close; a 400 is logged with the peer, the offset and the length, never the
  bytes;
* any other request (``/readyz``, keep-alive, ``POST /cache/flush``), and a
  head not complete yet: :class:`~authsvc.http.protocol.NginxProtocol`, given
  the bytes read so far, which holds the head's deadline (``[http] head_timeout``), reads, and gives
  aiohttp (the runner's public ``server``) one checked request and nothing
  after it.  aiohttp never reads the socket itself, so no head reaches its
  parser unchecked.

The listening TCP socket gets ``TCP_DEFER_ACCEPT`` (nginx's ``listen ...
deferred``): the kernel reports a connection only once its first bytes have
arrived, so the one read almost always finds nginx's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from authsvc.http.auth_http import AuthService
from authsvc.http.protocol import LINGER_SECONDS, InFlight, NginxProtocol, log_malformed
from authsvc.http.wire import (
    BAD_REQUEST_REPLY,
    TOO_LONG_REPLY,
    Malformed,
    Need,
    ReplyCache,
    ReplyLater,
    decide,
)
from authsvc.runtime.accepting import accept_batch

logger = logging.getLogger("authsvc.serve")

#: Bytes asked for by the first read: nginx's requests are a few hundred.
FIRST_READ = 65536
#: Connections accepted per wake-up before the loop runs anything else.
ACCEPT_BATCH = 64
#: As asyncio does: stop accepting this long after running out of descriptors.
ACCEPT_RETRY_DELAY = 1.0
#: Seconds the kernel holds a connection that has sent nothing (TCP_DEFER_ACCEPT).
DEFER_ACCEPT_SECONDS = 5


class Acceptor:
    """Accepts on ``sock`` and answers nginx's one-shot requests without a task.

    ``protocol`` makes the :class:`NginxProtocol` for a connection that needs
    reading on, or aiohttp, given the bytes already read from it.
    Replies still being written or decided are recorded in ``in_flight``.
    """

    def __init__(self, sock: socket.socket, service: AuthService | None, path: str,
                 replies: ReplyCache, *, protocol: Callable[[bytes], asyncio.Protocol],
                 in_flight: InFlight) -> None:
        self._sock = sock
        self._service = service
        self._path = path if service is not None else None
        self._replies = replies
        self._protocol = protocol
        self._in_flight = in_flight
        self._loop = asyncio.get_running_loop()
        self._serving = False

    def start(self) -> None:
        """Start accepting (the socket is already listening)."""
        self._sock.setblocking(False)
        if self._sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # Linux-only; without it, only slower
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT,
                                      DEFER_ACCEPT_SECONDS)
        self._serving = True
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def stop(self) -> None:
        """Close the listening socket, as asyncio's server does; accepted connections carry on."""
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            exhausted = accept_batch(self._sock, ACCEPT_BATCH, self._accepted)
        except OSError as exc:
            logger.error("", extra={"fields": {"event": "accept_failed", "error": str(exc)}})
            return
        if exhausted is not None:
            logger.error("", extra={"fields": {"event": "accept_failed",
                                            "error": exhausted.strerror,
                                            "retry_in": ACCEPT_RETRY_DELAY}})
            self._loop.remove_reader(self._sock.fileno())
            self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _accepted(self, conn: socket.socket, address: object) -> None:
        try:
            self._serve(conn, address)
        except Exception:  # one connection's trouble must not stop accepting
            logger.exception("auth_http connection failed")
            conn.close()

    def _serve(self, conn: socket.socket, address: object) -> None:
        try:
            data = conn.recv(FIRST_READ, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            data = None  # nothing yet (no TCP_DEFER_ACCEPT, or a unix socket)
        except OSError:
            conn.close()  # reset before it said anything
            return
        if data == b"":
            conn.close()  # closed before it said anything
            return
        if data is None:
            self._hand_to_protocol(conn, b"")
            return
        step = decide(data, self._path, self._service, address, self._replies)
        if isinstance(step, ReplyLater):
            self._spawn(self._reply_later(conn, step), conn)
        elif type(step) is bytes:
            self._reply(conn, step)
        elif step is Need.TOO_LONG:
            self._spawn(self._refuse(conn, TOO_LONG_REPLY), conn, linger=True)
        elif isinstance(step, Malformed):
            log_malformed(address, step)
            self._spawn(self._refuse(conn, BAD_REQUEST_REPLY), conn, linger=True)
        else:  # a head still incomplete, or aiohttp's request
            self._hand_to_protocol(conn, data)

    def _hand_to_protocol(self, conn: socket.socket, data: bytes) -> None:
        """The connection goes on in a :class:`NginxProtocol`, starting with ``data``."""
        protocol = self._protocol(data)
        self._spawn(self._loop.connect_accepted_socket(lambda: protocol, conn), conn)

    def _reply(self, conn: socket.socket, reply: bytes) -> None:
        """Write the reply and close: a few hundred bytes fit any fresh socket buffer."""
        try:
            sent = conn.send(reply, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            conn.close()  # nginx gave up already
            return
        if sent == len(reply):
            conn.close()
            return
        self._spawn(self._send_rest(conn, reply[sent:]), conn)

    async def _reply_later(self, conn: socket.socket, step: ReplyLater) -> None:
        try:
            reply = await step.reply
        except BaseException:
            conn.close()  # cancelled (shutdown past the drain timeout)
            raise
        self._reply(conn, reply)

    async def _send_rest(self, conn: socket.socket, data: bytes) -> None:
        try:
            await self._loop.sock_sendall(conn, data)
        except OSError:
            pass  # nginx gave up already
        finally:
            conn.close()

    async def _refuse(self, conn: socket.socket, reply: bytes) -> None:
        """The 431 for an over-long head, or the 400 for a malformed one, then a lingering close.

        The client may still be sending; closing with its bytes unread would
        reset the connection and can discard the reply before it is read.  So,
        as nginx's ``lingering_close`` does, shut the write side, read and
        drop what comes for at most :data:`LINGER_SECONDS`, then close.
        """
        try:
            await self._loop.sock_sendall(conn, reply)
            conn.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(LINGER_SECONDS):
                while await self._loop.sock_recv(conn, FIRST_READ):
                    pass
        except (OSError, TimeoutError):
            pass  # the client went, or kept sending past the linger time
        finally:
            conn.close()

    def _spawn(self, work: Coroutine[Any, Any, object], conn: socket.socket, *,
               linger: bool = False) -> None:
        conn.setblocking(False)

        async def run() -> None:
            try:
                await work
            except Exception:
                logger.exception("auth_http connection failed")
                conn.close()

        self._in_flight.spawn(run(), linger=linger)



class NginxSite:
    """The auth_http socket of ``authsvc serve``: :class:`Acceptor` in front of ``runner``.

    ``service`` answers nginx's requests; None lets aiohttp parse every
    request (DEL escaped; tests compare the two).  :meth:`stop` closes the
    socket and waits (up to ``drain_timeout``) for the replies still being
    decided, the way aiohttp waits for its own requests; call it before
    ``runner.cleanup()``, which closes the maps.  ``head_timeout`` bounds the
    time from accept to a complete head (``[http] head_timeout``).
    """

    def __init__(self, runner: web.BaseRunner, sock: socket.socket,
                 service: AuthService | None, *, path: str = "/auth",
                 drain_timeout: float = 10.0, head_timeout: float = 10.0,
                 backlog: int = 1024) -> None:
        self._runner = runner
        self._sock = sock
        self._service = service
        self._path = path
        self._drain_timeout = drain_timeout
        self._head_timeout = head_timeout
        self._backlog = backlog
        self._in_flight = InFlight()
        self._acceptor: Acceptor | None = None

    async def start(self) -> None:
        """Accept on the socket (the runner must be set up)."""
        server = self._runner.server
        if server is None:
            raise RuntimeError("call runner.setup() before starting the site")
        replies = ReplyCache()
        service, path, in_flight = self._service, self._path, self._in_flight
        head_timeout = self._head_timeout

        def protocol(first: bytes = b"") -> NginxProtocol:
            return NginxProtocol(server, service, path, in_flight, replies,
                                 head_timeout=head_timeout, first=first)

        self._sock.listen(self._backlog)
        self._acceptor = Acceptor(self._sock, service, path, replies, protocol=protocol,
                                  in_flight=in_flight)
        self._acceptor.start()

    async def stop(self) -> None:
        """Stop accepting, then let the replies in flight finish."""
        if self._acceptor is not None:
            self._acceptor.stop()
            self._acceptor = None
        await self._in_flight.drain(self._drain_timeout)
