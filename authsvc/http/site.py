"""The auth_http listening socket: accept, answer nginx's requests in place, hand on the rest.

nginx opens a new connection for every login, sends one small request and
closes after the reply (ngx_mail_auth_http_module.c).  asyncio's own server
spends a task, a transport, two ``epoll_ctl`` calls and half a dozen
callbacks on every such connection, more than the decision itself costs
(docs/benchmarks.md).  :class:`Acceptor` therefore accepts on the listening
socket itself and, for each new connection, reads once, and when that read
holds nginx's whole request and the route is cached, writes the reply and
closes, all inside the one accept callback.

Everything else gets the ordinary machinery, starting with the bytes already
read: a head not complete in the first read, any other request (aiohttp,
through :class:`~authsvc.http.wire.NginxProtocol`), and a decision that must
wait for the map, the throttle or DNS (a task that writes the reply when it
is known).

The listening TCP socket gets ``TCP_DEFER_ACCEPT`` (nginx's ``listen ...
deferred``): the kernel reports a connection only once its first bytes have
arrived, so the one read almost always finds nginx's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from authsvc.accepting import accept_batch
from authsvc.http.app import AUTH, SETTINGS
from authsvc.http.auth_http import AuthService, Outcome
from authsvc.http.wire import (
    TOO_LONG_REPLY,
    Need,
    NginxProtocol,
    OneShot,
    ReplyCache,
    examine,
)

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

    ``adopt(data)`` makes the protocol for a connection that needs asyncio,
    fed ``data`` (already read) first.  ``tasks`` holds the replies still
    being decided, for draining.
    """

    def __init__(self, sock: socket.socket, service: AuthService, path: str,
                 replies: ReplyCache, adopt: Callable[[bytes], asyncio.Protocol]) -> None:
        self._sock = sock
        self._service = service
        self._path = path
        self._replies = replies
        self._adopt = adopt
        self._loop = asyncio.get_running_loop()
        self._serving = False
        self.tasks: set[asyncio.Task[None]] = set()

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
        step = Need.MORE if data is None else examine(data, self._path)
        if isinstance(step, OneShot):
            peer = address[0] if isinstance(address, tuple) else None
            result = self._service.answer_now(step.headers, peer)
            if isinstance(result, Outcome):
                self._reply(conn, self._replies.get(step.minor, result.headers))
            else:
                self._reply_later(conn, result, step.minor)
        elif step is Need.TOO_LONG:
            self._reply(conn, TOO_LONG_REPLY)  # only past 64 KiB; see NginxProtocol._refuse
        else:  # an incomplete head, or not nginx's request: asyncio and aiohttp take over
            self._spawn(self._loop.connect_accepted_socket(
                lambda: self._adopt(data or b""), conn), conn)

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

    def _reply_later(self, conn: socket.socket, pending: Awaitable[Outcome], minor: int) -> None:
        async def reply() -> None:
            try:
                outcome = await pending
            except BaseException:
                conn.close()  # cancelled (shutdown past the drain timeout)
                raise
            self._reply(conn, self._replies.get(minor, outcome.headers))

        task = self._loop.create_task(reply())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_rest(self, conn: socket.socket, data: bytes) -> None:
        try:
            await self._loop.sock_sendall(conn, data)
        except OSError:
            pass  # nginx gave up already
        finally:
            conn.close()

    def _spawn(self, work: Awaitable[object], conn: socket.socket) -> None:
        conn.setblocking(False)

        async def run() -> None:
            try:
                await work
            except Exception:
                logger.exception("auth_http connection failed")
                conn.close()

        task = self._loop.create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class NginxSockSite(web.SockSite):
    """``web.SockSite`` whose connections go through :class:`Acceptor` and ``NginxProtocol``.

    ``fast_path=False`` keeps only the DEL escaping and lets aiohttp parse
    every request (tests compare the two).  On stop, answers still being
    decided are waited for (up to ``drain_timeout``) the way aiohttp waits
    for its own requests.
    """

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, fast_path: bool = True,
                 drain_timeout: float = 10.0, backlog: int = 1024) -> None:
        super().__init__(runner, sock, backlog=backlog)
        self._fast_path = fast_path
        self._drain_timeout = drain_timeout
        self._in_flight: set[NginxProtocol] = set()  # answering through asyncio
        self._replies = ReplyCache()
        self._acceptor: Acceptor | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        app = getattr(self._runner, "app", None)
        service = app[AUTH] if self._fast_path and isinstance(app, web.Application) else None
        path = app[SETTINGS].http.path if isinstance(app, web.Application) else "/auth"

        def protocol(initial: bytes = b"") -> NginxProtocol:
            return NginxProtocol(server, service, path, self._in_flight, self._replies, initial)

        if service is not None and self._ssl_context is None:
            self._sock.listen(self._backlog)
            self._acceptor = Acceptor(self._sock, service, path, self._replies, protocol)
            self._acceptor.start()
            return
        self._server = await loop.create_server(
            protocol, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog)

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.stop()
        await super().stop()  # no more connections
        tasks = [p.task for p in self._in_flight if p.task is not None]
        if self._acceptor is not None:
            tasks += self._acceptor.tasks
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._drain_timeout):
                    await asyncio.gather(*tasks, return_exceptions=True)
