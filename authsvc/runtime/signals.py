"""The signals a serving process handles: SIGTERM/SIGINT stop it, SIGHUP reloads it.

Both faces install the same handlers on their event loop.  A pre-fork parent
(``workers.py``) blocks these signals before forking, so a worker cannot be
killed by one that arrives before its loop is ready; :func:`handle_signals`
unblocks them once the handlers are in place.

:class:`SighupReload` is what SIGHUP does: a SIGHUP that arrives while the
process is still starting (its maps opening, its listeners not yet taken) is
remembered and carried out once the process can reload, never dropped: the
supervisor forwards SIGHUP to a worker it has just forked, and a config
edited meanwhile must still be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Protocol

#: Signals a serving process handles itself.
HANDLED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def handle_signals(stop: asyncio.Event, on_sighup: Callable[[], None]) -> None:
    """SIGTERM/SIGINT set ``stop``, SIGHUP calls ``on_sighup``; then unblock them.

    Outside the main thread (an in-process test) the loop cannot take
    signals, and the process keeps the default dispositions.
    """
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


def release_signals() -> None:
    """Remove the handlers :func:`handle_signals` installed on the running loop."""
    loop = asyncio.get_running_loop()
    for signum in HANDLED_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signum)


class Reloads(Protocol):
    """What :class:`SighupReload` asks to reload (``authsvc.reload.Reloader``)."""

    def request(self) -> None: ...


class SighupReload:
    """The SIGHUP handler of one serving process (or worker).

    ``configured``: the process has configuration files to read again; without
    them a SIGHUP is only logged.
    """

    def __init__(self, logger: logging.Logger, *, configured: bool) -> None:
        self._logger = logger
        self._configured = configured
        self._reloader: Reloads | None = None
        self._pending = False

    def __call__(self) -> None:
        if not self._configured:
            self._logger.info("SIGHUP received: nothing to reload (no configuration files)")
            return
        if self._reloader is None:
            self._pending = True
            self._logger.info("", extra={"fields": {"event": "reload", "signal": "SIGHUP",
                                                    "when": "once started"}})
            return
        self._logger.info("", extra={"fields": {"event": "reload", "signal": "SIGHUP"}})
        self._reloader.request()

    def ready(self, reloader: Reloads) -> None:
        """The process can reload now: carry out a SIGHUP that came while it started."""
        self._reloader = reloader
        if self._pending:
            self._pending = False
            reloader.request()
