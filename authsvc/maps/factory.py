"""Build each listener's map from the settings, sharing one map where settings agree.

The seed's IMAP and IMAPS files name the same MySQL map, so they share one
map and one cache; its POP3 files differ only in the constant port, so they get
a map of their own.  Every map sits behind a :class:`CachedMap` unless the
cache is turned off.
"""

from __future__ import annotations

from collections.abc import Callable

from authsvc.maps import MapBackend, MapEntry
from authsvc.settings import (
    CacheSettings,
    FileMapSettings,
    MapSettings,
    MySqlMapSettings,
    NoMapSettings,
    RegexMapSettings,
    Settings,
)


class NoMap:
    """``map_library ""``: every key is absent, so outgoing_server decides."""

    async def lookup(self, key: str) -> MapEntry | None:
        return None

    async def check(self) -> None:
        return None

    def describe(self) -> str:
        return "no map"

    async def close(self) -> None:
        return None


def build_map(settings: MapSettings, delimiter: str) -> MapBackend:
    """One uncached map for ``settings``."""
    if isinstance(settings, FileMapSettings):
        from authsvc.maps.file import FileMap

        return FileMap(settings, delimiter)
    if isinstance(settings, RegexMapSettings):
        from authsvc.maps.regex import RegexMap

        return RegexMap(settings, delimiter)
    if isinstance(settings, MySqlMapSettings):
        from authsvc.maps.mysql import MySqlMap

        return MySqlMap(settings, delimiter)
    assert isinstance(settings, NoMapSettings)
    return NoMap()


def open_map(settings: MapSettings, delimiter: str, cache: CacheSettings) -> MapBackend:
    """One map for ``settings``, behind a :class:`CachedMap` when the cache is on."""
    backend = build_map(settings, delimiter)
    if cache.enabled and not isinstance(settings, NoMapSettings):
        from authsvc.maps.cached import CachedMap

        backend = CachedMap(backend, cache)
    return backend


#: Makes one listener's map: (map settings, domain delimiter, cache settings).
#: :func:`open_map` in production; tests pass one that returns their own maps.
MapBuilder = Callable[[MapSettings, str, CacheSettings], MapBackend]


MapIdent = tuple[MapSettings, str, CacheSettings]


class MapShelf:
    """The maps of a long-running front end, kept across configuration reloads.

    A MySQL map whose settings (and the cache's) are unchanged keeps its
    :class:`CachedMap`, with its routes and its pool: a reload during a
    database outage goes on serving the cached routes (docs/operations.md).
    File and regex maps are built afresh on every reload, so the reload reads
    the file at once instead of serving the old routes from the cache until
    their TTL runs out.
    """

    def __init__(self, build: MapBuilder = open_map) -> None:
        self._build = build
        self._kept: dict[MapIdent, MapBackend] = {}

    def build(self, settings: Settings) -> tuple[dict[str, MapBackend], list[MapBackend]]:
        """Maps by listener for ``settings``, and the maps no longer used (to close)."""
        fresh: dict[MapIdent, MapBackend] = {}
        by_listener: dict[str, MapBackend] = {}
        for listener in settings.listeners:
            ident = (listener.map, listener.login.domain_delimiter, settings.cache)
            backend = fresh.get(ident)
            if backend is None:
                old = self._kept.get(ident)
                if old is not None and isinstance(listener.map, MySqlMapSettings):
                    backend = old
                else:
                    backend = self._build(listener.map, listener.login.domain_delimiter,
                                          settings.cache)
                fresh[ident] = backend
            by_listener[listener.name] = backend
        in_use = {id(backend) for backend in fresh.values()}
        retired = list({id(backend): backend for backend in self._kept.values()
                        if id(backend) not in in_use}.values())
        self._kept = fresh
        return by_listener, retired

    async def close(self) -> None:
        """Close every map in use."""
        kept, self._kept = self._kept, {}
        for backend in {id(backend): backend for backend in kept.values()}.values():
            await backend.close()
