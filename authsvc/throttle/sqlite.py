"""The SQLite file behind the local store: schema, transactions, and the SQL.

Why SQLite: it is in the standard library, and its file locking makes each
update an atomic transaction across processes, so with ``--workers N`` every
worker adds to the same rows and reads the same counts (the file lives in the
server's private run directory, next to the metrics files).  One process uses
an in-memory database.  WAL, no fsync: the counts need not survive a power cut.

Nothing here waits for another process: after opening, the busy timeout is 0,
so ``BEGIN IMMEDIATE`` on a file another process is writing fails at once
with ``SQLITE_BUSY`` (:func:`is_busy`), and ``local.py`` queues the update
instead.  Readers never wait for a writer in WAL mode
(https://www.sqlite.org/wal.html, "Concurrency").

Also keeps the store's refusal latency per address (``refusals``, for
``refusals.py``), the node's throttle statistics (``stats``) and which workers run
on the Redis fallback (``fallback``), so ``/metrics`` from any worker shows totals.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from authsvc.throttle.policy import ADDRESS, BUCKETS, LOGIN, PAIR, Keys, bucket_of, window_total

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, bucket INTEGER NOT NULL,
    n INTEGER NOT NULL, expires REAL NOT NULL, PRIMARY KEY (key, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fallback (pid INTEGER PRIMARY KEY, on_fallback INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refusals (who TEXT PRIMARY KEY, seconds REAL NOT NULL,
    expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refusals_expires ON refusals (expires);
"""

#: Expired rows are deleted at most this often (seconds).
PRUNE_EVERY = 30.0

