"""One ``authsvc proxy`` process (or worker) from start to exit: :func:`serve`.

It opens the maps (``authsvc/routing.py``), the metrics file, the ``Auth:``
syslog writer and the throttle, starts the listeners (``server.py``), the
health port (``health.py``) and the control listener (``control.py``), then
waits.  SIGTERM or SIGINT drains and stops
it; SIGHUP reloads the configuration (``authsvc/reload.py``): new sessions get
the new settings, maps and certificates, live ones keep theirs.

aiohttp serves only the health port and the control listener: without
``[proxy] health_listen`` or ``[control] listen`` it is never imported.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from typing import TYPE_CHECKING

from authsvc.proxy.certificates import check_tls
from authsvc.proxy.listeners import ListenerSockets
from authsvc.proxy.metrics import families
from authsvc.proxy.server import ProxyServer
from authsvc.proxy.syslog import AuthLog

from authsvc.holds.state import HOLD_FAMILIES, HoldKeeper
from authsvc.metrics import Metrics
from authsvc.reload import RELOAD_FAMILIES, Reloader, ReloadSource
from authsvc.routing import Router, open_router_switch
from authsvc.runtime.signals import SighupReload, handle_signals, release_signals
from authsvc.settings import Settings
from authsvc.throttle.service import Throttle

if TYPE_CHECKING:
    from authsvc.proxy.control import ProxyControl
    from authsvc.proxy.health import HealthEndpoint

log = logging.getLogger("proxy.server")


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    sockets: ListenerSockets | None = None,
    health_socket: socket.socket | None = None,
    run_dir: str | None = None,
    started: asyncio.Future[ProxyServer] | None = None,
    reload_from: ReloadSource | None = None,
    control_socket: socket.socket | None = None,
) -> None:
    """Run the proxy until ``stop`` is set, or SIGTERM/SIGINT; SIGHUP reloads.

    ``control_socket`` is the control port bound before the fork (else
    ``[control] listen`` is bound here, when set).
    """
    stop = stop or asyncio.Event()
    reloader: Reloader | None = None

    on_sighup = SighupReload(log, configured=reload_from is not None)
    handle_signals(stop, on_sighup)
    metrics = Metrics(run_dir, families=[*families(ls.name for ls in settings.listeners),
                                         *RELOAD_FAMILIES, *HOLD_FAMILIES])
    auth_log = (AuthLog(settings.proxy, client_ip=settings.log.client_ip)
                if settings.proxy.auth_log else None)
    # Holds first: no login may be routed before they are known (docs/operations.md).
    holds = HoldKeeper(settings.holds, metrics)
    try:
        await holds.start()
        async with open_router_switch(settings, holds=holds) as switch:
            router = switch.router
            # Opens this worker's metrics file.
            metrics.attach_maps(router.cache_stats(), router.map_hosts())
            # Counts, and the store's refusal times, shared by the workers through
            # the run directory (docs/security.md).
            throttle = Throttle(settings.throttle, directory=run_dir, refusals=True)
            server = ProxyServer(settings, router, metrics=metrics, auth_log=auth_log,
                                 throttle=throttle)
            health: HealthEndpoint | None = None
            if health_socket is not None or settings.proxy.health_listen is not None:
                from authsvc.proxy.health import HealthEndpoint

                health = HealthEndpoint(settings, router, server, metrics,
                                        throttle=throttle if throttle.enabled else None)
            control: ProxyControl | None = None
            if control_socket is not None or settings.control.listen is not None:
                from authsvc.proxy.control import ProxyControl

                control = ProxyControl(settings, router, throttle, run_dir, server, holds)
            await server.start(sockets)
            # As serve does (authsvc/http/server.py): what start-up made lives as
            # long as the process; the collector's full passes need not walk it.
            gc.collect()
            gc.freeze()

            def apply(new: Settings, new_router: Router) -> None:
                # The maps now in use.
                metrics.attach_maps(new_router.cache_stats(), new_router.map_hosts())
                server.reconfigure(new, new_router)
                if health is not None:
                    health.rebind(new_router)
                if control is not None:
                    control.rebind(new_router)

            if reload_from is not None:
                reloader = Reloader(reload_from, switch, apply, metrics=metrics,
                                    check=check_tls)
                on_sighup.ready(reloader)
            try:
                if control is not None:
                    await control.start(control_socket)
                if health is not None:
                    await health.start(health_socket)
                    health.set_ready()
                if started is not None:
                    started.set_result(server)
                await stop.wait()
            finally:
                if health is not None:
                    health.set_draining()
                log.info("", extra={"fields": {"event": "stopping", "sessions": server.sessions}})
                await server.stop(switch.router.settings.proxy.drain_timeout)
                metrics.set_cache_stats(switch.router.cache_stats())
                metrics.set_map_hosts(switch.router.map_hosts())
                if health is not None:
                    await health.stop()
                if control is not None:
                    await control.stop()
                await throttle.close()
                if reloader is not None:
                    await reloader.close()
    finally:
        await holds.close()
        metrics.close()
        if auth_log is not None:
            auth_log.close()
        release_signals()
