"""The one routing core: a login request in, a route or a refusal out.

``authsvc serve`` (nginx's auth_http) and ``authsvc proxy`` both build a
:class:`LoginRequest` and call :meth:`Router.route`.  Nothing else normalises
names (:mod:`authsvc.login`) or reads maps (:mod:`authsvc.maps`); the layering
test in tests/unit/test_layering.py enforces that.  No password ever reaches
this module: authsvc routes, the store checks.  A refusal carries a
:class:`~authsvc.failures.FailureKind`; what each kind means to the client, the
throttle, the metrics and Perdition's ``Auth:`` line is the table in
:mod:`authsvc.failures`, which both faces read.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from authsvc import login as login_rules
from authsvc.failures import FailureKind as FailureKind  # what a Refusal says
from authsvc.holds.rules import Hold, describe, host_key
from authsvc.maps import NOT_CACHED, MapBackend, MapEntry, MapUnavailable, ReportsHosts, RouteCache
from authsvc.maps.cached import CachedMap
from authsvc.maps.factory import MapBuilder as MapBuilder  # for the front ends' signatures
from authsvc.maps.factory import MapShelf
from authsvc.maps.factory import open_map as open_map
from authsvc.maps.file import FileMap
from authsvc.settings import BackendTls, HostPort, ListenerSettings, MailProtocol, Settings, Stage


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """What both front ends know about a login attempt; no password field."""

    login: str
    protocol: MailProtocol
    #: The listener's name (``imap4``, ``imaps``, ...); None = first of protocol.
    listener: str | None = None
    client_ip: str | None = None
    #: The name of the local address the client reached, for add_domain.
    local_name: str | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Route:
    """Where to send the session, and as whom."""

    host: str
    port: int
    backend_login: str
    backend_tls: BackendTls
    key: str
    listener: str
    #: "map", "stale" (served from cache while the map is down) or "default".
    source: str = "map"


@dataclass(frozen=True, slots=True)
class Refusal:
    """No route; ``reason`` is for logs only and never goes to a client."""

    kind: FailureKind
    reason: str
    key: str | None = None
    listener: str | None = None


Decision = Route | Refusal


class HoldCheck(Protocol):
    """The operator's holds (``authsvc/holds/state.py``), asked about every route."""

    def check(self, key: str, host: str, port: int) -> Hold | None: ...


@dataclass(slots=True)
class Trace:
    """Every step of one routing decision, for ``authsvc lookup``."""

    listener: str | None = None
    lookup_steps: list[login_rules.Step] = field(default_factory=list)
    key: str | None = None
    map_description: str = ""
    map_answer: str = ""
    backend_steps: list[login_rules.Step] = field(default_factory=list)
    decision: Decision | None = None
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What :meth:`Router._prepare` found: the listener, the map key and the map."""

    listener: ListenerSettings
    key: str
    backend: MapBackend


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A copy of one map cache's counters (``Router.cache_stats()``)."""

    hits: int
    misses: int
    negative_hits: int
    stale: int
    errors: int
    map_up: bool


