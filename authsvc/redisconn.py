"""Connections to Redis, for the throttle and the holds: a URL, or a service behind Sentinel.

The one place that imports ``redis`` (redis-py, the optional extra
``authsvc[redis]``), and only when a store is configured.  Two forms
(docs/configuration.md, "Redis: a URL or Sentinel"):

* ``redis_url``: one server, ``redis://``, ``rediss://`` or ``unix://``
  (a Redis 6 ACL user and password ride in it: ``redis://user:password@host``);
* ``redis_sentinels`` and ``redis_service``: redis-py's own Sentinel client
  (``redis.asyncio.sentinel.Sentinel.master_for``).  It asks a sentinel for
  the service's primary each time it opens a connection, and drops a
  connection that finds a replica (``READONLY``), so after a failover the next
  command reaches the new primary (redis.io, "Sentinel client spec").

Every command is bounded by the store's timeout, and any failure of Redis or
of the network is raised as the caller's own error type, with a message that
never carries the URL, a user or a password (redis-py's text for a refused
``AUTH``, ``WRONGPASS``, names neither).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from authsvc.redact import Secret
from authsvc.settings import RedisSentinel

T = TypeVar("T")

#: Redis Sentinel's port when a sentinel is given without one (redis.io,
#: "High availability with Redis Sentinel", "Running Sentinel").
SENTINEL_PORT = 26379


class RedisConnection:
    """A redis-py asyncio client for one store, in either form."""

    def __init__(self, *, url: Secret | None, sentinel: RedisSentinel | None,
                 timeout: float) -> None:
        self.timeout = timeout
        self._sentinel: Any = None
        common: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                  "retry_on_timeout": False}
        if sentinel is not None:
            from redis.asyncio.sentinel import Sentinel  # optional extra

            # The sentinels' clients keep redis-py's own retry rule (the
            # Sentinel client moves on to the next sentinel itself).
            watchers: dict[str, Any] = {"socket_timeout": timeout,
                                        "socket_connect_timeout": timeout}
            if sentinel.sentinel_username is not None:
                watchers["username"] = sentinel.sentinel_username.reveal()
            if sentinel.sentinel_password is not None:
                watchers["password"] = sentinel.sentinel_password.reveal()
            self._sentinel = Sentinel(
                [(s.host, s.port or SENTINEL_PORT) for s in sentinel.sentinels],
                sentinel_kwargs=watchers)
            data: dict[str, Any] = dict(common)
            if sentinel.username is not None:
                data["username"] = sentinel.username.reveal()
            if sentinel.password is not None:
                data["password"] = sentinel.password.reveal()
            self.client: Any = self._sentinel.master_for(
                sentinel.service, decode_responses=True, **data)
            self._label = f"redis sentinel service {sentinel.service}"
        elif url is not None:
            import redis.asyncio as aioredis  # optional extra

            self.client = aioredis.Redis.from_url(url.reveal(), decode_responses=True, **common)
            self._label = "redis"  # never the URL: it may carry a password
        else:
            raise ValueError("a Redis store needs redis_url or redis_sentinels")

    @property
    def sentinel(self) -> bool:
        """Whether the store is the Sentinel form (a primary with replicas)."""
        return self._sentinel is not None

    def describe(self) -> str:
        return self._label

    async def run(self, call: Awaitable[T], error: Callable[[str], Exception]) -> T:
        """``call``'s result within the timeout, or ``error(message)`` raised."""
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise error(f"redis: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # redis.exceptions.RedisError and friends
            if type(exc).__module__.startswith("redis"):
                raise error(f"redis: {type(exc).__name__}: {exc}") from None
            raise

    async def close(self) -> None:
        # Closing a dead connection must not fail the shutdown.
        with contextlib.suppress(Exception):
            await self.client.aclose()
        if self._sentinel is not None:
            with contextlib.suppress(Exception):
                await self._sentinel.aclose()
