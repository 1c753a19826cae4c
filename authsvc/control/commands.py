"""``authsvc flush`` and ``authsvc throttle list|clear``: the operator's commands.

Both talk to a running ``authsvc serve`` or ``authsvc proxy`` through one
client (``client.py``): ``--url`` picks the node, else the config's
``[control] listen``, with the control secret; ``--pool`` reaches every node
(``pool.py``).  Each command only declares its :class:`~pool.Request`.
``authsvc sessions`` is ``session_commands.py``.

* ``authsvc flush --user|--domain|--all`` posts to ``/cache/flush``; the server
  repeats the flush on every worker (``fanout.py``) and answers with how many
  routes were dropped.
* ``authsvc throttle list`` / ``clear ADDRESS|LOGIN`` reads or clears the
  throttle's counts (``throttle.py``); they live in the shared store, so one
  request sees (and clears) every worker's.
"""

from __future__ import annotations

import argparse

from authsvc.control.paths import FLUSH_PATH, THROTTLE_CLEAR_PATH, THROTTLE_LIST_PATH
from authsvc.control.pool import Body, Request, send


def format_entries(body: dict[str, object]) -> str:
    """The listing as a table: kind, who, failures, blocked."""
    lines = []
    if body.get("fallback"):
        lines.append("note: Redis is unreachable; these are this node's local counts")
    entries = body.get("entries")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        flag = "  BLOCKED" if entry.get("blocked") else ""
        lines.append(f"{entry.get('kind', '?'):<8} {entry.get('who', '?')}  "
                     f"failures={entry.get('failures')}{flag}")
    if not lines or (len(lines) == 1 and body.get("fallback")):
        lines.append("no failures counted")
    return "\n".join(lines)


def throttle_command(args: argparse.Namespace) -> int:
    """Entry point for ``authsvc throttle`` (cli.py dispatches here)."""
    if args.action == "list":
        def counted(body: Body) -> str:
            entries = body.get("entries")
            return f"{len(entries) if isinstance(entries, list) else 0} counter(s) with failures"

        request = Request("GET", THROTTLE_LIST_PATH, counted, show=format_entries, detail=True)
    else:
        def cleared(body: Body) -> str:
            return f"cleared {body.get('dropped')} counter(s) for {body.get('who')}"

        request = Request("POST", THROTTLE_CLEAR_PATH, cleared, form={"who": args.who})
    return send(args, "throttle", request)


def flush(args: argparse.Namespace) -> int:
    """Entry point for ``authsvc flush`` (cli.py dispatches here)."""
    if args.user is not None:
        form = {"user": args.user}
    elif args.domain is not None:
        form = {"domain": args.domain}
    else:
        form = {"all": "1"}
    return send(args, "flush", Request(
        "POST", FLUSH_PATH, lambda body: f"dropped {body.get('dropped')} cached route(s) in "
        f"{body.get('workers')} worker(s)", form=form))