class Router:
    """Routes logins through each listener's login rules and map."""

    def __init__(self, settings: Settings, maps: Mapping[str, MapBackend],
                 holds: HoldCheck | None = None) -> None:
        """``holds``: checked after the map on every route (docs/operations.md, "Holds")."""
        self._settings = settings
        self._maps = maps
        self._holds = holds
        #: The listeners whose map has a route cache (checked once, not per login).
        self._caches = {name: m for name, m in maps.items() if isinstance(m, RouteCache)}
        # Each map's label (``MapSettings.label``) and the distinct maps that
        # carry it: listeners that share a map, or read one table, share its
        # series in /metrics and its line in /readyz.
        labelled: dict[str, dict[int, MapBackend]] = {}
        for ls in settings.listeners:
            backend = maps.get(ls.name)
            if backend is not None:
                labelled.setdefault(ls.map.label, {})[id(backend)] = backend
        self._labelled = {label: list(found.values()) for label, found in labelled.items()}
        self._labelled_caches = {
            label: [b for b in backends if isinstance(b, RouteCache)]
            for label, backends in self._labelled.items()
        }
        # Perdition rotates outgoing_server per login attempt (perdition/perdition.c).
        self._rotation = {
            ls.name: itertools.cycle(ls.default_servers)
            for ls in settings.listeners
            if ls.default_servers
        }

    @property
    def settings(self) -> Settings:
        return self._settings

    def listener_for(self, request: LoginRequest) -> ListenerSettings | None:
        """The listener a request names, or the first one of its protocol."""
        if request.listener is not None:
            found = self._settings.listener(request.listener)
            if found is None or found.protocol is not request.protocol:
                return None
            return found
        return self._settings.first_listener(request.protocol)

    async def route(self, request: LoginRequest) -> Decision:
        """Route one login attempt."""
        decision = self.route_now(request)
        return decision if isinstance(decision, Route | Refusal) else await decision

    def route_now(self, request: LoginRequest) -> Decision | Awaitable[Decision]:
        """:meth:`route` without waiting when nothing needs waiting for.

        A cached answer (or a refusal that needs no map) is decided here, in
        the caller's stack frame: nginx's auth requests are answered without a
        task or a coroutine (``authsvc/http/wire.py``).  Otherwise the rest,
        asking the map, is returned as an awaitable the caller must await.
        """
        prepared = self._prepare(request, None)
        if isinstance(prepared, Refusal):
            return prepared
        cache = self._caches.get(prepared.listener.name)
        if cache is not None:  # it may know the answer already
            entry = cache.peek(prepared.key)
            if entry is not NOT_CACHED:
                return self._finish(request, prepared, entry, None)
        return self._ask_map(request, prepared, None)

    async def trace(self, request: LoginRequest) -> Trace:
        """Route one login attempt and record every step on the way."""
        started = time.perf_counter()
        trace = Trace()
        prepared = self._prepare(request, trace)
        trace.decision = (prepared if isinstance(prepared, Refusal)
                          else await self._ask_map(request, prepared, trace))
        trace.seconds = time.perf_counter() - started
        return trace

    async def _ask_map(self, request: LoginRequest, prepared: _Prepared,
                       trace: Trace | None) -> Decision:
        """The map's answer (through its cache) made into a decision."""
        listener, key, backend = prepared.listener, prepared.key, prepared.backend
        if trace is not None:
            trace.map_description = backend.describe()
        try:
            entry = await backend.lookup(key)
        except MapUnavailable as exc:
            if trace is not None:
                trace.map_answer = f"unavailable: {exc}"
            if not (listener.map.default_server_on_error and listener.default_servers):
                return Refusal(
                    FailureKind.MAP_UNAVAILABLE, str(exc), key=key, listener=listener.name
                )
            entry = None
        else:
            if trace is not None:
                trace.map_answer = str(entry) if entry is not None else "no entry"
        return self._finish(request, prepared, entry, trace)

    def _prepare(self, request: LoginRequest, trace: Trace | None) -> _Prepared | Refusal:
        """Listener, login checks and the lookup key: everything before the map."""
        listener = self.listener_for(request)
        if listener is None:
            return Refusal(
                FailureKind.UNKNOWN_LISTENER,
                f"no {request.protocol.value} listener named {request.listener!r}",
            )
        policy = listener.login
        try:
            login_rules.check_login(request.login, policy)
        except login_rules.LoginRejected as exc:
            if trace is not None:
                trace.listener = listener.name
            return Refusal(FailureKind.BAD_LOGIN, str(exc), listener=listener.name)
        steps = login_rules.normalise_steps(request.login, Stage.LOOKUP, policy,
                                            request.local_name)
        key = steps[-1].value
        if trace is not None:
            trace.listener = listener.name
            trace.lookup_steps = steps
            trace.key = key
        return _Prepared(listener, key, self._maps[listener.name])

    def _finish(self, request: LoginRequest, prepared: _Prepared, entry: MapEntry | None,
                trace: Trace | None) -> Decision:
        """The map's answer (None: absent or unavailable) made into a route or refusal."""
        listener, policy = prepared.listener, prepared.listener.login
        source = "stale" if entry is not None and entry.stale else "map"
        if entry is None:
            entry = self._default_server(listener)
            source = "default"
            if entry is None:
                return Refusal(
                    FailureKind.NO_ROUTE, "not in map", key=prepared.key, listener=listener.name
                )

        backend_name = request.login
        if policy.username_from_database and entry.user:
            backend_name = entry.user
        steps = login_rules.normalise_steps(
            backend_name, Stage.BACKEND_LOGIN, policy, request.local_name
        )
        if trace is not None:
            trace.backend_steps = steps
        port = entry.port if entry.port is not None else listener.default_port
        if self._holds is not None:
            # After the map: the hold is on where this route goes now, so a user the
            # map has moved is not held by a hold on the old store.  Every route,
            # cached or not, passes here (route_now and _ask_map both end here).
            hold = self._holds.check(prepared.key, entry.host, port)
            if hold is not None:
                return Refusal(FailureKind.HELD, f"held: {describe(hold)}",
                               key=prepared.key, listener=listener.name)
        return Route(
            host=entry.host,
            port=port,
            backend_login=steps[-1].value,
            backend_tls=listener.backend_tls,
            key=prepared.key,
            listener=listener.name,
            source=source,
        )

    def _default_server(self, listener: ListenerSettings) -> MapEntry | None:
        rotation = self._rotation.get(listener.name)
        if rotation is None:
            return None
        server: HostPort = next(rotation)
        return MapEntry(host=server.host, port=server.port)

    def store_named(self, host: str, port: int | None) -> bool | None:
        """Whether a listener's map or outgoing_server names the store ``host[:port]``.

        None when it cannot be told cheaply: a MySQL or regex map cannot list
        its stores.  For ``authsvc hold store``'s answer only.
        """
        host = host_key(host)
        unknown = False
        for listener in self._settings.listeners:
            named = [(s.host, s.port if s.port is not None else listener.default_port)
                     for s in listener.default_servers]
            backend = self._maps.get(listener.name)
            if isinstance(backend, CachedMap):
                backend = backend.inner
            if isinstance(backend, FileMap):
                try:
                    named += [(h, p if p is not None else listener.default_port)
                              for h, p in backend.stores()]
                except MapUnavailable:
                    unknown = True
            elif backend is not None and listener.map.kind != "none":
                unknown = True
            if any(host_key(h) == host and (port is None or p == port) for h, p in named):
                return True
        return None if unknown else False

    def invalidate(self, *, key: str | None = None, domain: str | None = None) -> int:
        """Drop cached routes (a key, a domain, or all) from every map's cache."""
        caches = {id(c): c for c in self._caches.values()}.values()
        return sum(cache.invalidate(key=key, domain=domain) for cache in caches)

    def cache_stats(self) -> dict[str, CacheStats | None]:
        """Each map's cache counters by label; None for a map without cache.

        For ``/metrics``: the caches live in ``maps/cached.py``, which only this
        module may touch.  The maps that share a label add up.  Reads
        attributes only, no I/O.
        """
        out: dict[str, CacheStats | None] = {}
        for label, caches in self._labelled_caches.items():
            counters = [cache.stats for cache in caches]
            out[label] = None if not counters else CacheStats(
                hits=sum(c.hits for c in counters),
                misses=sum(c.misses for c in counters),
                negative_hits=sum(c.negative_hits for c in counters),
                stale=sum(c.stale for c in counters),
                errors=sum(c.errors for c in counters),
                map_up=all(c.map_up for c in counters),
            )
        return out

    def map_hosts(self) -> dict[str, list[tuple[str, int, bool]]]:
        """For maps with a host list: each host, its answers, whether a map uses it now.

        By label, like :meth:`cache_stats`; the maps that share a label add up
        (a host is in use when any of them uses it).  Reads attributes only.
        """
        out: dict[str, list[tuple[str, int, bool]]] = {}
        for label, backends in self._labelled.items():
            hosts: dict[str, tuple[int, bool]] = {}
            for backend in backends:
                inner = backend.inner if isinstance(backend, CachedMap) else backend
                if not isinstance(inner, ReportsHosts):
                    continue
                for host, answers, in_use in inner.host_answers():
                    before, used = hosts.get(host, (0, False))
                    hosts[host] = (before + answers, used or in_use)
            if hosts:
                out[label] = [(host, n, used) for host, (n, used) in hosts.items()]
        return out

    async def check_maps(self) -> dict[str, str | None]:
        """Each map's state by label: None when it answers, else the reason it cannot."""
        states: dict[str, str | None] = {}
        for label, backends in self._labelled.items():
            states[label] = None
            for backend in backends:
                try:
                    await backend.check()
                except MapUnavailable as exc:
                    states[label] = str(exc) or "unavailable"
                    break
        return states


