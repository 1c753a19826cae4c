"""``Throttle``: the policy, the stores and the Redis fallback, as serve and proxy call it.

serve (nginx ``auth_http``) calls :meth:`Throttle.check` before routing and
:meth:`Throttle.failed` after its own refusals; the proxy also calls
:meth:`Throttle.failed` with the password (for the fingerprint) after a store
refused, and :meth:`Throttle.succeeded` after a login.  docs/security.md says
what counts where.

With ``store = "redis"`` every call goes to Redis first; when Redis fails or
is slower than ``redis_timeout`` the local store answers instead (never
"refuse everyone", never "let everyone through"), the switch is logged once
and ``authsvc_throttle_fallback`` says so, and Redis is tried again after
``redis_retry`` seconds.  The local store keeps counting meanwhile, so an
attacker gains nothing from the outage but a fresh count on this node.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from authsvc.exposition import Family, format_labels, header
from authsvc.redact import Secret
from authsvc.settings import ThrottleSettings
from authsvc.throttle.local import LocalStore
from authsvc.throttle.policy import (
    ADDRESS,
    FREE,
    LOGIN,
    PAIR,
    Keys,
    Policy,
    Verdict,
    fingerprint,
    subject,
)
from authsvc.throttle.refusals import IPV6_PREFIX, RefusalRecord, SharedRefusals
from authsvc.throttle.store import CountStore, StoreError

logger = logging.getLogger("authsvc.throttle")

#: The local store's file in a server's private run directory (``--workers N``).
DB_NAME = "throttle.sqlite3"

T = TypeVar("T")

#: The throttle's counters: (the stats key, the family).
_COUNTERS = (
    ("failures", Family(
        "authsvc_throttle_failures_total", "counter",
        "Failed logins counted by the throttle (repeats of one password from one device once).")),
    ("delayed", Family(
        "authsvc_throttle_delayed_total", "counter",
        "Refusals answered with a throttle delay (Auth-Wait or the proxy's tarpit).")),
    ("blocked", Family(
        "authsvc_throttle_blocked_total", "counter",
        "Logins refused because the address is past the hard cap.")),
    ("store_errors", Family(
        "authsvc_throttle_store_errors_total", "counter",
        "Redis commands that failed or timed out (answered from local counts).")),
    ("queued", Family(
        "authsvc_throttle_queued_total", "counter",
        "Throttle updates queued because another process held the local store's lock "
        "(written once it is free).")),
    ("local_errors", Family(
        "authsvc_throttle_local_errors_total", "counter",
        "Local store (SQLite) operations that failed (this process counted on its own).")),
)
_FALLBACK = Family("authsvc_throttle_fallback", "gauge",
                   "Workers counting locally because Redis is unreachable.")
_STORE_INFO = Family("authsvc_throttle_store_info", "gauge", "The configured throttle store.")


class Throttle:
    """One per process; ``directory`` is the workers' shared run directory, if any."""

    def __init__(self, settings: ThrottleSettings, *, directory: str | None = None,
                 clock: Callable[[], float] = time.time, refusals: bool = False) -> None:
        self.settings = settings
        self.policy = Policy(settings)
        # Wall-clock time: buckets must agree between workers and between nodes.
        self._clock = clock
        # No file when throttling is off, unless the proxy's refusal record
        # (``refusals.py``) needs it: it works whether throttling is on or not.
        use_file = settings.enabled or refusals
        path = os.path.join(directory, DB_NAME) if directory and use_file else None
        self.local = LocalStore(path,
                                address_window=settings.address_window,
                                login_window=settings.login_window)
        self._redis: CountStore | None = None
        shared: SharedRefusals | None = None
        if settings.enabled and settings.store == "redis" and (
                settings.redis_url is not None or settings.redis_sentinel is not None):
            from authsvc.throttle.redis import RedisStore

            self._redis = shared = RedisStore(
                settings.redis_url, timeout=settings.redis_timeout,
                address_window=settings.address_window, login_window=settings.login_window,
                sentinel=settings.redis_sentinel)
        #: The store's refusal time per address (the proxy's); None for serve.
        self.refusals = (RefusalRecord(self.local, ipv6_prefix=min(settings.ipv6_prefix,
                                                                   IPV6_PREFIX),
                                       clock=clock, shared=shared,
                                       retry=settings.redis_retry) if refusals else None)
        self._redis_retry_at = 0.0
        self._on_fallback = False
        # Without a configured key, fingerprints are only comparable inside
        # this process (docs/security.md); the random key never leaves it.
        self._key = settings.key if settings.key is not None else Secret(secrets.token_hex(32))

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def on_fallback(self) -> bool:
        """Whether Redis is configured but the local store answers now."""
        return self._on_fallback

    # -- store selection -------------------------------------------------------------------

    async def _call(self, redis_call: Callable[[CountStore], Awaitable[T]],
                    local_call: Callable[[LocalStore], Awaitable[T]]) -> T:
        redis = self._redis
        now = self._clock()
        if redis is not None and now >= self._redis_retry_at:
            try:
                result = await redis_call(redis)
            except StoreError as exc:
                self.local.bump("store_errors")
                self._redis_retry_at = now + self.settings.redis_retry
                if not self._on_fallback:
                    self._on_fallback = True
                    self.local.set_fallback(True)
                    logger.warning("", extra={"fields": {
                        "event": "throttle_fallback", "store": "local", "reason": str(exc),
                        "retry_in": self.settings.redis_retry}})
            else:
                if self._on_fallback:
                    self._on_fallback = False
                    self.local.set_fallback(False)
                    logger.info("", extra={"fields": {"event": "throttle_fallback",
                                                      "store": "redis", "reason": "reachable"}})
                return result
        return await local_call(self.local)

    # -- what serve and proxy call ----------------------------------------------------------

    async def check(self, client_ip: str | None, login: str) -> Verdict:
        """Before routing: is this address blocked (and what delay do failures earn)?"""
        keys = self.policy.keys(client_ip, login)
        if keys is None:
            return FREE
        now = self._clock()
        address, login_count = await self._call(lambda s: s.counts(keys, now),
                                                lambda s: s.counts(keys, now))
        verdict = self.policy.verdict(address, login_count)
        if verdict.blocked:
            self.local.bump("blocked")
        return verdict

    async def failed(self, client_ip: str | None, login: str,
                     password: Secret | None = None) -> Verdict:
        """Count a failed login; the delay or refusal its counts now earn.

        With ``password`` (the proxy), the same password from the same address
        for the same login counts once per window: a phone retrying an old
        password is one failure, not hundreds.
        """
        keys = self.policy.keys(client_ip, login)
        if keys is None:
            return FREE
        mark = fingerprint(self._key, keys.address, login, password) if password else None
        now = self._clock()
        address, login_count = await self._call(lambda s: s.record(keys, now, mark),
                                                lambda s: s.record(keys, now, mark))
        self.local.bump("failures")
        verdict = self.policy.verdict(address, login_count)
        if verdict.blocked:
            self.local.bump("blocked")
        elif verdict.delay > 0:
            self.local.bump("delayed")
        return verdict

    async def succeeded(self, client_ip: str | None, login: str) -> None:
        """A login the store accepted (proxy only): forget this pair's failures."""
        keys = self.policy.keys(client_ip, login)
        if keys is None:
            return
        now = self._clock()
        await self._call(lambda s: s.reset_pair(keys, now), lambda s: s.reset_pair(keys, now))

    def keys(self, client_ip: str | None, login: str) -> Keys | None:
        return self.policy.keys(client_ip, login)

    # -- control ---------------------------------------------------------------------------

    async def entries(self) -> list[dict[str, object]]:
        """Every counter with failures in its window, for ``authsvc throttle list``."""
        now = self._clock()
        found = await self._call(lambda s: s.entries(now), lambda s: s.entries(now))
        listed: list[dict[str, object]] = []
        for key, count in found:
            kind, _, who = key.partition(":")
            entry: dict[str, object] = {"kind": _KINDS.get(kind, kind), "who": who,
                                        "failures": count}
            if kind == ADDRESS:
                entry["blocked"] = count >= self.settings.address_limit
            listed.append(entry)
        return listed

    async def clear(self, who: str) -> int:
        """Forget an address (or network) or a login, in the shared store and locally."""
        # An address is cleared as the subject it is counted as (its IPv6
        # network); a network or a login as given.
        target = who if "/" in who else subject(who, self.settings.ipv6_prefix) or who
        dropped = await self._call(lambda s: s.clear(target), lambda s: s.clear(target))
        if self._redis is not None and not self._on_fallback:
            dropped += await self.local.clear(target)  # what the fallback counted, too
        logger.info("", extra={"fields": {"event": "throttle_clear", "who": target,
                                          "dropped": dropped}})
        return dropped

    # -- metrics -----------------------------------------------------------------------------

    def render_metrics(self) -> str:
        """Prometheus text for the throttle's families (node-wide, from the local store)."""
        stats = self.local.stats()
        lines: list[str] = []
        for name, family in _COUNTERS:
            lines += [*header(family), f"{family.name} {int(stats.get(name, 0))}"]
        fallback = self.local.fallback_workers() if self._redis is not None else 0
        store = self.settings.store if self.enabled else "off"
        lines += [*header(_FALLBACK), f"{_FALLBACK.name} {fallback}",
                  *header(_STORE_INFO), f"{_STORE_INFO.name}{format_labels(store=store)} 1"]
        return "\n".join(lines) + "\n"

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
        await self.local.close()


_KINDS = {ADDRESS: "address", LOGIN: "login", PAIR: "pair"}
