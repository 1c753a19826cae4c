"""Listening sockets and the pre-fork supervisor for ``authsvc serve --workers N``.

TCP: the parent binds one ``SO_REUSEPORT`` socket per worker, all on the same
address, before forking; the kernel spreads new connections across them.
Binding in the parent reports a busy port before any worker starts, and a
worker that dies leaves its socket (and the connections queued on it) for its
replacement.  Unix socket: one socket, inherited by every worker, which all
accept from it.

The parent only supervises: it blocks SIGTERM/SIGINT/SIGHUP/SIGCHLD and waits
for them with ``sigwaitinfo``.  SIGTERM/SIGINT: close its copies of the
listening sockets (so the kernel stops queueing on them), pass SIGTERM to every
worker, wait, and exit 0 when all of them exited 0.  SIGHUP: the parent
reads the configuration again (so workers it starts later get the new one) and
passes SIGHUP to every worker, each of which reloads itself (``reload.py``).
A worker that dies on its own is replaced; three that die within
seconds of starting mean something is broken, and the parent gives up.

Workers share a private run directory (mode 0700) for metrics files and
control sockets (``metrics.py``, ``control.py``); the parent removes it at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable

from authsvc.http.server import HANDLED_SIGNALS, run_server
from authsvc.reload import ReloadSource
from authsvc.settings import HostPort, Settings

logger = logging.getLogger("authsvc.workers")

#: A worker that exits sooner than this after starting counts as a crash loop.
QUICK_EXIT = 5.0
QUICK_EXITS_ALLOWED = 3
RESPAWN_DELAY = 0.5


class ListenError(Exception):
    """The address cannot be listened on; the message says why."""


def bind_tcp(address: HostPort, count: int, backlog: int = 1024) -> list[socket.socket]:
    """``count`` listening sockets on one address, with SO_REUSEPORT when count > 1."""
    port = address.port if address.port is not None else 9143
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address.host, port))
            port = sock.getsockname()[1]  # port 0: the rest join the port the first got
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sockets


def bind_unix(path: str, backlog: int = 1024, mode: int = 0o660) -> socket.socket:
    """A listening unix socket at ``path``; a stale socket file is replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ListenError(f"cannot check {path}: {exc.strerror}") from None
            os.unlink(path)  # nobody listens: a leftover from a crash
        else:
            raise ListenError(f"{path} is in use by a running server")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # nginx (www-data) must connect; everyone else must not: put nginx in
        # the socket's group (docs/serve.md).  Whoever can connect may flush.
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def make_run_dir() -> str:
    """A private directory for the workers' metrics files and control sockets."""
    base = os.environ.get("RUNTIME_DIRECTORY")  # systemd RuntimeDirectory=, if any
    return tempfile.mkdtemp(prefix="authsvc-serve-", dir=base or None)


def run_single(settings: Settings, sock: socket.socket,
               reload_from: ReloadSource | None = None) -> int:
    """No fork: this process serves."""
    return asyncio.run(run_server(settings, sock, reload_from=reload_from))


def supervise(
    settings: Settings,
    sockets: list[socket.socket],
    count: int,
    run_dir: str,
    *,
    child_main: Callable[[Settings, socket.socket, str], int] | None = None,
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
    def default_main(settings: Settings, sock: socket.socket, run_dir: str) -> int:
        return asyncio.run(run_server(settings, sock, run_dir=run_dir, reload_from=reload_from))

    main = child_main if child_main is not None else default_main
    children: dict[int, tuple[int, float]] = {}  # pid -> (slot, start time)
    respawn: list[tuple[float, int]] = []  # (when, slot)
    stopping = False
    failed = False
    quick_exits = 0

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
                # its handlers (run_server unblocks them); SIGCHLD is not ours.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                code = main(settings, sock, run_dir)
            except BaseException:
                logger.exception("worker failed")
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = (slot, time.monotonic())
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
                for pid in children:  # each worker reloads itself (server.py)
                    _kill(pid, signal.SIGHUP)
            # SIGCHLD, or any wake-up: reap whoever has exited.
            for pid, status in _reap():
                slot, started = children.pop(pid, (-1, 0.0))
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
