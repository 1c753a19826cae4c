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
