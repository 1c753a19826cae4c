"""A warning, once per path, that an operator endpoint has moved to the control listener.

``authsvc serve`` answers ``POST /cache/flush`` and ``/throttle`` on its
nginx-facing port, and ``authsvc proxy`` answers ``/throttle`` on its health
port, for one more release (docs/operations.md, "Operator commands").  Each
process logs ``event=deprecated`` the first time each path is asked there, not
on every request, so a cron job cannot flood the log.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("authsvc.control")


class Deprecation:
    """Remembers which old paths this process has warned about."""

    def __init__(self, where: str) -> None:
        """``where`` names the old place, e.g. ``"serve's auth_http port"``."""
        self._where = where
        self._warned: set[str] = set()

    def note(self, path: str) -> None:
        """Log the warning for ``path`` unless this process already did."""
        if path in self._warned:
            return
        self._warned.add(path)
        logger.warning(
            "%s on %s is deprecated and goes in the next release: configure [control] listen "
            "and point authsvc flush/throttle at it (docs/operations.md)", path, self._where,
            extra={"fields": {"event": "deprecated", "path": path}})
