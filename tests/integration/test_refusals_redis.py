"""The store's refusal times shared by nodes through a real Redis (authsvc/throttle/refusals.py).

Two records with their own local stores stand for two proxy nodes; what one
learns about an address, the other applies.  The Redis record is bounded like
the file, and a dead Redis leaves each node its own record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from authsvc.redact import Secret
from authsvc.throttle.local import LocalStore
from authsvc.throttle.redis import PREFIX, REFUSALS, RedisStore
from authsvc.throttle.refusals import RefusalRecord
from tests.services.redis import RedisServer

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, RedisStore]]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    store = RedisStore(Secret(server.url), timeout=0.5, address_window=600.0,
                       login_window=600.0)
    try:
        yield server, store
    finally:
        await store.close()
        server.stop()


async def test_nodes_share_the_record_and_it_is_bounded(
        redis: tuple[RedisServer, RedisStore]) -> None:
    _, store = redis
    clock = Clock()
    one = RefusalRecord(LocalStore(), clock=clock, shared=store, limit=3)
    two = RefusalRecord(LocalStore(), clock=clock, shared=store, limit=3)
    await one.refused("192.0.2.1", 8.5)
    await two.refused("192.0.2.1", 4.5)
    assert await two.floor("192.0.2.1") == 8.5  # the longest, whichever node saw it
    assert await one.floor("192.0.2.1") == 8.5
    await two.forget("192.0.2.1")  # a login on node two clears it for node one too...
    assert await store.refusal("192.0.2.1", clock.now) == 0.0
    assert await one.floor("192.0.2.1") == 8.5  # ...except what node one saw itself
    for i in range(10):
        clock.now += 1.0
        await one.refused(f"198.51.100.{i}", 5.0)
    kept = await store._client.zrange(PREFIX + REFUSALS, 0, -1)
    assert kept == ["198.51.100.7", "198.51.100.8", "198.51.100.9"]
    assert await store._client.hlen(PREFIX + REFUSALS + ":s") == 3
    clock.now += 3600.0 + 1  # expired: gone from Redis at the next refusal
    assert await two.floor("198.51.100.9") == 0.0
    await two.refused("203.0.113.1", 1.0)
    assert await store._client.zrange(PREFIX + REFUSALS, 0, -1) == ["203.0.113.1"]


async def test_a_dead_redis_leaves_each_node_its_own_record(
        redis: tuple[RedisServer, RedisStore]) -> None:
    server, store = redis
    clock = Clock()
    local = LocalStore()
    one = RefusalRecord(local, clock=clock, shared=store, retry=60.0)
    server.kill()
    await one.refused("192.0.2.1", 8.5)
    assert await one.floor("192.0.2.1") == 8.5
    assert local.stats().get("store_errors") == 1.0  # not retried before retry
