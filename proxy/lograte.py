"""At most one log line per kind and interval, and how many were held back: :class:`LogRate`.

A flood makes the same refusal thousands of times a second (``event=refused``,
``event=accept_failed``); one line per second per listener and reason says
as much, and the log stays readable and small.  The metrics still count every
one (docs/proxy.md, "Limits").  Pure bookkeeping: the caller gives the time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable

#: Seconds between two lines of one kind.
INTERVAL = 1.0


class LogRate:
    """Say whether a line of one kind may be logged now, and what was held back."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self._interval = interval
        #: Kind -> when its last line was logged.  Kinds are few (listener x reason).
        self._last: dict[Hashable, float] = {}
        self._held: Counter[Hashable] = Counter()

    def allow(self, kind: Hashable, now: float) -> int | None:
        """None: hold this line back; else log it, saying how many were held back before it."""
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._held[kind] += 1
            return None
        self._last[kind] = now
        return self._held.pop(kind, 0)
