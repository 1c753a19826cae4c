"""The session driver: one client connection from accept to close.

One of the few modules that touch the event loop.  It takes the accepted
socket (its PROXY header, if any, already read by the server), makes it a
Channel (on an implicit-TLS listener, with the TLS handshake bounded by
``login_timeout``), runs the client-facing machine (``ImapFront``/``Pop3Front``),
carries out its commands, asks the routing core where a login goes
(``authsvc.routing``, never the maps), runs the store-facing machine
(``ImapBack``/``Pop3Back``) over a second Channel, then hands both to
``splice``.  It logs one ``event=session`` line when the connection ends, one
``event=login_failed`` line per failed attempt and, when ``[proxy] auth_log``
is on, Perdition's ``Auth:`` line per attempt to syslog (perdition(8), LOGGING).

The client's address everywhere (routing, logs, limits, what the store is
told) is :class:`~proxy.events.Endpoints`: the PROXY header's when there was
one, else the socket's.

Failed logins are answered at a fixed deadline from the command
(``proxy.auth_failure_delay``), whatever failed and however long the store
took, so the reply's timing does not tell an unknown user from a wrong
password.  Passwords exist only inside ``Credentials`` as a ``Secret`` and in
``Send(secret=True)`` bytes to the store; neither is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from authsvc.proxy.authline import perdition_status, secure_name
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
    to_wire,
)
from authsvc.proxy.failures import is_auth_failure
from authsvc.proxy.forward import backend_options
from authsvc.proxy.imap.back import LOGINDISABLED_REASON, ImapBack
from authsvc.proxy.imap.front import ImapFront
from authsvc.proxy.logline import SessionRecord, address
from authsvc.proxy.metrics import ProxyMetrics
from authsvc.proxy.pop3.back import Pop3Back
from authsvc.proxy.pop3.front import Pop3Front
from authsvc.proxy.splice import splice
from authsvc.proxy.syslog import AuthLog
from authsvc.proxy.transport import Channel

from authsvc.routing import FailureKind, LoginRequest, Refusal, Route, Router
from authsvc.settings import (
    BackendTls,
    ListenerSettings,
    ListenTls,
    LogSettings,
    MailProtocol,
    ProxySettings,
)
from authsvc.throttle.service import Throttle

log = logging.getLogger("proxy.session")

#: Said to a client that has not logged in when the server shuts down (drain).
_SHUTTING_DOWN = {
    MailProtocol.IMAP: b"* BYE [UNAVAILABLE] Server shutting down, try again later.\r\n",
    MailProtocol.POP3: b"-ERR [SYS/TEMP] Server shutting down, try again later.\r\n",
}


@dataclass(frozen=True, slots=True)
class ListenerContext:
    """Everything a session of one listener needs, built once by the server."""

    listener: ListenerSettings
    proxy: ProxySettings
    log: LogSettings
    router: Router
    #: The listener's certificate, for STARTTLS and implicit TLS; None = no TLS.
    server_tls: ssl.SSLContext | None
    #: How we check stores' certificates; None when no listener talks TLS to stores.
    backend_tls: ssl.SSLContext | None
    #: Perdition's Auth: line to syslog, when ``[proxy] auth_log`` is on.
    auth_log: AuthLog | None = None
    metrics: ProxyMetrics | None = None
    #: Brute-force throttling (docs/security.md); None = off.
    throttle: Throttle | None = None


class _LoginFailure(Exception):
    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


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
        started: float | None = None,
    ) -> None:
        self._ctx = context
        self._sock = sock
        self._client: Channel | None = None
        self._backend: Channel | None = None
        self._endpoints = endpoints
        self._on_login = on_login
        #: What a timeout during login means: map, connect or store dialogue.
        self._stage = FailureKind.MAP_UNAVAILABLE
        self._route: Route | None = None
        self._backend_secure = "plaintext"
        listener = context.listener
        self.record = SessionRecord(
            session=number,
            listener=listener.name,
            protocol=listener.protocol.value,
            client=address(endpoints.client),
            local=address(endpoints.local),
            via=address(via) if via is not None else None,
        )
        #: True once the store accepted the login (the server drains these on stop).
        self.logged_in = False
        self._tracing = context.log.connection_logging and log.isEnabledFor(logging.DEBUG)
        #: Loop time the connection was accepted (login_deadline counts from it).
        self._started = started
        #: The throttle refused this client: close once the refusal is written.
        self._close_after_reply = False

    @property
    def client(self) -> Channel | None:
        """The client's Channel once the connection is set up (for byte counts)."""
        return self._client

    async def run(self) -> None:
        """Serve the connection until it ends; never raises (except cancellation)."""
        loop = asyncio.get_running_loop()
        started = self._started if self._started is not None else loop.time()
        self._started = started
        try:
            if await self._open():
                await self._run()
        except asyncio.CancelledError:
            self.record.end = self.record.end or "shutdown"
            if not self.logged_in and self._client is not None:
                # Before login only the proxy writes to the client, in whole lines,
                # so a goodbye fits between them (RFC 9051 §7.1.5 BYE; RFC 3206
                # §4 [SYS/TEMP]).  A relayed stream gets none: we do not parse
                # the store's bytes and cannot know where a line ends.
                self._client.write(_SHUTTING_DOWN[self._ctx.listener.protocol])
            raise
        except Exception as exc:
            # A bug must cost one session, not the server; its text stays in our log.
            self.record.result = "error"
            self.record.end = f"error:{type(exc).__name__}"
            log.exception("", extra={"fields": {"event": "session_error",
                                                "session": self.record.session}})
        finally:
            if self._client is not None:
                self._client.close()
                self.record.bytes_in = self._client.bytes_in
                self.record.bytes_out = self._client.bytes_out
            else:
                self._sock.close()
            if self._backend is not None:
                self._backend.close()
            self.record.duration = loop.time() - started
            log.info("", extra={"fields": self.record.fields()})

    def _trace(self, text: str) -> None:
        if self._tracing:
            log.debug("", extra={"fields": {"event": "trace", "session": self.record.session,
                                            "line": text}})

    async def _open(self) -> bool:
        """The socket as a Channel; on an implicit-TLS listener, after the handshake.

        The handshake is the Channel's own (``proxy/tls.py``), begun before the
        transport reads a byte, so a ClientHello that came in one packet with a
        PROXY header is read from the kernel by the TLS layer (docs/architecture.md).
        """
        ctx = self._ctx
        implicit = ctx.listener.tls is ListenTls.IMPLICIT
        high_water = ctx.proxy.splice_buffer
        loop = asyncio.get_running_loop()
        try:
            if implicit:
                assert ctx.server_tls is not None, "the server checks TLS listeners have one"
                timeout = self._preauth_timeout()
                if timeout is not None and timeout <= 0:
                    raise TimeoutError("login deadline")
                context = ctx.server_tls
                _, client = await loop.connect_accepted_socket(
                    lambda: Channel(high_water=high_water, tls_context=context), self._sock)
                try:
                    await client.handshake(timeout)
                except BaseException:
                    client.abort()
                    raise
                self._client = client
                self.record.tls = "implicit"
            else:
                _, self._client = await loop.connect_accepted_socket(
                    lambda: Channel(high_water=high_water), self._sock)
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
            left = self._started + deadline - asyncio.get_running_loop().time()
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    async def _run(self) -> None:
        ctx = self._ctx
        tls_active = self.record.tls == "implicit"
        front: ImapFront | Pop3Front
        if ctx.listener.protocol is MailProtocol.IMAP:
            front = ImapFront(ctx.listener, ctx.proxy, tls_active=tls_active)
        else:
            front = Pop3Front(ctx.listener, ctx.proxy, tls_active=tls_active)
        queue: deque[Command] = deque(front.start())
        while True:
            while queue:
                command = queue.popleft()
                event = await self._apply(command)
                if event is None:
                    continue
                if isinstance(event, _Done):
                    return
                queue.extend(front.handle(event))
            queue.extend(front.handle(await self._read_client()))

    async def _read_client(self) -> Event:
        assert self._client is not None
        timeout = self._preauth_timeout()
        try:
            async with asyncio.timeout(max(timeout, 0.0) if timeout is not None else None):
                data = await self._client.read()
        except TimeoutError:
            idle = self._ctx.listener.login_timeout
            self.record.end = ("login_timeout" if idle and timeout is not None and timeout >= idle
                               else "login_deadline")
            return TimedOut()
        return DataReceived(data) if data else ConnectionClosed()

    async def _apply(self, command: Command) -> Event | _Done | None:
        match command:
            case Send(data=data):
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
                await self._splice(command)
                return _Done()
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ctx.proxy.auth_failure_delay
        record = self.record
        record.attempts += 1
        record.login = credentials.login
        record.mechanism = credentials.mechanism
        record.backend = None
        self._route = None
        self._backend_secure = "plaintext"
        throttle = self._ctx.throttle
        client_ip = self._endpoints.client[0]
        try:
            if throttle is not None and (await throttle.check(client_ip,
                                                              credentials.login)).blocked:
                # Refused even with the right password, in the words of any
                # refusal, and the store never sees the attempt.
                self._close_after_reply = True
                raise _LoginFailure(FailureKind.BACKEND_AUTH, "throttled")
            async with asyncio.timeout(self._ctx.proxy.backend_timeout):
                result = await self._route_and_login(credentials)
        except _LoginFailure as failure:
            kind, reason = failure.kind, failure.reason
        except TimeoutError:
            kind, reason = self._stage, f"timed out ({self._stage.value})"
        else:
            record.result = "ok"
            self.logged_in = True
            if throttle is not None:
                await throttle.succeeded(client_ip, credentials.login)
            self._attempt_done(credentials, None, "")
            if self._on_login is not None:
                self._on_login()
            return result
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        record.result = "auth_failed" if is_auth_failure(kind) else "temporary_failure"
        tarpit = 0.0
        if throttle is not None and is_auth_failure(kind) and not self._close_after_reply:
            # Only refused logins count; a store or map that is down never does.
            verdict = await throttle.failed(client_ip, credentials.login, credentials.password)
            if verdict.blocked:
                self._close_after_reply = True
                reason = f"{reason}; throttled"
            tarpit = verdict.delay
        log.info("", extra={"fields": record.failure_fields(kind.value, reason)})
        self._attempt_done(credentials, kind, reason)
        # The fixed deadline: the same wait for every failure (see module
        # docstring), plus the throttle's tarpit for repeated failures.
        await asyncio.sleep(max(0.0, deadline - loop.time()) + tarpit)
        return LoginFailed(kind)

    def _attempt_done(self, credentials: Credentials, kind: FailureKind | None,
                      reason: str) -> None:
        """Metrics, and Perdition's Auth: line, for one login attempt."""
        ctx = self._ctx
        if ctx.metrics is not None:
            ctx.metrics.login(ctx.listener.name, kind)
        if ctx.auth_log is None:
            return
        route = self._route
        server = (f"{route.host}:{route.port}" if route is not None
                  else f"(null):{ctx.listener.default_port}")  # as Perdition logs it
        ctx.auth_log.record(
            ctx.listener,
            client=self._endpoints.client,
            local=self._endpoints.local,
            client_secure=secure_name(self.record.tls),
            login=to_wire(credentials.login),
            server=server,
            server_secure=self._backend_secure,
            status=perdition_status(kind, login_disabled=reason.endswith(LOGINDISABLED_REASON)),
        )

    async def _route_and_login(self, credentials: Credentials) -> LoginSucceeded:
        listener = self._ctx.listener
        request = LoginRequest(
            login=credentials.login,
            protocol=listener.protocol,
            listener=listener.name,
            client_ip=self._endpoints.client[0],
            local_name=self._endpoints.local[0],
            attempt=self.record.attempts,
        )
        self._stage = FailureKind.MAP_UNAVAILABLE
        decision = await self._ctx.router.route(request)
        if isinstance(decision, Refusal):
            raise _LoginFailure(decision.kind, decision.reason)
        return await self._backend_login(decision, credentials)

    def _store_tls_failed(self, exc: BaseException) -> _LoginFailure:
        if self._ctx.metrics is not None:
            self._ctx.metrics.tls_failure(self._ctx.listener.name, "store")
        return _LoginFailure(FailureKind.BACKEND_PROTOCOL, f"store TLS: {exc}")

    async def _backend_login(self, route: Route, credentials: Credentials) -> LoginSucceeded:
        self._route = route
        self.record.backend = address((route.host, route.port))
        self.record.backend_login = route.backend_login
        implicit = route.backend_tls is BackendTls.IMPLICIT
        context = self._ctx.backend_tls if route.backend_tls is not BackendTls.NONE else None
        if route.backend_tls is not BackendTls.NONE and context is None:
            raise _LoginFailure(FailureKind.BACKEND_CONNECT, "no TLS context for the store")
        forward, tls_name = backend_options(self._ctx.proxy, route.host, route.port)
        # The name the certificate must carry: a configured one (maps that give
        # IP addresses), else the map's host (as Perdition's perdition/ssl.c).
        server_hostname = tls_name or route.host
        loop = asyncio.get_running_loop()
        high_water = self._ctx.proxy.splice_buffer
        self._stage = FailureKind.BACKEND_CONNECT
        try:
            _, backend = await loop.create_connection(
                lambda: Channel(high_water=high_water, tls=implicit),
                route.host,
                route.port,
                ssl=context if implicit else None,
                server_hostname=server_hostname if implicit else None,
            )
        except ssl.SSLError as exc:
            raise self._store_tls_failed(exc) from None
        except OSError as exc:
            raise _LoginFailure(FailureKind.BACKEND_CONNECT, f"connect: {exc}") from None
        self._backend = backend
        if implicit:
            self._backend_secure = "ssl"
        self._stage = FailureKind.BACKEND_PROTOCOL
        machine: ImapBack | Pop3Back
        if self._ctx.listener.protocol is MailProtocol.IMAP:
            machine = ImapBack(route.backend_login, credentials.password, route.backend_tls,
                               tls_active=implicit, forward=forward, endpoints=self._endpoints)
        else:
            machine = Pop3Back(route.backend_login, credentials.password, route.backend_tls,
                               tls_active=implicit, forward=forward, endpoints=self._endpoints)
        queue: deque[Command] = deque(machine.start())
        while True:
            while queue:
                command = queue.popleft()
                match command:
                    case Send(data=data, secret=secret):
                        self._trace(f"B: ({len(data)} bytes, login)" if secret
                                    else f"B: {data[:120]!r}")
                        backend.write(data)
                    case StartTls():
                        assert context is not None
                        if backend.take_buffered():
                            # Plaintext behind the store's STARTTLS OK is
                            # response injection (RFC 2595 §3.1).
                            queue.extend(machine.handle(DataReceived(b"injected")))
                            continue
                        try:
                            await backend.start_tls(context, server_side=False,
                                                    server_hostname=server_hostname)
                        except (OSError, ssl.SSLError) as exc:
                            raise self._store_tls_failed(exc) from None
                        self._backend_secure = "starttls"
                        queue.extend(machine.handle(TlsEstablished()))
                    case BackendReady(result=result):
                        return result
                    case BackendFailed(kind=kind, reason=reason):
                        raise _LoginFailure(kind, reason)
                    case _:
                        raise AssertionError(f"unexpected back-machine command {command!r}")
            data = await backend.read()
            event: Event = DataReceived(data) if data else ConnectionClosed()
            queue.extend(machine.handle(event))

    # --- after login -----------------------------------------------------------------

    async def _splice(self, command: Splice) -> None:
        backend = self._backend
        assert backend is not None
        assert self._client is not None
        # Store bytes behind its OK go to the client after our OK; client bytes
        # behind LOGIN (the front's, then the Channel's) go to the store in order.
        self._client.write(command.to_client)
        backend.write(command.to_backend + self._client.take_buffered())
        self.record.end = await splice(self._client, backend, self._ctx.listener.idle_timeout)


class _Done:
    """The session is over (internal marker)."""

