"""Properties of the throttle's sliding window (``policy.py``), and the stores keep it.

Times are whole seconds and windows whole multiples of ``BUCKETS`` seconds, so
bucket edges are exact and a property that fails is a real one, not rounding.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authsvc.throttle.local import LocalStore
from authsvc.throttle.policy import BUCKETS, Keys, bucket_of, oldest_bucket, window_total

START = 1_700_000_000
windows = st.integers(min_value=1, max_value=120).map(lambda n: n * BUCKETS)


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, list[int], int]:
    """A window, failure times (up to two windows old, so edges are hit), and now."""
    window = draw(windows)
    now = START + draw(st.integers(min_value=0, max_value=10 * window))
    ages = draw(st.lists(st.integers(min_value=0, max_value=2 * window), max_size=40))
    return window, sorted(now - age for age in ages), now


def buckets_of(times: list[int], window: int) -> list[tuple[int, int]]:
    return [(bucket_of(t, window), 1) for t in times]


def naive(times: list[int], now: int, window: int) -> int:
    """Event by event: those at or before ``now`` whose bucket is one of the last ten."""
    width = window // BUCKETS
    return sum(1 for t in times if t <= now and t // width > now // width - BUCKETS)


@given(histories())
def test_the_count_matches_a_naive_model(history: tuple[int, list[int], int]) -> None:
    window, times, now = history
    assert window_total(buckets_of(times, window), now, window) == naive(times, now, window)


@given(histories())
def test_the_count_lies_between_the_short_and_the_full_window(
        history: tuple[int, list[int], int]) -> None:
    window, times, now = history
    count = window_total(buckets_of(times, window), now, window)
    width = window // BUCKETS
    # Never more than the events in the window (nor than the events at all)...
    assert count <= sum(1 for t in times if t > now - window) <= len(times)
    # ...and never less than those of its last nine tenths: the error is one bucket.
    assert count >= sum(1 for t in times if t >= now - window + width)


@given(histories(), st.integers(min_value=0, max_value=3_000))
def test_without_new_failures_the_count_only_falls(history: tuple[int, list[int], int],
                                                   later: int) -> None:
    window, times, now = history
    rows = buckets_of(times, window)
    assert window_total(rows, now + later, window) <= window_total(rows, now, window)
    if later >= window:
        assert window_total(rows, now + later, window) == 0


@given(windows, st.floats(min_value=0, max_value=1e10, allow_nan=False))
def test_the_window_holds_exactly_buckets_buckets(window: int, now: float) -> None:
    assert bucket_of(now, window) - oldest_bucket(now, window) == BUCKETS - 1


@given(st.lists(st.tuples(st.integers(-1000, 1000), st.integers(-5, 5))), windows,
       st.integers(min_value=-1000, max_value=1000))
def test_the_count_is_never_negative(rows: list[tuple[int, int]], window: int,
                                     now: int) -> None:
    # A success takes failures back out, possibly more than the window still holds.
    assert window_total(rows, now, window) >= 0


# -- the SQLite store, with the lock taken now and then, against the model -------------------

steps = st.lists(st.tuples(st.sampled_from(["fail", "fail", "fail", "lock", "unlock"]),
                           st.integers(min_value=0, max_value=40),
                           st.sampled_from(["192.0.2.1", "192.0.2.2"])),
                 max_size=30)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps)
def test_the_shared_store_counts_as_the_model_locked_or_not(tmp_path: Path,
                                                             steps: list[tuple[str, int,
                                                                               str]]) -> None:
    asyncio.run(_run(tmp_path, steps))


async def _run(tmp_path: Path, steps: list[tuple[str, int, str]]) -> None:
    path = tmp_path / f"t{id(steps)}.sqlite3"
    path.unlink(missing_ok=True)
    worker = LocalStore(str(path), address_window=100.0, login_window=100.0)
    other = sqlite3.connect(str(path), isolation_level=None)
    locked = False
    times: dict[str, list[int]] = {}
    now = START
    try:
        for action, step, client in steps:
            now += step
            if action == "lock" and not locked:
                other.execute("BEGIN IMMEDIATE")
                locked = True
            elif action == "unlock" and locked:
                other.execute("COMMIT")
                locked = False
            elif action == "fail":
                times.setdefault(client, []).append(now)
                keys = Keys(f"a:{client}", "l:bob", f"p:{client}|bob", 100.0, 100.0)
                address, login = await worker.record(keys, now, None)
                assert address == naive(times[client], now, 100)
                assert login == naive([t for seen in times.values() for t in seen], now, 100)
        if locked:
            other.execute("COMMIT")
        await worker.close()  # writes what is queued
        reader = LocalStore(str(path), address_window=100.0, login_window=100.0)
        for client, seen in times.items():
            keys = Keys(f"a:{client}", "l:bob", f"p:{client}|bob", 100.0, 100.0)
            assert (await reader.counts(keys, now))[0] == naive(seen, now, 100)
        await reader.close()
    finally:
        other.close()
