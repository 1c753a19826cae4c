"""``authsvc proxy``: load the configuration, bind every listener, run one process or N workers.

Each process runs on the event loop ``authsvc/runtime/loop.py`` picks (uvloop
when the ``authsvc[uvloop]`` extra is installed).
Certificates are loaded and every socket is bound here, in the first process,
so a bad certificate or a busy port is an error at once (exit 1).  Then
``--workers 1`` (the default) serves in this process (``run.py``); more
workers fork from the supervisor (``authsvc/runtime/workers.py``), each with
its own listening sockets (``listeners.py``) and, with ``[proxy]
health_listen``, its own ``SO_REUSEPORT`` health socket.  The control port
(``[control] listen``) is bound once and shared: every worker accepts on it,
and the one that takes a request repeats it on the others through their peer
sockets (``authsvc/control/fanout.py``), so a flush reaches every worker.
SIGHUP reads the same files again.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
from collections.abc import Sequence

from authsvc.proxy.certificates import ProxyConfigError, check_tls
from authsvc.proxy.listeners import bind_all, close_all
from authsvc.proxy.run import serve

from authsvc.log import configure_logging
from authsvc.reload import ReloadSource
from authsvc.runtime.binding import ListenError, bind_tcp
from authsvc.runtime.loop import LoopError, loop_factory, run
from authsvc.runtime.workers import make_run_dir, supervise
from authsvc.settings import Settings


def main(args: argparse.Namespace | Sequence[str]) -> int:
    """``authsvc proxy --config FILE [--config FILE ...] [--workers N]``; the exit code."""
    from authsvc.config import load_settings  # ConfigError reaches cli.main: exit 2

    if isinstance(args, argparse.Namespace):
        paths, workers = args.config, int(getattr(args, "workers", 1) or 1)
    else:
        paths, workers = list(args), 1
    if workers < 1:
        print("authsvc proxy: --workers must be at least 1", file=sys.stderr)
        return 2
    loaded = load_settings(paths)
    for warning in loaded.warnings_for("proxy"):
        print(f"authsvc: warning: {warning}", file=sys.stderr)
    settings: Settings = loaded.settings
    reload_from = ReloadSource.of(paths, command="proxy")  # SIGHUP reads the same files again
    configure_logging(settings.log)
    health_address = settings.proxy.health_listen
    control_address = settings.control.listen
    health: list[socket.socket] = []
    control: list[socket.socket] = []
    try:
        loop_factory()  # AUTHSVC_LOOP=uvloop without uvloop: an error before binding
        check_tls(settings)
        slots = bind_all(settings, workers)
        try:
            health = bind_tcp(health_address, workers) if health_address is not None else []
            control = bind_tcp(control_address, 1) if control_address is not None else []
        except ListenError:
            close_all(slots, health)
            raise
    except (ProxyConfigError, ListenError, LoopError, OSError) as exc:
        print(f"authsvc proxy: {exc}", file=sys.stderr)
        return 1
    try:
        if workers == 1:
            run(serve(settings, sockets=slots[0], reload_from=reload_from,
                              health_socket=health[0] if health else None,
                              control_socket=control[0] if control else None))
            return 0
        # One token per worker for the supervisor: the worker's first listening
        # socket.  The worker closes every other worker's sockets itself.
        tokens = [next(s for group in slot.values() for s in group) for slot in slots]

        started_with = settings.control

        def child(settings: Settings, token: socket.socket, run_dir: str) -> int:
            index = next(i for i, t in enumerate(tokens) if t is token)
            # The control port is bound once, at start: a worker started after a
            # reload keeps the [control] it was bound with (docs/configuration.md).
            settings = dataclasses.replace(settings, control=started_with)
            close_all(slots, health, keep=index)
            run(serve(settings, sockets=slots[index], run_dir=run_dir,
                              reload_from=reload_from,
                              health_socket=health[index] if health else None,
                              control_socket=control[0] if control else None))
            return 0

        return supervise(settings, tokens, workers, make_run_dir(), child_main=child,
                         reload_from=reload_from,
                         on_stop=lambda: close_all(slots, health, extra=control))
    except (ProxyConfigError, OSError) as exc:
        print(f"authsvc proxy: {exc}", file=sys.stderr)
        return 1
    finally:
        close_all(slots, health, extra=control)
