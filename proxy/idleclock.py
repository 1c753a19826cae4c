"""IdleClock: the idle timeout both relays keep.

Perdition's ``timeout`` (perdition(8), IDLE TIMEOUTS): ``idle_timeout``
seconds with no byte moved either way (``last_moved``) ends the relay with
``idle_timeout``.  One timer per relay, re-armed for what is left of the
timeout when it fires early, not one per chunk.
"""

from __future__ import annotations

import asyncio


class IdleClock:
    """The idle timeout both relays keep: ``idle_timeout`` seconds with no
    byte moved either way (``last_moved``) ends the relay with ``idle_timeout``."""

    __slots__ = ("_idle", "idle_timeout", "last_moved", "loop")

    def __init__(self, idle_timeout: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.last_moved = self.loop.time()
        self._idle: asyncio.TimerHandle | None = None

    def _start_idle_clock(self) -> None:
        if self.idle_timeout > 0:
            self._idle = self.loop.call_later(self.idle_timeout, self._check_idle)

    def _stop_idle_clock(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _check_idle(self) -> None:
        quiet = self.loop.time() - self.last_moved
        if quiet >= self.idle_timeout:
            self._idle = None
            self._end("idle_timeout")
        else:
            self._idle = self.loop.call_later(self.idle_timeout - quiet, self._check_idle)

    def _end(self, reason: str) -> None:
        raise NotImplementedError
