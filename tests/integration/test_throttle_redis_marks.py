"""The Redis throttle store's "seen once" marks, against a real redis-server.

A device that sends the same wrong password again counts once (the mark);
a successful login forgets its pair's failures and marks with one ``DEL``
and no keyspace scan (``authsvc/throttle/redis.py``); a pair's hash of marks
drops its expired fields once it holds more than ``MAX_MARKS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from authsvc.redact import Secret
from authsvc.throttle.policy import Keys
from authsvc.throttle.redis import MAX_MARKS, PREFIX, SEEN, RedisStore
from tests.services.redis import RedisServer

pytestmark = pytest.mark.integration

KEYS = Keys(address="a:127.0.0.77", login="l:bob", pair="p:127.0.0.77|bob",
            address_window=600.0, login_window=600.0)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_marks_count_once_and_go_with_one_delete(redis: RedisServer) -> None:
    async def run() -> None:
        store = RedisStore(Secret(redis.url), timeout=2.0, address_window=600.0,
                           login_window=600.0)
        try:
            assert await store.record(KEYS, 1000.0, "hmac-1") == (1, 1)
            assert await store.record(KEYS, 1001.0, "hmac-1") == (1, 1)  # the same password
            assert await store.record(KEYS, 1002.0, "hmac-2") == (2, 2)
            client = store._client
            marks = f"{PREFIX}{SEEN}:{KEYS.pair}"
            assert set(await client.hkeys(marks)) == {"hmac-1", "hmac-2"}
            assert 0 < await client.ttl(marks) <= 601
            await client.flushall()  # from here, commands are counted
            await client.config_resetstat()
            await store.reset_pair(KEYS, 1003.0)
            stats = await client.info("commandstats")
            assert "cmdstat_scan" not in stats, stats
            assert not await client.exists(marks, PREFIX + KEYS.pair)
            # Expired marks go once the hash is past MAX_MARKS.
            for n in range(MAX_MARKS + 1):
                await store.record(KEYS, 2000.0, f"old-{n}")
            await store.record(KEYS, 2000.0 + 601, "new")
            assert await client.hkeys(marks) == ["new"]
            # A mark past its lifetime counts again.
            assert (await store.record(KEYS, 4000.0, "new"))[0] >= 1
        finally:
            await store.close()

    asyncio.run(run())
