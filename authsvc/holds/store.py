"""Where holds are kept between restarts: the protocol, and the state file.

A node restarted during an fsck must not release the store, so every hold
is written to a store before it is in force, and every worker loads the
store at start (``state.py``).  Two stores:

* the state file (``[holds] state_file``): JSON, shared by the workers of a
  node; written under an exclusive ``flock(2)`` on ``<file>.lock`` so two
  operators' commands on two workers cannot lose each other's hold, and
  replaced atomically, a temporary file in the same directory renamed over it
  (rename(2) is atomic within a file system), so a worker never reads half a
  file;
* Redis (``[holds] store = "redis"``, ``redis.py``), which several nodes may share.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from authsvc.holds.rules import Hold
from authsvc.settings import HoldsSettings


class HoldStoreError(Exception):
    """The store cannot be read or written; the message names it and why."""


class HoldStore(Protocol):
    """The holds of a node (or of a pool sharing Redis)."""

    async def read(self) -> list[Hold]:
        """Every hold stored, expired ones included."""

    async def put(self, hold: Hold) -> None:
        """Store ``hold``, replacing one with the same kind and target."""

    async def remove(self, kind: str, target: str) -> bool:
        """Remove a hold; whether there was one."""

    def describe(self) -> str: ...

    async def close(self) -> None: ...


def open_store(settings: HoldsSettings) -> HoldStore:
    """The store ``[holds]`` names (Redis is imported only when configured)."""
    if settings.store == "redis" and (settings.redis_url is not None
                                      or settings.redis_sentinel is not None):
        from authsvc.holds.redis import RedisHoldStore

        return RedisHoldStore(settings.redis_url, timeout=settings.redis_timeout,
                              sentinel=settings.redis_sentinel,
                              replicas=settings.redis_replicas)
    return FileHoldStore(settings.state_file)


class FileHoldStore:
    """Holds in a JSON file: ``{"holds": [...]}``."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def describe(self) -> str:
        return f"state file {self._path}"

    async def read(self) -> list[Hold]:
        return await asyncio.to_thread(self._read)

    async def put(self, hold: Hold) -> None:
        def change(holds: list[Hold]) -> bool:
            holds[:] = [h for h in holds if h.ident != hold.ident] + [hold]
            return True

        await asyncio.to_thread(self._change, change)

    async def remove(self, kind: str, target: str) -> bool:
        found: list[bool] = []

        def change(holds: list[Hold]) -> bool:
            kept = [h for h in holds if h.ident != (kind, target)]
            found.append(len(kept) != len(holds))
            holds[:] = kept
            return found[0]

        await asyncio.to_thread(self._change, change)
        return found[0]

    async def close(self) -> None:
        return None

    def _read(self) -> list[Hold]:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise HoldStoreError(f"cannot read {self._path}: {exc}") from None
        try:
            data = json.loads(text)
            entries = data["holds"]
            if not isinstance(entries, list):
                raise TypeError("holds is not a list")
            return [Hold.from_json(entry) for entry in entries]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HoldStoreError(f"{self._path} is not a holds file: {exc}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = os.open(f"{self._path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise HoldStoreError(f"cannot lock {self._path}: {exc}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)  # closing releases the lock

    def _change(self, change: Callable[[list[Hold]], bool]) -> None:
        with self._locked():
            holds = self._read()
            if change(holds):
                self._write(holds)

    def _write(self, holds: list[Hold]) -> None:
        text = json.dumps({"holds": [hold.as_json() for hold in holds]}, indent=1) + "\n"
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{self._path.name}.", dir=self._path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self._path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            directory = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself survives a crash
            finally:
                os.close(directory)
        except OSError as exc:
            raise HoldStoreError(f"cannot write {self._path}: {exc}") from None
