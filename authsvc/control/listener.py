"""The control listener: the operator's commands on their own port, on serve and proxy alike.

serve's ``/auth`` answers routes and receives passwords, so it stays on
loopback or a unix socket; operator commands (``authsvc flush``, ``authsvc
throttle``) come here instead, on ``[control] listen`` (docs/security.md,
"The control listener").  Every request on the TCP port passes two checks, in
this order, each with a fixed body:

1. the caller's address must be in ``[control] allow`` (when set): else 403;
2. it must carry ``[control] secret_file``'s secret in ``X-Authsvc-Control``,
   compared in constant time (``trust.py``): else 401.

Each request is logged as ``event=control`` with the caller's address, the
command (method and path) and its outcome (status), never with a header.
With ``[control] cert``/``key`` the port speaks TLS.

The same application also serves this worker's peer socket in the run
directory (``fanout.py``): a request there comes from a sibling worker
repeating a command, is trusted for the socket's permissions and is logged
by the worker that received it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from authsvc.control.fanout import Peers
from authsvc.control.trust import (
    CONTROL_HEADER,
    networks_of,
    over_unix_socket,
    sockname_of,
    source_allowed,
    trusted,
)
from authsvc.runtime.binding import bind_tcp, describe_socket
from authsvc.settings import ControlSettings

logger = logging.getLogger("authsvc.control")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The fixed refusals: they say what is missing and nothing about the node.
FORBIDDEN = '{"error": "forbidden: this address may not use the control listener"}'
UNAUTHORIZED = '{"error": "unauthorized: send the control secret in X-Authsvc-Control"}'


def server_tls(settings: ControlSettings) -> ssl.SSLContext | None:
    """The TLS context of the control port, when ``cert``/``key`` are set."""
    if settings.cert is None or settings.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.cert, settings.key)
    return context


def guard(settings: ControlSettings) -> Middleware:
    """The middleware that checks, and logs, every request on the control port."""
    allow = networks_of(settings.allow)
    secret = settings.secret

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if over_unix_socket(sockname_of(request)):
            return await handler(request)  # a sibling worker, on its peer socket
        client = request.remote
        command = f"{request.method} {request.path}"
        if not source_allowed(client, allow):
            _log(client, command, 403, "forbidden")
            return web.Response(status=403, text=FORBIDDEN, content_type="application/json")
        if not trusted(request.headers, secret, CONTROL_HEADER, open_without_secret=False):
            _log(client, command, 401, "unauthorized")
            return web.Response(status=401, text=UNAUTHORIZED, content_type="application/json")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _log(client, command, exc.status, "ok" if exc.status < 400 else "error")
            raise
        except Exception:
            _log(client, command, 500, "error")
            raise
        _log(client, command, response.status, "ok" if response.status < 400 else "error")
        return response

    return check


def _log(client: str | None, command: str, status: int, outcome: str) -> None:
    level = logging.INFO if outcome == "ok" else logging.WARNING
    logger.log(level, "", extra={"fields": {"event": "control", "client": client,
                                            "command": command, "status": status,
                                            "result": outcome}})


class ControlListener:
    """One process's (or worker's) control port and peer socket."""

    def __init__(self, settings: ControlSettings, routes: list[web.RouteDef],
                 peers: Peers | None = None) -> None:
        self._settings = settings
        self._peers = peers
        self._app = web.Application(middlewares=[guard(settings)])
        self._app.router.add_routes(routes)
        self._runner: web.AppRunner | None = None
        self.socket: socket.socket | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve on ``sock`` (bound before the fork), else on ``[control] listen`` if set,
        and on the peer socket when there are workers."""
        address = self._settings.listen
        if sock is None and address is not None:
            sock = bind_tcp(address, 1)[0]
        if sock is None and self._peers is None:
            return
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await self._runner.setup()
        if sock is not None:
            self.socket = sock
            await web.SockSite(self._runner, sock, ssl_context=server_tls(self._settings)).start()
            logger.info("", extra={"fields": {"event": "listening", "on": describe_socket(sock),
                                              "what": "control"}})
        if self._peers is not None:
            await web.UnixSite(self._runner, self._peers.own).start()
            os.chmod(self._peers.own, 0o600)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._peers is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._peers.own)