@asynccontextmanager
async def open_router(settings: Settings) -> AsyncIterator[Router]:
    """Open every listener's map (shared where settings agree) and build the Router."""
    async with open_router_switch(settings) as switch:
        yield switch.router


class RouterSwitch:
    """The current :class:`Router` of a long-running front end, replaced on reload.

    Sessions that already hold a Router keep it; new logins take
    :attr:`router`.  MySQL maps with unchanged settings carry over with their
    caches (``maps/factory.py:MapShelf``).  ``build`` makes each map
    (``maps/factory.py:open_map``; tests pass their own).
    """

    def __init__(self, settings: Settings, build: MapBuilder = open_map,
                 holds: HoldCheck | None = None) -> None:
        self._shelf = MapShelf(build)
        self._holds = holds  # the same holds for every Router: a reload keeps them
        maps, _ = self._shelf.build(settings)
        self.router = Router(settings, maps, holds)

    def replace(self, settings: Settings) -> tuple[Router, Callable[[], Awaitable[None]]]:
        """Switch to a Router for ``settings``; returns it and a closer for the retired maps.

        The caller runs the closer once sessions that may still be looking up
        in the retired maps are done (reload.py waits a grace period).
        """
        maps, retired = self._shelf.build(settings)
        self.router = Router(settings, maps, self._holds)

        async def close_retired() -> None:
            for backend in retired:
                await backend.close()

        return self.router, close_retired

    async def close(self) -> None:
        await self._shelf.close()


@asynccontextmanager
async def open_router_switch(settings: Settings, build: MapBuilder = open_map,
                             holds: HoldCheck | None = None) -> AsyncIterator[RouterSwitch]:
    """Like :func:`open_router`, but the Router can be replaced while open."""
    switch = RouterSwitch(settings, build, holds)
    try:
        yield switch
    finally:
        await switch.close()
