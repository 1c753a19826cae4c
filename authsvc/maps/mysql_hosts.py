"""Which of the MySQL map's configured hosts its connection pool lives on.

Failover and failback (docs/maps.md, "Failover and failback"): the pool opens
on the first host of ``settings.hosts`` that answers (failover in order, like
Perdition's comma list).  A host that refuses, or hangs past
``connect_timeout`` or ``query_timeout``, is marked and tried last until it
answers again; while the pool is not on the first host, the earlier hosts are
tried again every ``failback_interval`` in a background task, and the first
that answers takes over.  With several hosts, a host that ``SHOW REPLICA
STATUS`` says is more than ``max_replica_lag`` behind is skipped while another
answers (the check needs REPLICA MONITOR and turns itself off, said once,
without it).  A pool that is left still works and is retired (its queries in
flight finish); a pool on a failed host is discarded.  The statements each
host answered are counted here too, for ``/metrics``.

This module knows hosts, not the client library: ``mysql.py``, the only
importer of aiomysql, hands it how to open a pool on a host, how to read a
pool's replication status, which exceptions mean "the host did not answer"
and how to word them.  A pool is ``Any`` here, as in ``mysql.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from authsvc.maps import MapUnavailable
from authsvc.settings import HostPort, MySqlMapSettings

# The map's lines keep the map's logger name (``logger=authsvc.maps.mysql``,
# docs/maps.md "Logs"), whichever of its two modules says them.
log = logging.getLogger("authsvc.maps.mysql")

#: Opens a pool on a host with the password (``mysql.py``; bounded by connect_timeout).
OpenPool = Callable[[HostPort, str], Awaitable[Any]]
#: A pool's ``SHOW REPLICA STATUS`` rows by column name; None when the map's
#: user may not read them.
ReplicaStatus = Callable[[Any], Awaitable[list[dict[str, Any]] | None]]


class HostPool:
    """One pool, the host it talks to, and that host's place in ``hosts``."""

    __slots__ = ("host", "index", "lagging", "pool")

    def __init__(self, host: HostPort, pool: Any, index: int, *, lagging: bool = False) -> None:
        self.host = host
        self.pool = pool
        self.index = index
        #: The host was further behind than max_replica_lag when last asked.
        self.lagging = lagging


