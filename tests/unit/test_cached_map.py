"""The route cache: TTLs on a fake clock, negative answers, shared queries, stale-if-error."""

from __future__ import annotations

import asyncio

import pytest

from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.cached import CachedMap, CacheStats
from authsvc.settings import CacheSettings

BOB = MapEntry("10.0.0.2")
ALICE = MapEntry("10.0.0.3", 993)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMap:
    """A map whose answers and outages the test controls; it counts its queries."""

    def __init__(self, entries: dict[str, MapEntry]) -> None:
        self.entries = dict(entries)
        self.down = False
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def lookup(self, key: str) -> MapEntry | None:
        self.calls.append(key)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise MapUnavailable("db1:3306: (2003) Can't connect")
        return self.entries.get(key)

    async def check(self) -> None:
        if self.down:
            raise MapUnavailable("db1:3306: (2003) Can't connect")

    def describe(self) -> str:
        return "fake"

    async def close(self) -> None:
        self.closed = True


SETTINGS = CacheSettings(ttl=60.0, negative_ttl=10.0, max_size=1000, stale_if_error=3600.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inner() -> FakeMap:
    return FakeMap({"bob@riseup.net": BOB, "alice@riseup.net": ALICE,
                    "carol@example.org": MapEntry("10.0.0.4")})


def cached(inner: FakeMap, clock: Clock, settings: CacheSettings = SETTINGS) -> CachedMap:
    return CachedMap(inner, settings, clock=clock)


async def test_hit_within_ttl_and_expiry(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    assert await cache.lookup("bob@riseup.net") == BOB
    clock.now += 59.9
    assert await cache.lookup("bob@riseup.net") == BOB
    assert inner.calls == ["bob@riseup.net"]
    clock.now += 0.2
    inner.entries["bob@riseup.net"] = MapEntry("10.0.0.9")
    assert await cache.lookup("bob@riseup.net") == MapEntry("10.0.0.9")
    assert inner.calls == ["bob@riseup.net"] * 2
    assert cache.stats == CacheStats(hits=1, misses=2)


async def test_negative_caching_has_its_own_ttl(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    assert await cache.lookup("new@riseup.net") is None
    inner.entries["new@riseup.net"] = MapEntry("10.0.0.7")
    clock.now += 9.9
    assert await cache.lookup("new@riseup.net") is None
    clock.now += 0.2
    assert await cache.lookup("new@riseup.net") == MapEntry("10.0.0.7")
    assert cache.stats.negative_hits == 1
    assert cache.stats.misses == 2


async def test_concurrent_lookups_share_one_query(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    inner.gate = asyncio.Event()
    lookups = [asyncio.create_task(cache.lookup("bob@riseup.net")) for _ in range(50)]
    await asyncio.sleep(0)
    inner.gate.set()
    assert await asyncio.gather(*lookups) == [BOB] * 50
    assert inner.calls == ["bob@riseup.net"]
    assert cache.stats.misses == 50
    assert cache.stats.coalesced == 49


async def test_one_caller_giving_up_does_not_leave_the_others_without_an_answer(
    inner: FakeMap, clock: Clock
) -> None:
    cache = cached(inner, clock)
    inner.gate = asyncio.Event()
    first = asyncio.create_task(cache.lookup("bob@riseup.net"))
    second = asyncio.create_task(cache.lookup("bob@riseup.net"))
    third = asyncio.create_task(cache.lookup("bob@riseup.net"))
    await asyncio.sleep(0)
    assert cache.stats.coalesced == 2
    first.cancel()  # the caller whose task was asking the map
    inner.gate.set()
    assert await second == BOB
    assert await third == BOB
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await cache.lookup("bob@riseup.net") == BOB  # and the answer was cached
    # The first caller asked in its own task; when it gave up, one of the
    # others asked again, and the last one shared that second query.
    assert inner.calls == ["bob@riseup.net"] * 2


async def test_a_follower_giving_up_does_not_cancel_the_query(
    inner: FakeMap, clock: Clock
) -> None:
    cache = cached(inner, clock)
    inner.gate = asyncio.Event()
    first = asyncio.create_task(cache.lookup("bob@riseup.net"))
    second = asyncio.create_task(cache.lookup("bob@riseup.net"))
    await asyncio.sleep(0)
    second.cancel()
    inner.gate.set()
    assert await first == BOB
    with pytest.raises(asyncio.CancelledError):
        await second
    assert inner.calls == ["bob@riseup.net"]


async def test_errors_are_never_cached(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    inner.down = True
    for _ in range(3):
        with pytest.raises(MapUnavailable, match="Can't connect"):
            await cache.lookup("bob@riseup.net")
    assert cache.stats.map_up is False
    inner.down = False
    assert await cache.lookup("bob@riseup.net") == BOB
    assert inner.calls == ["bob@riseup.net"] * 4
    assert cache.stats.errors == 3
    assert cache.stats.map_up is True


async def test_concurrent_failure_reaches_every_caller_once(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    inner.down = True
    inner.gate = asyncio.Event()
    lookups = [asyncio.create_task(cache.lookup("bob@riseup.net")) for _ in range(5)]
    await asyncio.sleep(0)
    inner.gate.set()
    results = await asyncio.gather(*lookups, return_exceptions=True)
    assert all(isinstance(r, MapUnavailable) for r in results)
    assert cache.stats.errors == 1  # one query failed, however many waited on it
    assert inner.calls == ["bob@riseup.net"]


async def test_stale_if_error_window(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    assert await cache.lookup("bob@riseup.net") == BOB
    inner.down = True
    clock.now += 61.0  # past the TTL: the map is asked, and fails
    stale = await cache.lookup("bob@riseup.net")
    assert stale == MapEntry("10.0.0.2", stale=True)
    assert cache.stats.stale == 1
    assert cache.stats.map_up is False
    # Never seen: nothing to fall back on.
    with pytest.raises(MapUnavailable):
        await cache.lookup("alice@riseup.net")
    # Up to ttl + stale_if_error after it was learnt...
    clock.now = 1000.0 + 60.0 + 3600.0 - 0.1
    assert await cache.lookup("bob@riseup.net") == MapEntry("10.0.0.2", stale=True)
    # ...and not after.
    clock.now += 0.2
    with pytest.raises(MapUnavailable):
        await cache.lookup("bob@riseup.net")
    # Back up: fresh answers, not stale ones.
    inner.down = False
    assert await cache.lookup("bob@riseup.net") == BOB
    assert cache.stats.map_up is True


async def test_stale_store_forgets_a_deleted_mailbox(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    assert await cache.lookup("bob@riseup.net") == BOB
    del inner.entries["bob@riseup.net"]
    clock.now += 61.0
    assert await cache.lookup("bob@riseup.net") is None
    inner.down = True
    clock.now += 11.0
    with pytest.raises(MapUnavailable):
        await cache.lookup("bob@riseup.net")


async def test_stale_if_error_off(inner: FakeMap, clock: Clock) -> None:
    settings = CacheSettings(ttl=60.0, negative_ttl=10.0, stale_if_error=0.0)
    cache = cached(inner, clock, settings)
    assert await cache.lookup("bob@riseup.net") == BOB
    inner.down = True
    clock.now += 61.0
    with pytest.raises(MapUnavailable):
        await cache.lookup("bob@riseup.net")


async def test_invalidate_one_key(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    assert await cache.lookup("bob@riseup.net") == BOB
    assert await cache.lookup("alice@riseup.net") == ALICE
    inner.entries["bob@riseup.net"] = MapEntry("10.0.0.9")
    assert cache.invalidate(key="bob@riseup.net") == 1
    assert cache.invalidate(key="bob@riseup.net") == 0
    assert await cache.lookup("bob@riseup.net") == MapEntry("10.0.0.9")
    assert await cache.lookup("alice@riseup.net") == ALICE
    assert inner.calls.count("alice@riseup.net") == 1


async def test_invalidate_drops_the_stale_copy_too(inner: FakeMap, clock: Clock) -> None:
    # A moved mailbox must not come back stale from its old store.
    cache = cached(inner, clock)
    assert await cache.lookup("bob@riseup.net") == BOB
    assert cache.invalidate(key="bob@riseup.net") == 1
    inner.down = True
    with pytest.raises(MapUnavailable):
        await cache.lookup("bob@riseup.net")


async def test_invalidate_domain(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    for key in ("bob@riseup.net", "alice@riseup.net", "carol@example.org", "x@riseup.net"):
        await cache.lookup(key)
    assert cache.invalidate(domain="Riseup.NET") == 3  # two routes and one negative answer
    inner.calls.clear()
    await cache.lookup("carol@example.org")
    await cache.lookup("bob@riseup.net")
    assert inner.calls == ["bob@riseup.net"]
    # A domain is a suffix after the delimiter, not any suffix.
    assert cache.invalidate(domain="seup.net") == 0


async def test_invalidate_all(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    for key in ("bob@riseup.net", "alice@riseup.net", "nobody@riseup.net"):
        await cache.lookup(key)
    assert cache.invalidate() == 3
    inner.down = True
    with pytest.raises(MapUnavailable):
        await cache.lookup("bob@riseup.net")


async def test_invalidate_during_a_query_is_not_undone(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    inner.gate = asyncio.Event()
    old = asyncio.create_task(cache.lookup("bob@riseup.net"))
    await asyncio.sleep(0)
    inner.entries["bob@riseup.net"] = MapEntry("10.0.0.9")
    cache.invalidate(key="bob@riseup.net")
    inner.gate.set()
    await old
    # The answer of a query that started before the flush is not kept.
    assert await cache.lookup("bob@riseup.net") == MapEntry("10.0.0.9")
    assert len(inner.calls) == 2


async def test_size_bound(inner: FakeMap, clock: Clock) -> None:
    settings = CacheSettings(ttl=60.0, negative_ttl=10.0, max_size=2)
    cache = cached(inner, clock, settings)
    for key in ("bob@riseup.net", "alice@riseup.net", "carol@example.org"):
        await cache.lookup(key)
    await cache.lookup("bob@riseup.net")
    assert inner.calls.count("bob@riseup.net") == 2  # evicted by the third entry


async def test_size_zero_caches_nothing(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock, CacheSettings(max_size=0))
    assert await cache.lookup("bob@riseup.net") == BOB
    assert await cache.lookup("bob@riseup.net") == BOB
    assert len(inner.calls) == 2


async def test_check_describe_close(inner: FakeMap, clock: Clock) -> None:
    cache = cached(inner, clock)
    await cache.check()
    inner.down = True
    with pytest.raises(MapUnavailable):
        await cache.check()
    assert cache.stats.map_up is False
    assert cache.describe() == "fake [cache: ttl 60s, negative 10s, stale-if-error 3600s]"
    await cache.close()
    assert inner.closed


@pytest.mark.parametrize("map_answers", ["before close returns", "after close returns"])
async def test_lookups_in_flight_during_close_are_told_closed(
    inner: FakeMap, clock: Clock, map_answers: str
) -> None:
    """The first caller (asking the map) and a caller sharing its query both get "closed"."""
    cache = cached(inner, clock)
    inner.gate = asyncio.Event()
    first = asyncio.ensure_future(cache.lookup("bob@riseup.net"))
    sharing = asyncio.ensure_future(cache.lookup("bob@riseup.net"))
    await asyncio.sleep(0)  # the first waits at the map, the other on the shared query
    assert inner.calls == ["bob@riseup.net"]
    closing = asyncio.ensure_future(cache.close())
    if map_answers == "before close returns":
        inner.gate.set()
        await closing
    else:
        await closing
        inner.gate.set()
    for task in (first, sharing):
        with pytest.raises(MapUnavailable, match=r"^closed$"):
            await task
    assert inner.closed
    with pytest.raises(MapUnavailable, match=r"^closed$"):  # and every lookup after
        await cache.lookup("bob@riseup.net")
    assert inner.calls == ["bob@riseup.net"]
