"""``authsvc proxy``: every configured listener in one process, its limits and its shutdown.

One of the few modules that touch the event loop.  Each listening socket is
watched with ``loop.add_reader`` and accepted here, as raw sockets, so that a
listener behind HAProxy can read its PROXY header before asyncio's transport
(and its TLS layer) touch the connection (``proxy/accept.py``).  Then:

* a PROXY listener closes peers outside its trusted networks at once, and
  connections whose header is malformed or late, without a greeting
  (HAProxy's ``doc/proxy-protocol.txt``, section 5);
* ``proxy/limits.py`` decides the limits: ``connection_limit`` per listener and
  ``preauth_limit`` when the connection arrives, ``client_limit`` and
  ``client_preauth_limit`` once the real client address is known.  The extra
  client is told ``* BYE [UNAVAILABLE] ...`` / ``-ERR [SYS/TEMP] ...`` (nothing
  on an implicit-TLS listener, where no plaintext may be sent) and the listener
  keeps serving; Perdition's listener died here (docs/perdition-compatibility.md);
* the connection becomes a :class:`Session`.

On SIGTERM or SIGINT it stops accepting (``/readyz`` answers 503), says BYE
/ ``-ERR`` to sessions that have not logged in and closes them, gives logged-in
ones ``drain_timeout`` seconds, then closes the rest without a word: a relay
does not parse the store's stream, so it cannot know where a line ends.  On
SIGHUP it reloads (``authsvc/reload.py``): new sessions get the new settings,
maps and certificates, live ones keep theirs.
``main`` runs one process, or ``--workers N`` processes on SO_REUSEPORT
sockets through ``authsvc/http/workers.py``'s supervisor, with ``/healthz``,
``/readyz`` and ``/metrics`` on ``[proxy] health_listen`` (``proxy/health.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import ssl
import sys
from collections import Counter
from collections.abc import Mapping, Sequence

from authsvc.proxy.accept import read_proxy_header, refuse
from authsvc.proxy.events import Endpoints
from authsvc.proxy.limits import Admission, IPNetwork, Refused, Ticket, in_networks, parse_networks
from authsvc.proxy.metrics import ProxyMetrics, families
from authsvc.proxy.proxy_protocol import ProxyProtocolError
from authsvc.proxy.session import ListenerContext, Session
from authsvc.proxy.syslog import AuthLog

from authsvc.accepting import accept_batch
from authsvc.http.server import HANDLED_SIGNALS
from authsvc.http.workers import ListenError, bind_tcp, make_run_dir, supervise
from authsvc.log import configure_logging
from authsvc.metrics import Metrics
from authsvc.reload import RELOAD_FAMILIES, Reloader, ReloadSource
from authsvc.routing import Router, open_router_switch
from authsvc.settings import (
    BackendTls,
    HostPort,
    ListenerSettings,
    ListenTls,
    MailProtocol,
    ProxySettings,
    Settings,
)
from authsvc.throttle.service import Throttle

log = logging.getLogger("proxy.server")

#: IANA ports (RFC 9051 §1.3 uses 143/993; RFC 1939 / RFC 8314 110/995).
STANDARD_PORTS = {
    (MailProtocol.IMAP, False): 143,
    (MailProtocol.IMAP, True): 993,
    (MailProtocol.POP3, False): 110,
    (MailProtocol.POP3, True): 995,
}
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

#: listener name -> one socket per bind address.
ListenerSockets = Mapping[str, Sequence[socket.socket]]


class ProxyConfigError(ValueError):
    """A listener cannot be served as configured (e.g. TLS without a certificate)."""


def server_tls_context(listener: ListenerSettings) -> ssl.SSLContext | None:
    """The certificate a listener presents, or None for a plaintext-only listener."""
    if listener.tls is ListenTls.NONE:
        if listener.tls_required:
            raise ProxyConfigError(f"listener {listener.name}: tls_required without TLS")
        return None
    files = listener.tls_files
    if not files.cert_file or not files.key_file:
        raise ProxyConfigError(f"listener {listener.name}: TLS needs a certificate and key")
    # No client certificates are requested (Perdition asked by default, perdition/ssl.c).
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ProxyConfigError(f"listener {listener.name}: {exc}") from exc
    return context


def backend_tls_context(proxy: ProxySettings) -> ssl.SSLContext:
    """How stores' certificates are checked (chain and name by default, as perdition/ssl.c).

    ``backend_verify = false`` is Perdition's ``ssl_no_cert_verify``;
    ``backend_verify_name = false`` its ``ssl_no_cn_verify`` (chain still checked).
    Unlike Perdition, an IP address in the map is checked against the
    certificate's IP SANs rather than needing ``ssl_no_cn_verify``.
    """
    try:
        context = ssl.create_default_context(cafile=proxy.backend_ca_file,
                                             capath=proxy.backend_ca_path)
    except (OSError, ssl.SSLError) as exc:
        raise ProxyConfigError(f"backend CA: {exc}") from exc
    if not proxy.backend_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not proxy.backend_verify_name:
        context.check_hostname = False
    return context


def _inet(name: object) -> tuple[str, int]:
    """(host, port) of a socket address; unix sockets have no port."""
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return str(name), 0


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
    ) -> None:
        self._settings = settings
        self._throttle = throttle if throttle is not None and throttle.enabled else None
        self._router = router
        self._metrics = ProxyMetrics(metrics) if metrics is not None else None
        self._auth_log = auth_log
        self._admission = Admission(
            settings.proxy, {ls.name: ls.connection_limit for ls in settings.listeners})
        self._listening: dict[str, list[socket.socket]] = {}
        self._contexts: dict[str, ListenerContext] = {}
        self._trusted: dict[str, tuple[IPNetwork, ...]] = {}
        #: Every connection being served; the Session once there is one.
        self._tasks: dict[asyncio.Task[None], Session | None] = {}
        self._refusals: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count(1)
        self._bytes: Counter[tuple[str, str]] = Counter()  # from ended sessions
        self._refresher: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, sockets: ListenerSockets | None = None) -> None:
        """Listen on every listener (on ``sockets`` when given, for workers).

        Raises ProxyConfigError, ListenError or OSError when one cannot listen.
        """
        settings = self._settings
        needs_backend_tls = any(ls.backend_tls is not BackendTls.NONE for ls in settings.listeners)
        backend_tls = backend_tls_context(settings.proxy) if needs_backend_tls else None
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
                )
                self._contexts[listener.name] = context
                self._trusted[listener.name] = parse_networks(
                    listener.proxy_protocol_from or settings.proxy.proxy_protocol_from)
                given = sockets.get(listener.name) if sockets is not None else None
                for sock in given if given is not None else bind_listener(listener):
                    self._listening.setdefault(listener.name, []).append(sock)
                    sock.setblocking(False)
                    loop.add_reader(sock.fileno(), self._accept_ready, context, sock)
                    log.info("", extra={"fields": {
                        "event": "listening", "listener": listener.name,
                        "protocol": listener.protocol.value, "tls": listener.tls.value,
                        "proxy_protocol": listener.proxy_protocol,
                        "on": _sockname(sock)}})
        except BaseException:
            await self.stop(0)
            raise
        if self._metrics is not None:
            self.refresh_metrics()
            self._refresher = loop.create_task(self._refresh_periodically())

    def addresses(self, listener: str) -> list[tuple[str, int]]:
        """Where a listener is bound (host, port), for tests and logs."""
        return [_inet(sock.getsockname()) for sock in self._listening.get(listener, [])]

    @property
    def sessions(self) -> int:
        """Connections being served (pre-login ones included)."""
        return len(self._tasks)

    @property
    def admission(self) -> Admission:
        return self._admission

    # --- accepting ----------------------------------------------------------------

    def _accept_ready(self, context: ListenerContext, listening: socket.socket) -> None:
        def accepted(conn: socket.socket, peer: object) -> None:
            conn.setblocking(False)
            self._accepted(context, conn, _inet(peer))

        exhausted = accept_batch(listening, ACCEPT_BATCH, accepted)
        if exhausted is not None:
            # Out of descriptors: pause this socket briefly rather than spin.
            log.error("", extra={"fields": {"event": "accept_failed",
                                            "listener": context.listener.name,
                                            "error": exhausted.strerror}})
            loop = asyncio.get_running_loop()
            loop.remove_reader(listening.fileno())
            loop.call_later(ACCEPT_PAUSE, self._resume_accepting, context, listening)

    def _resume_accepting(self, context: ListenerContext, listening: socket.socket) -> None:
        if not self._stopping and listening.fileno() >= 0:
            context = self._contexts.get(context.listener.name, context)  # a reload's
            asyncio.get_running_loop().add_reader(
                listening.fileno(), self._accept_ready, context, listening)

    def _accepted(self, context: ListenerContext, conn: socket.socket,
                  peer: tuple[str, int]) -> None:
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
        ticket = self._admission.connect(listener.name)
        if isinstance(ticket, Refused):
            self._refuse(context, conn, ticket, peer)
            return
        task = asyncio.get_running_loop().create_task(self._serve(context, conn, peer, ticket))
        self._tasks[task] = None
        task.add_done_callback(self._served)

    def _note_refusal(self, context: ListenerContext, reason: str, peer: tuple[str, int],
                      detail: str | None = None) -> None:
        if self._metrics is not None:
            self._metrics.refused(context.listener.name, reason)
        fields: dict[str, object] = {"event": "refused", "listener": context.listener.name,
                                     "reason": reason, "peer": f"{peer[0]}:{peer[1]}"}
        if detail:
            fields["detail"] = detail
        log.warning("", extra={"fields": fields})

    def _refuse(self, context: ListenerContext, conn: socket.socket, why: Refused,
                peer: tuple[str, int]) -> None:
        self._note_refusal(context, why.value, peer)
        listener = context.listener
        line = b""
        if listener.tls is not ListenTls.IMPLICIT:  # no plaintext before a TLS handshake
            client = why in (Refused.CLIENT_LIMIT, Refused.CLIENT_PREAUTH_LIMIT)
            line = (_CLIENT_BUSY if client else _BUSY)[listener.protocol]
        task = asyncio.get_running_loop().create_task(refuse(conn, line))
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    async def _serve(self, context: ListenerContext, conn: socket.socket,
                     peer: tuple[str, int], ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        listener = context.listener
        handed_over = False
        try:
            client, local = peer, _inet(conn.getsockname())
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
            refused = self._admission.identify(ticket, client[0])
            if refused is not None:
                handed_over = True
                self._refuse(context, conn, refused, client)
                return
            session = Session(context, conn, next(self._numbers),
                              endpoints=Endpoints(client, local), via=via,
                              on_login=lambda: self._admission.login(ticket), started=accepted)
            handed_over = True
            task = asyncio.current_task()
            if task is not None and task in self._tasks:
                self._tasks[task] = session
            await session.run()
        finally:
            self._admission.release(ticket)
            if not handed_over:
                conn.close()

    def _served(self, task: asyncio.Task[None]) -> None:
        session = self._tasks.pop(task, None)
        if session is not None and session.client is not None:
            name = session.record.listener
            self._bytes[name, "in"] += session.client.bytes_in
            self._bytes[name, "out"] += session.client.bytes_out

    # --- reloading ----------------------------------------------------------------

    def reconfigure(self, settings: Settings, router: Router) -> None:
        """New sessions get ``settings``, ``router`` and fresh certificates (hot reload).

        Sessions in progress keep the context they started with.  Sockets are
        neither bound nor closed here: a new listener, a removed one or a
        changed address takes a restart, and the log says so.  Raises
        ProxyConfigError (before changing anything) when a certificate fails.
        """
        needs_backend_tls = any(ls.backend_tls is not BackendTls.NONE for ls in settings.listeners)
        backend_tls = backend_tls_context(settings.proxy) if needs_backend_tls else None
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
                auth_log=self._auth_log, metrics=self._metrics, throttle=self._throttle)
        for name in self._listening:
            if name not in contexts:
                log.warning("", extra={"fields": {"event": "reload_needs_restart",
                                                  "listener": name,
                                                  "why": "listener removed; old settings kept"}})
        loop = asyncio.get_running_loop()
        self._router = router
        for name, context in contexts.items():
            self._contexts[name] = context
            self._trusted[name] = parse_networks(
                context.listener.proxy_protocol_from or settings.proxy.proxy_protocol_from)
            for sock in self._listening[name]:
                # Replaces this socket's callback; a paused one (EMFILE) is
                # resumed with the new context by _resume_accepting.
                if not self._stopping and sock.fileno() >= 0 and loop.remove_reader(sock.fileno()):
                    loop.add_reader(sock.fileno(), self._accept_ready, context, sock)

    # --- metrics ------------------------------------------------------------------

    def refresh_metrics(self) -> None:
        """Copy live counts and byte totals into the metrics (on scrape, and every second)."""
        if self._metrics is None:
            return
        names = [ls.name for ls in self._settings.listeners]  # the ones started
        totals = Counter(self._bytes)
        for session in self._tasks.values():
            if session is not None and session.client is not None:
                totals[session.record.listener, "in"] += session.client.bytes_in
                totals[session.record.listener, "out"] += session.client.bytes_out
        self._metrics.refresh(
            {n: self._admission.logged_in(n) for n in names},
            {n: self._admission.preauth(n) for n in names},
            {n: (totals[n, "in"], totals[n, "out"]) for n in names},
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
        for task in list(self._refusals):
            task.cancel()
        for task, session in list(self._tasks.items()):
            if session is None or not session.logged_in:
                task.cancel()
        remaining = set(self._tasks)
        if remaining and drain_timeout > 0:
            await asyncio.wait(remaining, timeout=drain_timeout)
        for task in list(self._tasks):
            task.cancel()
        pending = set(self._tasks) | self._refusals
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        self.refresh_metrics()  # the final numbers stay in the worker's metrics file


def bind_listener(listener: ListenerSettings, count: int = 1) -> list[socket.socket]:
    """``count`` sockets per bind address of ``listener`` (SO_REUSEPORT when count > 1).

    The list holds, for each bind address in turn, its ``count`` sockets.
    """
    port = STANDARD_PORTS[listener.protocol, listener.tls is ListenTls.IMPLICIT]
    binds = [HostPort(b.host, b.port if b.port is not None else port)
             for b in listener.bind] or [HostPort("0.0.0.0", port)]
    found: list[socket.socket] = []
    try:
        for address in binds:
            found += bind_tcp(address, count, backlog=socket.SOMAXCONN)
    except ListenError:
        for sock in found:
            sock.close()
        raise
    return found


def _sockname(sock: socket.socket) -> str:
    host, port = _inet(sock.getsockname())
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    sockets: ListenerSockets | None = None,
    health_socket: socket.socket | None = None,
    run_dir: str | None = None,
    started: asyncio.Future[ProxyServer] | None = None,
    reload_from: ReloadSource | None = None,
) -> None:
    """Run the proxy until ``stop`` is set, or SIGTERM/SIGINT; SIGHUP reloads."""
    from authsvc.proxy.health import HealthEndpoint  # aiohttp only when asked for

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    reloader: Reloader | None = None

    def on_sighup() -> None:
        if reloader is None:
            log.info("SIGHUP received: nothing to reload (no configuration files)")
            return
        log.info("", extra={"fields": {"event": "reload", "signal": "SIGHUP"}})
        reloader.request()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    # A worker starts with these blocked (workers.py); its handlers are in place now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    metrics = Metrics(run_dir, families=[*families(ls.name for ls in settings.listeners),
                                         *RELOAD_FAMILIES])
    auth_log = AuthLog(settings.proxy) if settings.proxy.auth_log else None
    try:
        async with open_router_switch(settings) as switch:
            router = switch.router
            metrics.attach_maps(router.cache_stats())  # opens this worker's metrics file
            # Counts shared by the workers through the run directory (docs/security.md).
            throttle = Throttle(settings.throttle, directory=run_dir)
            server = ProxyServer(settings, router, metrics=metrics, auth_log=auth_log,
                                 throttle=throttle)
            health = HealthEndpoint(settings, router, server, metrics,
                                    throttle=throttle if throttle.enabled else None)
            await server.start(sockets)

            def apply(new: Settings, new_router: Router) -> None:
                metrics.attach_maps(new_router.cache_stats())  # a map the reload added
                server.reconfigure(new, new_router)
                health.rebind(new_router)

            if reload_from is not None:
                reloader = Reloader(reload_from, switch, apply, metrics=metrics,
                                    check=check_tls)
            try:
                await health.start(health_socket)
                health.set_ready()
                if started is not None:
                    started.set_result(server)
                await stop.wait()
            finally:
                health.set_draining()
                log.info("", extra={"fields": {"event": "stopping", "sessions": server.sessions}})
                await server.stop(switch.router.settings.proxy.drain_timeout)
                metrics.set_cache_stats(switch.router.cache_stats())
                await health.stop()
                await throttle.close()
                if reloader is not None:
                    await reloader.close()
    finally:
        metrics.close()
        if auth_log is not None:
            auth_log.close()
        for signum in (*HANDLED_SIGNALS,):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


# --- the command ------------------------------------------------------------------


def check_tls(settings: Settings) -> None:
    """Certificates and CAs load, before any socket is bound or worker forked."""
    for listener in settings.listeners:
        server_tls_context(listener)
    if any(ls.backend_tls is not BackendTls.NONE for ls in settings.listeners):
        backend_tls_context(settings.proxy)


def bind_all(settings: Settings, workers: int) -> list[dict[str, list[socket.socket]]]:
    """For each worker, its listening sockets by listener (SO_REUSEPORT across workers)."""
    slots: list[dict[str, list[socket.socket]]] = [{} for _ in range(workers)]
    try:
        for listener in settings.listeners:
            sockets = bind_listener(listener, workers)
            for index, sock in enumerate(sockets):
                slots[index % workers].setdefault(listener.name, []).append(sock)
    except ListenError:
        for slot in slots:
            for sock in (s for group in slot.values() for s in group):
                sock.close()
        raise
    return slots


def _close_all(slots: Sequence[Mapping[str, Sequence[socket.socket]]],
               health: Sequence[socket.socket], keep: int | None = None) -> None:
    for index, slot in enumerate(slots):
        if index == keep:
            continue
        for sock in (s for group in slot.values() for s in group):
            sock.close()
        if index < len(health):
            health[index].close()


def main(args: argparse.Namespace | Sequence[str]) -> int:
    """``authsvc proxy --config FILE [--config FILE ...] [--workers N]``; the exit code."""
    from authsvc.config import load_settings

    if isinstance(args, argparse.Namespace):
        paths, workers = args.config, int(getattr(args, "workers", 1) or 1)
    else:
        paths, workers = list(args), 1
    if workers < 1:
        print("authsvc proxy: --workers must be at least 1", file=sys.stderr)
        return 2
    loaded = load_settings(paths)
    for warning in loaded.warnings:
        print(f"authsvc: warning: {warning}", file=sys.stderr)
    settings: Settings = loaded.settings
    reload_from = ReloadSource.of(paths)  # SIGHUP reads the same files again
    configure_logging(settings.log)
    health_address = settings.proxy.health_listen
    try:
        check_tls(settings)
        slots = bind_all(settings, workers)
        try:
            health = bind_tcp(health_address, workers) if health_address is not None else []
        except ListenError:
            _close_all(slots, [])
            raise
    except (ProxyConfigError, ListenError, OSError) as exc:
        print(f"authsvc proxy: {exc}", file=sys.stderr)
        return 1
    try:
        if workers == 1:
            asyncio.run(serve(settings, sockets=slots[0], reload_from=reload_from,
                              health_socket=health[0] if health else None))
            return 0
        # One token per worker for the supervisor: the worker's first listening
        # socket.  The worker closes every other worker's sockets itself.
        tokens = [next(s for group in slot.values() for s in group) for slot in slots]

        def child(settings: Settings, token: socket.socket, run_dir: str) -> int:
            index = next(i for i, t in enumerate(tokens) if t is token)
            _close_all(slots, health, keep=index)
            asyncio.run(serve(settings, sockets=slots[index], run_dir=run_dir,
                              reload_from=reload_from,
                              health_socket=health[index] if health else None))
            return 0

        return supervise(settings, tokens, workers, make_run_dir(), child_main=child,
                         reload_from=reload_from,
                         on_stop=lambda: _close_all(slots, health))
    except (ProxyConfigError, OSError) as exc:
        print(f"authsvc proxy: {exc}", file=sys.stderr)
        return 1
    finally:
        _close_all(slots, health)
