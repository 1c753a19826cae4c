"""Wait for a condition, and fail the test when it does not come true in time.

A fixed sleep is either too short on a loaded machine (the test fails for no
reason) or too long everywhere; a polling loop that falls out of its range
and carries on lets the assertion after it pass or fail by chance. These poll
until ``condition()`` holds and raise ``AssertionError`` at the timeout.

The condition either returns a value (a falsy one means "not yet"; the truthy
one is returned to the caller) or asserts (an ``AssertionError`` means "not
yet"; at the timeout the last one is raised, so the failure reads like the
assertion itself).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

#: Long enough for a descheduled worker on a busy 2-core machine; a condition
#: that holds returns at once, so a generous timeout costs nothing.
TIMEOUT = 10.0
INTERVAL = 0.02


def _timed_out(timeout: float, last: object, error: AssertionError | None,
               what: str | None) -> AssertionError:
    label = what or "condition"
    if error is not None:
        failure = AssertionError(f"{label} still failing after {timeout} s: {error}")
        failure.__cause__ = error
        return failure
    return AssertionError(f"{label} not met after {timeout} s (last value: {last!r})")


def eventually(condition: Callable[[], T], timeout: float = TIMEOUT, *,
               interval: float = INTERVAL, what: str | None = None) -> T:
    """Poll ``condition`` until it holds; its truthy result, or AssertionError at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        last: object = None
        error: AssertionError | None = None
        try:
            result = condition()
        except AssertionError as exc:
            error = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, last, error, what)
        time.sleep(interval)


@overload
async def eventually_async(
    condition: Callable[[], Awaitable[T]], timeout: float = ..., *,  # noqa: ASYNC109
    interval: float = ..., what: str | None = ...,
) -> T: ...


@overload
async def eventually_async(
    condition: Callable[[], T], timeout: float = ..., *,  # noqa: ASYNC109
    interval: float = ..., what: str | None = ...,
) -> T: ...


# A timeout that fails the test with the condition's own message, where
# asyncio.timeout would cancel it with a bare TimeoutError.
async def eventually_async(
    condition: Callable[[], object], timeout: float = TIMEOUT, *,  # noqa: ASYNC109
    interval: float = INTERVAL, what: str | None = None,
) -> object:
    """``eventually`` for a running event loop: sleeps without blocking it.

    ``condition`` may be a plain function (state of an in-process server) or
    return an awaitable (a request to one).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last: object = None
        error: AssertionError | None = None
        try:
            answer = condition()
            result = await answer if inspect.isawaitable(answer) else answer
        except AssertionError as exc:
            error = exc
        else:
            if result:
                return result
            last = result
        if loop.time() >= deadline:
            raise _timed_out(timeout, last, error, what)
        await asyncio.sleep(interval)
