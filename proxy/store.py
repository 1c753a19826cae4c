"""The store-facing login: connect to the routed store and log in there.

One of the few modules that touch the event loop.  :class:`StoreLogin` opens
a Channel to the store a :class:`~authsvc.routing.Route` names (implicit TLS
when the route says so), runs the store-facing machine (``ImapBack`` /
``Pop3Back``: the greeting, STARTTLS/STLS, what the store is told of the
client's address, the login itself) and carries out its commands, until the
store accepts the login or the machine gives up.  The store's bytes reach the
machine from the Channel's read callback (:class:`_Dialogue`); the coroutine
waits once for the dialogue's end, and in between only for STARTTLS.  A failure raises
:class:`LoginFailure`; the caller (``attempt.py``) words nothing, closes the
Channel and turns the failure into the client's reply.

The store's certificate must carry the configured name, else the map's host
(docs/proxy.md, "Towards the stores: TLS and the client's address").  The
password goes to the store only inside ``Send(secret=True)``, which is traced
as its length, never its bytes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from authsvc.proxy.context import ListenerContext
from authsvc.proxy.events import (
    BackendFailed,
    BackendReady,
    Command,
    ConnectionClosed,
    Credentials,
    DataReceived,
    Endpoints,
    LoginSucceeded,
    Send,
    StartTls,
    TlsEstablished,
)
from authsvc.proxy.forward import backend_options
from authsvc.proxy.imap.back import ImapBack
from authsvc.proxy.logline import address
from authsvc.proxy.pop3.back import Pop3Back
from authsvc.proxy.transport import Channel

from authsvc.failures import FailureKind
from authsvc.routing import Route
from authsvc.settings import BackendTls, MailProtocol


def _literal_family(host: str) -> int | None:
    """AF_INET or AF_INET6 when ``host`` is an address literal (no lookup needed), else None."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


async def _connected(loop: asyncio.AbstractEventLoop, host: str, port: int,
                     open_channel: Callable[[socket.socket], Channel]) -> Channel:
    """A Channel on a TCP connection to ``host``, tried address by address.

    An address literal, as most maps name their stores, is connected with no
    lookup; a name is resolved and its addresses tried in order, as
    ``create_connection`` does; the last failure is raised.  The Channel
    watches the connect itself (``connecting=True``): no future and callback
    of ``loop.sock_connect`` per login.
    """
    family = _literal_family(host)
    candidates: list[tuple[int, tuple[Any, ...]]]
    if family is not None:
        candidates = [(family, (host, port))]
    else:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        candidates = [(info[0], info[4]) for info in infos]
    error: OSError = OSError(f"no address for {host}")
    for family, sockaddr in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # EINPROGRESS: the Channel waits for it (connect(2)).
            code = sock.connect_ex(sockaddr)
            if code not in (0, errno.EINPROGRESS, errno.EINTR):
                raise OSError(code, os.strerror(code))
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        channel = open_channel(sock)
        try:
            await channel.connected()
        except OSError as exc:
            channel.abort()
            error = exc
            continue
        except BaseException:
            channel.abort()
            raise
        return channel
    raise error


class _Dialogue:
    """The store's bytes to the back machine as they arrive; its lines to the store at once.

    The Channel hands each chunk over from its read callback
    (``Channel.relay_to``), so the store's greeting and its answer to
    ``LOGIN`` cost no future and no task wake-up each: one waiter for the
    dialogue, set with the command the coroutine must carry out (STARTTLS,
    the login's end) and the commands behind it.
    """

    __slots__ = ("_backend", "_machine", "_trace", "waiter")

    def __init__(self, backend: Channel, machine: ImapBack | Pop3Back,
                 trace: Callable[[str], None] | None, loop: asyncio.AbstractEventLoop) -> None:
        self._backend = backend
        self._machine = machine
        self._trace = trace
        self.waiter: asyncio.Future[tuple[Command, list[Command]]] = loop.create_future()

    def start(self, commands: list[Command]) -> None:
        """Carry out ``commands``, then feed the machine what the store sends."""
        backend = self._backend
        left = backend.take_buffered()  # arrived with a TLS handshake's last flight
        backend.relay_to(self)
        backend.on_lost(self.lost)
        self._carry_out(commands)
        if left:
            self.data(left)
        if backend.eof:
            self.eof()

    def _carry_out(self, commands: list[Command]) -> None:
        for index, command in enumerate(commands):
            if self.waiter.done():
                return
            if isinstance(command, Send):
                if self._trace is not None:  # no repr when nobody reads it
                    self._trace(f"B: ({len(command.data)} bytes, login)" if command.secret
                                else f"B: {command.data[:120]!r}")
                self._backend.write(command.data)
                continue
            # STARTTLS, or the login's end: the coroutine takes it from here, and
            # the store's bytes wait in the Channel again meanwhile.
            self._backend.relay_to(None)
            self._backend.on_lost(None)
            self.waiter.set_result((command, commands[index + 1:]))
            return

    def data(self, data: bytes) -> None:
        if not self.waiter.done():
            self._carry_out(self._machine.handle(DataReceived(data)))

    def eof(self) -> None:
        if not self.waiter.done():
            self._carry_out(self._machine.handle(ConnectionClosed()))

    def lost(self) -> None:
        """The connection failed (a reset): as the store's EOF to the machine."""
        self.eof()

    def writable(self) -> None:
        """The Channel's write buffer drained: nothing waits on it here."""


