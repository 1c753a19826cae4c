"""The proxy's listeners and live sessions in one process: accept, admit, serve, reload, drain.

One of the few modules that touch the event loop.  Each listening socket is
watched with ``loop.add_reader`` and accepted here, as raw sockets
(``authsvc/runtime/accepting.py``), so that a listener behind HAProxy can read
its PROXY header before asyncio's transport (and its TLS layer) touch the
connection (``accept.py``).  Then:

* a PROXY listener closes peers outside its trusted networks at once, and
  connections whose header is malformed or late, without a greeting
  (HAProxy's ``doc/proxy-protocol.txt``, section 5, "Security considerations");
* ``limits.py`` decides the limits: the descriptor headroom, ``connection_limit``
  per listener and ``preauth_limit`` when the connection arrives,
  ``client_limit`` and ``client_preauth_limit`` once the real client address
  is known (after the PROXY header; ``[proxy] trusted`` networks and the
  listener's PROXY senders are exempt).  The extra client is told ``* BYE
  [UNAVAILABLE] ...`` / ``-ERR [SYS/TEMP] ...`` (nothing on an implicit-TLS
  listener, where no plaintext may be sent) and the listener keeps serving,
  where Perdition's listener exited (docs/configuration.md, "Other differences
  from Perdition").  Refusals and failed accepts are logged at most once a
  second per listener and reason (``lograte.py``), and only a bounded number
  of refused sockets linger to say goodbye (``accept.py``);
* the connection becomes a :class:`Session`.

:meth:`ProxyServer.reconfigure` gives new sessions a reload's settings, maps
and certificates; live ones keep theirs.  :meth:`ProxyServer.stop` stops
accepting, says BYE / ``-ERR`` to sessions that have not logged in and closes
them, gives logged-in ones ``drain_timeout`` seconds, then closes the rest
without a word: a relay does not parse the store's stream, so it cannot know
where a line ends.  ``run.py`` runs it for the life of a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import resource
import socket
from collections import Counter

from authsvc.proxy.accept import read_proxy_header, refuse, refuse_now
from authsvc.proxy.certificates import backend_tls_for, server_tls_context
from authsvc.proxy.context import ListenerContext
from authsvc.proxy.events import Endpoints
from authsvc.proxy.imap.front import ImapFront
from authsvc.proxy.limits import (
    CLIENT_REFUSALS,
    Admission,
    DescriptorBudget,
    IPNetwork,
    Refused,
    Ticket,
    in_networks,
    parse_networks,
)
from authsvc.proxy.listeners import ListenerSockets, bind_listener
from authsvc.proxy.lograte import LogRate
from authsvc.proxy.metrics import ProxyMetrics
from authsvc.proxy.proxy_protocol import ProxyProtocolError
from authsvc.proxy.session import Session
from authsvc.proxy.syslog import AuthLog

from authsvc.log import BatchedLog
from authsvc.metrics import Metrics
from authsvc.routing import Router
from authsvc.runtime.accepting import accept_batch
from authsvc.runtime.binding import describe_socket, inet_address
from authsvc.runtime.loop import loop_name
from authsvc.settings import ListenerSettings, ListenTls, MailProtocol, Settings
from authsvc.throttle.service import Throttle

log = logging.getLogger("proxy.server")

_BUSY = {
    MailProtocol.IMAP: b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n",
    MailProtocol.POP3: b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n",
}
_CLIENT_BUSY = {
    MailProtocol.IMAP: b"* BYE [UNAVAILABLE] Too many connections from your address, "
                       b"try again later.\r\n",
    MailProtocol.POP3: b"-ERR [SYS/TEMP] Too many connections from your address, "
                       b"try again later.\r\n",
}
#: Connections accepted per wake-up of a listening socket (asyncio's own default).
ACCEPT_BATCH = 100
#: Out of file descriptors: stop accepting on that socket this long.
ACCEPT_PAUSE = 0.1
#: How often the gauges and byte counters are copied into the metrics.
METRICS_EVERY = 1.0
#: Taken as the descriptor limit when the soft limit is "unlimited".
UNLIMITED_DESCRIPTORS = 1 << 20


def _fixed_local(sock: socket.socket) -> tuple[str, int] | None:
    """The listening socket's address when it is one address, not a wildcard."""
    try:
        host, port = inet_address(sock.getsockname())
    except (OSError, ValueError):
        return None
    return None if host in ("0.0.0.0", "::") else (host, port)


