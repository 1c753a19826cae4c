"""One serving process: the aiohttp app on a listening socket, until SIGTERM.

``run_server`` is what a worker runs (or the only process, without
``--workers``).  On SIGTERM or SIGINT it marks itself draining (``/readyz``
503), stops accepting, lets requests in flight finish (up to
``drain_timeout``), closes the maps and returns 0.  SIGHUP reloads the
configuration (``authsvc/reload.py``) when the process knows its files.  The
control listener (``[control] listen``, and with workers the peer socket in
the run directory) serves the operator's commands beside it
(``authsvc/control/listener.py``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket

from aiohttp import web

from authsvc.control.fanout import Peers
from authsvc.control.listener import ControlListener
from authsvc.holds.state import HOLD_FAMILIES
from authsvc.http.app import AUTH, HEALTH, SERVING, bind_router, create_app, operator_routes
from authsvc.http.site import NginxSite
from authsvc.http.wire import MAX_FIELD_SIZE
from authsvc.metrics import Metrics
from authsvc.reload import RELOAD_FAMILIES, Reloader, ReloadSource
from authsvc.routing import MapBuilder, open_map
from authsvc.runtime.binding import describe_socket
from authsvc.runtime.signals import SighupReload, handle_signals, release_signals
from authsvc.settings import Settings

logger = logging.getLogger("authsvc.serve")


async def run_server(
    settings: Settings,
    sock: socket.socket,
    *,
    run_dir: str | None = None,
    drain_timeout: float | None = None,
    stop: asyncio.Event | None = None,
    started: asyncio.Future[web.Application] | None = None,
    build_map: MapBuilder = open_map,
    reload_from: ReloadSource | None = None,
    control_socket: socket.socket | None = None,
) -> int:
    """Serve on ``sock`` until SIGTERM/SIGINT (or ``stop`` is set); returns the exit code.

    ``started`` receives the application once the socket accepts; tests use
    it and ``stop``/``build_map`` to drive a real server in process.
    ``control_socket`` is the control port bound before the fork (else
    ``[control] listen`` is bound here, when set).
    """
    metrics = Metrics(run_dir, families=[*RELOAD_FAMILIES, *HOLD_FAMILIES])
    peers = Peers(run_dir) if run_dir is not None else None
    app = create_app(settings, metrics, peers=peers, build_map=build_map)
    verbose = settings.log.connection_logging or settings.log.level == "debug"
    drain = drain_timeout if drain_timeout is not None else max(5.0,
                                                                 settings.nginx.auth_http_timeout)
    # nginx escapes a login of up to its client buffer (4-8 KB) into three times
    # as many bytes (every byte can become %XX).  aiohttp's default 8190-byte
    # header limit would answer 400, which nginx shows as an internal error; with
    # room to spare, an over-long login reaches the login rules and gets a proper
    # refusal.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("aiohttp.access") if verbose else None,
        shutdown_timeout=drain,
        max_field_size=MAX_FIELD_SIZE,
        max_line_size=MAX_FIELD_SIZE,
    )
    stop = stop if stop is not None else asyncio.Event()
    reloader: Reloader | None = None
    site = NginxSite(runner, sock, app[AUTH], path=settings.http.path, drain_timeout=drain,
                     head_timeout=settings.http.head_timeout, backlog=1024)

    on_sighup = SighupReload(logger, configured=reload_from is not None)
    control = ControlListener(settings.control, operator_routes(app), peers)

    handle_signals(stop, on_sighup)
    try:
        await runner.setup()  # opens the router (cleanup_ctx)
        switch = app[SERVING].switch
        if reload_from is not None and switch is not None:
            reloader = Reloader(reload_from, switch,
                                lambda _settings, router: bind_router(app, router),
                                metrics=metrics)
            on_sighup.ready(reloader)
        await site.start()
        await control.start(control_socket)
        # Everything made so far (modules, settings, pools) lives as long as the
        # process: keep it out of the collector's full passes, which would
        # otherwise walk it all again and again and show up as latency spikes.
        gc.collect()
        gc.freeze()
        logger.info("", extra={"fields": {"event": "listening", "on": describe_socket(sock),
                                          "path": settings.http.path}})
        if started is not None:
            started.set_result(app)
        await stop.wait()
        logger.info("", extra={"fields": {"event": "draining"}})
        app[HEALTH].set_draining()
    finally:
        await site.stop()  # stop accepting, finish the replies it has in flight
        await control.stop()
        await runner.cleanup()  # finish aiohttp's requests, close maps
        if reloader is not None:
            await reloader.close()  # maps retired by a reload, after the last request
        metrics.close()
        release_signals()
    logger.info("", extra={"fields": {"event": "stopped"}})
    return 0
