"""The local (SQLite) store and the Throttle service, with a hand-driven clock."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from authsvc.redact import Secret
from authsvc.settings import ThrottleSettings
from authsvc.throttle.local import LocalStore
from authsvc.throttle.policy import Keys, Policy
from authsvc.throttle.service import Throttle
from authsvc.throttle.store import StoreError

ON = ThrottleSettings(enabled=True, key=Secret("k" * 32), free_failures=1, delay=1.0,
                      max_delay=4.0, address_limit=5, login_limit=100, address_window=100.0,
                      login_window=100.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def keys(client: str = "192.0.2.1", login: str = "bob") -> Keys:
    found = Policy(ON).keys(client, login)
    assert found is not None
    return found


async def test_counts_slide_out_of_the_window() -> None:
    store = LocalStore(address_window=100.0, login_window=100.0)
    now = 1_000_000.0
    assert await store.record(keys(), now, None) == (1, 1)
    assert await store.record(keys(), now + 50, None) == (2, 2)
    assert await store.counts(keys(), now + 95) == (2, 2)
    assert await store.counts(keys(), now + 115) == (1, 1)  # the first left the window
    assert await store.counts(keys(), now + 200) == (0, 0)


async def test_a_seen_fingerprint_counts_once_per_window() -> None:
    store = LocalStore(address_window=100.0, login_window=100.0)
    now = 1_000_000.0
    assert await store.record(keys(), now, "f1") == (1, 1)
    assert await store.record(keys(), now + 1, "f1") == (1, 1)
    assert await store.record(keys(), now + 2, "f2") == (2, 2)
    # Another address with the same mark is another device.
    assert await store.record(keys("192.0.2.2"), now + 3, "f1") == (1, 3)
    # Each repeat renews the mark: a phone retrying all day stays one failure...
    assert await store.record(keys(), now + 90, "f1") == (2, 3)
    assert await store.record(keys(), now + 180, "f1") == (0, 0)
    # ...until it falls silent for a whole window.
    assert await store.record(keys(), now + 400, "f1") == (1, 1)
    assert await store.record(keys(), now + 401, "f3") == (2, 2)


async def test_reset_pair_takes_its_failures_out_of_the_address_count() -> None:
    store = LocalStore(address_window=100.0, login_window=100.0)
    now = 1_000_000.0
    for i in range(3):
        await store.record(keys(), now, f"bob{i}")
    await store.record(keys(login="alice"), now, "x")
    assert await store.counts(keys(), now) == (4, 3)
    await store.reset_pair(keys(), now + 1)
    assert await store.counts(keys(), now + 1) == (1, 0)
    assert await store.record(keys(), now + 2, "bob0") == (2, 1)  # its marks were dropped too


async def test_workers_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "throttle.sqlite3")
    one, two = (LocalStore(path, address_window=100.0, login_window=100.0) for _ in range(2))
    now = 1_000_000.0
    await one.record(keys(), now, None)
    await two.record(keys(), now, None)
    assert await one.counts(keys(), now) == (2, 2)
    one.bump("failures")
    two.bump("failures")
    assert one.stats() == {"failures": 2.0}


async def test_entries_and_clear() -> None:
    store = LocalStore(address_window=100.0, login_window=100.0)
    now = 1_000_000.0
    await store.record(keys(), now, None)
    await store.record(keys("192.0.2.9", "Alice"), now, None)
    assert await store.entries(now) == [("a:192.0.2.1", 1), ("a:192.0.2.9", 1),
                                        ("l:alice", 1), ("l:bob", 1),
                                        ("p:192.0.2.1|bob", 1), ("p:192.0.2.9|alice", 1)]
    assert await store.clear("192.0.2.1") == 2
    assert await store.clear("ALICE") == 2
    assert await store.entries(now) == [("a:192.0.2.9", 1), ("l:bob", 1)]


async def test_service_escalates_blocks_and_resets() -> None:
    clock = Clock()
    throttle = Throttle(ON, clock=clock)
    verdicts = [await throttle.failed("192.0.2.1", "bob", Secret(f"pw{i}")) for i in range(5)]
    assert [v.delay for v in verdicts] == [0, 1, 2, 4, 0]
    assert [v.blocked for v in verdicts] == [False] * 4 + [True]
    assert (await throttle.check("192.0.2.1", "bob")).blocked
    assert not (await throttle.check("192.0.2.2", "bob")).blocked
    assert not (await throttle.check("198.51.100.1", "bob")).blocked
    await throttle.succeeded("192.0.2.1", "bob")
    assert (await throttle.check("192.0.2.1", "bob")).address_failures == 0
    text = throttle.render_metrics()
    assert "authsvc_throttle_failures_total 5\n" in text
    assert "authsvc_throttle_blocked_total 2\n" in text
    assert "authsvc_throttle_delayed_total 3\n" in text


async def test_a_disabled_throttle_never_counts() -> None:
    throttle = Throttle(dataclasses.replace(ON, enabled=False))
    for _ in range(10):
        assert not (await throttle.failed("192.0.2.1", "bob")).blocked
    assert await throttle.entries() == []


class DeadRedis:
    calls = 0

    async def _fail(self, *args: object) -> object:
        self.calls += 1
        raise StoreError("redis: ConnectionError: refused")

    record = counts = reset_pair = entries = clear = _fail

    async def close(self) -> None:
        pass


async def test_redis_down_falls_back_to_local_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    settings = dataclasses.replace(ON, store="redis", redis_url=Secret("redis://127.0.0.1:1/0"),
                                   redis_retry=5.0)
    throttle = Throttle(settings, clock=clock)
    dead = DeadRedis()
    throttle._redis = dead  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="authsvc.throttle"):
        verdicts = [await throttle.failed("192.0.2.1", "bob") for _ in range(5)]
    # Neither everyone refused nor everyone let through: local counts decide.
    assert [v.blocked for v in verdicts] == [False] * 4 + [True]
    assert throttle.on_fallback
    assert dead.calls == 1  # not retried before redis_retry
    assert sum("throttle_fallback" in str(r.__dict__.get("fields")) for r in caplog.records) == 1
    assert "authsvc_throttle_fallback 1\n" in throttle.render_metrics()
    clock.now += 6
    await throttle.check("192.0.2.1", "bob")
    assert dead.calls == 2
