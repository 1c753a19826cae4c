"""The signals a serving process handles: SIGTERM/SIGINT stop it, SIGHUP reloads it.

Both faces install the same handlers on their event loop.  A pre-fork parent
(``workers.py``) blocks these signals before forking, so a worker cannot be
killed by one that arrives before its loop is ready; :func:`handle_signals`
unblocks them once the handlers are in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

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