def descriptor_limit() -> int:
    """The process's descriptor limit now (``RLIMIT_NOFILE``, soft)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_DESCRIPTORS if soft == resource.RLIM_INFINITY else soft



def _imap_words(listener: ListenerSettings) -> tuple[str, ...] | None:
    """An IMAP listener's capability words, once for all its sessions."""
    if listener.protocol is MailProtocol.IMAP:
        return ImapFront.operator_words(listener)
    return None

class ProxyServer:
    """The listeners and the live sessions of one ``authsvc proxy`` process."""

    def __init__(
        self,
        settings: Settings,
        router: Router,
        *,
        metrics: Metrics | None = None,
        auth_log: AuthLog | None = None,
        throttle: Throttle | None = None,
        descriptors: int | None = None,
    ) -> None:
        """``descriptors``: the descriptor limit to plan for; None = the process's now."""
        self._settings = settings
        self._throttle = throttle if throttle is not None and throttle.enabled else None
        # The store's refusal times, kept whether throttling is on or not.
        self._refusal_times = throttle.refusals if throttle is not None else None
        self._router = router
        self._metrics = ProxyMetrics(metrics) if metrics is not None else None
        self._auth_log = auth_log
        self._budget = DescriptorBudget(
            descriptors if descriptors is not None else descriptor_limit())
        self._admission = Admission(
            settings.proxy, {ls.name: ls.connection_limit for ls in settings.listeners},
            self._budget)
        self._listening: dict[str, list[socket.socket]] = {}
        #: Per listening socket (descriptor): its address when bound to one,
        #: which every connection it accepts has as its local end; None on a
        #: wildcard address, where each connection is asked (getsockname).
        self._local_of: dict[int, tuple[str, int] | None] = {}
        #: Listening sockets (descriptors) paused after EMFILE, until _resume_accepting.
        self._paused: set[int] = set()
        self._contexts: dict[str, ListenerContext] = {}
        #: Per listener: who may send PROXY headers, who skips the per-address limits.
        self._trusted: dict[str, tuple[IPNetwork, ...]] = {}
        self._exempt: dict[str, tuple[IPNetwork, ...]] = {}
        self._log_rate = LogRate()
        #: Every connection a task serves (until login and the relay's start);
        #: the Session once there is one.
        self._tasks: dict[asyncio.Task[None], Session | None] = {}
        #: Sessions relaying with no task: the relay's callbacks end them.
        self._relays: set[Session] = set()
        #: Resolved when no session is left (a stop's drain waits on it).
        self._quiet: asyncio.Future[None] | None = None
        self._refusals: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count(1)
        self._bytes: Counter[tuple[str, str]] = Counter()  # from ended sessions
        self._refresher: asyncio.Task[None] | None = None
        self._stopping = False
        #: The session lines of every listener, written together per pass of the
        #: loop (no delay: a watcher sees a session's line as soon as it ended).
        self._session_log = BatchedLog(logging.getLogger("proxy.session"), "session.py",
                                       delay=0.0)

    async def start(self, sockets: ListenerSockets | None = None) -> None:
        """Listen on every listener (on ``sockets`` when given, for workers).

        Raises ProxyConfigError, ListenError or OSError when one cannot listen.
        """
        settings = self._settings
        backend_tls = backend_tls_for(settings)
        loop = asyncio.get_running_loop()
        try:
            for listener in settings.listeners:
                context = ListenerContext(
                    listener=listener,
                    proxy=settings.proxy,
                    log=settings.log,
                    router=self._router,
                    server_tls=server_tls_context(listener),
                    backend_tls=backend_tls,
                    auth_log=self._auth_log,
                    metrics=self._metrics,
                    throttle=self._throttle,
                    refusal_times=self._refusal_times,
                    session_log=self._session_log,
                    imap_words=_imap_words(listener),
                )
                self._contexts[listener.name] = context
                self._set_networks(settings, listener)
                given = sockets.get(listener.name) if sockets is not None else None
                for sock in given if given is not None else bind_listener(listener):
                    self._listening.setdefault(listener.name, []).append(sock)
                    self._local_of[sock.fileno()] = _fixed_local(sock)
                    sock.setblocking(False)
                    loop.add_reader(sock.fileno(), self._accept_ready, context, sock)
                    log.info("", extra={"fields": {
                        "event": "listening", "listener": listener.name,
                        "protocol": listener.protocol.value, "tls": listener.tls.value,
                        "proxy_protocol": listener.proxy_protocol,
                        "on": describe_socket(sock)}})
        except BaseException:
            await self.stop(0)
            raise
        self._log_limits(settings)
        if self._metrics is not None:
            self.refresh_metrics()
            self._refresher = loop.create_task(self._refresh_periodically())

    def _set_networks(self, settings: Settings, listener: ListenerSettings) -> None:
        senders = parse_networks(listener.proxy_protocol_from
                                 or settings.proxy.proxy_protocol_from)
        self._trusted[listener.name] = senders
        # A balancer's own connections (its health checks' LOCAL headers) are
        # not a client's; docs/proxy.md, "Limits".
        self._exempt[listener.name] = (parse_networks(settings.proxy.trusted)
                                       + (senders if listener.proxy_protocol else ()))

    def _log_limits(self, settings: Settings) -> None:
        proxy = settings.proxy
        log.info("", extra={"fields": {
            "event": "limits", "descriptors": self._budget.limit,
            "headroom": self._budget.headroom,
            "preauth_limit": self._admission.preauth_limit,
            "preauth_limit_from": "descriptors" if proxy.preauth_limit is None else "config",
            "client_preauth_limit": proxy.client_preauth_limit,
            "client_limit": proxy.client_limit, "login_deadline": proxy.login_deadline,
            # The event loop (authsvc/runtime/loop.py): uvloop when the extra is installed.
            "loop": loop_name()}})

    def addresses(self, listener: str) -> list[tuple[str, int]]:
        """Where a listener is bound (host, port), for tests and logs."""
        return [inet_address(sock.getsockname()) for sock in self._listening.get(listener, [])]

    @property
    def sessions(self) -> int:
        """Connections being served (pre-login ones included)."""
        return len(self._tasks) + len(self._relays)

    def relayed(self) -> list[Session]:
        """The sessions of this process, oldest first (``authsvc sessions``; the
        list skips those that do not relay)."""
        return sorted(self._live(), key=lambda session: session.record.session)

    def _live(self) -> list[Session]:
        return [session for session in self._tasks.values()
                if session is not None] + list(self._relays)

    @property
    def admission(self) -> Admission:
        return self._admission

    # --- accepting ----------------------------------------------------------------

    def _accept_ready(self, context: ListenerContext, listening: socket.socket) -> None:
        local = self._local_of.get(listening.fileno())

        def accepted(conn: socket.socket, peer: object) -> None:
            conn.setblocking(False)
            self._accepted(context, conn, inet_address(peer), local)

        exhausted = accept_batch(listening, ACCEPT_BATCH, accepted)
        if exhausted is not None:
            # Out of descriptors all the same (the headroom was eaten by stores
            # and maps): pause this socket briefly rather than spin.
            loop = asyncio.get_running_loop()
            held = self._log_rate.allow(("accept_failed", context.listener.name), loop.time())
            if held is not None:
                log.error("", extra={"fields": {"event": "accept_failed",
                                                "listener": context.listener.name,
                                                "error": exhausted.strerror,
                                                "suppressed": held}})
            loop.remove_reader(listening.fileno())
            self._paused.add(listening.fileno())
            loop.call_later(ACCEPT_PAUSE, self._resume_accepting, context, listening)

    def _resume_accepting(self, context: ListenerContext, listening: socket.socket) -> None:
        self._paused.discard(listening.fileno())
        if not self._stopping and listening.fileno() >= 0:
            context = self._contexts.get(context.listener.name, context)  # a reload's
            asyncio.get_running_loop().add_reader(
                listening.fileno(), self._accept_ready, context, listening)

    def _accepted(self, context: ListenerContext, conn: socket.socket,
                  peer: tuple[str, int], local: tuple[str, int] | None = None) -> None:
        listener = context.listener
        if self._metrics is not None:
            self._metrics.connection(listener.name)
        if self._stopping:
            conn.close()
            return
        if listener.proxy_protocol and not in_networks(peer[0], self._trusted[listener.name]):
            # Anyone else could claim any address (proxy-protocol.txt, section 5).
            self._note_refusal(context, "proxy_untrusted", peer)
            conn.close()
            return
        if self._budget.near(conn.fileno()):
            # Say so while a descriptor is still free, rather than fail accept()
            # later and leave every client in the backlog (docs/proxy.md, "Limits").
            self._refuse(context, conn, Refused.DESCRIPTORS, peer)
            return
        ticket = self._admission.connect(listener.name)
        if isinstance(ticket, Refused):
            self._refuse(context, conn, ticket, peer)
            return
        task = asyncio.get_running_loop().create_task(
            self._serve(context, conn, peer, ticket, local))
        self._tasks[task] = None
        task.add_done_callback(self._served)

    def _note_refusal(self, context: ListenerContext, reason: str, peer: tuple[str, int],
                      detail: str | None = None) -> None:
        name = context.listener.name
        if self._metrics is not None:
            self._metrics.refused(name, reason)
        held = self._log_rate.allow((name, reason), asyncio.get_running_loop().time())
        if held is None:
            return
        fields: dict[str, object] = {"event": "refused", "listener": name,
                                     "reason": reason, "peer": f"{peer[0]}:{peer[1]}"}
        if detail:
            fields["detail"] = detail
        if held:
            fields["suppressed"] = held
        log.warning("", extra={"fields": fields})

    def _refuse(self, context: ListenerContext, conn: socket.socket, why: Refused,
                peer: tuple[str, int]) -> None:
        self._note_refusal(context, why.value, peer)
        listener = context.listener
        line = b""
        if listener.tls is not ListenTls.IMPLICIT:  # no plaintext before a TLS handshake
            line = (_CLIENT_BUSY if why in CLIENT_REFUSALS else _BUSY)[listener.protocol]
        if (why is Refused.DESCRIPTORS or self._budget.near(conn.fileno())
                or len(self._refusals) >= self._budget.headroom // 2):
            refuse_now(conn, line)  # no descriptor to spare for a goodbye
            return
        task = asyncio.get_running_loop().create_task(refuse(conn, line))
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    async def _serve(self, context: ListenerContext, conn: socket.socket,
                     peer: tuple[str, int], ticket: Ticket,
                     local: tuple[str, int] | None = None) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        listener = context.listener
        handed_over = False  # the socket is someone else's to close
        served = False  # the session releases the ticket when it ends
        try:
            client = peer
            if local is None:
                local = inet_address(conn.getsockname())
            via: tuple[str, int] | None = None
            if listener.proxy_protocol:
                try:
                    async with asyncio.timeout(self._settings.proxy.proxy_protocol_timeout):
                        header = await read_proxy_header(conn)
                except (ProxyProtocolError, TimeoutError, OSError) as exc:
                    self._note_refusal(context, "proxy_invalid", peer,
                                       str(exc) or type(exc).__name__)
                    return
                via = peer
                if header.source is not None and header.destination is not None:
                    client, local = header.source, header.destination
            refused = self._admission.identify(
                ticket, client[0], exempt=in_networks(client[0], self._exempt[listener.name]))
            if refused is not None:
                handed_over = True
                self._refuse(context, conn, refused, client)
                return
            session = Session(context, conn, next(self._numbers),
                              endpoints=Endpoints(client, local), via=via,
                              on_login=lambda: self._admission.login(ticket),
                              on_end=self._session_ended, ticket=ticket, started=accepted)
            handed_over = served = True
            task = asyncio.current_task()
            if task is not None and task in self._tasks:
                self._tasks[task] = session
            await session.run()
        finally:
            if not served:
                self._admission.release(ticket)
            if not handed_over:
                conn.close()

    def _served(self, task: asyncio.Task[None]) -> None:
        session = self._tasks.pop(task, None)
        if session is not None and session.relaying:
            # Logged in: the relay goes on without the task and ends the session.
            self._relays.add(session)
        self._check_quiet()

    def _session_ended(self, session: Session) -> None:
        """A session's line is logged: its admission ends, its bytes join the totals."""
        if session.ticket is not None:
            self._admission.release(session.ticket)
        self._relays.discard(session)
        if session.client is not None:
            name = session.record.listener
            self._bytes[name, "in"] += session.client.bytes_in
            self._bytes[name, "out"] += session.client.bytes_out
        self._check_quiet()

    def _check_quiet(self) -> None:
        if (self._quiet is not None and not self._quiet.done()
                and not self._tasks and not self._relays):
            self._quiet.set_result(None)

    # --- reloading ----------------------------------------------------------------

    def reconfigure(self, settings: Settings, router: Router) -> None:
        """New sessions get ``settings``, ``router`` and fresh certificates (hot reload).

        The limits change for new connections; the counts go on.  The derived
        ``preauth_limit`` keeps the descriptor limit seen at start.
        Sessions in progress keep the context they started with.  Sockets are
        neither bound nor closed here: a new listener, a removed one or a
        changed address takes a restart, and the log says so.  Raises
        ProxyConfigError (before changing anything) when a certificate fails.
        """
        backend_tls = backend_tls_for(settings)
        contexts: dict[str, ListenerContext] = {}
        for listener in settings.listeners:
            if listener.name not in self._listening:
                log.warning("", extra={"fields": {"event": "reload_needs_restart",
                                                  "listener": listener.name,
                                                  "why": "new listener"}})
                continue
            contexts[listener.name] = ListenerContext(
                listener=listener, proxy=settings.proxy, log=settings.log, router=router,
                server_tls=server_tls_context(listener), backend_tls=backend_tls,
                auth_log=self._auth_log, metrics=self._metrics, throttle=self._throttle,
                refusal_times=self._refusal_times, session_log=self._session_log,
                imap_words=_imap_words(listener))
        for name in self._listening:
            if name not in contexts:
                log.warning("", extra={"fields": {"event": "reload_needs_restart",
                                                  "listener": name,
                                                  "why": "listener removed; old settings kept"}})
        loop = asyncio.get_running_loop()
        self._router = router
        for name, context in contexts.items():
            self._contexts[name] = context
            self._set_networks(settings, context.listener)
            for sock in self._listening[name]:
                # Replaces this socket's callback (add_reader on a watched
                # descriptor replaces it); a paused one (EMFILE) is resumed with
                # the new context by _resume_accepting.  Tracked here, not read
                # from remove_reader's result, which uvloop does not give.
                fd = sock.fileno()
                if not self._stopping and fd >= 0 and fd not in self._paused:
                    loop.add_reader(fd, self._accept_ready, context, sock)
        self._admission.configure(settings.proxy, {name: context.listener.connection_limit
                                                   for name, context in self._contexts.items()})
        self._log_limits(settings)

    # --- metrics ------------------------------------------------------------------

    def refresh_metrics(self) -> None:
        """Copy live counts and byte totals into the metrics (on scrape, and every second)."""
        if self._metrics is None:
            return
        names = [ls.name for ls in self._settings.listeners]  # the ones started
        totals = Counter(self._bytes)
        stores: Counter[str] = Counter()
        for session in self._live():
            if session.client is not None and not session.ended:
                totals[session.record.listener, "in"] += session.client.bytes_in
                totals[session.record.listener, "out"] += session.client.bytes_out
            if session.store is not None:
                stores[session.store] += 1
        self._metrics.refresh(
            {n: self._admission.logged_in(n) for n in names},
            {n: self._admission.preauth(n) for n in names},
            {n: (totals[n, "in"], totals[n, "out"]) for n in names},
            stores,
        )

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(METRICS_EVERY)
            self.refresh_metrics()

    # --- stopping -----------------------------------------------------------------

    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting, end pre-login sessions, let logged-in ones finish a while."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        for sockets in self._listening.values():
            for sock in sockets:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(sock.fileno())
                sock.close()
        self._listening.clear()
        self._local_of.clear()
        self._paused.clear()
        for task in list(self._refusals):
            task.cancel()
        for task, session in list(self._tasks.items()):
            if session is None or not session.logged_in:
                task.cancel()
        if (self._tasks or self._relays) and drain_timeout > 0:
            self._quiet = loop.create_future()
            self._check_quiet()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet, drain_timeout)
        for task in list(self._tasks):
            task.cancel()
        stopping = [session.shut_down() for session in list(self._relays)]
        pending = set(self._tasks) | self._refusals | {task for task in stopping if task}
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        self._session_log.flush()  # the last sessions' lines, before the process ends
        self.refresh_metrics()  # the final numbers stay in the worker's metrics file
