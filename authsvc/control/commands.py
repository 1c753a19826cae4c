"""``authsvc flush`` and ``authsvc throttle list|clear``: the operator's commands.

Both talk to a running ``authsvc serve`` or ``authsvc proxy`` through one
client (``client.py``): ``--url`` picks the node, else the config's
``[control] listen``, with the control secret.

* ``authsvc flush --user|--domain|--all`` posts to ``/cache/flush``; the server
  repeats the flush on every worker (``fanout.py``) and answers with how many
  routes were dropped.
* ``authsvc throttle list`` / ``clear ADDRESS|LOGIN`` reads or clears the
  throttle's counts (``throttle.py``); they live in the shared store, so one
  request sees (and clears) every worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import aiohttp

from authsvc.control.client import call
from authsvc.control.flush import FLUSH_PATH
from authsvc.control.throttle import CLEAR_PATH, LIST_PATH

EXIT_OK = 0
EXIT_FAILURE = 1


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
    from authsvc.config import load_settings

    settings = load_settings(args.config).settings
    try:
        if args.action == "list":
            status, body = asyncio.run(call(settings, "GET", LIST_PATH, url=args.url))
        else:
            status, body = asyncio.run(call(settings, "POST", CLEAR_PATH, {"who": args.who},
                                            url=args.url))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"authsvc throttle: cannot reach authsvc: {exc or type(exc).__name__}",
              file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        print(f"authsvc throttle: HTTP {status}: {body.get('error') or body}", file=sys.stderr)
        return EXIT_FAILURE
    if args.action == "list":
        print(json.dumps(body, indent=2) if args.json else format_entries(body))
    else:
        print(f"cleared {body.get('dropped')} counter(s) for {body.get('who')}")
    return EXIT_OK


def flush(args: argparse.Namespace) -> int:
    """Entry point for ``authsvc flush`` (cli.py dispatches here)."""
    from authsvc.config import load_settings

    settings = load_settings(args.config).settings
    if args.user is not None:
        form = {"user": args.user}
    elif args.domain is not None:
        form = {"domain": args.domain}
    else:
        form = {"all": "1"}
    try:
        status, body = asyncio.run(call(settings, "POST", FLUSH_PATH, form, args.url))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"authsvc flush: cannot reach authsvc: {exc or type(exc).__name__}",
              file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        print(f"authsvc flush: HTTP {status}: {body.get('error') or body}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"dropped {body.get('dropped')} cached route(s) in {body.get('workers')} worker(s)")
    return EXIT_OK
