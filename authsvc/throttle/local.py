"""The local counter store: SQLite, in memory or in a file every worker shares.

Why SQLite: it is in the standard library, and its file locking makes each
update an atomic transaction across processes, so with ``--workers N`` every
worker adds to the same rows and reads the same counts (the file lives in the
server's private run directory, next to the metrics files).  One process uses
an in-memory database.  An update is a few microseconds (WAL, no fsync: the
counts need not survive a power cut), so it runs on the event loop directly.

Also keeps the node's throttle statistics (``stats``) and which workers run
on the fallback (``fallback``), so ``/metrics`` from any worker shows totals.
"""

from __future__ import annotations

import os
import sqlite3

from authsvc.throttle.policy import ADDRESS, LOGIN, PAIR, Keys
from authsvc.throttle.store import BUCKETS, bucket_of, oldest_bucket

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, bucket INTEGER NOT NULL,
    n INTEGER NOT NULL, expires REAL NOT NULL, PRIMARY KEY (key, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fallback (pid INTEGER PRIMARY KEY, on_fallback INTEGER NOT NULL);
"""

#: Expired rows are deleted at most this often (seconds).
PRUNE_EVERY = 30.0


class LocalStore:
    """Counters in SQLite; ``path`` None = in memory (one process)."""

    def __init__(self, path: str | None = None, *, address_window: float = 600.0,
                 login_window: float = 600.0) -> None:
        self.path = path
        self._windows = {ADDRESS: address_window, LOGIN: login_window}
        self._db = sqlite3.connect(path or ":memory:", timeout=2.0, isolation_level=None,
                                   check_same_thread=False)
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        self._pruned = 0.0

    # -- helpers -------------------------------------------------------------------------

    def _sum(self, key: str, window: float, now: float) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(n), 0) FROM hits WHERE key = ? AND bucket >= ?",
                               (key, oldest_bucket(now, window))).fetchone()
        return max(0, int(row[0]))

    def _add(self, key: str, window: float, now: float, amount: int) -> None:
        self._db.execute(
            "INSERT INTO hits VALUES (?, ?, ?, ?) ON CONFLICT (key, bucket) "
            "DO UPDATE SET n = n + excluded.n",
            (key, bucket_of(now, window), amount, now + window + window / BUCKETS))

    def _prune(self, now: float) -> None:
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        self._db.execute("DELETE FROM hits WHERE expires < ?", (now,))
        self._db.execute("DELETE FROM seen WHERE expires < ?", (now,))

    # -- CountStore ----------------------------------------------------------------------

    async def record(self, keys: Keys, now: float, fingerprint: str | None) -> tuple[int, int]:
        return self.record_now(keys, now, fingerprint)

    def record_now(self, keys: Keys, now: float, fingerprint: str | None) -> tuple[int, int]:
        """:meth:`record` without the coroutine (the Redis fallback calls it too)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one writer at a time across workers
        try:
            self._prune(now)
            counted = True
            if fingerprint is not None:
                seen = f"{keys.pair}|{fingerprint}"
                row = db.execute("SELECT expires FROM seen WHERE key = ?", (seen,)).fetchone()
                counted = row is None or row[0] < now
                db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?)",
                           (seen, now + keys.address_window))
            if counted:
                self._add(keys.address, keys.address_window, now, 1)
                self._add(keys.login, keys.login_window, now, 1)
                self._add(keys.pair, keys.address_window, now, 1)
            result = (self._sum(keys.address, keys.address_window, now),
                      self._sum(keys.login, keys.login_window, now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    async def counts(self, keys: Keys, now: float) -> tuple[int, int]:
        return self.counts_now(keys, now)

    def counts_now(self, keys: Keys, now: float) -> tuple[int, int]:
        """:meth:`counts` without the coroutine."""
        return (self._sum(keys.address, keys.address_window, now),
                self._sum(keys.login, keys.login_window, now))

    async def reset_pair(self, keys: Keys, now: float) -> None:
        self.reset_pair_now(keys, now)

    def reset_pair_now(self, keys: Keys, now: float) -> None:
        """:meth:`reset_pair` without the coroutine."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            failures = self._sum(keys.pair, keys.address_window, now)
            if failures:
                self._add(keys.address, keys.address_window, now, -failures)
                self._add(keys.login, keys.login_window, now, -failures)
            db.execute("DELETE FROM hits WHERE key = ?", (keys.pair,))
            db.execute("DELETE FROM seen WHERE key >= ? AND key < ?",
                       (keys.pair + "|", keys.pair + "}"))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def entries(self, now: float) -> list[tuple[str, int]]:
        return self.entries_now(now)

    def entries_now(self, now: float) -> list[tuple[str, int]]:
        """:meth:`entries` without the coroutine."""
        found: list[tuple[str, int]] = []
        keys = [row[0] for row in self._db.execute(
            "SELECT DISTINCT key FROM hits WHERE expires >= ?", (now,))]
        for key in keys:
            window = self.window_of(key)
            count = self._sum(key, window, now)
            if count > 0:
                found.append((key, count))
        return sorted(found)

    def window_of(self, key: str) -> float:
        """The window of a counter key (pairs share the address window)."""
        return self._windows[LOGIN if key.startswith(LOGIN + ":") else ADDRESS]

    async def clear(self, who: str) -> int:
        return self.clear_now(who)

    def clear_now(self, who: str) -> int:
        """:meth:`clear` without the coroutine."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            patterns = _clear_patterns(who)
            dropped = 0
            for exact, like in patterns:
                if exact is not None:
                    dropped += db.execute("SELECT COUNT(DISTINCT key) FROM hits WHERE key = ?",
                                          (exact,)).fetchone()[0]
                    db.execute("DELETE FROM hits WHERE key = ?", (exact,))
                if like is not None:
                    dropped += db.execute(
                        "SELECT COUNT(DISTINCT key) FROM hits WHERE key LIKE ? ESCAPE '\\'",
                        (like,)).fetchone()[0]
                    db.execute("DELETE FROM hits WHERE key LIKE ? ESCAPE '\\'", (like,))
                    db.execute("DELETE FROM seen WHERE key LIKE ? ESCAPE '\\'", (like + "|%",))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return dropped

    # -- statistics (per node) ------------------------------------------------------------

    def bump(self, name: str, amount: float = 1.0) -> None:
        """Add to a node-wide statistic (delayed, blocked, fallbacks...)."""
        self._db.execute("INSERT INTO stats VALUES (?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET value = value + excluded.value", (name, amount))

    def stats(self) -> dict[str, float]:
        return {name: value for name, value in self._db.execute("SELECT name, value FROM stats")}

    def set_fallback(self, on: bool, pid: int | None = None) -> None:
        """Record whether this worker counts locally because Redis is away."""
        self._db.execute("INSERT OR REPLACE INTO fallback VALUES (?, ?)",
                         (pid if pid is not None else os.getpid(), 1 if on else 0))

    def fallback_workers(self) -> int:
        """Live workers currently on the fallback."""
        count = 0
        for pid, on in self._db.execute("SELECT pid, on_fallback FROM fallback").fetchall():
            if on and _alive(pid):
                count += 1
        return count

    async def close(self) -> None:
        self._db.close()


def _clear_patterns(who: str) -> list[tuple[str | None, str | None]]:
    """(exact key, LIKE pattern) pairs for everything about ``who``."""
    escaped = who.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    folded = who.casefold()
    folded_escaped = folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [
        (f"{ADDRESS}:{who}", f"{PAIR}:{escaped}|%"),
        (f"{LOGIN}:{folded}", f"{PAIR}:%|{folded_escaped}"),
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