class MySqlHosts:
    """The pool the map uses now, the hosts that failed lately, and the failback check."""

    def __init__(
        self,
        settings: MySqlMapSettings,
        *,
        open_pool: OpenPool,
        replica_status: ReplicaStatus,
        password: Callable[[], str],
        explain: Callable[[BaseException, str], str],
        failures: tuple[type[BaseException], ...],
    ) -> None:
        """``password`` may raise MapUnavailable; ``explain(exc, password)`` is the
        error's text without the password; ``failures`` are the exceptions of a
        host that does not answer."""
        self._settings = settings
        self._open = open_pool
        self._status = replica_status
        self._password = password
        self._explain = explain
        self._failures = failures
        self._pool: HostPool | None = None
        self._pool_lock = asyncio.Lock()
        # Failover and failback (docs/maps.md): hosts that failed lately (index:
        # when), tried last; the background recheck every failback_interval.
        self._failed: dict[int, float] = {}
        self._failback = settings.failback_interval
        self._next_recheck = 0.0
        self._recheck: asyncio.Task[None] | None = None
        self._last_index: int | None = None
        # Off when max_replica_lag is 0, with one host (nothing to skip to), or
        # once the user turns out not to be allowed to read replication status.
        self._lag_check = settings.max_replica_lag > 0 and len(settings.hosts) > 1
        self._answers = [0] * len(settings.hosts)
        self._closing: set[asyncio.Task[None]] = set()

    async def get(self) -> HostPool:
        """The pool in use, opened on the first host that answers when there is none."""
        current = self._pool
        if current is not None:
            self._maybe_recheck(current)
            return current
        async with self._pool_lock:
            if self._pool is not None:
                return self._pool
            chosen = await self._walk(self._password())
            previous, self._last_index = self._last_index, chosen.index
            if previous is not None and previous != chosen.index:
                log.warning("map now on mysql %s (was %s)", chosen.host,
                            self._settings.hosts[previous])
            self._pool = chosen
            self._next_recheck = asyncio.get_running_loop().time() + self._failback
            return chosen

    def answered(self, current: HostPool) -> None:
        """Count a statement ``current``'s host answered."""
        self._answers[current.index] += 1

    def host_answers(self) -> list[tuple[str, int, bool]]:
        """Each configured host, the statements it answered and whether the map uses it now.

        For ``/metrics`` (``authsvc_map_host_answers_total``, ``authsvc_map_host_in_use``).
        """
        current = self._pool
        return [(str(host), self._answers[i], current is not None and current.index == i)
                for i, host in enumerate(self._settings.hosts)]

    async def stop_rechecking(self) -> None:
        """Cancel the background recheck, if one runs, and wait for it."""
        recheck = self._recheck
        if recheck is not None:
            recheck.cancel()
            await asyncio.gather(recheck, return_exceptions=True)

    async def close(self) -> None:
        """Drop the pool in use and wait (5 s at most) for closing pools to close."""
        current = self._pool
        if current is not None:
            self.discard(current)
        if self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*self._closing, return_exceptions=True)

    def _order(self) -> list[int]:
        """Host indexes to try: in configured order, hosts that failed lately last."""
        count = len(self._settings.hosts)
        return ([i for i in range(count) if i not in self._failed]
                + [i for i in range(count) if i in self._failed])

    async def _try_host(self, index: int, password: str) -> tuple[Any, float]:
        """Open a pool on one host and read its replica lag (0 when not measured)."""
        host = self._settings.hosts[index]
        try:
            pool = await self._open(host, password)
        except self._failures:
            self._failed[index] = asyncio.get_running_loop().time()
            raise
        try:
            lag = await self._replica_lag(pool, host)
        except BaseException:
            self._failed[index] = asyncio.get_running_loop().time()
            pool.terminate()
            raise
        self._failed.pop(index, None)
        return pool, lag

    async def _walk(self, password: str) -> HostPool:
        """The first host that answers and does not lag; else the first that answers.

        docs/maps.md, "Failover and failback": a replica further behind than
        ``max_replica_lag`` is used only when no other host answers.
        """
        failures: list[str] = []
        fallback: HostPool | None = None
        for index in self._order():
            host = self._settings.hosts[index]
            try:
                pool, lag = await self._try_host(index, password)
            except self._failures as exc:
                failures.append(f"{host}: {self._explain(exc, password)}")
                continue
            if not self._lags(lag):
                if fallback is not None:
                    self._retire(fallback)
                return HostPool(host, pool, index)
            failures.append(f"{host}: {self._lag_text(lag)}")
            if fallback is None:
                fallback = HostPool(host, pool, index, lagging=True)
            else:
                pool.terminate()
        if fallback is not None:
            log.warning("map uses a lagging replica, no other host answers: %s",
                        "; ".join(failures))
            return fallback
        raise MapUnavailable("mysql " + "; ".join(failures))

    def _lags(self, lag: float) -> bool:
        return self._lag_check and lag > self._settings.max_replica_lag

    def _lag_text(self, lag: float) -> str:
        behind = ("replication not running (Seconds_Behind_Master is NULL)"
                  if math.isinf(lag) else f"replica {lag:g}s behind")
        return f"{behind}, more than max_replica_lag {self._settings.max_replica_lag:g}s"

    async def _replica_lag(self, pool: Any, host: HostPort) -> float:
        """How far behind its primary the host is: 0 for a primary, inf when replication stopped.

        Without the privilege to ask (MariaDB's GRANT documentation, REPLICA
        MONITOR) the check is off for this map, said once in the log.
        """
        if not self._lag_check:
            return 0.0
        rows = await self._status(pool)
        if rows is None:
            self._lag_check = False
            log.warning(
                "mysql %s: the map's user may not read replication status (SHOW REPLICA "
                "STATUS needs the REPLICA MONITOR privilege): the replica lag check is off",
                host)
            return 0.0
        lag = 0.0
        for values in rows:
            behind = values.get("Seconds_Behind_Master", values.get("Seconds_Behind_Source"))
            lag = max(lag, math.inf if behind is None else float(behind))
        return lag

    def _maybe_recheck(self, current: HostPool) -> None:
        """Every ``failback_interval``, in the background: fail back, or leave a lagging host."""
        if self._recheck is not None or (current.index == 0 and not self._lag_check):
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_recheck:
            return
        self._next_recheck = loop.time() + self._failback
        task = loop.create_task(self._recheck_hosts(current))
        self._recheck = task
        task.add_done_callback(self._recheck_done)

    def _recheck_done(self, task: asyncio.Task[None]) -> None:
        self._recheck = None
        if not task.cancelled() and task.exception() is not None:
            log.debug("map recheck failed: %r", task.exception())

    async def _recheck_hosts(self, current: HostPool) -> None:
        try:
            password = self._password()
        except MapUnavailable:
            return
        if self._lag_check:
            try:
                current.lagging = self._lags(await self._replica_lag(current.pool, current.host))
            except self._failures:
                return  # the lookups see this host fail and move on themselves
        # Earlier hosts are preferred; a lagging host gives way to any that does not lag.
        count = len(self._settings.hosts)
        better = [i for i in range(count) if i < current.index
                  or (current.lagging and i != current.index)]
        for index in better:
            try:
                pool, lag = await self._try_host(index, password)
            except self._failures:
                continue
            if self._lags(lag):
                pool.terminate()
                continue
            try:
                async with self._pool_lock:
                    if self._pool is not current:  # the lookups moved on meanwhile
                        pool.terminate()
                        return
                    self._pool = HostPool(self._settings.hosts[index], pool, index)
                    self._last_index = index
                    self._next_recheck = asyncio.get_running_loop().time() + self._failback
            except asyncio.CancelledError:  # the map is closing
                if self._pool is None or self._pool.pool is not pool:
                    pool.terminate()
                raise
            if index < current.index:
                log.warning("map back on mysql %s (from %s)", self._settings.hosts[index],
                            current.host)
            else:
                log.warning("map now on mysql %s (was %s, more than max_replica_lag behind)",
                            self._settings.hosts[index], current.host)
            self._retire(current)
            return

    def _retire(self, current: HostPool) -> None:
        """Stop handing out a pool that still works: queries in flight finish first."""
        if self._pool is current:
            self._pool = None
        current.pool.close()
        self._track_closing(current.pool)

    def discard(self, current: HostPool) -> None:
        """Stop using a pool; its connections close in the background."""
        if self._pool is current:
            self._pool = None
        current.pool.terminate()
        self._track_closing(current.pool)

    def _track_closing(self, pool: Any) -> None:
        closing = asyncio.get_running_loop().create_task(pool.wait_closed())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def mark_failed(self, current: HostPool) -> None:
        """The host hangs or refuses: tried last until it answers again (docs/maps.md)."""
        self._failed[current.index] = asyncio.get_running_loop().time()
        self.discard(current)
