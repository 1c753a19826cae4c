"""Which event loop ``authsvc proxy`` runs on: stdlib asyncio, or uvloop when installed.

uvloop is the optional extra ``authsvc[uvloop]`` (docs/testing-deps.md says
why it may be added).  Installed, it is used; ``AUTHSVC_LOOP=asyncio`` keeps
the stdlib loop all the same (for comparing the two, bench/proxy_bench.py),
``AUTHSVC_LOOP=uvloop`` insists on uvloop and fails when it is missing.  The
startup ``limits`` line names the loop.  ``authsvc serve`` stays on stdlib
asyncio: its fast path was measured there (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

#: The environment variable that picks the loop: ``asyncio``, ``uvloop`` or unset (auto).
ENVIRONMENT = "AUTHSVC_LOOP"

T = TypeVar("T")


class LoopError(Exception):
    """``AUTHSVC_LOOP`` names a loop that cannot be used."""


def loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """(the loop's name, its factory; None for the stdlib default)."""
    wanted = os.environ.get(ENVIRONMENT, "").strip().lower()
    if wanted not in ("", "asyncio", "uvloop"):
        raise LoopError(f"{ENVIRONMENT}={wanted!r}: expected asyncio or uvloop")
    if wanted == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            raise LoopError(f"{ENVIRONMENT}=uvloop, but uvloop is not installed "
                            "(pip install 'authsvc[uvloop]')") from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``uvloop`` or ``asyncio``: what the running (or given) loop is."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` picks."""
    _, factory = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
