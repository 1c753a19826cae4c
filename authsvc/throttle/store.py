"""The counter store protocol shared by the local (SQLite) and Redis stores.

Every store keeps the bucketed sliding windows of ``policy.py``
(:func:`~authsvc.throttle.policy.window_total`).
"""

from __future__ import annotations

from typing import Protocol

from authsvc.throttle.policy import Keys


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
