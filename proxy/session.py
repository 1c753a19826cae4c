"""The session driver: one client connection from accept to close.

One of the few modules that touch the event loop.  It runs the client-facing
machine (``ImapFront``/``Pop3Front``), carries out its commands, asks the
routing core where a login goes (``authsvc.routing``, never the maps), runs the
store-facing machine (``ImapBack``/``Pop3Back``) over a second Channel, then
hands both to ``splice``.  It logs one ``event=session`` line when the
connection ends, and one ``event=login_failed`` line per failed attempt.

Failed logins are answered at a fixed deadline from the command
(``proxy.auth_failure_delay``), whatever failed and however long the store
took, so the reply's timing does not tell an unknown user from a wrong
password.  Passwords exist only inside ``Credentials`` as a ``Secret`` and in
``Send(secret=True)`` bytes to the store; neither is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from dataclasses import dataclass

from authsvc.routing import FailureKind, LoginRequest, Refusal, Route, Router
from authsvc.settings import (
    BackendTls,
    ListenerSettings,
    ListenTls,
    LogSettings,
    MailProtocol,
    ProxySettings,
)
from proxy.events import (
    Authenticate,
    BackendFailed,
    BackendReady,
    Close,
    Command,
    ConnectionClosed,
    Credentials,
    DataReceived,
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
from proxy.failures import is_auth_failure
from proxy.imap.back import ImapBack
from proxy.imap.front import ImapFront
from proxy.logline import SessionRecord, address
from proxy.pop3.back import Pop3Back
from proxy.pop3.front import Pop3Front
from proxy.splice import splice
from proxy.transport import Channel

log = logging.getLogger("proxy.session")


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


class _LoginFailure(Exception):
    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Session:
    """One client connection."""

    def __init__(self, context: ListenerContext, client: Channel, number: int) -> None:
        self._ctx = context
        self._client = client
        self._backend: Channel | None = None
        #: What a timeout during login means: map, connect or store dialogue.
        self._stage = FailureKind.MAP_UNAVAILABLE
        listener = context.listener
        self.record = SessionRecord(
            session=number,
            listener=listener.name,
            protocol=listener.protocol.value,
            client=address(client.peer()),
            local=address(client.local()),
        )
        #: True once the store accepted the login (the server drains these on stop).
        self.logged_in = False
        self._tracing = context.log.connection_logging and log.isEnabledFor(logging.DEBUG)

    async def run(self) -> None:
        """Serve the connection until it ends; never raises (except cancellation)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._run()
        except asyncio.CancelledError:
            self.record.end = self.record.end or "shutdown"
            raise
        except Exception as exc:
            # A bug must cost one session, not the server; its text stays in our log.
            self.record.result = "error"
            self.record.end = f"error:{type(exc).__name__}"
            log.exception("", extra={"fields": {"event": "session_error",
                                                "session": self.record.session}})
        finally:
            self._client.close()
            if self._backend is not None:
                self._backend.close()
            self.record.bytes_in = self._client.bytes_in
            self.record.bytes_out = self._client.bytes_out
            self.record.duration = loop.time() - started
            log.info("", extra={"fields": self.record.fields()})

    def _trace(self, text: str) -> None:
        if self._tracing:
            log.debug("", extra={"fields": {"event": "trace", "session": self.record.session,
                                            "line": text}})

    async def _run(self) -> None:
        ctx = self._ctx
        tls_active = False
        if ctx.listener.tls is ListenTls.IMPLICIT:
            if not await self._start_tls("implicit"):
                return
            tls_active = True
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
        timeout = self._ctx.listener.login_timeout or None
        try:
            async with asyncio.timeout(timeout):
                data = await self._client.read()
        except TimeoutError:
            self.record.end = "login_timeout"
            return TimedOut()
        return DataReceived(data) if data else ConnectionClosed()

    async def _apply(self, command: Command) -> Event | _Done | None:
        match command:
            case Send(data=data):
                self._trace(f"S: {data[:120]!r}")
                self._client.write(data)
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
        timeout = self._ctx.listener.login_timeout or None
        try:
            await self._client.start_tls(context, server_side=True, handshake_timeout=timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.record.result = "tls_failed"
            self.record.end = f"tls_failed:{type(exc).__name__}"
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
        try:
            async with asyncio.timeout(self._ctx.proxy.backend_timeout):
                result = await self._route_and_login(credentials)
        except _LoginFailure as failure:
            kind, reason = failure.kind, failure.reason
        except TimeoutError:
            kind, reason = self._stage, f"timed out ({self._stage.value})"
        else:
            record.result = "ok"
            self.logged_in = True
            return result
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        record.result = "auth_failed" if is_auth_failure(kind) else "temporary_failure"
        log.info("", extra={"fields": record.failure_fields(kind.value, reason)})
        # The fixed deadline: the same wait for every failure (see module docstring).
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        return LoginFailed(kind)

    async def _route_and_login(self, credentials: Credentials) -> LoginSucceeded:
        listener = self._ctx.listener
        peer = self._client.peer()
        local = self._client.local()
        request = LoginRequest(
            login=credentials.login,
            protocol=listener.protocol,
            listener=listener.name,
            client_ip=str(peer[0]) if isinstance(peer, tuple) else None,
            local_name=str(local[0]) if isinstance(local, tuple) else None,
            attempt=self.record.attempts,
        )
        self._stage = FailureKind.MAP_UNAVAILABLE
        decision = await self._ctx.router.route(request)
        if isinstance(decision, Refusal):
            raise _LoginFailure(decision.kind, decision.reason)
        return await self._backend_login(decision, credentials)

    async def _backend_login(self, route: Route, credentials: Credentials) -> LoginSucceeded:
        self.record.backend = address((route.host, route.port))
        self.record.backend_login = route.backend_login
        implicit = route.backend_tls is BackendTls.IMPLICIT
        context = self._ctx.backend_tls if route.backend_tls is not BackendTls.NONE else None
        if route.backend_tls is not BackendTls.NONE and context is None:
            raise _LoginFailure(FailureKind.BACKEND_CONNECT, "no TLS context for the store")
        loop = asyncio.get_running_loop()
        high_water = self._ctx.proxy.splice_buffer
        self._stage = FailureKind.BACKEND_CONNECT
        try:
            _, backend = await loop.create_connection(
                lambda: Channel(high_water=high_water, tls=implicit),
                route.host,
                route.port,
                ssl=context if implicit else None,
                server_hostname=route.host if implicit else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise _LoginFailure(FailureKind.BACKEND_CONNECT, f"connect: {exc}") from None
        self._backend = backend
        self._stage = FailureKind.BACKEND_PROTOCOL
        machine: ImapBack | Pop3Back
        if self._ctx.listener.protocol is MailProtocol.IMAP:
            machine = ImapBack(route.backend_login, credentials.password, route.backend_tls,
                               tls_active=implicit)
        else:
            machine = Pop3Back(route.backend_login, credentials.password, route.backend_tls,
                               tls_active=implicit)
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
                                                    server_hostname=route.host)
                        except (OSError, ssl.SSLError) as exc:
                            raise _LoginFailure(FailureKind.BACKEND_PROTOCOL,
                                                f"store TLS: {exc}") from None
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
        # Store bytes behind its OK go to the client after our OK; client bytes
        # behind LOGIN (the front's, then the Channel's) go to the store in order.
        self._client.write(command.to_client)
        backend.write(command.to_backend + self._client.take_buffered())
        self.record.end = await splice(self._client, backend, self._ctx.listener.idle_timeout)


class _Done:
    """The session is over (internal marker)."""

