"""The aiohttp application of ``authsvc serve``: routes, typed keys and the router's lifetime.

``create_app(settings, metrics)`` wires the auth handler (``GET <http.path>``),
``/healthz``, ``/readyz``, ``/metrics`` and ``POST /cache/flush``.  The router,
and with it every map and database pool, lives in a ``cleanup_ctx``: opened
before the first request, closed after the last one.  Tests pass their own
``open_router_fn`` to route through fake maps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from aiohttp import hdrs, web

from authsvc.http.auth_http import AuthService
from authsvc.http.control import FLUSH_PATH, CacheControl, Peers
from authsvc.http.health import Health, MapStates, Readiness, health_routes
from authsvc.http.resolve import Resolver
from authsvc.metrics import Metrics
from authsvc.routing import Router, RouterSwitch, open_router, open_router_switch
from authsvc.settings import Settings
from authsvc.throttle.control import ThrottleControl
from authsvc.throttle.service import Throttle

RouterFactory = Callable[[Settings], AbstractAsyncContextManager[Router]]

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
HEALTH = web.AppKey("health", Health)
READINESS = web.AppKey("readiness", Readiness)
AUTH = web.AppKey("auth", AuthService)
CONTROL = web.AppKey("control", CacheControl)
#: Present only between startup and cleanup.
ROUTER = web.AppKey("router", Router)
#: Present when the router can be reloaded (the real one, not a test's).
ROUTERS = web.AppKey("routers", RouterSwitch)


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Every byte counts against nginx's 1024-byte reply buffer (ngx_mail_auth_http_module.c,
    # docs/serve.md), and the aiohttp version is nobody's business.
    response.headers.popall(hdrs.SERVER, None)


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    health: Health | None = None,
    peers: Peers | None = None,
    resolver: Resolver | None = None,
    open_router_fn: RouterFactory = open_router,
) -> web.Application:
    """The application; the router opens when the app starts."""
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
    control = CacheControl(settings.http.secret, settings.http.secret_header, peers)

    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[HEALTH] = health
    app[READINESS] = readiness
    app[AUTH] = auth
    app[CONTROL] = control
    app.router.add_get(settings.http.path, auth.handle)
    def render_metrics() -> str:
        auth.refresh_cache_stats()  # this worker's cache counters, current to the scrape
        return metrics.render() + throttle.render_metrics()

    app.router.add_routes(health_routes(readiness, render_metrics))
    app.router.add_post(FLUSH_PATH, control.handle)
    app.router.add_routes(ThrottleControl(throttle, settings.http.secret,
                                          settings.http.secret_header).routes())
    app.on_cleanup.append(lambda _app: throttle.close())
    app.on_response_prepare.append(_drop_server_header)

    async def router_ctx(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if open_router_fn is open_router:
                # The real router can be replaced by a reload (authsvc/reload.py).
                switch = await stack.enter_async_context(open_router_switch(settings))
                app[ROUTERS] = switch
                router = switch.router
            else:
                router = await stack.enter_async_context(open_router_fn(settings))
            bind_router(app, router)
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
                readiness.check = None

    app.cleanup_ctx.append(router_ctx)
    return app


def bind_router(app: web.Application, router: Router) -> None:
    """Answer new requests with ``router`` (at start, and after a reload).

    A map that a reload brings in gets its metric series at once.
    """
    app[METRICS].attach_maps(router.cache_stats())
    app[ROUTER] = router
    app[READINESS].check = router.check_maps
    app[AUTH].bind(router)
    app[CONTROL].router = router


async def _refresh_periodically(auth: AuthService, every: float = 1.0) -> None:
    while True:
        await asyncio.sleep(every)
        auth.refresh_cache_stats()