class LoginFailure(Exception):
    """A login attempt failed: what it means (``kind``) and why, for the log."""

    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class StoreLogin:
    """Logging in at the store one route names; its state stays readable after a failure."""

    def __init__(self, context: ListenerContext, route: Route, endpoints: Endpoints,
                 trace: Callable[[str], None] | None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._ctx = context
        self._route = route
        self._endpoints = endpoints
        self._trace = trace
        #: What a timeout now means: the connect, then the store's dialogue.
        self.stage = FailureKind.BACKEND_CONNECT
        #: The store's Channel once connected; None again after :meth:`close`.
        self.channel: Channel | None = None
        #: How the store connection is secured, as the Auth: line says it.
        self.secure = "plaintext"

    def close(self) -> None:
        """Close the store's Channel, if any (after a failed login)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def _tls_failed(self, exc: BaseException) -> LoginFailure:
        if self._ctx.metrics is not None:
            self._ctx.metrics.tls_failure(self._ctx.listener.name, "store")
        return LoginFailure(FailureKind.BACKEND_PROTOCOL, f"store TLS: {exc}")

    async def run(self, credentials: Credentials) -> LoginSucceeded:
        """Connect and log in; raises :class:`LoginFailure` when that fails."""
        route = self._route
        implicit = route.backend_tls is BackendTls.IMPLICIT
        context = self._ctx.backend_tls if route.backend_tls is not BackendTls.NONE else None
        if route.backend_tls is not BackendTls.NONE and context is None:
            raise LoginFailure(FailureKind.BACKEND_CONNECT, "no TLS context for the store")
        forward, tls_name = backend_options(self._ctx.proxy, route.host, route.port)
        # The name the certificate must carry: a configured one (maps that give
        # IP addresses), else the map's host (docs/proxy.md, "Towards the stores").
        server_hostname = tls_name or route.host
        loop = self._loop
        high_water = self._ctx.proxy.splice_buffer
        self.stage = FailureKind.BACKEND_CONNECT
        metrics = self._ctx.metrics
        store = address((route.host, route.port))
        started = loop.time()
        # Implicit TLS runs in the Channel (proxy/transport.py), as the client side
        # does: the same context and name checks as a STARTTLS upgrade.

        def open_channel(sock: socket.socket) -> Channel:
            # Kept at once, so that a timeout during the connect closes it.
            self.channel = Channel(sock, high_water=high_water,
                                   tls_context=context if implicit else None, server_side=False,
                                   server_hostname=server_hostname, connecting=True, loop=loop)
            return self.channel

        try:
            backend = await _connected(loop, route.host, route.port, open_channel)
        except OSError as exc:
            self.channel = None
            raise LoginFailure(FailureKind.BACKEND_CONNECT, f"connect: {exc}") from None
        connected = loop.time()
        if metrics is not None:
            metrics.store_connect(store, connected - started)
        if implicit:
            try:
                await backend.handshake()
            except ssl.SSLError as exc:
                raise self._tls_failed(exc) from None
            except OSError as exc:
                # Closed before the handshake ended: the connect failed.
                raise LoginFailure(FailureKind.BACKEND_CONNECT, f"connect: {exc}") from None
            self.secure = "ssl"
        self.stage = FailureKind.BACKEND_PROTOCOL
        machine: ImapBack | Pop3Back
        if self._ctx.listener.protocol is MailProtocol.IMAP:
            machine = ImapBack(route.backend_login, credentials.password, route.backend_tls,
                               tls_active=implicit, forward=forward, endpoints=self._endpoints)
        else:
            machine = Pop3Back(route.backend_login, credentials.password, route.backend_tls,
                               tls_active=implicit, forward=forward, endpoints=self._endpoints)
        commands = machine.start()
        while True:
            dialogue = _Dialogue(backend, machine, self._trace, loop)
            dialogue.start(commands)
            command, rest = await dialogue.waiter
            match command:
                case StartTls():
                    assert context is not None
                    if backend.take_buffered():
                        # Plaintext behind the store's STARTTLS OK is
                        # response injection (RFC 2595 §3.1).
                        commands = [*rest, *machine.handle(DataReceived(b"injected"))]
                        continue
                    try:
                        await backend.start_tls(context, server_side=False,
                                                server_hostname=server_hostname)
                    except (OSError, ssl.SSLError) as exc:
                        raise self._tls_failed(exc) from None
                    self.secure = "starttls"
                    commands = [*rest, *machine.handle(TlsEstablished())]
                case BackendReady(result=result):
                    if metrics is not None:
                        metrics.store_login(store, loop.time() - connected)
                    return result
                case BackendFailed(kind=kind, reason=reason):
                    raise LoginFailure(kind, reason)
                case _:
                    raise AssertionError(f"unexpected back-machine command {command!r}")
