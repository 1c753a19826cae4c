"""Build each listener's map from the settings, sharing one map where settings agree.

The seed's IMAP and IMAPS files name the same MySQL map, so they share one
map and one cache; its POP3 files differ only in the constant port, so they get
a map of their own.  Every map sits behind a :class:`CachedMap` unless the
cache is turned off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


@asynccontextmanager
async def open_maps(settings: Settings) -> AsyncIterator[dict[str, MapBackend]]:
    """Maps by listener name, opened for the ``async with`` block and closed after."""
    from authsvc.maps.cached import CachedMap

    shared: dict[tuple[MapSettings, str], MapBackend] = {}
    by_listener: dict[str, MapBackend] = {}
    try:
        for listener in settings.listeners:
            ident = (listener.map, listener.login.domain_delimiter)
            backend = shared.get(ident)
            if backend is None:
                backend = build_map(listener.map, listener.login.domain_delimiter)
                if settings.cache.enabled and not isinstance(listener.map, NoMapSettings):
                    backend = CachedMap(backend, settings.cache)
                shared[ident] = backend
            by_listener[listener.name] = backend
        yield by_listener
    finally:
        for backend in shared.values():
            await backend.close()


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

    def __init__(self) -> None:
        self._kept: dict[MapIdent, MapBackend] = {}

    def build(self, settings: Settings) -> tuple[dict[str, MapBackend], list[MapBackend]]:
        """Maps by listener for ``settings``, and the maps no longer used (to close)."""
        from authsvc.maps.cached import CachedMap

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
                    backend = build_map(listener.map, listener.login.domain_delimiter)
                    if settings.cache.enabled and not isinstance(listener.map, NoMapSettings):
                        backend = CachedMap(backend, settings.cache)
                fresh[ident] = backend
            by_listener[listener.name] = backend
        in_use = {id(backend) for backend in fresh.values()}
        retired = [backend for backend in self._kept.values() if id(backend) not in in_use]
        self._kept = fresh
        return by_listener, retired

    async def close(self) -> None:
        """Close every map in use."""
        kept, self._kept = self._kept, {}
        for backend in kept.values():
            await backend.close()
