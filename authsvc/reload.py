"""Hot reload: read the configuration again and switch new logins to it.

Shared by ``authsvc serve`` and ``authsvc proxy``.  On SIGHUP (systemd's
``ExecReload``) or ``authsvc reload``, a :class:`Reloader` reads the same
files the process started from, validates them, lets the front end check
what it must (the proxy loads its certificates), then swaps a new Router in
(``routing.RouterSwitch``) and hands both to the front end's ``apply``.

* Sessions in progress keep the Router (and certificates) they started with;
  only new logins see the new settings.
* An invalid configuration changes nothing: the error is logged
  (``event=reload_failed``) and counted (``authsvc_reloads_total{result="failed"}``).
* Maps the new Router no longer uses are closed :data:`RETIRE_AFTER` seconds
  later, when no login can still be waiting on them, or at exit.
* Several SIGHUPs in a row are one reload after another, never two at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from authsvc.exposition import Family
from authsvc.metrics import FamilySeries, Metrics
from authsvc.routing import Router, RouterSwitch
from authsvc.settings import Settings

logger = logging.getLogger("authsvc.reload")

RELOADS = Family("authsvc_reloads_total", "counter",
                 "Configuration reloads (SIGHUP) by result: ok, or failed (old one kept).")
#: Pass to ``Metrics(families=...)`` so every worker's file has the series.
RELOAD_FAMILIES: tuple[FamilySeries, ...] = (
    (RELOADS, ({"result": "ok"}, {"result": "failed"})),)
#: Seconds before maps dropped by a reload are closed: longer than any lookup.
RETIRE_AFTER = 60.0


def _unchanged(settings: Settings) -> Settings:
    return settings


@dataclass(frozen=True)
class ReloadSource:
    """Where a process's settings come from: its ``--config`` files, then its overrides."""

    paths: tuple[str, ...]
    #: Command-line overrides applied after loading (``serve --listen``).
    adjust: Callable[[Settings], Settings] = field(default=_unchanged)
    #: The command reloading (``serve``, ``proxy``): it logs only its own warnings.
    command: str | None = None

    @classmethod
    def of(cls, paths: Sequence[str], adjust: Callable[[Settings], Settings] = _unchanged,
           *, command: str | None = None) -> ReloadSource:
        return cls(tuple(paths), adjust, command)

    def load(self) -> Settings:
        """Read and validate the files again; raises ConfigError (or ValueError)."""
        from authsvc.config import load_settings

        loaded = load_settings(list(self.paths))
        for issue in loaded.warnings_for(self.command):
            logger.warning("config: %s", issue)
        return self.adjust(loaded.settings)


class Reloader:
    """Runs reloads for one process (one worker)."""

    def __init__(
        self,
        source: ReloadSource,
        switch: RouterSwitch,
        apply: Callable[[Settings, Router], None],
        *,
        metrics: Metrics | None = None,
        check: Callable[[Settings], None] | None = None,
        retire_after: float = RETIRE_AFTER,
    ) -> None:
        self._source = source
        self._switch = switch
        self._apply = apply
        self._metrics = metrics
        self._check = check
        self._retire_after = retire_after
        self._running: asyncio.Task[bool] | None = None
        self._again = False
        self._retiring: dict[asyncio.Task[None], Callable[[], Awaitable[None]]] = {}

    def request(self) -> None:
        """Reload soon (a signal handler's job); a request during a reload runs after it."""
        if self._running is not None and not self._running.done():
            self._again = True
            return
        self._running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> bool:
        ok = await self.reload()
        while self._again:
            self._again = False
            ok = await self.reload()
        return ok

    async def reload(self) -> bool:
        """One reload now; True when the new settings are in force."""
        try:
            settings = self._source.load()
            if self._check is not None:
                self._check(settings)  # e.g. certificates load
        except Exception as exc:  # any failure keeps the old settings in force
            self._count("failed")
            logger.error("", extra={"fields": {
                "event": "reload_failed", "error": str(exc).strip() or type(exc).__name__,
                "kept": "previous configuration"}})
            return False
        router, close_retired = self._switch.replace(settings)
        try:
            self._apply(settings, router)
        except Exception as exc:  # e.g. a certificate that vanished since check()
            self._count("failed")
            logger.exception("", extra={"fields": {
                "event": "reload_failed", "error": str(exc).strip() or type(exc).__name__,
                "kept": "partly applied"}})
            return False
        task = asyncio.get_running_loop().create_task(self._retire(close_retired))
        self._retiring[task] = close_retired
        task.add_done_callback(lambda done: self._retiring.pop(done, None))
        self._count("ok")
        logger.info("", extra={"fields": {"event": "reloaded",
                                          "listeners": len(settings.listeners)}})
        return True

    async def _retire(self, close: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(self._retire_after)
        await close()

    async def close(self) -> None:
        """At exit: stop reloading, close retired maps now."""
        if self._running is not None:
            self._running.cancel()
        pending = list(self._retiring.items())
        self._retiring.clear()
        for task, close in pending:
            task.cancel()
            await close()

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.add(RELOADS, result=result)


def reload_command(args: argparse.Namespace) -> int:
    """``authsvc reload --pid PID | --pid-file FILE``: send SIGHUP; the exit code.

    The process logs ``event=reloaded`` or ``event=reload_failed``; with
    ``--workers`` the supervisor passes the signal on to every worker.
    """
    pid: int | None = args.pid
    if pid is None:
        try:
            with open(args.pid_file, encoding="ascii") as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError) as exc:
            print(f"authsvc reload: {args.pid_file}: {exc}", file=sys.stderr)
            return 1
    if pid <= 1:
        print(f"authsvc reload: {pid} is not a process to signal", file=sys.stderr)
        return 2
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"authsvc reload: process {pid}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
