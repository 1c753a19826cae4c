"""The counter store protocol shared by the local (SQLite) and Redis stores.

Counters are sliding windows approximated by ``BUCKETS`` buckets per window:
a failure adds 1 to the bucket of ``now``; a count is the sum of the buckets
that overlap the last window.  The error is at most one bucket (a tenth of the
window), and a counter costs at most ``BUCKETS`` small rows or hash fields.
"""

from __future__ import annotations

import math
from typing import Protocol

from authsvc.throttle.policy import Keys

BUCKETS = 10


def bucket_of(now: float, window: float) -> int:
    """The bucket number ``now`` falls in, for a counter of ``window`` seconds."""
    return math.floor(now / (window / BUCKETS))


def oldest_bucket(now: float, window: float) -> int:
    """The oldest bucket still inside the window ending at ``now``."""
    return bucket_of(now, window) - BUCKETS + 1


class StoreError(Exception):
    """The store did not answer (Redis down or slow); the caller falls back."""


class CountStore(Protocol):
    """Where the failure counters live."""

    async def record(self, keys: Keys, now: float, fingerprint: str | None) -> tuple[int, int]:
        """Count one failure (unless ``fingerprint`` was already seen for the pair).

        Returns the (address, login) counts after it.
        """
        ...

    async def counts(self, keys: Keys, now: float) -> tuple[int, int]:
        """The (address, login) counts now."""
        ...

    async def reset_pair(self, keys: Keys, now: float) -> None:
        """A successful login: forget the pair's failures, also in the address count."""
        ...

    async def entries(self, now: float) -> list[tuple[str, int]]:
        """Every counter with failures in its window, as (key, count)."""
        ...

    async def clear(self, who: str) -> int:
        """Drop every counter about an address or login; how many were dropped."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...
