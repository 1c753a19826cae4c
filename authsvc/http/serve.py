"""``authsvc serve``: load the settings, open the listening socket(s), run one or N workers.

The command line wins over the config: ``--listen HOST:PORT`` or ``--unix PATH``
replace ``[http] listen``/``unix``.  Without either, a configured unix socket is
used, else the configured TCP address.  ``--workers 1`` (the default) serves in
this process; more workers fork from here (``authsvc/runtime/workers.py``).
The control port (``[control] listen``) is bound here too, once: every worker
accepts on that one socket, and the worker that takes a request repeats it on
the others (``authsvc/control/fanout.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys

from authsvc.address import parse_hostport
from authsvc.http.server import run_server
from authsvc.log import configure_logging
from authsvc.reload import ReloadSource
from authsvc.runtime.binding import ListenError, bind_tcp, bind_unix
from authsvc.runtime.workers import make_run_dir, supervise
from authsvc.settings import Settings

logger = logging.getLogger("authsvc.serve")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def apply_overrides(settings: Settings, *, listen: str | None, unix: str | None) -> Settings:
    """The settings with ``--listen``/``--unix`` applied."""
    http = settings.http
    if listen is not None:
        http = dataclasses.replace(http, listen=parse_hostport(listen, need_port=True),
                                   unix=None)
    elif unix is not None:
        http = dataclasses.replace(http, unix=unix)
    return dataclasses.replace(settings, http=http)


def serve(args: argparse.Namespace) -> int:
    """Entry point for ``authsvc serve`` (cli.py dispatches here)."""
    from authsvc.config import load_settings  # ConfigError reaches cli.main: exit 2

    loaded = load_settings(args.config)
    try:
        settings = apply_overrides(loaded.settings, listen=args.listen, unix=args.unix)
    except ValueError as exc:
        print(f"authsvc serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    workers: int = args.workers
    if workers < 1:
        print("authsvc serve: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log)
    for issue in loaded.warnings_for("serve"):
        logger.warning("config: %s", issue)

    unix = settings.http.unix
    control: list[socket.socket] = []
    try:
        sockets = [bind_unix(unix)] if unix is not None else bind_tcp(settings.http.listen,
                                                                       workers)
        if settings.control.listen is not None:
            try:
                control = bind_tcp(settings.control.listen, 1)
            except ListenError:
                for sock in sockets:
                    sock.close()
                raise
    except ListenError as exc:
        logger.error("%s", exc)
        print(f"authsvc serve: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    # SIGHUP reads the same files again, with the same command-line overrides.
    reload_from = ReloadSource.of(
        args.config, lambda new: apply_overrides(new, listen=args.listen, unix=args.unix),
        command="serve")
    try:
        if workers == 1:  # no fork: this process serves
            return asyncio.run(run_server(settings, sockets[0], reload_from=reload_from,
                                          control_socket=control[0] if control else None))

        started_with = settings.control

        def worker(settings: Settings, sock: socket.socket, run_dir: str) -> int:
            # The control port is bound once, at start: a worker started after a
            # reload keeps the [control] it was bound with (docs/configuration.md).
            settings = dataclasses.replace(settings, control=started_with)
            return asyncio.run(run_server(settings, sock, run_dir=run_dir,
                                          reload_from=reload_from,
                                          control_socket=control[0] if control else None))

        def close_control() -> None:
            for sock in control:
                sock.close()

        return supervise(settings, sockets, workers, make_run_dir(), child_main=worker,
                         reload_from=reload_from, on_stop=close_control)
    finally:
        for sock in [*sockets, *control]:
            sock.close()
        if unix is not None:
            with contextlib.suppress(OSError):
                os.unlink(unix)
