"""The proxy's control listener: where ``authsvc flush``, ``throttle`` and ``sessions`` reach it.

The listener, its checks and its log lines are the control package's
(``authsvc/control/listener.py``), the same as ``authsvc serve``'s; this
module gives it the proxy's state: the router whose caches a flush drops
(the same :class:`~authsvc.routing.Router`, so the same key rules as serve,
docs/operations.md "Flush keys"), the throttle, the holds
(``authsvc/control/holds.py``) and the server's relayed sessions
(``authsvc/control/sessions.py``: list and kick).  With ``--workers N`` each
worker also listens on its peer socket in the run directory, and a flush, a
hold, a list or a kick is repeated on every worker
(``authsvc/control/fanout.py``).
"""

from __future__ import annotations

import socket

from aiohttp import web

from authsvc.control.fanout import Peers
from authsvc.control.flush import FLUSH_PATH, CacheControl
from authsvc.control.holds import HoldControl
from authsvc.control.listener import ControlListener
from authsvc.control.sessions import SessionControl, SessionTable
from authsvc.control.throttle import ThrottleControl
from authsvc.holds.state import HoldKeeper
from authsvc.routing import Router
from authsvc.settings import Settings
from authsvc.throttle.service import Throttle


class ProxyControl:
    """One proxy process's (or worker's) control listener and peer socket."""

    def __init__(self, settings: Settings, router: Router, throttle: Throttle,
                 run_dir: str | None, sessions: SessionTable, holds: HoldKeeper) -> None:
        peers = Peers(run_dir) if run_dir is not None else None
        http = settings.http
        # The [http] secret is never checked here: the listener checks [control]'s.
        self._flush = CacheControl(http.secret, http.secret_header, peers)
        self._flush.router = router
        throttle_control = ThrottleControl(throttle, http.secret, http.secret_header)
        self._holds = HoldControl(holds, peers)
        self._holds.router = router
        sessions_control = SessionControl(sessions, peers, client_ip=settings.log.client_ip)
        routes = [web.post(FLUSH_PATH, self._flush.operate), *throttle_control.operator_routes(),
                  *sessions_control.routes(), *self._holds.routes()]
        self._listener = ControlListener(settings.control, routes, peers)

    def rebind(self, router: Router) -> None:
        """Flush the caches of ``router`` from now on (after a reload)."""
        self._flush.router = router
        self._holds.router = router

    async def start(self, sock: socket.socket | None = None) -> None:
        await self._listener.start(sock)

    async def stop(self) -> None:
        await self._listener.stop()
