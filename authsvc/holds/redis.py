"""Holds in Redis: one hash, a field per hold, for nodes that share their holds.

Imported only when ``[holds] store = "redis"`` (the ``redis`` package is an
optional extra).  Its URL is ``[holds] redis_url``, separate from the
throttle's: the two may live on different servers.  Each field is
``kind:target`` and its value the hold's JSON; HSET and HDEL are atomic, so
two nodes' commands cannot lose each other's hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from authsvc.holds.rules import Hold
from authsvc.holds.store import HoldStoreError
from authsvc.redact import Secret

#: The hash that holds every hold.
HASH = "authsvc:holds"

T = TypeVar("T")


class RedisHoldStore:
    """Holds in the hash :data:`HASH` (redis-py's asyncio client)."""

    def __init__(self, url: Secret, *, timeout: float) -> None:
        import redis.asyncio as aioredis  # optional extra: only when configured

        self._timeout = timeout
        self._client: Any = aioredis.Redis.from_url(
            url.reveal(), socket_timeout=timeout, socket_connect_timeout=timeout,
            retry_on_timeout=False, decode_responses=True)

    def describe(self) -> str:
        return "redis"  # never the URL: it may carry a password

    async def _run(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise HoldStoreError(f"redis: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # redis.exceptions.RedisError and friends
            if type(exc).__module__.startswith("redis"):
                raise HoldStoreError(f"redis: {type(exc).__name__}: {exc}") from None
            raise

    async def read(self) -> list[Hold]:
        fields: dict[str, str] = await self._run(self._client.hgetall(HASH))
        try:
            return [Hold.from_json(json.loads(value)) for value in fields.values()]
        except (ValueError, TypeError, AttributeError) as exc:
            raise HoldStoreError(f"redis: {HASH} holds something that is no hold: {exc}") \
                from None

    async def put(self, hold: Hold) -> None:
        await self._run(self._client.hset(HASH, f"{hold.kind}:{hold.target}",
                                          json.dumps(hold.as_json())))

    async def remove(self, kind: str, target: str) -> bool:
        return bool(await self._run(self._client.hdel(HASH, f"{kind}:{target}")))

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection must not fail
            await self._client.aclose()
