"""``authsvc sessions list|kick``: the relayed sessions of a running ``authsvc proxy``.

The selectors (``--user MASK``, ``--client CIDR``, ``--store HOST[:PORT]``,
``selectors.py``) are checked here before anything is sent: a malformed one
is one line on stderr and exit 2.  A host name given to ``--store`` is
resolved now, and every address it has is sent; the node matches the
addresses it connected to.

``list`` prints a table (``--json``: the node's JSON answer); ``kick``
prints how many sessions each worker closed (``--dry-run``: how many it
would close) and takes ``--rate N``, kicks per second over the whole pool.
Both go where every operator command goes (``pool.py``: ``--url``,
``--pool``, or the local ``[control] listen``).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from authsvc.control.paths import SESSIONS_KICK_PATH, SESSIONS_LIST_PATH
from authsvc.control.pool import EXIT_USAGE, BadInput, Body, Request, send
from authsvc.control.selectors import Selector, client_network, store_target, user_mask

#: The table's columns: heading and JSON field.
COLUMNS = (("WORKER", "worker"), ("ID", "session"), ("LISTENER", "listener"),
           ("USER", "user"), ("LOGIN", "login"), ("CLIENT", "client"), ("STORE", "store"),
           ("TLS", "tls"), ("STARTED", "started"), ("IN", "bytes_in"), ("OUT", "bytes_out"))


def resolve(host: str) -> tuple[str, ...]:
    """Every address of ``host`` (an IP literal is itself), or BadInput."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise BadInput(f"--store: cannot resolve {host!r}: {exc}") from None
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def selector_of(args: argparse.Namespace) -> Selector:
    """The selector the options give, or BadInput."""
    try:
        if args.user is not None:
            user_mask(args.user)
        if args.client is not None:
            client_network(args.client)
        stores: tuple[str, ...] = ()
        port = None
        if args.store is not None:
            host, port = store_target(args.store)
            stores = resolve(host)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return Selector(user=args.user, client=args.client, stores=stores, store_port=port)


def _cell(session: dict[str, object], name: str) -> str:
    if name == "tls":
        return f"{session.get('client_tls')}/{session.get('store_tls')}"
    value = session.get(name)
    if name == "started" and isinstance(value, int | float):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    return "-" if value is None or value == "" else str(value)


def format_sessions(body: Body) -> str:
    """The list as a table, one session a line, oldest first."""
    listed = body.get("sessions")
    sessions = [s for s in listed if isinstance(s, dict)] if isinstance(listed, list) else []
    if not sessions:
        return "no sessions"
    sessions.sort(key=lambda s: (s.get("started") or 0, s.get("worker") or 0))
    rows = [[heading for heading, _ in COLUMNS]]
    rows += [[_cell(s, name) for _, name in COLUMNS] for s in sessions]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def _counted(body: Body) -> str:
    return f"{body.get('count')} session(s) in {body.get('workers')} worker(s)"


def _kicked(body: Body) -> str:
    verb = "would close" if body.get("dry_run") else "closed"
    workers = body.get("by_worker")
    parts = [f"{w.get('worker')}: {w.get('matched' if body.get('dry_run') else 'kicked')}"
             for w in workers if isinstance(w, dict)] if isinstance(workers, list) else []
    each = f" (by worker pid: {', '.join(parts)})" if parts else ""
    return f"{verb} {body.get('matched' if body.get('dry_run') else 'kicked')} session(s) " \
        f"in {body.get('workers')} worker(s){each}"


def sessions_command(args: argparse.Namespace) -> int:
    """Entry point for ``authsvc sessions`` (cli.py dispatches here)."""
    try:
        selector = selector_of(args)
        if args.action == "kick":
            if selector.empty:
                raise BadInput("kick needs --user, --client or --store "
                               "(--user '*' for every session)")
            if args.rate is not None and not 0 < args.rate < 1e9:
                raise BadInput(f"--rate {args.rate}: give a positive number of kicks a second")
    except BadInput as exc:
        print(f"authsvc sessions: {exc}", file=sys.stderr)
        return EXIT_USAGE
    form = selector.as_form()
    if args.action == "list":
        request = Request("GET", SESSIONS_LIST_PATH, _counted, form=form, show=format_sessions,
                          detail=True, limit=30.0)
    else:
        if args.dry_run:
            form["dry_run"] = "1"
        if args.rate is not None:
            form["rate"] = repr(args.rate)
        request = Request("POST", SESSIONS_KICK_PATH, _kicked, form=form, shared=("rate",),
                          limit=None if args.rate is not None else 30.0)
    return send(args, "sessions", request)
