"""The map interface: what every route map (file, regex, MySQL, cache) offers.

A map answers one question: which ``[user@]server[:port]`` holds this key.
``None`` means the key is definitely absent; :class:`MapUnavailable` means the
map could not answer (database down, query timed out), which is never the same
as a missing user.  Only :mod:`authsvc.routing` calls maps.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

# The counters a cache reports are declared where they are read (/metrics).
from authsvc.metrics import CacheCounters


class MapUnavailable(Exception):
    """The map could not answer now; the caller must treat it as temporary."""


class NotCached(enum.Enum):
    """The one value of :data:`NOT_CACHED`."""

    NOT_CACHED = "not cached"


#: What a cache's ``peek`` answers when only the map itself knows.
NOT_CACHED = NotCached.NOT_CACHED


@dataclass(frozen=True, slots=True)
class MapEntry:
    """A map's answer for one key, already split (perdition/server_port.c)."""

    host: str
    port: int | None = None
    #: The ``user@`` part; used as the backend login only with username_from_database.
    user: str | None = None
    #: True when a cache served this entry past its TTL because the map was down.
    stale: bool = False

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{host}{port}"


#: ``peek``'s answer: an entry, None (known absent) or NOT_CACHED.
Peeked = MapEntry | None | Literal[NotCached.NOT_CACHED]


class MapBackend(Protocol):
    """The small async interface that every map implements."""

    async def lookup(self, key: str) -> MapEntry | None:
        """The entry for ``key``, None when absent; raises MapUnavailable."""
        ...

    async def check(self) -> None:
        """Raise MapUnavailable when the map cannot answer (for /readyz)."""
        ...

    def describe(self) -> str:
        """One line for ``authsvc lookup``: the file, or the SQL with a placeholder."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...


@runtime_checkable
class RouteCache(MapBackend, Protocol):
    """A map with a route cache in front (:class:`~authsvc.maps.cached.CachedMap`).

    What the router asks of a cache besides :class:`MapBackend`: the answer it
    already holds (the synchronous path), dropping routes when a mailbox moves
    (``authsvc flush``), and its counters for ``/metrics``.  The router checks
    for it once per map, when it is built, not per login.
    """

    @property
    def stats(self) -> CacheCounters:
        """The counters; the same object for the cache's whole life."""
        ...

    def peek(self, key: str) -> Peeked:
        """The cached answer (counted as a hit), or NOT_CACHED (nothing counted)."""
        ...

    def invalidate(self, *, key: str | None = None, domain: str | None = None) -> int:
        """Drop one key, every key of one domain, or (neither given) everything."""
        ...


@runtime_checkable
class ReportsHosts(Protocol):
    """A map with several hosts to choose from (the MySQL map's failover list)."""

    def host_answers(self) -> list[tuple[str, int, bool]]:
        """Each configured host, the statements it answered, and whether it is in use now."""
        ...
