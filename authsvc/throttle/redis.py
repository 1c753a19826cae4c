"""The Redis counter store: one view of the counts for every node behind HAProxy.

Why Redis: it is the shared engine a cluster of mail front ends already runs,
its ``HINCRBY``/``SET NX EX`` do exactly what a counter and a "seen once"
mark need, atomically, and keys expire on their own.  The connection, one
server or a primary found through Sentinel, is ``authsvc/redisconn.py``'s;
it is made only when ``[throttle] store = "redis"``.

Layout, under ``authsvc:throttle:``: one hash per counter (``a:<address>``,
``l:<login>``, ``p:<address>|<login>``) whose fields are bucket numbers
(``policy.py``), and one hash per pair of the fingerprints it has seen
(``s:<pair>``: field the HMAC, value the mark's expiry), so a successful
login forgets its pair's marks with one ``DEL`` and no keyspace scan;
the store's refusal times (``refusals.py``) in ``refusals`` (a sorted set of
addresses by expiry) and ``refusals:s`` (their seconds).
Every command is bounded by ``redis_timeout``; any failure raises
:class:`~authsvc.throttle.store.StoreError` and ``service.py`` falls back to
the local store.  That covers a Sentinel failover too: until the sentinels
name the new primary, commands fail and the local counts answer; counts are
not written with ``WAIT``, so the last few before a primary dies may be lost
with it (docs/security.md, "Where the counts live").
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from authsvc.redact import Secret
from authsvc.redisconn import RedisConnection
from authsvc.settings import RedisSentinel
from authsvc.throttle.policy import (
    ADDRESS,
    BUCKETS,
    LOGIN,
    PAIR,
    Keys,
    bucket_of,
    window_total,
)
from authsvc.throttle.store import StoreError

PREFIX = "authsvc:throttle:"
SEEN = "s"
#: KEYS: the pair's marks; ARGV: the fingerprint, now, the mark's lifetime.
#: 1 when this fingerprint was not marked (it counts), else 0; either way
#: the mark lives ``ttl`` more seconds, and the hash as long as its newest
#: mark.  Past MAX_MARKS fields the expired ones go, so a device that keeps
#: trying new passwords does not grow it without end.
_MARK = """
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local expires = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], tostring(now + ttl))
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[4]) then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) < now then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
if expires and tonumber(expires) >= now then return 0 end
return 1
"""
#: Marks a pair's hash holds before its expired ones are dropped.
MAX_MARKS = 64

#: The store's refusal times: a sorted set (address -> expiry) and a hash
#: (address -> seconds), so the oldest can be dropped past the limit.
REFUSALS = "refusals"

#: KEYS: the sorted set, the hash; ARGV: who, seconds, now, keep, limit.
_ADD_REFUSAL = """
local who, seconds, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local expires = redis.call('ZSCORE', KEYS[1], who)
if expires and tonumber(expires) >= now then
  local old = tonumber(redis.call('HGET', KEYS[2], who) or '0')
  if old > seconds then seconds = old end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), who)