#: How long opening the file (WAL switch, schema) may wait for another worker:
#: a worker opens it before it serves anyone.
OPEN_TIMEOUT = 2.0


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds the lock (try again later)."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteCounts:
    """Counters in SQLite; ``path`` None = in memory (one process).

    Writes (:meth:`add_failure`, :meth:`reset_pair`, :meth:`clear`,
    :meth:`add_stat`, :meth:`mark_fallback`) run inside :meth:`transaction`.
    """

    def __init__(self, path: str | None = None, *, address_window: float = 600.0,
                 login_window: float = 600.0) -> None:
        self.path = path
        self._windows = {ADDRESS: address_window, LOGIN: login_window}
        self._db = sqlite3.connect(path or ":memory:", timeout=OPEN_TIMEOUT,
                                   isolation_level=None, check_same_thread=False)
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA busy_timeout=0")  # never wait on the loop
        self._pruned = 0.0

    def window_of(self, key: str) -> float:
        """The window of a counter key (pairs share the address window)."""
        return self._windows[LOGIN if key.startswith(LOGIN + ":") else ADDRESS]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One writer at a time across workers; raises at once if another one writes."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- reads (no lock) ---------------------------------------------------------------

    def rows(self, key: str) -> list[tuple[int, int]]:
        """A counter's (bucket, amount) rows."""
        return [(int(b), int(n)) for b, n in
                self._db.execute("SELECT bucket, n FROM hits WHERE key = ?", (key,))]

    def count(self, key: str, now: float) -> int:
        """A counter's count at ``now``."""
        return window_total(self.rows(key), now, self.window_of(key))

    def seen(self, mark: str, now: float) -> bool:
        """Whether a fingerprint mark is still in its window."""
        row = self._db.execute("SELECT expires FROM seen WHERE key = ?", (mark,)).fetchone()
        return row is not None and row[0] >= now

    def keys(self, now: float) -> list[str]:
        """Counters with rows that may still be in their window."""
        return [row[0] for row in self._db.execute(
            "SELECT DISTINCT key FROM hits WHERE expires >= ?", (now,))]

    def refusal(self, who: str, now: float) -> float:
        """The longest refusal recorded for ``who`` that has not expired (0 when none)."""
        row = self._db.execute("SELECT seconds FROM refusals WHERE who = ? AND expires >= ?",
                               (who, now)).fetchone()
        return float(row[0]) if row is not None else 0.0

    def stats(self) -> dict[str, float]:
        return {name: value for name, value in self._db.execute("SELECT name, value FROM stats")}

    def fallback_marks(self) -> dict[int, bool]:
        """pid -> whether that worker said it counts locally because Redis is away."""
        return {int(pid): bool(on) for pid, on in
                self._db.execute("SELECT pid, on_fallback FROM fallback")}

    # -- writes (inside transaction()) ---------------------------------------------------

    def _add(self, key: str, window: float, bucket: int, amount: int) -> None:
        self._db.execute(
            "INSERT INTO hits VALUES (?, ?, ?, ?) ON CONFLICT (key, bucket) "
            "DO UPDATE SET n = n + excluded.n",
            (key, bucket, amount, (bucket + BUCKETS + 1) * (window / BUCKETS)))

    def _prune(self, now: float) -> None:
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        self._db.execute("DELETE FROM hits WHERE expires < ?", (now,))
        self._db.execute("DELETE FROM seen WHERE expires < ?", (now,))

    def add_failure(self, keys: Keys, now: float, fingerprint: str | None) -> None:
        """Count one failure, unless ``fingerprint`` was already seen for the pair."""
        self._prune(now)
        if fingerprint is not None:
            mark = f"{keys.pair}|{fingerprint}"
            counted = not self.seen(mark, now)
            # A repeat renews the mark: a phone retrying all day stays one failure.
            self._db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?)",
                             (mark, now + keys.address_window))
            if not counted:
                return
        for key, window in ((keys.address, keys.address_window),
                            (keys.login, keys.login_window),
                            (keys.pair, keys.address_window)):
            self._add(key, window, bucket_of(now, window), 1)

    def reset_pair(self, keys: Keys, now: float) -> None:
        """Forget the pair's failures, also in the address and login counts."""
        failures = self.count(keys.pair, now)
        if failures:
            self._add(keys.address, keys.address_window,
                      bucket_of(now, keys.address_window), -failures)
            self._add(keys.login, keys.login_window, bucket_of(now, keys.login_window),
                      -failures)
        self._db.execute("DELETE FROM hits WHERE key = ?", (keys.pair,))
        self._db.execute("DELETE FROM seen WHERE key >= ? AND key < ?",
                         (keys.pair + "|", keys.pair + "}"))

    def clear(self, who: str) -> int:
        """Drop every counter about an address or login; how many were dropped."""
        db = self._db
        dropped = 0
        for exact, like in clear_patterns(who):
            dropped += db.execute("SELECT COUNT(DISTINCT key) FROM hits WHERE key = ?",
                                  (exact,)).fetchone()[0]
            db.execute("DELETE FROM hits WHERE key = ?", (exact,))
            dropped += db.execute(
                "SELECT COUNT(DISTINCT key) FROM hits WHERE key LIKE ? ESCAPE '\\'",
                (like,)).fetchone()[0]
            db.execute("DELETE FROM hits WHERE key LIKE ? ESCAPE '\\'", (like,))
            db.execute("DELETE FROM seen WHERE key LIKE ? ESCAPE '\\'", (like + "|%",))
        return int(dropped)

    def add_refusal(self, who: str, seconds: float, now: float, keep: float,
                    limit: int) -> None:
        """Record a refusal of ``who`` that took ``seconds``; the longest one counts.

        The record expires ``keep`` seconds after the latest refusal; past
        ``limit`` records, those that expire soonest are dropped.
        """
        self._db.execute(
            "INSERT INTO refusals VALUES (?, ?, ?) ON CONFLICT (who) DO UPDATE SET "
            "seconds = CASE WHEN refusals.expires >= ? "
            "THEN max(refusals.seconds, excluded.seconds) ELSE excluded.seconds END, "
            "expires = excluded.expires", (who, seconds, now + keep, now))
        self._db.execute("DELETE FROM refusals WHERE expires < ?", (now,))
        self._db.execute(
            "DELETE FROM refusals WHERE who IN (SELECT who FROM refusals ORDER BY expires "
            "LIMIT max(0, (SELECT COUNT(*) FROM refusals) - ?))", (limit,))

    def forget_refusals(self, who: str) -> None:
        self._db.execute("DELETE FROM refusals WHERE who = ?", (who,))

    def add_stat(self, name: str, amount: float) -> None:
        self._db.execute("INSERT INTO stats VALUES (?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET value = value + excluded.value", (name, amount))

    def mark_fallback(self, on: bool, pid: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO fallback VALUES (?, ?)", (pid, 1 if on else 0))

    def close(self) -> None:
        self._db.close()


def clear_patterns(who: str) -> list[tuple[str, str]]:
    """(exact key, LIKE pattern) pairs for everything about ``who``."""
    escaped = who.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    folded = who.casefold()
    folded_escaped = folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [
        (f"{ADDRESS}:{who}", f"{PAIR}:{escaped}|%"),
        (f"{LOGIN}:{folded}", f"{PAIR}:%|{folded_escaped}"),
    ]


def about(key: str, who: str) -> bool:
    """Whether counter ``key`` is one :meth:`SqliteCounts.clear` drops for ``who``."""
    folded = who.casefold()
    return (key in (f"{ADDRESS}:{who}", f"{LOGIN}:{folded}")
            or key.startswith(f"{PAIR}:{who}|")
            or (key.startswith(PAIR + ":") and key.endswith(f"|{folded}")))


def alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
