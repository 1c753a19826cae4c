"""One login attempt of a session: throttle, route, store login, and its bookkeeping.

One of the few modules that touch the event loop.  :class:`LoginAttempt` asks
the throttle, then the routing core where the login goes (``authsvc.routing``,
never the maps), then logs in at that store (``store.py``), all within
``backend_timeout``.  Whatever happens it counts the attempt in the metrics
and, when ``[proxy] auth_log`` is on, writes Perdition's ``Auth:`` line to
syslog (perdition(8), "LOGGING"; docs/proxy.md, "Perdition's Auth: line for
fail2ban").  A failure also logs one ``event=login_failed`` line, tells the
throttle, and is answered at a deadline from the command, whatever failed:
``proxy.auth_failure_delay``, or as long as the store has recently taken to
refuse this client address if that is longer (``authsvc/throttle/refusals.py``),
so the reply's timing does not tell an unknown user from a wrong password
while the store penalises the address.  A successful login waits for nothing.
What a failure means (reply, count, close, log level) is
``authsvc/failures.py``'s table; the front machine words the reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from authsvc.proxy.authline import perdition_status, secure_name
from authsvc.proxy.context import ListenerContext
from authsvc.proxy.events import Credentials, Endpoints, LoginFailed, LoginSucceeded, to_wire
from authsvc.proxy.imap.back import LOGINDISABLED_REASON
from authsvc.proxy.logline import SessionRecord, address
from authsvc.proxy.store import LoginFailure, StoreLogin
from authsvc.proxy.transport import Channel

from authsvc.failures import FailureKind, Reply
from authsvc.routing import LoginRequest, Refusal, Route

#: The session's logger: a login_failed line belongs with its session's lines.
log = logging.getLogger("proxy.session")


class LoginAttempt:
    """One login attempt, from the command to the reply's deadline."""

    def __init__(self, context: ListenerContext, record: SessionRecord, endpoints: Endpoints,
                 trace: Callable[[str], None] | None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._ctx = context
        self._record = record
        self._endpoints = endpoints
        self._trace = trace
        self._route: Route | None = None
        self._store: StoreLogin | None = None
        #: True once the store accepted the login.
        self.succeeded = False
        #: The failure closes the session once its reply is written.
        self.closes = False

    @property
    def route(self) -> Route | None:
        """Where the routing core sent this attempt (None before, or when it refused)."""
        return self._route

    @property
    def store_security(self) -> str:
        """How the store connection is secured: plaintext, ssl or starttls."""
        return self._store.secure if self._store is not None else "plaintext"

    @property
    def backend(self) -> Channel | None:
        """The store's Channel from connect on; None after a failure (closed)."""
        return self._store.channel if self._store is not None else None

    async def run(self, credentials: Credentials) -> LoginSucceeded | LoginFailed:
        """Log in; a failure returns at its deadline, never raises."""
        loop = self._loop
        started = loop.time()
        deadline = started + self._ctx.proxy.auth_failure_delay
        record = self._record
        record.attempts += 1
        record.login = credentials.login
        record.mechanism = credentials.mechanism
        record.backend = None
        throttle = self._ctx.throttle
        client_ip = self._endpoints.client[0]
        try:
            if throttle is not None and (await throttle.check(client_ip,
                                                              credentials.login)).blocked:
                # Refused even with the right password (docs/security.md); the
                # store never sees the attempt.
                raise LoginFailure(FailureKind.THROTTLED, "throttled")
            async with asyncio.timeout(self._ctx.proxy.backend_timeout):
                result = await self._route_and_login(credentials)
        except LoginFailure as failure:
            kind, reason = failure.kind, failure.reason
        except TimeoutError:
            stage = (self._store.stage if self._store is not None
                     else FailureKind.MAP_UNAVAILABLE)
            kind, reason = stage, f"timed out ({stage.value})"
        else:
            record.result = "ok"
            self.succeeded = True
            if throttle is not None:
                await throttle.succeeded(client_ip, credentials.login)
            if self._ctx.refusal_times is not None:
                await self._ctx.refusal_times.forget(client_ip)
            self._done(credentials, None, "")
            return result
        if self._store is not None:
            self._store.close()
            if kind is FailureKind.BACKEND_CONNECT and self._ctx.metrics is not None:
                # Refused, unreachable or timed out: the store's health (docs/proxy.md).
                self._ctx.metrics.store_connect(self._record.backend or "-", None)
        # What the failure means (authsvc/failures.py) decides the reply, the
        # count, the close and the log level; the front machine words the reply.
        meaning = kind.meaning
        record.result = ("auth_failed" if meaning.reply is Reply.AUTHENTICATION
                         else "temporary_failure")
        times = self._ctx.refusal_times
        if times is not None and meaning.reply is Reply.AUTHENTICATION:
            if kind is FailureKind.BACKEND_AUTH:
                await times.refused(client_ip, loop.time() - started)
            # As long as the store has recently taken to refuse this address,
            # whether this failure reached the store or not (docs/security.md,
            # "User enumeration").
            deadline = max(deadline, started + await times.floor(client_ip))
        self.closes = meaning.closes
        tarpit = 0.0
        if throttle is not None and meaning.counted:
            verdict = await throttle.failed(client_ip, credentials.login, credentials.password)
            if verdict.blocked:
                # This failure reached the cap: its own reply, then the close.
                self.closes = True
                reason = f"{reason}; throttled"
            tarpit = verdict.delay
        log.log(meaning.log_level, "",
                extra={"fields": record.failure_fields(meaning.label, reason)})
        self._done(credentials, kind, reason)
        # The deadline: the same wait for every failure (see module docstring),
        # plus the throttle's tarpit for repeated failures.
        await asyncio.sleep(max(0.0, deadline - loop.time()) + tarpit)
        return LoginFailed(kind)

    def _done(self, credentials: Credentials, kind: FailureKind | None, reason: str) -> None:
        """Metrics, and Perdition's Auth: line, for this attempt."""
        ctx = self._ctx
        if ctx.metrics is not None:
            ctx.metrics.login(ctx.listener.name, kind)
        if ctx.auth_log is None:
            return
        route = self._route
        # No route: Perdition's "(null)" server with the listener's port
        # (docs/proxy.md, "Perdition's Auth: line for fail2ban").
        server = (f"{route.host}:{route.port}" if route is not None
                  else f"(null):{ctx.listener.default_port}")
        ctx.auth_log.record(
            ctx.listener,
            client=self._endpoints.client,
            local=self._endpoints.local,
            client_secure=secure_name(self._record.tls),
            login=to_wire(credentials.login),
            server=server,
            server_secure=self._store.secure if self._store is not None else "plaintext",
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
            attempt=self._record.attempts,
        )
        decision = await self._ctx.router.route(request)
        if isinstance(decision, Refusal):
            raise LoginFailure(decision.kind, decision.reason)
        self._route = decision
        self._record.backend = address((decision.host, decision.port))
        self._record.backend_login = decision.backend_login
        self._store = StoreLogin(self._ctx, decision, self._endpoints, self._trace, self._loop)
        return await self._store.run(credentials)
