"""The pre-fork supervisor behind ``--workers N``, for ``authsvc serve`` and ``authsvc proxy``.

The parent binds the listening sockets before forking (``binding.py``), so a
busy port is reported before any worker starts, and a worker that dies leaves
its socket (and the connections queued on it) for its replacement.  Each face
says what a worker runs (``child_main``) and which socket is its token: serve
passes one ``SO_REUSEPORT`` socket per worker (or one shared unix socket), the
proxy the first of each worker's listening sockets.

The parent only supervises: it blocks SIGTERM/SIGINT/SIGHUP/SIGCHLD and waits
for them with ``sigtimedwait``.  SIGTERM/SIGINT: close its copies of the
listening sockets (so the kernel stops queueing on them), pass SIGTERM to every
worker, wait, and exit 0 when all of them exited 0.  SIGHUP: the parent
reads the configuration again (so workers it starts later get the new one) and
passes SIGHUP to every worker, each of which reloads itself
(``authsvc/reload.py``).  A worker that dies on its own is replaced; three that
die within seconds of starting mean something is broken, and the parent gives up.

Workers share a private run directory (mode 0700) for metrics files and
control sockets (``authsvc/metricfiles.py``, ``authsvc/control/flush.py``); the
parent removes it at exit.  The parent keeps ``workers.json`` there, each live
worker's pid and slot and how many it has replaced, for the scrapes
(``authsvc/processes.py``: ``authsvc_worker_restarts_total`` and the
``process_*`` figures).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable

from authsvc.processes import write_roster
from authsvc.reload import ReloadSource
from authsvc.runtime.signals import HANDLED_SIGNALS
from authsvc.settings import Settings

logger = logging.getLogger("authsvc.workers")

#: A worker that exits sooner than this after starting counts as a crash loop.
QUICK_EXIT = 5.0
QUICK_EXITS_ALLOWED = 3
RESPAWN_DELAY = 0.5


def make_run_dir() -> str:
    """A private directory for the workers' metrics files and control sockets."""
    base = os.environ.get("RUNTIME_DIRECTORY")  # systemd RuntimeDirectory=, if any
    return tempfile.mkdtemp(prefix="authsvc-serve-", dir=base or None)


def supervise(
    settings: Settings,
    sockets: list[socket.socket],
    count: int,
    run_dir: str,
    *,
    child_main: Callable[[Settings, socket.socket, str], int],
    on_stop: Callable[[], None] | None = None,
    reload_from: ReloadSource | None = None,
) -> int:
    """Fork ``count`` workers and look after them until SIGTERM; returns the exit code.

    ``sockets`` holds one socket per worker (TCP) or a single shared one (unix).
    ``on_stop`` closes anything else the parent listens on (``authsvc proxy``
    hands each worker several sockets), when the parent closes ``sockets``.
    """
    waited = HANDLED_SIGNALS | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    main = child_main
    children: dict[int, tuple[int, float]] = {}  # pid -> (slot, start time)
    respawn: list[tuple[float, int]] = []  # (when, slot)
    stopping = False
    failed = False
    quick_exits = 0
    restarts = 0

    def roster() -> None:
        with contextlib.suppress(OSError):  # a scrape then shows the previous roster
            write_roster(run_dir, {pid: slot for pid, (slot, _) in children.items()}, restarts)

    def spawn(slot: int) -> None:
        sock = sockets[slot] if len(sockets) > 1 else sockets[0]
        for handler in logging.getLogger().handlers:
            handler.flush()  # or the child would write the parent's buffered lines again
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for other in sockets:
                    if other is not sock:
                        other.close()
                # The handled signals stay blocked until the worker's loop has
                # its handlers (signals.py unblocks them); SIGCHLD is not ours.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                code = main(settings, sock, run_dir)
            except BaseException:
                logger.exception("worker failed")
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = (slot, time.monotonic())
        roster()
        logger.info("", extra={"fields": {"event": "worker_started", "worker": pid,
                                          "slot": slot}})

    try:
        for slot in range(count):
            spawn(slot)
        while children or (respawn and not stopping):
            timeout = max(0.0, min(when for when, _ in respawn) - time.monotonic()) \
                if respawn and not stopping else 1.0
            info = signal.sigtimedwait(waited, timeout)
            signo = info.si_signo if info is not None else None
            if signo is None and not stopping:
                now = time.monotonic()
                for item in [r for r in respawn if r[0] <= now]:
                    respawn.remove(item)
                    restarts += 1
                    spawn(item[1])
            if signo in (signal.SIGTERM, signal.SIGINT) and not stopping:
                stopping = True
                logger.info("", extra={"fields": {"event": "stopping",
                                                  "signal": signal.Signals(signo).name}})
                for sock in sockets:  # no more queueing on sockets nobody will accept from
                    sock.close()
                if on_stop is not None:
                    on_stop()
                for pid in children:
                    _kill(pid, signal.SIGTERM)
            elif signo == signal.SIGHUP and not stopping:
                settings = _reloaded(settings, reload_from)
                for pid in children:  # each worker reloads itself (authsvc/reload.py)
                    _kill(pid, signal.SIGHUP)
            # SIGCHLD, or any wake-up: reap whoever has exited.
            for pid, status in _reap():
                slot, started = children.pop(pid, (-1, 0.0))
                roster()
                code = os.waitstatus_to_exitcode(status)
                if stopping:
                    if code != 0:
                        failed = True
                    logger.info("", extra={"fields": {"event": "worker_exited", "worker": pid,
                                                      "code": code}})
                    continue
                logger.error("", extra={"fields": {"event": "worker_died", "worker": pid,
                                                   "code": code}})
                quick_exits = quick_exits + 1 if time.monotonic() - started < QUICK_EXIT else 0
                if quick_exits >= QUICK_EXITS_ALLOWED:
                    logger.error("workers keep dying at start; giving up")
                    failed = stopping = True
                    for sock in sockets:
                        sock.close()
                    if on_stop is not None:
                        on_stop()
                    for other in children:
                        _kill(other, signal.SIGTERM)
                    respawn.clear()
                elif slot >= 0:
                    respawn.append((time.monotonic() + RESPAWN_DELAY, slot))
    finally:
        for pid in children:
            _kill(pid, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed else 0


def _reloaded(settings: Settings, source: ReloadSource | None) -> Settings:
    """The settings workers started from now on get: the new ones if they load."""
    logger.info("", extra={"fields": {"event": "reload", "signal": "SIGHUP",
                                      "workers": "forwarded"}})
    if source is None:
        return settings
    try:
        return source.load()
    except Exception as exc:  # the workers log and count it too; keep the old ones
        logger.warning("reload: keeping the previous configuration for new workers: %s",
                       str(exc).strip() or type(exc).__name__)
        return settings


def _reap() -> list[tuple[int, int]]:
    reaped: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
