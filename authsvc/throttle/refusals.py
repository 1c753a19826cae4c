"""How long the store has taken to refuse each client address, for the refusals that skip it.

The proxy answers every failed login ``auth_failure_delay`` after the command
at the earliest, so an unknown user (refused by the map at once) and a wrong
password (refused by the store) look alike while the store answers within
that delay.  A store with a per-address penalty does not: Dovecot's auth
penalty holds each login from an address with recent failures for 2, 4, 8
and then 15 seconds (Dovecot's docs, "Authentication penalty"; measured with
2.3.19: 0.5, 4.5, 8.5, 15.5 s), and a penalised address keeps waiting even
after a pause.  So ``proxy/attempt.py`` records here how long the store took
to refuse a password, per client address, and holds every failure from that
address at least that long: the record keeps the longest such time, until
``KEEP`` seconds pass without a store refusal of the address, or the address
logs in (Dovecot clears its penalty on a successful login too).

The record is bounded: ``LIMIT`` addresses, in each process (least recently
used dropped first) and in each shared store (soonest to expire dropped
first).  It is shared where the throttle's counts are: by the workers
through the throttle's SQLite file (``local.py``, ``sqlite.py``), written the
same way as the failure counts (a worker never waits for another worker's
lock), and with ``[throttle] store = "redis"`` by the nodes through Redis
(``redis.py``).  A Redis that fails or is slow costs what it costs the
counts: this node answers from its own record meanwhile, and tries Redis
again after ``redis_retry`` seconds (docs/security.md, "User enumeration").
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from authsvc.throttle.local import LocalStore
from authsvc.throttle.policy import subject
from authsvc.throttle.store import StoreError


class SharedRefusals(Protocol):
    """Where the nodes share the record (``redis.py``'s ``RedisStore``)."""

    async def add_refusal(self, who: str, seconds: float, now: float, keep: float,
                          limit: int) -> None: ...

    async def refusal(self, who: str, now: float) -> float: ...

    async def forget_refusal(self, who: str) -> None: ...

#: Addresses remembered, per process and in the shared file.
LIMIT = 10_000
#: Seconds a record lasts after the store's latest refusal of the address:
#: Dovecot's anvil keeps an address's penalty for an hour after its last
#: update (``PENALTY_DEFAULT_EXPIRE_SECS`` in Dovecot's src/anvil/penalty.c).
KEEP = 3600.0
#: An IPv6 client is its /48 network here, as Dovecot's penalty counts it
#: (Dovecot's docs, "Authentication penalty support", PENALTY_IPV6_MASK_BITS).
IPV6_PREFIX = 48


class RefusalRecord:
    """The store's longest recent refusal time per client address (IPv6: its network)."""

    def __init__(self, local: LocalStore, *, ipv6_prefix: int = IPV6_PREFIX, limit: int = LIMIT,
                 keep: float = KEEP, clock: Callable[[], float] = time.time,
                 shared: SharedRefusals | None = None, retry: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._local = local
        self._shared = shared
        self._retry = retry
        self._monotonic = monotonic
        self._shared_retry_at = 0.0
        self._prefix = ipv6_prefix
        self._limit = limit
        self._keep = keep
        # Wall-clock time: the workers compare expiries in one file.
        self._clock = clock
        # This process's view (who -> (seconds, expires)): what it recorded
        # itself, so a queued or failed write to the file still counts here.
        self._mine: collections.OrderedDict[str, tuple[float, float]] = \
            collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._mine)

    async def _on_shared(self, call: Callable[[SharedRefusals], Awaitable[float | None]]
                         ) -> float:
        """Run ``call`` on the shared store unless it failed lately; 0 when it fails."""
        shared = self._shared
        if shared is None or self._monotonic() < self._shared_retry_at:
            return 0.0
        try:
            return await call(shared) or 0.0
        except StoreError:
            self._shared_retry_at = self._monotonic() + self._retry
            self._local.bump("store_errors")
            return 0.0

    async def refused(self, client_ip: str | None, seconds: float) -> None:
        """The store refused a password from ``client_ip`` after ``seconds``."""
        who = subject(client_ip, self._prefix)
        if who is None:
            return
        now = self._clock()
        kept = self._mine.pop(who, None)
        if kept is not None and kept[1] >= now:
            seconds = max(seconds, kept[0])
        self._mine[who] = (seconds, now + self._keep)
        while len(self._mine) > self._limit:
            self._mine.popitem(last=False)
        keep, limit = self._keep, self._limit
        self._local.write(lambda f: f.add_refusal(who, seconds, now, keep, limit))
        await self._on_shared(lambda r: r.add_refusal(who, seconds, now, keep, limit))

    async def floor(self, client_ip: str | None) -> float:
        """Seconds a failure from ``client_ip`` waits at least (0 when nothing is recorded)."""
        who = subject(client_ip, self._prefix)
        if who is None:
            return 0.0
        now = self._clock()
        mine = 0.0
        kept = self._mine.get(who)
        if kept is not None:
            if kept[1] >= now:
                mine = kept[0]
                self._mine.move_to_end(who)
            else:
                del self._mine[who]
        shared = await self._on_shared(lambda r: r.refusal(who, now))
        return max(mine, shared, self._local.read(lambda f: f.refusal(who, now), 0.0))

    async def forget(self, client_ip: str | None) -> None:
        """``client_ip`` logged in: the store has cleared its penalty, and so do we."""
        who = subject(client_ip, self._prefix)
        if who is None:
            return
        mine = self._mine.pop(who, None)
        # A login costs a read, and a write only when there is something to forget.
        if mine is not None or self._local.read(lambda f: f.refusal(who, 0.0), 0.0) > 0:
            self._local.write(lambda f: f.forget_refusals(who))
        if self._shared is not None and await self._on_shared(lambda r: r.refusal(who, 0.0)):
            await self._on_shared(lambda r: r.forget_refusal(who))
