"""The session driver: one client connection from accept to close.

One of the few modules that touch the event loop.  It takes the accepted
socket (its PROXY header, if any, already read by the server), makes it a
Channel (on an implicit-TLS listener, with the TLS handshake bounded by
``login_timeout``), runs the client-facing machine (``ImapFront``/``Pop3Front``)
and carries out its commands: replies, STARTTLS, each login attempt
(``attempt.py``: throttle, routing core, the store's login in ``store.py``,
the failure's fixed-deadline reply, the ``event=login_failed`` and ``Auth:``
lines), and after a login the hand-off of both Channels to ``relay.py``.  It
logs one ``event=session`` line when the connection ends.

The client's address everywhere (routing, logs, limits, what the store is
told) is :class:`~proxy.events.Endpoints`: the PROXY header's when there was
one, else the socket's.  Passwords exist only inside ``Credentials`` as a
``Secret`` and in ``Send(secret=True)`` bytes to the store; neither is ever
logged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable

from authsvc.proxy.attempt import LoginAttempt
from authsvc.proxy.context import ListenerContext
from authsvc.proxy.events import (
    Authenticate,
    BackendFailed,
    BackendReady,
    Close,
    Command,
    ConnectionClosed,
    Credentials,
    DataReceived,
    Endpoints,
    Event,
    LoginFailed,
    LoginSucceeded,
    Send,
    Splice,
    StartTls,
    TimedOut,
    TlsEstablished,
    Trace,
)
from authsvc.proxy.imap.front import ImapFront
from authsvc.proxy.limits import Ticket
from authsvc.proxy.logline import SessionRecord, address
from authsvc.proxy.pop3.front import Pop3Front
from authsvc.proxy.relay import Relay
from authsvc.proxy.transport import Channel

from authsvc.control.selectors import SessionFacts
from authsvc.runtime.binding import inet_address
from authsvc.settings import ListenTls, MailProtocol

log = logging.getLogger("proxy.session")

#: Said to a client that has not logged in when the server shuts down (drain).
_SHUTTING_DOWN = {
    MailProtocol.IMAP: b"* BYE [UNAVAILABLE] Server shutting down, try again later.\r\n",
    MailProtocol.POP3: b"-ERR [SYS/TEMP] Server shutting down, try again later.\r\n",
}


class Session:
    """One client connection."""

    def __init__(
        self,
        context: ListenerContext,
        sock: socket.socket,
        number: int,
        *,
        endpoints: Endpoints,
        via: tuple[str, int] | None = None,
        on_login: Callable[[], None] | None = None,
        on_end: Callable[[Session], None] | None = None,
        ticket: Ticket | None = None,
        started: float | None = None,
    ) -> None:
        """``on_end`` is called once, when the session is over and its line logged.

        ``ticket``: the server's admission ticket, kept for ``on_end`` to release.
        """
        self._ctx = context
        self._sock = sock
        self._client: Channel | None = None
        #: The latest login attempt; after a successful one, it holds the store's Channel.
        self._attempt: LoginAttempt | None = None
        self._endpoints = endpoints
        self._on_login = on_login
        self._on_end = on_end
        self.ticket = ticket
        #: After login: the relay, which ends the session from its callbacks.
        self._relay: Relay | None = None
        listener = context.listener
        self.record = SessionRecord(
            session=number,
            listener=listener.name,
            protocol=listener.protocol.value,
            client=address(endpoints.client),
            local=address(endpoints.local),
            via=address(via) if via is not None else None,
        )
        self._tracing = context.log.connection_logging and log.isEnabledFor(logging.DEBUG)
        #: Loop time the connection was accepted (login_deadline counts from it).
        self._started = started
        #: The throttle refused this client: close once the refusal is written.
        self._close_after_reply = False
        self._loop = asyncio.get_running_loop()
        #: Wall-clock time of the accept, for ``authsvc sessions list``.
        self._accepted_at = time.time() - (
            self._loop.time() - started if started is not None else 0.0)
        #: True while bytes are relayed (the sessions a list shows and a kick ends).
        self._relaying = False
        self._kicked = False
        self._ended = False

    @property
    def client(self) -> Channel | None:
        """The client's Channel once the connection is set up (for byte counts)."""
        return self._client

    @property
    def logged_in(self) -> bool:
        """True once the store accepted the login (the server drains these on stop)."""
        return self._attempt is not None and self._attempt.succeeded

    @property
    def _backend(self) -> Channel | None:
        """The store's Channel, from connect on (None after a failed attempt)."""
        return self._attempt.backend if self._attempt is not None else None

    def facts(self, worker: int) -> SessionFacts | None:
        """What ``authsvc sessions list`` shows; None unless bytes are being relayed."""
        attempt, client = self._attempt, self._client
        if not self._relaying or self._kicked or attempt is None or client is None:
            return None
        route, backend = attempt.route, attempt.backend
        if route is None or backend is None:
            return None
        peer = backend.peer()
        if not isinstance(peer, tuple):
            return None  # the store's socket is gone
        store_ip, store_port = inet_address(peer)
        record = self.record
        return SessionFacts(
            worker=worker, session=record.session, listener=record.listener,
            protocol=record.protocol, login=record.login or "", user=route.key,
            client=record.client, client_ip=self._endpoints.client[0],
            store=address((store_ip, store_port)), store_ip=store_ip, store_port=store_port,
            store_host=address((route.host, route.port)), client_tls=record.tls,
            store_tls=attempt.store_security, started=self._accepted_at,
            bytes_in=client.bytes_in, bytes_out=client.bytes_out)

    @property
    def store(self) -> str | None:
        """``host:port`` of the store (as the map names it) while relaying, else None."""
        attempt = self._attempt
        if not self._relaying or self._kicked or attempt is None or attempt.route is None:
            return None
        return address((attempt.route.host, attempt.route.port))

    def kick(self) -> bool:
        """Close both sockets now, with no goodbye (``authsvc sessions kick``).

        The relayed stream is not parsed, so no line can be added to it
        safely (docs/operations.md, "Ending sessions: what the client
        sees"); queued bytes are dropped.  False when the session was not
        relaying or was kicked already.
        """
        if not self._relaying or self._kicked:
            return False
        self._kicked = True
        self.record.end = "kicked"
        if self._ctx.metrics is not None:
            self._ctx.metrics.kicked(self.record.listener)
        if self._client is not None:
            self._client.abort()
        if self._backend is not None:
            self._backend.abort()
        return True

    @property
    def ended(self) -> bool:
        """True once the session's line is logged (its bytes are in the totals)."""
        return self._ended

    @property
    def relaying(self) -> bool:
        """True from the relay's start to the session's end: no task drives it then."""
        return self._relaying

    def shut_down(self) -> asyncio.Task[None] | None:
        """End a relayed session now, closing both sides after what they queued (a stop).

        Returns a task still to wait for (the relay's zero-copy stage, cancelled).
        """
        return self._relay.stop("shutdown") if self._relay is not None else None

    async def run(self) -> None:
        """Serve the connection until it ends or relays; never raises (except cancellation).

        Once the login succeeded the relay takes over and this returns: the
        relay's end ends the session (:meth:`_relay_ended`), with no task or
        frame kept meanwhile (docs/benchmarks.md, "Proxy").
        """
        self._started = self._started if self._started is not None else self._loop.time()
        try:
            if await self._open():
                # The login's frames (the front machine, its queue) are gone
                # before the relay starts.
                splice = await self._run()
                if splice is not None:
                    self._start_relay(splice)
                    return
        except asyncio.CancelledError:
            self.record.end = self.record.end or "shutdown"
            if not self.logged_in and self._client is not None:
                # Before login only the proxy writes to the client, in whole lines,
                # so a goodbye fits between them (RFC 9051 §7.1.5 BYE; RFC 3206
                # §4 [SYS/TEMP]).  A relayed stream gets none: we do not parse
                # the store's bytes and cannot know where a line ends.
                self._client.write(_SHUTTING_DOWN[self._ctx.listener.protocol])
            self._end()
            raise
        except Exception as exc:
            self._failed(exc)
        self._end()

    def _failed(self, exc: Exception) -> None:
        # A bug must cost one session, not the server; its text stays in our log.
        self.record.result = "error"
        self.record.end = f"error:{type(exc).__name__}"
        log.error("", exc_info=exc, extra={"fields": {"event": "session_error",
                                                       "session": self.record.session}})

    def _relay_ended(self, reason: str, error: Exception | None) -> None:
        if error is not None:
            self._failed(error)
        else:
            self.record.end = "kicked" if self._kicked else reason
        self._end()

    def _end(self) -> None:
        """Close both sides, log the session line, tell the server; once."""
        if self._ended:
            return
        self._ended = True
        self._relaying = False
        self._relay = None
        if self._client is not None:
            self._client.close()
            self.record.bytes_in = self._client.bytes_in
            self.record.bytes_out = self._client.bytes_out
        else:
            self._sock.close()
        if self._backend is not None:
            self._backend.close()
        assert self._started is not None
        self.record.duration = self._loop.time() - self._started
        if self._ctx.session_log is not None:
            # Batched, as serve's decision lines (authsvc/log.py, BatchedLog):
            # one write per batch, not a LogRecord and a write per session.
            self._ctx.session_log.log(logging.INFO, self.record.fields())
        else:
            log.info("", extra={"fields": self.record.fields()})
        if self._on_end is not None:
            self._on_end(self)

    def _trace(self, text: str) -> None:
        if self._tracing:
            log.debug("", extra={"fields": {"event": "trace", "session": self.record.session,
                                            "line": text}})

    async def _open(self) -> bool:
        """The socket as a Channel; on an implicit-TLS listener, after the handshake.

        The handshake is the Channel's own (``proxy/transport.py``), begun before a
        byte is read, so a ClientHello that came in one packet with a
        PROXY header is read from the kernel by the TLS layer (docs/architecture.md).
        """
        ctx = self._ctx
        implicit = ctx.listener.tls is ListenTls.IMPLICIT
        high_water = ctx.proxy.splice_buffer
        try:
            if implicit:
                assert ctx.server_tls is not None, "the server checks TLS listeners have one"
                timeout = self._preauth_timeout()
                if timeout is not None and timeout <= 0:
                    raise TimeoutError("login deadline")
                client = Channel(self._sock, high_water=high_water, tls_context=ctx.server_tls,
                                 loop=self._loop)
                try:
                    await client.handshake(timeout)
                except BaseException:
                    client.abort()
                    raise
                self._client = client
                self.record.tls = "implicit"
            else:
                self._client = Channel(self._sock, high_water=high_water, loop=self._loop)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.record.result = "tls_failed" if implicit else "error"
            self.record.end = (f"tls_failed:{type(exc).__name__}" if implicit
                               else f"error:{type(exc).__name__}")
            if implicit and ctx.metrics is not None:
                ctx.metrics.tls_failure(ctx.listener.name, "client")
            return False
        return True

    def _preauth_timeout(self) -> float | None:
        """The idle ``login_timeout``, cut short by what is left of ``login_deadline``."""
        timeout = self._ctx.listener.login_timeout or None
        deadline = self._ctx.proxy.login_deadline
        if deadline and self._started is not None:
            left = self._started + deadline - self._loop.time()
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    async def _run(self) -> Splice | None:
        """Until the login is done; the relay's command once it succeeded, else None."""
        ctx = self._ctx
        tls_active = self.record.tls == "implicit"
        front: ImapFront | Pop3Front
        if ctx.listener.protocol is MailProtocol.IMAP:
            front = ImapFront(ctx.listener, ctx.proxy, tls_active=tls_active,
                              trace=self._tracing, words=ctx.imap_words)
        else:
            front = Pop3Front(ctx.listener, ctx.proxy, tls_active=tls_active,
                              trace=self._tracing)
        queue: deque[Command] = deque(front.start())
        while True:
            while queue:
                command = queue.popleft()
                if isinstance(command, Splice):
                    return command
                event = await self._apply(command)
                if event is None:
                    continue
                if isinstance(event, _Done):
                    return None
                queue.extend(front.handle(event))
            queue.extend(front.handle(await self._read_client()))

    async def _read_client(self) -> Event:
        assert self._client is not None
        timeout = self._preauth_timeout()
        try:
            data = await self._client.read(max(timeout, 0.0) if timeout is not None else None)
        except TimeoutError:
            idle = self._ctx.listener.login_timeout
            self.record.end = ("login_timeout" if idle and timeout is not None and timeout >= idle
                               else "login_deadline")
            return TimedOut()
        return DataReceived(data) if data else ConnectionClosed()

    async def _apply(self, command: Command) -> Event | _Done | None:
        match command:
            case Send(data=data):
                if self._tracing:  # no repr of every reply when nobody reads it
                    self._trace(f"S: {data[:120]!r}")
                assert self._client is not None
                self._client.write(data)
                if self._close_after_reply:
                    # Past the throttle's hard cap: refuse and close (docs/security.md).
                    self.record.end = "throttled"
                    return _Done()
                return None
            case Trace(text=text):
                self._trace(text)
                return None
            case StartTls():
                return TlsEstablished() if await self._start_tls("starttls") else _Done()
            case Authenticate(credentials=credentials):
                return await self._login(credentials)
            case Splice():
                raise AssertionError("_run hands Splice to run()")
            case Close(reason=reason):
                self.record.end = self.record.end or reason
                return _Done()
            case BackendReady() | BackendFailed():
                raise AssertionError("a front machine emitted a back-machine command")

    async def _start_tls(self, how: str) -> bool:
        context = self._ctx.server_tls
        assert context is not None, "the server checks TLS listeners have a certificate"
        assert self._client is not None
        timeout = self._preauth_timeout()
        try:
            if timeout is not None and timeout <= 0:
                raise TimeoutError("login deadline")
            await self._client.start_tls(context, server_side=True, handshake_timeout=timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.record.result = "tls_failed"
            self.record.end = f"tls_failed:{type(exc).__name__}"
            if self._ctx.metrics is not None:
                self._ctx.metrics.tls_failure(self._ctx.listener.name, "client")
            return False
        self.record.tls = how
        return True

    # --- login ---------------------------------------------------------------------

    async def _login(self, credentials: Credentials) -> LoginSucceeded | LoginFailed:
        self._attempt = LoginAttempt(self._ctx, self.record, self._endpoints,
                                     self._trace if self._tracing else None, self._loop)
        result = await self._attempt.run(credentials)
        if isinstance(result, LoginFailed):
            self._close_after_reply = self._attempt.closes
        elif self._on_login is not None:
            self._on_login()
            self._on_login = None
        return result

    # --- after login -----------------------------------------------------------------

    def _start_relay(self, command: Splice) -> None:
        """Pass on what the login left over and start the relay; it ends the session."""
        backend = self._backend
        assert backend is not None
        assert self._client is not None
        # Store bytes behind its OK go to the client after our OK; client bytes
        # behind LOGIN (the front's, then the Channel's) go to the store in order.
        self._client.write(command.to_client)
        backend.write(command.to_backend + self._client.take_buffered())
        proxy = self._ctx.proxy
        self._relaying = True
        self._relay = Relay(self._client, backend, self._ctx.listener.idle_timeout,
                            on_end=self._relay_ended, zero_copy=proxy.zero_copy,
                            buffer=proxy.splice_buffer)
        self._relay.start()


class _Done:
    """The session is over (internal marker)."""

