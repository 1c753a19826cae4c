"""``authsvc proxy``: every configured listener in one process, and its shutdown.

One of the few modules that touch the event loop.  For each listener and each
bind address it opens a TCP server whose connections become :class:`Session`
tasks.  ``connection_limit`` is enforced per listener: the extra connection is
told so and closed, and the listener keeps serving (Perdition's listener died
here, perdition.md §6.3).  On SIGTERM or SIGINT it stops accepting, closes
sessions that have not logged in, gives logged-in ones ``drain_timeout``
seconds, then cancels the rest.
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
from collections.abc import Sequence

from authsvc.log import configure_logging
from authsvc.routing import Router, open_router
from authsvc.settings import (
    BackendTls,
    ListenerSettings,
    ListenTls,
    MailProtocol,
    ProxySettings,
    Settings,
)
from proxy.session import ListenerContext, Session
from proxy.transport import Channel

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
    # No client certificates are requested (Perdition asked by default, §5.3).
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ProxyConfigError(f"listener {listener.name}: {exc}") from exc
    return context


def backend_tls_context(proxy: ProxySettings) -> ssl.SSLContext:
    """How stores' certificates are checked (chain and name by default, §5.3)."""
    context = ssl.create_default_context(cafile=proxy.backend_ca_file)
    if not proxy.backend_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ProxyServer:
    """The listeners and the live sessions of one ``authsvc proxy`` process."""

    def __init__(self, settings: Settings, router: Router) -> None:
        self._settings = settings
        self._router = router
        self._servers: dict[str, list[asyncio.Server]] = {}
        self._sessions: dict[asyncio.Task[None], Session] = {}
        self._live: dict[str, int] = {}
        self._numbers = itertools.count(1)

    async def start(self) -> None:
        """Bind every listener; raises ProxyConfigError or OSError when one cannot."""
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
                )
                self._live[listener.name] = 0
                port = STANDARD_PORTS[listener.protocol, listener.tls is ListenTls.IMPLICIT]
                binds = [(b.host or None, b.port if b.port is not None else port)
                         for b in listener.bind] or [(None, port)]
                for host, bind_port in binds:
                    server = await loop.create_server(
                        lambda ctx=context: Channel(
                            high_water=ctx.proxy.splice_buffer,
                            on_connected=lambda ch: self._accept(ctx, ch),
                        ),
                        host,
                        bind_port,
                        reuse_address=True,
                        backlog=socket.SOMAXCONN,
                    )
                    self._servers.setdefault(listener.name, []).append(server)
                    for sock in server.sockets:
                        log.info("", extra={"fields": {
                            "event": "listening", "listener": listener.name,
                            "protocol": listener.protocol.value, "tls": listener.tls.value,
                            "on": _sockname(sock)}})
        except BaseException:
            await self.stop(0)
            raise

    def addresses(self, listener: str) -> list[tuple[str, int]]:
        """Where a listener is bound (host, port), for tests and logs."""
        found = []
        for server in self._servers.get(listener, []):
            for sock in server.sockets:
                name = sock.getsockname()
                found.append((str(name[0]), int(name[1])))
        return found

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def _accept(self, context: ListenerContext, channel: Channel) -> None:
        listener = context.listener
        limit = listener.connection_limit
        if limit and self._live[listener.name] >= limit:
            if listener.tls is not ListenTls.IMPLICIT:
                channel.write(_BUSY[listener.protocol])
            channel.close()
            log.warning("", extra={"fields": {"event": "connection_limit",
                                              "listener": listener.name, "limit": limit}})
            return
        self._live[listener.name] += 1
        session = Session(context, channel, next(self._numbers))
        task = asyncio.get_running_loop().create_task(session.run())
        self._sessions[task] = session

        def done(finished: asyncio.Task[None]) -> None:
            self._sessions.pop(finished, None)
            self._live[listener.name] -= 1

        task.add_done_callback(done)

    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting, end pre-login sessions, let logged-in ones finish a while."""
        for servers in self._servers.values():
            for server in servers:
                server.close()
        for servers in self._servers.values():
            for server in servers:
                await server.wait_closed()
        self._servers.clear()
        for task, session in list(self._sessions.items()):
            if not session.logged_in:
                task.cancel()
        remaining = set(self._sessions)
        if remaining and drain_timeout > 0:
            await asyncio.wait(remaining, timeout=drain_timeout)
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=5)


def _sockname(sock: socket.socket) -> str:
    name = sock.getsockname()
    host = str(name[0])
    return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the proxy until ``stop`` is set, or SIGTERM/SIGINT."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with open_router(settings) as router:
        server = ProxyServer(settings, router)
        await server.start()
        try:
            await stop.wait()
        finally:
            log.info("", extra={"fields": {"event": "stopping", "sessions": server.sessions}})
            await server.stop(settings.proxy.drain_timeout)


def main(args: argparse.Namespace | Sequence[str]) -> int:
    """``authsvc proxy --config FILE [--config FILE ...]``; returns the exit code."""
    from authsvc.config import load_settings  # the config teammate's loader

    paths = args.config if isinstance(args, argparse.Namespace) else list(args)
    loaded = load_settings(paths)
    for warning in loaded.warnings:
        print(f"authsvc: warning: {warning}", file=sys.stderr)
    settings: Settings = loaded.settings
    configure_logging(settings.log)
    try:
        asyncio.run(serve(settings))
    except (ProxyConfigError, OSError) as exc:
        print(f"authsvc proxy: {exc}", file=sys.stderr)
        return 1
    return 0