redis.call('HSET', KEYS[2], who, tostring(seconds))
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local over = redis.call('ZCARD', KEYS[1]) - #gone - tonumber(ARGV[5])
if over > 0 then
  for _, name in ipairs(redis.call('ZRANGE', KEYS[1], #gone, #gone + over - 1)) do
    table.insert(gone, name)
  end
end
for _, name in ipairs(gone) do
  redis.call('ZREM', KEYS[1], name)
  redis.call('HDEL', KEYS[2], name)
end
return #gone
"""

T = TypeVar("T")


def _total(fields: Mapping[Any, Any], now: float, window: float) -> int:
    """A counter's count from its hash (bucket number -> amount, as text)."""
    return window_total(((int(b), int(v)) for b, v in fields.items()), now, window)


class RedisStore:
    """Counters in Redis (redis-py's asyncio client, through ``redisconn.py``)."""

    def __init__(self, url: Secret | None, *, timeout: float, address_window: float,
                 login_window: float, sentinel: RedisSentinel | None = None) -> None:
        self._connection = RedisConnection(url=url, sentinel=sentinel, timeout=timeout)
        self._windows = {ADDRESS: address_window, LOGIN: login_window}
        self._client: Any = self._connection.client

    def window_of(self, key: str) -> float:
        return self._windows[LOGIN if key.startswith(LOGIN + ":") else ADDRESS]

    async def _run(self, call: Awaitable[T]) -> T:
        return await self._connection.run(call, StoreError)

    async def record(self, keys: Keys, now: float, fingerprint: str | None) -> tuple[int, int]:
        return await self._run(self._record(keys, now, fingerprint))

    async def _record(self, keys: Keys, now: float, fingerprint: str | None) -> tuple[int, int]:
        client = self._client
        counted = True
        if fingerprint is not None:
            # Only the first time this device sends this password counts; a
            # repeat renews the mark, as the local store does.
            ttl = max(1, math.ceil(keys.address_window))
            counted = bool(await client.eval(_MARK, 1, f"{PREFIX}{SEEN}:{keys.pair}",
                                             fingerprint, repr(now), str(ttl), str(MAX_MARKS)))
        pipe = client.pipeline(transaction=True)
        if counted:
            for key, window in ((keys.address, keys.address_window),
                                (keys.login, keys.login_window),
                                (keys.pair, keys.address_window)):
                pipe.hincrby(PREFIX + key, str(bucket_of(now, window)), 1)
                pipe.expire(PREFIX + key, math.ceil(window + window / BUCKETS) + 1)
        pipe.hgetall(PREFIX + keys.address)
        pipe.hgetall(PREFIX + keys.login)
        results = await pipe.execute()
        return (_total(results[-2], now, keys.address_window),
                _total(results[-1], now, keys.login_window))

    async def counts(self, keys: Keys, now: float) -> tuple[int, int]:
        return await self._run(self._counts(keys, now))

    async def _counts(self, keys: Keys, now: float) -> tuple[int, int]:
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(PREFIX + keys.address)
        pipe.hgetall(PREFIX + keys.login)
        address, login = await pipe.execute()
        return (_total(address, now, keys.address_window),
                _total(login, now, keys.login_window))

    async def reset_pair(self, keys: Keys, now: float) -> None:
        await self._run(self._reset_pair(keys, now))

    async def _reset_pair(self, keys: Keys, now: float) -> None:
        client = self._client
        failures = _total(await client.hgetall(PREFIX + keys.pair),
                          now, keys.address_window)
        pipe = client.pipeline(transaction=True)
        if failures:
            pipe.hincrby(PREFIX + keys.address, str(bucket_of(now, keys.address_window)),
                         -failures)
            pipe.hincrby(PREFIX + keys.login, str(bucket_of(now, keys.login_window)), -failures)
        pipe.delete(PREFIX + keys.pair, f"{PREFIX}{SEEN}:{keys.pair}")
        await pipe.execute()

    async def entries(self, now: float) -> list[tuple[str, int]]:
        return await self._run(self._entries(now))

    async def _entries(self, now: float) -> list[tuple[str, int]]:
        client = self._client
        found: list[tuple[str, int]] = []
        for kind in (ADDRESS, LOGIN, PAIR):
            async for name in client.scan_iter(match=f"{PREFIX}{kind}:*", count=500):
                key = name[len(PREFIX):]
                count = _total(await client.hgetall(name),
                               now, self.window_of(key))
                if count > 0:
                    found.append((key, count))
        return sorted(found)

    async def clear(self, who: str) -> int:
        return await self._run(self._clear(who))

    async def _clear(self, who: str) -> int:
        client = self._client
        folded = who.casefold()
        names = [PREFIX + f"{ADDRESS}:{who}", PREFIX + f"{LOGIN}:{folded}"]
        for pattern in (f"{PAIR}:{_glob(who)}|*", f"{PAIR}:*|{_glob(folded)}",
                        f"{SEEN}:{PAIR}:{_glob(who)}|*", f"{SEEN}:{PAIR}:*|{_glob(folded)}"):
            names += [name async for name in client.scan_iter(match=PREFIX + pattern,
                                                                 count=500)]
        existing = int(await client.exists(*names)) if names else 0
        if names:
            await client.delete(*names)
        return existing

    # -- the store's refusal times (refusals.py) ----------------------------------------

    async def add_refusal(self, who: str, seconds: float, now: float, keep: float,
                          limit: int) -> None:
        """Record a refusal of ``who``; the longest unexpired one counts (sqlite.py's rule)."""
        await self._run(self._client.eval(
            _ADD_REFUSAL, 2, PREFIX + REFUSALS, PREFIX + REFUSALS + ":s",
            who, repr(seconds), repr(now), repr(keep), str(limit)))

    async def refusal(self, who: str, now: float) -> float:
        """The longest unexpired refusal recorded for ``who`` (0 when none)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.zscore(PREFIX + REFUSALS, who)
        pipe.hget(PREFIX + REFUSALS + ":s", who)
        expires, seconds = await self._run(pipe.execute())
        if expires is None or seconds is None or float(expires) < now:
            return 0.0
        return float(seconds)

    async def forget_refusal(self, who: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(PREFIX + REFUSALS, who)
        pipe.hdel(PREFIX + REFUSALS + ":s", who)
        await self._run(pipe.execute())

    async def close(self) -> None:
        await self._connection.close()


def _glob(text: str) -> str:
    """``text`` with Redis glob characters escaped."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
