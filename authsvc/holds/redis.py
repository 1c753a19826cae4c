"""Holds in Redis: one hash, a field per hold, for nodes that share their holds.

Used only when ``[holds] store = "redis"``; the connection, one server
(``redis_url``) or a primary found through Sentinel (``redis_sentinels``), is
``authsvc/redisconn.py``'s, separate from the throttle's: the two may live on
different servers.  Each field is ``kind:target`` and its value the hold's
JSON; HSET and HDEL are atomic, so two nodes' commands cannot lose each
other's hold.

Replication in Redis is asynchronous: a primary that dies right after it
answered may take the last write with it.  So with ``redis_replicas`` = N > 0
(1 by default with Sentinel) each change is followed, on the same connection,
by ``WAIT N <ms>`` (redis.io, "WAIT"), and the command reports success only
when N replicas have the change; otherwise it fails and says so, and the
operator runs it again (docs/operations.md, "Redis Sentinel for the throttle and
holds").
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from authsvc.holds.rules import Hold
from authsvc.holds.store import HoldStoreError
from authsvc.redact import Secret
from authsvc.redisconn import RedisConnection
from authsvc.settings import RedisSentinel

#: The hash that holds every hold.
HASH = "authsvc:holds"

T = TypeVar("T")


class RedisHoldStore:
    """Holds in the hash :data:`HASH` (redis-py's asyncio client, through ``redisconn.py``)."""

    def __init__(self, url: Secret | None, *, timeout: float,
                 sentinel: RedisSentinel | None = None, replicas: int = 0) -> None:
        self._connection = RedisConnection(url=url, sentinel=sentinel, timeout=timeout)
        self._client: Any = self._connection.client
        self._replicas = replicas

    def describe(self) -> str:
        return self._connection.describe()

    async def _run(self, call: Awaitable[T]) -> T:
        return await self._connection.run(call, HoldStoreError)

    async def read(self) -> list[Hold]:
        fields: dict[str, str] = await self._run(self._client.hgetall(HASH))
        try:
            return [Hold.from_json(json.loads(value)) for value in fields.values()]
        except (ValueError, TypeError, AttributeError) as exc:
            raise HoldStoreError(f"redis: {HASH} holds something that is no hold: {exc}") \
                from None

    async def _change(self, command: str, *args: str) -> int:
        """``command`` on the hash, then, when replicas are required, ``WAIT`` for them.

        One pipeline is one connection, and ``WAIT`` counts the replicas that
        have this connection's writes.  The replicas get half of
        ``redis_timeout``, so their answer comes before the socket's timeout.
        """
        wait_ms = max(1, int(self._connection.timeout * 500))
        pipe = self._client.pipeline(transaction=False)
        pipe.execute_command(command, HASH, *args)
        if self._replicas:
            pipe.execute_command("WAIT", self._replicas, wait_ms)
        results = await self._run(pipe.execute())
        if self._replicas and int(results[1]) < self._replicas:
            raise HoldStoreError(
                f"{self.describe()}: the change is on the primary, but {int(results[1])} "
                f"of the {self._replicas} replica(s) required ([holds] redis_replicas) "
                f"acknowledged it within {wait_ms} ms, so a failover could lose it; "
                "check the replicas (INFO replication), then run the command again")
        return int(results[0])

    async def put(self, hold: Hold) -> None:
        await self._change("HSET", f"{hold.kind}:{hold.target}", json.dumps(hold.as_json()))

    async def remove(self, kind: str, target: str) -> bool:
        return bool(await self._change("HDEL", f"{kind}:{target}"))

    async def close(self) -> None:
        await self._connection.close()
