"""``/healthz``, ``/readyz`` and ``/metrics``: shared by ``authsvc serve`` and the proxy.

* ``/healthz`` is liveness: the event loop answers.  No I/O.
* ``/readyz`` is what HAProxy's ``option httpchk GET /readyz`` asks
  (docs/operations.md): 503 while the process starts or drains, 200 otherwise.  A map that is
  down does NOT make it 503 unless ``http.ready_requires_map`` is set: a shared
  database outage must not take every node out of the pool at once, since the
  nodes can still serve cached routes.  The body reports the status and each
  map's name and whether it is up; why a map is down (the database's host,
  port, table or query can be in it) is reported only to a caller the
  front end trusts (``authsvc/control/trust.py``: the unix socket or the
  shared secret), never to a load balancer that only reads the status code.
  The map check runs at most once per ``ttl`` seconds however often HAProxy
  asks.
* ``/metrics`` is the Prometheus text of a :class:`~authsvc.metrics.Metrics`,
  and ``authsvc_ready``: what ``/readyz`` would answer, from the last map
  check (a scrape never starts one), for the alert on a node not ready.

Nothing here knows about auth_http, the proxy or the router: a front end
passes a :class:`Health` and a map-check callable, and both faces serve the
same handlers.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from authsvc.exposition import Family, header

MapStates = Mapping[str, str | None]
#: Each map's state: None when it answers, else why it cannot (Router.check_maps).
MapCheck = Callable[[], Awaitable[MapStates]]
#: Whether a request may read why a map is down (the front end's control trust check).
Trust = Callable[[web.Request], bool]
#: 1 while /readyz would answer 200 (``/metrics``).
_READY = Family("authsvc_ready", "gauge", "1 when /readyz answers 200 on the worker scraped.")


class Phase(enum.Enum):
    """Where a process is in its life, as /readyz reports it."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


class Health:
    """The process phase; the front end moves it, /readyz reads it."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING

    def set_ready(self) -> None:
        self.phase = Phase.READY

    def set_draining(self) -> None:
        self.phase = Phase.DRAINING


class Readiness:
    """The /readyz decision, with the map check cached for ``ttl`` seconds."""

    def __init__(
        self,
        health: Health,
        check: MapCheck | None = None,
        *,
        requires_map: bool = False,
        ttl: float = 1.5,
        timeout: float = 2.0,
        on_result: Callable[[MapStates], None] | None = None,
    ) -> None:
        self.health = health
        self.check = check
        self._requires_map = requires_map
        self._ttl = ttl
        self._timeout = timeout
        self._on_result = on_result
        self._result: MapStates = {}
        self._checked_at = float("-inf")
        self._pending: asyncio.Future[MapStates] | None = None

    async def maps(self) -> MapStates:
        """The latest map states, checking again when older than ``ttl``."""
        if self.check is None:
            return {}
        if time.monotonic() - self._checked_at < self._ttl:
            return self._result
        if self._pending is None:
            # Concurrent probes share one check instead of piling onto the database.
            self._pending = asyncio.ensure_future(self._run_check(self.check))
        pending = self._pending
        return await asyncio.shield(pending)

    async def _run_check(self, check: MapCheck) -> MapStates:
        try:
            async with asyncio.timeout(self._timeout):
                result = dict(await check())
        except TimeoutError:
            result = {name: "check timed out" for name in self._result} or {
                "maps": "check timed out"
            }
        except Exception as exc:  # a bug in a map's check must not break the probe
            result = {name: f"check failed: {type(exc).__name__}" for name in self._result} or {
                "maps": f"check failed: {type(exc).__name__}"
            }
        finally:
            self._pending = None
        self._result, self._checked_at = result, time.monotonic()
        if self._on_result is not None:
            self._on_result(result)
        return result

    def ready_now(self) -> bool:
        """Whether /readyz would answer 200, from the last map check (no new one)."""
        if self.health.phase is not Phase.READY:
            return False
        down = any(error is not None for error in self._result.values())
        return not (down and self._requires_map)

    def exposition(self) -> str:
        """``authsvc_ready`` in the Prometheus text format, for ``/metrics``."""
        return "\n".join([*header(_READY), f"{_READY.name} {1 if self.ready_now() else 0}", ""])

    async def report(self, *, details: bool = False) -> tuple[int, dict[str, object]]:
        """(HTTP status, JSON body) for /readyz; ``details`` adds why each map is down."""
        phase = self.health.phase
        body: dict[str, object] = {"status": phase.value}
        if phase is not Phase.READY:
            return 503, body
        states = await self.maps()
        body["maps"] = {
            name: {"up": True} if error is None
            else {"up": False, "error": error} if details else {"up": False}
            for name, error in states.items()
        }
        down = any(error is not None for error in states.values())
        if down:
            # "degraded": cached routes are still served; "not_ready": this site
            # asked for map failure to take the node out (ready_requires_map).
            body["status"] = "not_ready" if self._requires_map else "degraded"
        status = 503 if down and self._requires_map else 200
        return status, body


def health_routes(
    readiness: Readiness, render_metrics: Callable[[], str] | None = None, *, trust: Trust,
) -> list[web.RouteDef]:
    """The handlers, to add with ``app.router.add_routes(...)``.

    ``trust`` says which /readyz callers see why a map is down; everyone else
    gets the status and the maps' names (docs/security.md, "Readiness").
    """

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        status, body = await readiness.report(details=trust(request))
        return web.Response(status=status, text=json.dumps(body) + "\n",
                            content_type="application/json")

    routes = [web.get("/healthz", healthz), web.get("/readyz", readyz)]
    if render_metrics is not None:

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(
                body=(render_metrics() + readiness.exposition()).encode(),
                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
            )

        routes.append(web.get("/metrics", metrics))
    return routes
