"""The local store when another worker holds the SQLite file's lock, or the file fails.

Another connection's ``BEGIN IMMEDIATE`` stands for a worker descheduled in
the middle of its transaction: SQLite locks connections, not processes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authsvc.redact import Secret
from authsvc.settings import ThrottleSettings
from authsvc.throttle import local
from authsvc.throttle.local import LocalStore
from authsvc.throttle.policy import Keys, Policy
from authsvc.throttle.store import StoreError

ON = ThrottleSettings(enabled=True, key=Secret("k" * 32), free_failures=1, delay=1.0,
                      max_delay=4.0, address_limit=5, login_limit=100, address_window=100.0,
                      login_window=100.0)
NOW = 1_000_000.0


def keys(client: str = "192.0.2.1", login: str = "bob") -> Keys:
    found = Policy(ON).keys(client, login)
    assert found is not None
    return found


def open_store(path: Path) -> LocalStore:
    return LocalStore(str(path), address_window=100.0, login_window=100.0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "throttle.sqlite3"


class Holder:
    """Another worker's connection, holding the write lock while ``held``."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None)

    def take(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.db.execute("COMMIT")


@pytest.fixture
def holder(path: Path) -> Iterator[Holder]:
    open_store(path)  # makes the file and its schema
    held = Holder(path)
    yield held
    held.db.close()


async def written(store: LocalStore) -> None:
    """Wait (up to 2 s) until ``store`` has written its queue to the file."""
    for _ in range(200):
        if not store.pending:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{store.pending} updates still queued")


async def test_a_taken_lock_is_not_waited_for_and_the_failures_still_count(
        path: Path, holder: Holder, caplog: pytest.LogCaptureFixture) -> None:
    worker, other = open_store(path), open_store(path)
    await worker.record(keys(), NOW, None)  # before: written at once
    holder.take()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="authsvc.throttle"):
        counts = [await worker.record(keys(), NOW + i, None) for i in range(1, 4)]
        worker.bump("failures", 3)
        elapsed = time.monotonic() - started
        # Answered from the file's counts plus this worker's queue, without waiting.
        assert elapsed < 0.05, elapsed
        assert counts == [(2, 2), (3, 3), (4, 4)]
        assert worker.pending == 4
        assert await other.counts(keys(), NOW + 4) == (1, 1)  # not in the file yet
        assert worker.stats()["queued"] == 4
        await asyncio.sleep(0.1)
        assert worker.pending == 4  # the lock is still taken
        holder.release()
        await written(worker)
    assert await other.counts(keys(), NOW + 4) == (4, 4)
    assert await worker.counts(keys(), NOW + 4) == (4, 4)  # not counted twice
    assert other.stats() == {"failures": 3.0, "queued": 4.0}
    fields = [r.__dict__.get("fields", {}) for r in caplog.records]
    queued = [f for f in fields if f.get("event") == "throttle_store" and f["store"] == "queued"]
    assert len(queued) == 1, fields  # one line, not one per update
    assert queued[0]["reason"] == "another process holds the lock"
    assert any(f.get("reason") == "queue written" for f in fields), fields
    await worker.close()
    await other.close()


async def test_queued_updates_keep_their_order_and_fingerprints(path: Path,
                                                                holder: Holder) -> None:
    worker, other = open_store(path), open_store(path)
    await worker.record(keys(), NOW, "old-password")
    holder.take()
    assert await worker.record(keys(), NOW + 1, "old-password") == (1, 1)  # a repeat
    assert await worker.record(keys(), NOW + 2, "typo") == (2, 2)
    assert await worker.record(keys(), NOW + 2, "typo") == (2, 2)
    assert await worker.record(keys(login="alice"), NOW + 3, None) == (3, 1)
    await worker.reset_pair(keys(), NOW + 4)  # bob logged in: his two go
    assert await worker.counts(keys(), NOW + 4) == (1, 0)
    holder.release()
    await written(worker)
    assert await other.counts(keys(), NOW + 4) == (1, 0)
    assert await worker.counts(keys(), NOW + 4) == (1, 0)
    assert await worker.entries(NOW + 4) == [("a:192.0.2.1", 1), ("l:alice", 1),
                                             ("p:192.0.2.1|alice", 1)]


async def test_clear_waits_for_the_lock_without_blocking_the_loop(path: Path,
                                                                   holder: Holder) -> None:
    worker = open_store(path)
    holder.take()
    await worker.record(keys(), NOW, None)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    asyncio.get_running_loop().call_later(0.2, holder.release)
    assert await worker.clear("192.0.2.1") == 2  # the address and the pair
    ticker.cancel()
    assert ticks >= 10  # the loop ran meanwhile
    assert await worker.counts(keys(), NOW) == (0, 1)
    await worker.close()


async def test_clear_gives_up_on_a_lock_that_stays_taken(path: Path, holder: Holder,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "CONTROL_WAIT", 0.1)
    worker = open_store(path)
    holder.take()
    with pytest.raises(StoreError):
        await worker.clear("192.0.2.1")


class Broken:
    """A file whose every write fails with an error other than "locked"."""

    def __init__(self) -> None:
        self.calls = 0

    def __enter__(self) -> None:
        self.calls += 1
        raise sqlite3.OperationalError("disk I/O error")

    def __exit__(self, *exc: object) -> None:
        pass


async def test_an_unusable_file_falls_back_to_counts_of_this_process(
        path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    worker = LocalStore(str(path), address_window=100.0, login_window=100.0,
                        monotonic=lambda: clock[0])
    broken = Broken()
    monkeypatch.setattr(worker._file, "transaction", lambda: broken)
    with caplog.at_level(logging.WARNING, logger="authsvc.throttle"):
        # Never "let everyone through": the counts go on, in this process.
        assert [await worker.record(keys(), NOW + i, None) for i in range(5)] == [
            (i, i) for i in range(1, 6)]
    assert broken.calls == 1  # not tried again before RETRY
    assert worker.pending == 0
    assert worker.stats()["local_errors"] == 1
    lines = [r.__dict__.get("fields", {}) for r in caplog.records]
    assert [f["store"] for f in lines if f.get("event") == "throttle_store"] == ["process"]
    clock[0] += local.RETRY
    monkeypatch.undo()
    # The file works again: new failures go there, this process's own still count here.
    assert await worker.record(keys(), NOW + 6, None) == (6, 6)
    assert await open_store(path).counts(keys(), NOW + 6) == (1, 1)


async def test_a_queue_that_grows_too_long_counts_here(path: Path, holder: Holder,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "MAX_PENDING", 3)
    worker = open_store(path)
    holder.take()
    assert [await worker.record(keys(), NOW, None) for _ in range(5)] == [
        (i, i) for i in range(1, 6)]
    assert worker.pending == 0  # the file counts as unusable: nothing waits for it
    holder.release()
    assert await worker.counts(keys(), NOW) == (5, 5)
