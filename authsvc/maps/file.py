"""The flat map file (Perdition's ``popmap``), and the reload-on-change logic the regex map shares.

A map file has one ``key: [user@]server[:port]`` per line (``key:value``
without the blank works too), the text Perdition's ``makegdbm`` turns into its
default GDBM map (perdition/db/gdbm/).  Keys match exactly, byte for byte and
case-sensitively, as a GDBM fetch does; the login rules (``lower_case``,
``add_domain``) run before the lookup, not here.

Differences from ``makegdbm`` (docs/maps.md lists them all):

* ``#`` starts a comment: a whole line, or the rest of a value after a blank.
* Blanks around the key and the value are dropped; ``makegdbm`` keeps the
  blank after the colon as part of the value.
* An empty value is an entry with no server (Perdition: "no server", docs/maps.md),
  not an input error; a value that is not ``[user@]host[:port]`` is an error
  that names the file and line, where Perdition would fail at login time.
* A repeated key keeps its first value and logs a warning, like ``makegdbm``'s
  ``GDBM_INSERT`` ("duplicate key").

:class:`WatchedFile` re-reads the file when it changes (device, inode, size or
mtime), checking at most once per ``recheck_interval`` seconds, on the lookup
path itself: no background task.  A file that fails to load keeps the last good
contents in service and makes :meth:`check` report the error; only a file that
never loaded makes lookups raise :class:`MapUnavailable`.  Files are small and
read rarely, so they are read synchronously.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.serverspec import ServerSpecError, parse_server
from authsvc.settings import FileMapSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# A value's trailing comment: "#" after a blank ("bob: 10.0.0.5  # moved 2024").
_VALUE_COMMENT = re.compile(r"\s#")


class MapFileError(ValueError):
    """A map file that cannot be used; the message starts with ``file:line:``."""


@dataclass(frozen=True, slots=True)
class Loaded(Generic[T]):
    """A parsed file and the warnings its parser had (duplicate keys, ...)."""

    data: T
    warnings: tuple[str, ...] = ()


@dataclass(slots=True)
class _State(Generic[T]):
    data: T | None = None
    signature: tuple[int, int, int, int] | None = None
    error: str | None = None
    loaded_at: float = field(default_factory=time.time)


class WatchedFile(Generic[T]):
    """A file parsed by ``parse(text, source)`` and re-parsed when it changes."""

    def __init__(
        self,
        path: str,
        parse: Callable[[str, str], Loaded[T]],
        *,
        clock: Callable[[], float] = time.monotonic,
        recheck_interval: float = 1.0,
    ) -> None:
        self._path = path
        self._parse = parse
        self._clock = clock
        self._interval = recheck_interval
        self._next_check = -math.inf
        self._state: _State[T] = _State()

    @property
    def path(self) -> str:
        return self._path

    @property
    def error(self) -> str | None:
        """Why the last (re)load failed; None when the file in service is current."""
        return self._state.error

    def current(self) -> T:
        """The contents in service, after at most one ``stat`` when a check is due."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._interval
            self._refresh()
        data = self._state.data
        if data is None:
            raise MapUnavailable(self._state.error or f"{self._path}: not loaded")
        return data

    def check(self) -> None:
        """Raise MapUnavailable when the file never loaded or its last reload failed."""
        self.current()
        if self._state.error is not None:
            loaded = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._state.loaded_at))
            raise MapUnavailable(f"{self._state.error} (still serving the file as loaded {loaded})")

    def _refresh(self) -> None:
        state = self._state
        try:
            st = os.stat(self._path)
        except OSError as exc:
            self._failed(f"{self._path}: {exc.strerror or exc}", None)
            return
        signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == state.signature:
            return
        try:
            with open(self._path, "rb") as handle:
                raw = handle.read()
            # surrogateescape keeps 8-bit keys byte-exact without a charset guess.
            loaded = self._parse(raw.decode("utf-8", "surrogateescape"), self._path)
        except OSError as exc:
            self._failed(f"{self._path}: {exc.strerror or exc}", None)
            return
        except MapFileError as exc:
            # Remember the signature: the same broken file is not parsed again.
            self._failed(str(exc), signature)
            return
        for warning in loaded.warnings:
            log.warning("map file %s", warning)
        if state.data is not None:
            log.info("map file %s reloaded", self._path)
        self._state = _State(data=loaded.data, signature=signature)

    def _failed(self, message: str, signature: tuple[int, int, int, int] | None) -> None:
        state = self._state
        if message != state.error:
            # Once per distinct error, not once per lookup.
            if state.data is None:
                log.error("map file %s", message)
            else:
                log.error("map file %s; keeping the last good contents", message)
        state.error = message
        state.signature = signature


def parse_popmap(
    text: str, source: str, delimiter: str = "@"
) -> Loaded[dict[str, MapEntry | None]]:
    """Parse Perdition's flat ``key: [user@]server[:port]`` format."""
    entries: dict[str, MapEntry | None] = {}
    first_seen: dict[str, int] = {}
    warnings: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, colon, value = line.partition(":")
        where = f"{source}:{number}"
        if not colon:
            raise MapFileError(f"{where}: expected 'key: server', found no ':'")
        key = key.strip()
        if not key:
            raise MapFileError(f"{where}: empty key before ':'")
        value = _VALUE_COMMENT.split(value, maxsplit=1)[0].strip()
        try:
            entry = parse_server(value, delimiter)
        except ServerSpecError as exc:
            raise MapFileError(f"{where}: {key}: {exc}") from None
        if key in entries:
            warnings.append(
                f"{where}: duplicate key {key!r}, keeping line {first_seen[key]} (as makegdbm does)"
            )
            continue
        entries[key] = entry
        first_seen[key] = number
    return Loaded(entries, tuple(warnings))


class FileMap:
    """A ``popmap`` file, looked up by exact key and re-read when it changes."""

    def __init__(
        self,
        settings: FileMapSettings,
        delimiter: str = "@",
        *,
        clock: Callable[[], float] = time.monotonic,
        recheck_interval: float = 1.0,
    ) -> None:
        self._file = WatchedFile(
            settings.path,
            lambda text, source: parse_popmap(text, source, delimiter),
            clock=clock,
            recheck_interval=recheck_interval,
        )

    async def lookup(self, key: str) -> MapEntry | None:
        return self._file.current().get(key)

    async def check(self) -> None:
        self._file.check()

    def stores(self) -> set[tuple[str, int | None]]:
        """Every store the file names, (host, port or None)."""
        return {(entry.host, entry.port) for entry in self._file.current().values()
                if entry is not None}

    def describe(self) -> str:
        return f"map file {self._file.path}"

    async def close(self) -> None:
        return None
