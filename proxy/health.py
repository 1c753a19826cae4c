"""``/healthz``, ``/readyz`` and ``/metrics`` for ``authsvc proxy``, on their own port.

One of the few modules that touch the event loop, and the only one of the
proxy's that imports aiohttp (``run.py`` imports it only when a health port is
configured).  The handlers are ``authsvc serve``'s own
(``authsvc/runtime/health.py``): the same liveness, the same readiness rules
(503 while starting or draining; a map that is down makes it 503 only with
``[http] ready_requires_map``), the same Prometheus text, with the proxy's
families added (``metrics.py``).  With the throttle on, the port also serves
``GET /throttle`` and ``POST /throttle/clear`` (``authsvc/control/throttle.py``)
for one more release, with a deprecation warning: they belong on the control
listener (``control.py``).
HAProxy checks it with ``tcp-check connect port ...`` + ``GET /readyz`` without
a PROXY header (docs/proxy.md; ``authsvc render-haproxy``).  With
``--workers N`` every worker serves it on a SO_REUSEPORT socket and any one of
them answers with the totals of all.
"""

from __future__ import annotations

import socket
from typing import Protocol

from aiohttp import web

from authsvc.control.deprecation import Deprecation
from authsvc.control.throttle import ThrottleControl
from authsvc.control.trust import details_check
from authsvc.metrics import Metrics
from authsvc.routing import Router
from authsvc.runtime.binding import bind_tcp
from authsvc.runtime.health import Health, MapStates, Readiness, health_routes
from authsvc.settings import Settings
from authsvc.throttle.service import Throttle


class _Refreshable(Protocol):
    def refresh_metrics(self) -> None: ...


class HealthEndpoint:
    """The health listener of one process (or worker); does nothing when not configured."""

    def __init__(
        self, settings: Settings, router: Router, server: _Refreshable, metrics: Metrics,
        *, throttle: Throttle | None = None,
    ) -> None:
        self._settings = settings
        #: Its families are added to /metrics (docs/security.md).
        self._throttle = throttle
        self._router = router
        self._server = server
        self._metrics = metrics
        self.health = Health()

        def record(states: MapStates) -> None:
            for name, error in states.items():
                metrics.set_map_up(name, error is None)

        self.readiness = Readiness(self.health, router.check_maps,
                                   requires_map=settings.http.ready_requires_map,
                                   on_result=record)
        self._runner: web.AppRunner | None = None
        self.socket: socket.socket | None = None

    def render_metrics(self) -> str:
        """This worker's numbers brought up to date, then everyone's totals."""
        self._server.refresh_metrics()
        self._metrics.set_cache_stats(self._router.cache_stats())
        self._metrics.set_map_hosts(self._router.map_hosts())
        text = self._metrics.render()
        if self._throttle is not None:
            text += self._throttle.render_metrics()
        return text

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve on ``sock``, else on ``[proxy] health_listen`` if set."""
        address = self._settings.proxy.health_listen
        if sock is None and address is None:
            return
        if sock is None:
            assert address is not None
            sock = bind_tcp(address, 1)[0]
        self.socket = sock
        app = web.Application()
        http = self._settings.http
        # Why a map is down only with a secret, as on serve's port (docs/security.md).
        app.router.add_routes(health_routes(
            self.readiness, self.render_metrics,
            trust=details_check(self._settings)))
        if self._throttle is not None:
            # `authsvc throttle list|clear --url http://<health_listen>` with
            # the [http] secret, deprecated for [control] listen (docs/operations.md).
            control = ThrottleControl(self._throttle, http.secret, http.secret_header,
                                      deprecation=Deprecation("the proxy's health port"))
            app.router.add_routes(control.routes())
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def rebind(self, router: Router) -> None:
        """Report the maps of ``router`` from now on (after a reload)."""
        self._router = router
        self.readiness.check = router.check_maps

    def set_ready(self) -> None:
        self.health.set_ready()

    def set_draining(self) -> None:
        self.health.set_draining()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
