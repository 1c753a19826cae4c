"""The local counter store: a login never waits for another worker's lock.

With ``--workers N`` the workers share the counts through one SQLite file
(``sqlite.py``).  An update tries the file's write lock without waiting; it
is free almost always, and then the update is written at once, as one
transaction.  When another process holds it (a worker descheduled in the
middle of its transaction), the update is queued in this process instead,
and a background task writes the queue, ``BATCH`` updates per transaction,
as soon as the lock is free.  Until then this process answers from the
file's counts plus its own queued updates (the view), so a queued failure
counts at once here and everywhere once written.  Nothing is dropped:
an attacker's own traffic cannot switch counting off.

When the file is unusable (an error other than "locked", or ``MAX_PENDING``
updates waiting) the process counts on its own, the rule of the Redis
fallback (docs/security.md): never refuse everyone, never let everyone
through.  What was queued stays counted here until it leaves the window,
and the file is tried again after ``RETRY`` seconds.

``authsvc_throttle_queued_total`` and ``authsvc_throttle_local_errors_total``
(``service.py``) and the ``throttle_store`` log lines (at most one per
``LOG_EVERY`` seconds) say when this happens.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from authsvc.throttle.policy import Keys, bucket_of, oldest_bucket, window_total
from authsvc.throttle.sqlite import PRUNE_EVERY, SqliteCounts, about, alive, is_busy
from authsvc.throttle.store import StoreError

logger = logging.getLogger("authsvc.throttle")

#: Queued updates written per transaction: the loop is not held for long.
BATCH = 100
#: Queued updates past which the file counts as unusable.
MAX_PENDING = 10_000
#: Seconds before an unusable file is tried again.
RETRY = 5.0
#: The queue is retried after this long, doubling up to ``MAX_WAIT`` (seconds).
FIRST_WAIT = 0.002
MAX_WAIT = 0.05
#: How long ``clear`` and ``close`` wait for the lock (seconds, without blocking the loop).
CONTROL_WAIT = 2.0
#: Seconds between two ``throttle_store`` log lines of one process.
LOG_EVERY = 10.0

T = TypeVar("T")

#: A write for the file, run inside its transaction.
Write = Callable[[SqliteCounts], object]


@dataclass(slots=True)
class _Queued:
    """One update for the file, and what it adds to this process's view until written.

    ``view`` is asked only when the update cannot be written at once: what it
    adds to the counts (key, bucket, amount) and, for a fingerprinted failure,
    the mark and its expiry.
    """

    write: Write
    view: Callable[[], tuple[list[tuple[str, int, int]], tuple[str, float] | None]] = \
        lambda: ([], None)
    stats: dict[str, float] = field(default_factory=dict)
    hits: list[tuple[str, int, int]] | None = None


class LocalStore:
    """Counters in SQLite; ``path`` None = in memory (one process)."""

    def __init__(self, path: str | None = None, *, address_window: float = 600.0,
                 login_window: float = 600.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._file = SqliteCounts(path, address_window=address_window,
                                  login_window=login_window)
        self._monotonic = monotonic
        self._queue: collections.deque[_Queued] = collections.deque()
        # The view: the queued updates, and while the file is unusable, this
        # process's own counts.  key -> bucket -> amount; mark -> expiry.
        self._hits: dict[str, dict[int, int]] = {}
        self._marks: dict[str, float] = {}
        self._stats: dict[str, float] = {}
        self._pruned = 0.0
        self._fallback_mark: bool | None = None
        self._file_stats: dict[str, float] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._unusable_until: float | None = None
        self._logged = -LOG_EVERY
        self._queued_since_log = 0
        self._waiting_since: float | None = None  # the queue's oldest update, when logged

    @property
    def pending(self) -> int:
        """Updates queued in this process, not yet in the file."""
        return len(self._queue)

    def window_of(self, key: str) -> float:
        return self._file.window_of(key)

    # -- the view --------------------------------------------------------------------------

    def _view_add(self, item: _Queued, sign: int = 1) -> None:
        if item.hits is None:
            item.hits, mark = item.view()
            if mark is not None:
                self._marks[mark[0]] = mark[1]
        for key, bucket, amount in item.hits:
            buckets = self._hits.setdefault(key, {})
            buckets[bucket] = buckets.get(bucket, 0) + sign * amount
            if not buckets[bucket]:
                del buckets[bucket]
                if not buckets:
                    del self._hits[key]
        for name, value in item.stats.items():
            self._stats[name] = self._stats.get(name, 0.0) + sign * value

    def _file_read(self, read: Callable[[SqliteCounts], T], default: T) -> T:
        try:
            return read(self._file)
        except sqlite3.Error as exc:  # readers do not wait in WAL mode: rare
            self._trouble(exc)
            return default

    def _rows(self, key: str) -> list[tuple[int, int]]:
        """A counter's rows in the file and in the view."""
        none: list[tuple[int, int]] = []
        return self._file_read(lambda f: f.rows(key), none) + list(self._hits.get(key, {}).items())

    def _count(self, key: str, now: float) -> int:
        return window_total(self._rows(key), now, self.window_of(key))

    def _seen(self, mark: str, now: float) -> bool:
        if self._marks.get(mark, -1.0) >= now:
            return True
        return self._file_read(lambda f: f.seen(mark, now), False)

    def _prune_view(self, now: float) -> None:
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        for key in list(self._hits):
            oldest = oldest_bucket(now, self.window_of(key))
            buckets = self._hits[key]
            for bucket in [b for b in buckets if b < oldest]:
                del buckets[bucket]
            if not buckets:
                del self._hits[key]
        for mark in [m for m, expires in self._marks.items() if expires < now]:
            del self._marks[mark]

    # -- writing ---------------------------------------------------------------------------

    def _usable(self) -> bool:
        until = self._unusable_until
        if until is None:
            return True
        if self._monotonic() < until:
            return False
        self._unusable_until = None
        logger.info("", extra={"fields": {"event": "throttle_store", "store": "shared",
                                          "reason": "trying the file again"}})
        return True

    def _write(self, item: _Queued) -> None:
        """Write ``item`` to the file now if its lock is free, else queue it."""
        if not self._usable():
            self._view_add(item)  # the file is unusable: this process counts on its own
            return
        if self._queue:
            self._flush()  # nothing overtakes a queued update
        if not self._queue and self._unusable_until is None:
            try:
                with self._file.transaction():
                    self._apply(item)
                return
            except sqlite3.Error as exc:
                if not self._trouble(exc):
                    self._view_add(item)
                    return
        if self._unusable_until is not None:
            self._view_add(item)
        else:
            self._enqueue(item)

    def _apply(self, item: _Queued) -> None:
        item.write(self._file)
        for name, amount in item.stats.items():
            self._file.add_stat(name, amount)

    def _enqueue(self, item: _Queued) -> None:
        item.stats["queued"] = item.stats.get("queued", 0.0) + 1
        self._queue.append(item)
        self._view_add(item)
        self._queued_since_log += 1
        if len(self._queue) >= MAX_PENDING:
            self._unusable(f"{len(self._queue)} updates waiting for the lock")
            return
        if self._flusher is None:
            with contextlib.suppress(RuntimeError):  # no loop: the next write flushes
                self._flusher = asyncio.get_running_loop().create_task(self._flush_later())
        now = self._monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            if self._waiting_since is None:
                self._waiting_since = now
            logger.warning("", extra={"fields": {
                "event": "throttle_store", "store": "queued",
                "reason": "another process holds the lock",
                "queued": self._queued_since_log, "pending": len(self._queue)}})
            self._queued_since_log = 0

    def _trouble(self, exc: sqlite3.Error) -> bool:
        """Note a failed file operation; True when it was only the lock being taken."""
        if is_busy(exc):
            return True
        self._stats["local_errors"] = self._stats.get("local_errors", 0.0) + 1
        self._unusable(f"{type(exc).__name__}: {exc}")
        return False

    def _unusable(self, reason: str) -> None:
        # The queued updates stay in the view: counted here until they leave the window.
        self._queue.clear()
        self._waiting_since = None
        if self._unusable_until is None:
            logger.warning("", extra={"fields": {
                "event": "throttle_store", "store": "process", "reason": reason,
                "retry_in": RETRY}})
        self._unusable_until = self._monotonic() + RETRY

    def _flush(self) -> bool:
        """Write up to ``BATCH`` queued updates in one transaction; False if locked."""
        batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
        try:
            with self._file.transaction():
                for item in batch:
                    self._apply(item)
        except sqlite3.Error as exc:
            self._trouble(exc)
            return False
        for item in batch:
            self._queue.popleft()
            self._view_add(item, -1)
        if not self._queue and self._waiting_since is not None:
            logger.info("", extra={"fields": {
                "event": "throttle_store", "store": "shared", "reason": "queue written",
                "waited": round(self._monotonic() - self._waiting_since, 3)}})
            self._waiting_since = None
        return True

    async def _flush_later(self) -> None:
        wait = FIRST_WAIT
        try:
            while self._queue and self._usable():
                await asyncio.sleep(wait)
                wait = 0.0 if self._flush() else min(max(wait, FIRST_WAIT) * 2, MAX_WAIT)
        finally:
            self._flusher = None

    async def _locked(self, write: Callable[[SqliteCounts], T], default: T) -> T:
        """Write the queue, then run ``write`` in a transaction, retrying off the loop.

        For the control calls: fails after ``CONTROL_WAIT`` seconds of a taken lock;
        ``default`` when the file is unusable.
        """
        deadline = self._monotonic() + CONTROL_WAIT
        while self._usable():
            if self._queue:
                if self._flush():
                    await asyncio.sleep(0)
                    continue
            else:
                try:
                    with self._file.transaction():
                        return write(self._file)
                except sqlite3.Error as exc:
                    if not self._trouble(exc):
                        break
            if self._monotonic() > deadline:
                raise StoreError("throttle store: the SQLite file stayed locked")
            await asyncio.sleep(MAX_WAIT)
        return default

    # -- CountStore ------------------------------------------------------------------------

    async def record(self, keys: Keys, now: float, fingerprint: str | None) -> tuple[int, int]:
        return self.record_now(keys, now, fingerprint)

    def record_now(self, keys: Keys, now: float, fingerprint: str | None) -> tuple[int, int]:
        """:meth:`record` without the coroutine."""

        def view() -> tuple[list[tuple[str, int, int]], tuple[str, float] | None]:
            mark = None
            if fingerprint is not None:
                mark = (f"{keys.pair}|{fingerprint}", now + keys.address_window)
                if self._seen(mark[0], now):
                    return [], mark
            return [(keys.address, bucket_of(now, keys.address_window), 1),
                    (keys.login, bucket_of(now, keys.login_window), 1),
                    (keys.pair, bucket_of(now, keys.address_window), 1)], mark

        self._prune_view(now)
        self._write(_Queued(lambda f: f.add_failure(keys, now, fingerprint), view))
        return self.counts_now(keys, now)

    async def counts(self, keys: Keys, now: float) -> tuple[int, int]:
        return self.counts_now(keys, now)

    def counts_now(self, keys: Keys, now: float) -> tuple[int, int]:
        """:meth:`counts` without the coroutine: the file's counts plus the view's."""
        return self._count(keys.address, now), self._count(keys.login, now)

    async def reset_pair(self, keys: Keys, now: float) -> None:

        def view() -> tuple[list[tuple[str, int, int]], tuple[str, float] | None]:
            rows = self._rows(keys.pair)
            failures = window_total(rows, now, keys.address_window)
            return [(keys.address, bucket_of(now, keys.address_window), -failures),
                    (keys.login, bucket_of(now, keys.login_window), -failures),
                    *((keys.pair, bucket, -amount) for bucket, amount in rows)], None

        # The file forgets the pair's marks; so does the view, whichever way this goes.
        for mark in [m for m in self._marks if m.startswith(keys.pair + "|")]:
            del self._marks[mark]
        self._write(_Queued(lambda f: f.reset_pair(keys, now), view))

    async def entries(self, now: float) -> list[tuple[str, int]]:
        none: list[str] = []
        keys = set(self._file_read(lambda f: f.keys(now), none)) | set(self._hits)
        found = [(key, self._count(key, now)) for key in sorted(keys)]
        return [(key, count) for key, count in found if count > 0]

    async def clear(self, who: str) -> int:
        """Forget ``who``: waits, never blocking the loop, for the queue to be written."""
        dropped = await self._locked(lambda f: f.clear(who), 0)
        mine = [key for key in self._hits if about(key, who)]
        for key in mine:
            del self._hits[key]
        for mark in [m for m in self._marks if about(m.rpartition("|")[0], who)]:
            del self._marks[mark]
        return dropped + len(mine)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if self._queue:
            try:
                await self._locked(lambda f: None, None)
            except StoreError:
                logger.warning("", extra={"fields": {
                    "event": "throttle_store", "store": "closed",
                    "reason": "the lock is still taken", "unwritten": len(self._queue)}})
        self._file.close()

    # -- other records in the same file -------------------------------------------------

    def write(self, write: Write) -> None:
        """Run ``write`` in a transaction now, or queue it (never waits for the lock)."""
        self._write(_Queued(write))

    def read(self, read: Callable[[SqliteCounts], T], default: T) -> T:
        """``read`` on the file (never waits); ``default`` when it cannot be read."""
        return self._file_read(read, default)

    # -- statistics (per node) -------------------------------------------------------------

    def bump(self, name: str, amount: float = 1.0) -> None:
        """Add to a node-wide statistic (delayed, blocked, fallbacks...)."""
        self._write(_Queued(lambda f: None, stats={name: amount}))

    def stats(self) -> dict[str, float]:
        """The file's statistics (the last read, if it cannot be read) plus the view's."""
        self._file_stats = self._file_read(lambda f: f.stats(), self._file_stats)
        total = dict(self._file_stats)
        for name, amount in self._stats.items():
            total[name] = total.get(name, 0.0) + amount
        return total

    def set_fallback(self, on: bool, pid: int | None = None) -> None:
        """Record whether this worker counts locally because Redis is away."""
        who = pid if pid is not None else os.getpid()
        if who == os.getpid():
            self._fallback_mark = on
        self._write(_Queued(lambda f: f.mark_fallback(on, who)))

    def fallback_workers(self) -> int:
        """Live workers currently on the Redis fallback."""
        none: dict[int, bool] = {}
        marks = self._file_read(lambda f: f.fallback_marks(), none)
        if self._fallback_mark is not None:
            marks[os.getpid()] = self._fallback_mark
        return sum(1 for pid, on in marks.items() if on and alive(pid))
