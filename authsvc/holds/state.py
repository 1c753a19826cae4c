"""One process's holds: what the router consults, loaded from the store, with its gauge.

Every worker keeps the holds in memory (a :class:`~authsvc.holds.rules.HoldSet`)
so that checking one costs no I/O on the login path, serve's cached answer
included.  The set is read from the store (``store.py``):

* when the worker starts, so a worker the supervisor restarts, or a node
  restarted during maintenance, is held as before; if the store cannot be
  read then, the worker logs an error and tries again every few seconds;
* when an operator's command changes the holds: the worker that receives it
  writes the store, then every worker of the node reads it again (the
  control request is repeated on each worker's peer socket,
  ``authsvc/control/fanout.py``), rather than each login checking the file.

A hold with an expiry ends by itself: a timer drops it from the set at its
``until`` (and the gauge follows); the store keeps it until the next change,
which drops expired holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from authsvc.exposition import Family
from authsvc.holds.rules import KINDS, Hold, HoldSet, describe
from authsvc.holds.store import HoldStore, HoldStoreError, open_store
from authsvc.metrics import FamilySeries, Metrics
from authsvc.settings import HoldsSettings

logger = logging.getLogger("authsvc.holds")

HOLDS = Family("authsvc_holds", "gauge", "Holds in force, by kind (user, store).")
OLDEST = Family("authsvc_holds_oldest_timestamp_seconds", "gauge",
                "When the oldest hold in force was placed (Unix time; 0 when none).")
#: Pass to ``Metrics(families=...)`` so every worker's file has the series.
HOLD_FAMILIES: tuple[FamilySeries, ...] = ((HOLDS, tuple({"kind": k} for k in KINDS)),
                                           (OLDEST, tuple({"kind": k} for k in KINDS)))
#: Seconds between attempts to read a store that could not be read at start.
RETRY = 5.0


class HoldKeeper:
    """The holds of one process (or worker) and the store they come from."""

    def __init__(self, settings: HoldsSettings, metrics: Metrics | None = None, *,
                 store: HoldStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.current = HoldSet()
        self.store = store if store is not None else open_store(settings)
        self._metrics = metrics
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.Task[None] | None = None

    def check(self, key: str, host: str, port: int) -> Hold | None:
        """The hold on this route, if one is in force: the router calls this per login."""
        current = self.current
        if current.empty:
            return None
        return current.match(key, host, port, self._clock())

    async def start(self) -> None:
        """Load the holds; if the store cannot be read, keep trying in the background."""
        if not await self.load():
            self._retry = asyncio.create_task(self._load_until_read())

    async def _load_until_read(self) -> None:
        while True:
            await asyncio.sleep(RETRY)
            if await self.load():
                break
        logger.info("", extra={"fields": {"event": "holds", "loaded": len(self.current.holds),
                                          "from": self.store.describe()}})

    async def load(self) -> bool:
        """Read the store into memory; False (and an error logged) if it cannot be read."""
        try:
            holds = await self.store.read()
        except HoldStoreError as exc:
            logger.error("holds cannot be read; the holds in memory stay as they are: %s", exc,
                         extra={"fields": {"event": "holds", "result": "error"}})
            return False
        now = self._clock()
        self.current = HoldSet(h for h in holds if not h.expired(now))
        self._refresh(now)
        return True

    async def place(self, hold: Hold) -> None:
        """Store ``hold`` (replacing one with the same target) and every expired one dropped."""
        await self.store.put(hold)
        await self._drop_expired()

    async def release(self, kind: str, target: str) -> bool:
        """Remove a hold from the store; whether it was there and still in force."""
        now = self._clock()
        was = next((h for h in await self.store.read() if h.ident == (kind, target)), None)
        removed = await self.store.remove(kind, target)
        await self._drop_expired()
        return removed and was is not None and not was.expired(now)

    async def listing(self) -> list[Hold]:
        """The holds in force, as the store has them."""
        now = self._clock()
        return sorted((h for h in await self.store.read() if not h.expired(now)),
                      key=lambda h: h.ident)

    async def _drop_expired(self) -> None:
        now = self._clock()
        for hold in await self.store.read():
            if hold.expired(now):
                await self.store.remove(*hold.ident)

    def _refresh(self, now: float) -> None:
        """Set the gauge, and the timer for the next expiry."""
        if self._metrics is not None:
            active = self.current.active(now)
            for kind, count in self.current.counts(now).items():
                placed = [hold.since for hold in active if hold.kind == kind]
                try:
                    self._metrics.set(HOLDS, count, kind=kind)
                    self._metrics.set(OLDEST, min(placed, default=0.0), kind=kind)
                except KeyError:  # a Metrics made without HOLD_FAMILIES (tests)
                    break
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.current.next_expiry(now)
        if due is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(max(due - now, 0.0) + 0.01, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._clock()
        for hold in self.current.holds:
            if hold.expired(now):
                logger.info("", extra={"fields": {"event": "release", "kind": hold.kind,
                                                  "target": hold.target, "by": "expiry"}})
        self.current = HoldSet(self.current.active(now))
        self._refresh(now)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._retry is not None:
            self._retry.cancel()
        await self.store.close()


__all__ = ["HOLDS", "HOLD_FAMILIES", "HoldKeeper", "describe"]
