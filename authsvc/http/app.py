"""The aiohttp application of ``authsvc serve``: routes, typed keys and the router's lifetime.

``create_app(settings, metrics)`` wires the auth handler (``GET <http.path>``),
``/healthz``, ``/readyz``, ``/metrics``, and, for one more release,
``POST /cache/flush`` and ``/throttle`` (deprecated there: they belong on the
control listener, whose routes :func:`operator_routes` gives).  The router,
and with it every map and database pool, lives in a ``cleanup_ctx``: opened
before the first request, closed after the last one, and a reload replaces it
(``authsvc/reload.py``).  What changes while the app runs lives in one
:class:`Serving` object, stored before startup: aiohttp freezes the app then.
Tests pass their own ``build_map`` to route through fake maps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import hdrs, web

from authsvc.control.deprecation import Deprecation
from authsvc.control.flush import FLUSH_PATH, CacheControl, Peers
from authsvc.control.holds import HoldControl
from authsvc.control.sessions import not_relayed_routes
from authsvc.control.throttle import ThrottleControl
from authsvc.control.trust import details_check
from authsvc.holds.state import HoldKeeper
from authsvc.http.auth_http import AuthService
from authsvc.http.resolve import Resolver
from authsvc.metrics import Metrics
from authsvc.routing import MapBuilder, Router, RouterSwitch, open_map, open_router_switch
from authsvc.runtime.health import Health, MapStates, Readiness, health_routes
from authsvc.settings import Settings
from authsvc.throttle.service import Throttle


@dataclass
class Serving:
    """The app's state that changes while it runs; both are None outside startup..cleanup."""

    #: Replaces the router on reload.
    switch: RouterSwitch | None = None
    #: The router new requests are answered with.
    router: Router | None = None

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
HEALTH = web.AppKey("health", Health)
READINESS = web.AppKey("readiness", Readiness)
AUTH = web.AppKey("auth", AuthService)
CONTROL = web.AppKey("control", CacheControl)
THROTTLE_CONTROL = web.AppKey("throttle_control", ThrottleControl)
HOLD_CONTROL = web.AppKey("hold_control", HoldControl)
HOLDS = web.AppKey("holds", HoldKeeper)
SERVING = web.AppKey("serving", Serving)


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Every byte counts against nginx's 1024-byte reply buffer (ngx_mail_auth_http_module.c,
    # docs/serve.md), and the aiohttp version is nobody's business.
    response.headers.popall(hdrs.SERVER, None)


async def _one_request_per_connection(request: web.Request,
                                      response: web.StreamResponse) -> None:
    # serve gives aiohttp one request per connection, checked first
    # (authsvc/http/headcheck.py): a head aiohttp refused would be quoted back
    # and logged (docs/security.md, "Secrets in logs").  So the reply says the
    # connection closes, and aiohttp closes it (RFC 9112 §9.6).
    if request.keep_alive:
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    health: Health | None = None,
    peers: Peers | None = None,
    resolver: Resolver | None = None,
    build_map: MapBuilder = open_map,
    holds: HoldKeeper | None = None,
) -> web.Application:
    """The application; the router opens when the app starts.

    ``holds`` (default: from ``[holds]``) are loaded before the router opens.
    """
    metrics = metrics if metrics is not None else Metrics()
    health = health if health is not None else Health()

    def record_map_states(states: MapStates) -> None:
        for name, error in states.items():
            metrics.set_map_up(name, error is None)

    readiness = Readiness(
        health,
        requires_map=settings.http.ready_requires_map,
        on_result=record_map_states,
    )
    # Counts shared by every worker through the run directory (docs/security.md).
    throttle = Throttle(settings.throttle, directory=metrics.directory)
    auth = AuthService(settings, metrics, resolver if resolver is not None else Resolver(),
                       throttle)
    moved = Deprecation("serve's auth_http port")
    control = CacheControl(settings.http.secret, settings.http.secret_header, peers,
                           deprecation=moved)
    throttle_control = ThrottleControl(throttle, settings.http.secret,
                                       settings.http.secret_header, deprecation=moved)
    keeper = holds if holds is not None else HoldKeeper(settings.holds, metrics)
    hold_control = HoldControl(keeper, peers)

    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[HEALTH] = health
    app[READINESS] = readiness
    app[AUTH] = auth
    app[CONTROL] = control
    app[THROTTLE_CONTROL] = throttle_control
    app[HOLD_CONTROL] = hold_control
    app[HOLDS] = keeper
    serving = app[SERVING] = Serving()
    app.router.add_get(settings.http.path, auth.handle)
    def render_metrics() -> str:
        auth.refresh_cache_stats()  # this worker's cache counters, current to the scrape
        return metrics.render() + throttle.render_metrics()

    app.router.add_routes(health_routes(
        readiness, render_metrics,
        trust=details_check(settings)))
    app.router.add_post(FLUSH_PATH, control.handle)
    app.router.add_routes(throttle_control.routes())
    app.on_cleanup.append(lambda _app: throttle.close())
    app.on_cleanup.append(lambda _app: keeper.close())
    app.on_response_prepare.append(_drop_server_header)
    app.on_response_prepare.append(_one_request_per_connection)

    async def router_ctx(app: web.Application) -> AsyncIterator[None]:
        # Holds first: no login may be routed before they are known (docs/operations.md).
        await keeper.start()
        async with open_router_switch(settings, build_map, keeper) as switch:
            serving.switch = switch
            bind_router(app, switch.router)
            health.set_ready()
            # Other workers' scrapes read our file: keep its cache counters
            # fresh even when no login comes in (metrics.py).
            refresher = asyncio.create_task(_refresh_periodically(auth))
            try:
                yield
            finally:
                refresher.cancel()
                health.set_draining()
                auth.refresh_cache_stats()  # the final numbers stay in the worker file
                auth.flush_log()
                auth.bind(None)
                control.router = None
                hold_control.router = None
                readiness.check = None
                serving.switch = serving.router = None

    app.cleanup_ctx.append(router_ctx)
    return app


def operator_routes(app: web.Application) -> list[web.RouteDef]:
    """The control listener's routes (``authsvc/control/listener.py``), bound to ``app``'s state."""
    # nginx holds serve's sessions: /sessions answers 501 and says so.
    return [web.post(FLUSH_PATH, app[CONTROL].operate), *app[THROTTLE_CONTROL].operator_routes(),
            *app[HOLD_CONTROL].routes(), *not_relayed_routes()]


def bind_router(app: web.Application, router: Router) -> None:
    """Answer new requests with ``router`` (at start, and after a reload).

    The metric series become those of the router's maps: a map that a reload
    brings in gets its series at once, and a retired map's series go.
    """
    app[METRICS].attach_maps(router.cache_stats(), router.map_hosts())
    app[SERVING].router = router
    app[READINESS].check = router.check_maps
    app[AUTH].bind(router)
    app[CONTROL].router = router
    app[HOLD_CONTROL].router = router


async def _refresh_periodically(auth: AuthService, every: float = 1.0) -> None:
    while True:
        await asyncio.sleep(every)
        auth.refresh_cache_stats()
