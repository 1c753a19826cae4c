"""The route cache in front of every map: TTL caches, shared queries, stale-if-error.

* Routes and "no such key" answers are kept in two ``cachetools.TTLCache``s
  with their own TTLs (``CacheSettings.ttl`` and ``negative_ttl``) and one size
  bound.  cachetools' decorators do not await coroutines (tkem/cachetools#112),
  so the caches are used as plain mappings here.
* Concurrent lookups of one key share one query to the map: the first caller
  asks in its own task and leaves a future for the others (a dict of them),
  so a burst of logins for one mailbox costs the database one SELECT.  If the
  first caller gives up (cancelled), the others ask again.
* :class:`MapUnavailable` is never cached.  While the map raises it, a route
  learnt less than ``ttl + stale_if_error`` seconds ago is served from a
  separate bounded store with ``stale=True`` (Perdition has no cache and fails
  every login while its database is down, docs/maps.md).
* :meth:`CachedMap.invalidate` drops one key, a domain or everything, from the
  stale store too, so a moved mailbox never comes back stale.
* :meth:`CachedMap.close` answers every lookup still in flight, and every
  later one, with ``MapUnavailable("closed")``: a reload closes a retired map
  while sessions that took the old router may still be asking it.
* The clock is injected, so tests move time instead of sleeping.

The hit path is two dict-like lookups and a counter: microseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from cachetools import TTLCache

from authsvc.maps import NOT_CACHED, MapBackend, MapEntry, MapUnavailable, Peeked
from authsvc.settings import CacheSettings

V = TypeVar("V")

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(slots=True)
class CacheStats:
    """Counters for /metrics; every lookup adds to exactly one of the first four.

    ``hits``: answered from the route cache.  ``negative_hits``: answered
    "absent" from the negative cache.  ``misses``: had to wait for the map
    (``coalesced`` of those joined a query already running).  ``stale``: of
    the misses, answered from the stale store because the map was down.
    ``errors``: queries the map failed (one per query, however many lookups
    shared it).  ``map_up``: the map's last answer was not an error.
    """

    hits: int = 0
    misses: int = 0
    negative_hits: int = 0
    stale: int = 0
    errors: int = 0
    coalesced: int = 0
    map_up: bool = True


class _Abandoned(Exception):
    """The caller that was asking the map gave up before it answered."""


def _settle(shared: asyncio.Future[MapEntry | None], exc: BaseException) -> None:
    """Pass ``exc`` to the callers sharing a query; marked retrieved, as there may be none."""
    shared.set_exception(exc)
    shared.exception()


def _closed() -> MapUnavailable:
    return MapUnavailable("closed")


def _put(cache: TTLCache[str, V], key: str, value: V) -> None:
    if cache.maxsize > 0:  # max_size 0 turns the store off (TTLCache would raise)
        cache[key] = value


class CachedMap:
    """A :class:`MapBackend` that caches another one: the one :class:`~authsvc.maps.RouteCache`."""

    def __init__(
        self,
        inner: MapBackend,
        settings: CacheSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        delimiter: str = "@",
    ) -> None:
        self._inner = inner
        self._settings = settings
        self._delimiter = delimiter
        size = max(settings.max_size, 0)
        self._hits: TTLCache[str, MapEntry] = TTLCache(size, settings.ttl, timer=clock)
        self._misses: TTLCache[str, bool] = TTLCache(size, settings.negative_ttl, timer=clock)
        # Last good routes, already marked stale, kept ttl + stale_if_error seconds.
        self._stale: TTLCache[str, MapEntry] = TTLCache(
            size if settings.stale_if_error > 0 else 0,
            settings.ttl + max(settings.stale_if_error, 0.0),
            timer=clock,
        )
        self._inflight: dict[str, asyncio.Future[MapEntry | None]] = {}
        # Bumped by invalidate(): a query that started before must not refill the cache.
        self._generation = 0
        self._closed = False
        self.stats = CacheStats()
        # Built once: the router asks for it on every request (Trace.map_description).
        self._description = (
            f"{inner.describe()} [cache: ttl {settings.ttl:g}s, "
            f"negative {settings.negative_ttl:g}s, stale-if-error {settings.stale_if_error:g}s]"
        )

    @property
    def inner(self) -> MapBackend:
        return self._inner

    def peek(self, key: str) -> Peeked:
        """The cached answer, counted as a hit, or NOT_CACHED (nothing counted).

        The router's synchronous path (``Router.route_now``) asks this first
        and awaits :meth:`lookup` only for NOT_CACHED.
        """
        entry = self._cached(key)
        if entry is None:
            self.stats.negative_hits += 1
        elif entry is not NOT_CACHED:
            self.stats.hits += 1
        return entry

    def _cached(self, key: str) -> Peeked:
        """What the route and negative caches hold for ``key``; counts nothing."""
        entry = self._hits.get(key)
        if entry is not None:
            return entry
        return None if key in self._misses else NOT_CACHED

    async def lookup(self, key: str) -> MapEntry | None:
        entry = self.peek(key)
        if entry is not NOT_CACHED:
            return entry
        return await self._wait_for_map(key)

    async def _wait_for_map(self, key: str) -> MapEntry | None:
        stats = self.stats
        stats.misses += 1
        try:
            while True:
                shared = self._inflight.get(key)
                if shared is None:
                    return await self._ask(key)
                stats.coalesced += 1
                try:
                    # shield: this caller giving up (client gone) must not
                    # cancel the answer the others are waiting for.
                    return await asyncio.shield(shared)
                except _Abandoned:
                    # The caller that asked gave up.  Another may have asked
                    # again and been answered already; else ask again.
                    entry = self._cached(key)
                    if entry is not NOT_CACHED:
                        return entry
        except MapUnavailable:
            stale = self._stale.get(key)
            if stale is None or self._closed:
                raise
            stats.stale += 1
            return stale

    async def _ask(self, key: str) -> MapEntry | None:
        """Ask the map, in the first caller's own task; later callers share the answer.

        No task of its own: a miss is a login's whole cost after a hit, and a
        task, its shield and their callbacks were a quarter of it.  If this
        caller gives up, the callers sharing its query ask again.
        """
        if self._closed:
            raise _closed()
        shared: asyncio.Future[MapEntry | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = shared
        generation = self._generation
        try:
            entry = await self._inner.lookup(key)
        except MapUnavailable as exc:
            if shared.done():  # close() answered the others already
                raise _closed() from exc
            self.stats.errors += 1
            self.stats.map_up = False
            _settle(shared, exc)
            raise
        except Exception as exc:  # a bug: every caller sees it, as the first one does
            if shared.done():
                raise _closed() from exc
            _settle(shared, exc)
            raise
        except BaseException:  # cancelled: the first caller gave up
            if not shared.done():
                _settle(shared, _Abandoned())
            raise
        finally:
            if self._inflight.get(key) is shared:
                del self._inflight[key]
        if shared.done():  # closed while the map was answering
            raise _closed()
        self.stats.map_up = True
        if generation == self._generation:
            if entry is None:
                _put(self._misses, key, True)
                self._stale.pop(key, None)
            else:
                _put(self._hits, key, entry)
                # MapEntry(...) directly: dataclasses.replace costs several times more.
                _put(self._stale, key, MapEntry(entry.host, entry.port, entry.user, stale=True))
        shared.set_result(entry)
        return entry

    def invalidate(self, *, key: str | None = None, domain: str | None = None) -> int:
        """Drop one key, every key ending in ``@domain``, or (neither given) everything.

        Returns how many keys were dropped.  The domain compares without ASCII
        case, as domains do.
        """
        self._generation += 1
        stores = (self._hits, self._misses, self._stale)
        if key is None and domain is None:
            dropped = set(self._keys(stores))
            for store in stores:
                store.clear()
            self._inflight.clear()
            return len(dropped)
        suffix = None if domain is None else (self._delimiter + domain).translate(_ASCII_FOLD)

        def doomed_key(k: str) -> bool:
            return k == key or (suffix is not None and k.translate(_ASCII_FOLD).endswith(suffix))

        if suffix is None:  # one key: no need to walk the whole cache
            doomed = {k for k in (key,) if k is not None and any(k in st for st in stores)}
        else:
            doomed = {k for k in self._keys(stores) if doomed_key(k)}
        for k in doomed:
            for store in stores:
                store.pop(k, None)
        # Lookups after this call ask the map again instead of joining an older query.
        for k in [k for k in self._inflight if doomed_key(k)]:
            del self._inflight[k]
        return len(doomed)

    @staticmethod
    def _keys(stores: Iterable[TTLCache[str, MapEntry] | TTLCache[str, bool]]) -> list[str]:
        return [k for store in stores for k in list(store)]

    async def check(self) -> None:
        try:
            await self._inner.check()
        except MapUnavailable:
            self.stats.map_up = False
            raise
        self.stats.map_up = True

    def describe(self) -> str:
        return self._description

    async def close(self) -> None:
        """Answer the lookups in flight with MapUnavailable("closed"), then close the map.

        The callers sharing a query get it at once; the first caller, still
        waiting for the map, gets it when the map answers or fails (the MySQL
        map fails its waiting queries when closed).  Lookups after this get it
        too.
        """
        self._closed = True
        shared, self._inflight = list(self._inflight.values()), {}
        for future in shared:
            if not future.done():
                _settle(future, _closed())
        for store in (self._hits, self._misses, self._stale):
            store.clear()
        await self._inner.close()
