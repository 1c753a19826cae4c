"""``authsvc hold`` and ``authsvc release``: the operator's holds on users and stores.

* ``authsvc hold user MASK`` / ``hold store HOST[:PORT]`` [``--reason TEXT``]
  [``--for 2h`` | ``--until 2026-12-05T06:00``] places a hold;
* ``authsvc hold list [--json]`` prints the holds in force;
* ``authsvc release user MASK`` / ``release store HOST[:PORT]`` ends one.

They talk to the node's control listener through the one client
(``client.py``'s :func:`~authsvc.control.client.call`), as ``authsvc flush``
does.  A malformed mask, host or time is refused here, before anything is
sent: one line on stderr, exit 2, nothing changed.  Releasing what is not held
prints so and exits 0: the state asked for is the state there is, and a runbook
or a pool of nodes sharing one Redis store may release twice
(docs/operations.md, "Holds").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import sys
import time

import aiohttp

from authsvc.control.client import call
from authsvc.control.holds import HOLD_PATH, LIST_PATH, RELEASE_PATH
from authsvc.holds.rules import check_reason, parse_target

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_for(text: str) -> float:
    """``--for``: ``90``, ``90s``, ``30m``, ``2h``, ``1d`` as seconds, or ValueError."""
    found = _DURATION.match(text.strip())
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"--for {text!r}: give a positive duration such as 90s, 30m, 2h or 1d")
    return float(found.group(1)) * _UNIT[found.group(2)]


def parse_until(text: str, now: float) -> float:
    """``--until``: an ISO 8601 time (without an offset: this host's time zone), as Unix time."""
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--until {text!r}: give an ISO 8601 time such as "
                         "2026-12-05T06:00 or 2026-12-05T06:00+00:00") from None
    stamp = when.timestamp()  # a naive time is taken as local time
    if stamp <= now:
        raise ValueError(f"--until {text!r} is not in the future")
    return stamp


def _when(stamp: object) -> str:
    if not isinstance(stamp, int | float):
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def format_holds(body: dict[str, object]) -> str:
    """The listing as a table: kind, target, until, since, by, reason."""
    holds = body.get("holds")
    rows = [h for h in holds if isinstance(h, dict)] if isinstance(holds, list) else []
    if not rows:
        return "no holds"
    lines = [f"{'KIND':<6} {'TARGET':<32} {'UNTIL':<21} {'SINCE':<21} {'BY':<16} REASON"]
    for h in rows:
        lines.append(f"{h.get('kind', '?')!s:<6} {h.get('target', '?')!s:<32} "
                     f"{_when(h.get('until')):<21} "
                     f"{_when(h.get('since')):<21} {h.get('by') or '-'!s:<16} "
                     f"{h.get('reason') or ''}")
    return "\n".join(lines)


def _request(args: argparse.Namespace, method: str, path: str,
             form: dict[str, str] | None, name: str) -> tuple[int, dict[str, object]] | None:
    """The node's answer, or None after printing why it could not be asked."""
    from authsvc.config import load_settings

    settings = load_settings(args.config).settings
    try:
        return asyncio.run(call(settings, method, path, form, url=args.url))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"authsvc {name}: cannot reach authsvc: {exc or type(exc).__name__}",
              file=sys.stderr)
        return None


def _failed(name: str, status: int, body: dict[str, object]) -> int:
    print(f"authsvc {name}: HTTP {status}: {body.get('error') or body}", file=sys.stderr)
    return EXIT_USAGE if status == 400 else EXIT_FAILURE


def _workers(body: dict[str, object]) -> str:
    failed = body.get("failed")
    names = [str(name) for name in failed] if isinstance(failed, list) else []
    missing = f"; not reloaded: {', '.join(names)}" if names else ""
    return f"{body.get('loaded')} of {body.get('workers')} worker(s){missing}"


def hold_command(args: argparse.Namespace) -> int:
    """Entry point for ``authsvc hold`` (cli.py dispatches here)."""
    if args.kind == "list":
        answer = _request(args, "GET", LIST_PATH, None, "hold")
        if answer is None:
            return EXIT_FAILURE
        status, body = answer
        if status != 200:
            return _failed("hold", status, body)
        print(json.dumps(body, indent=2) if args.json else format_holds(body))
        return EXIT_OK
    now = time.time()
    try:
        target = parse_target(args.kind, args.target)
        reason = check_reason(args.reason)
        until = (now + parse_for(args.duration) if args.duration is not None
                 else parse_until(args.until, now) if args.until is not None else None)
    except ValueError as exc:
        print(f"authsvc hold: {exc}", file=sys.stderr)
        return EXIT_USAGE
    form = {"kind": args.kind, "target": target}
    if reason is not None:
        form["reason"] = reason
    if until is not None:
        form["until"] = repr(until)
    answer = _request(args, "POST", HOLD_PATH, form, "hold")
    if answer is None:
        return EXIT_FAILURE
    status, body = answer
    if status not in (200, 502) or "hold" not in body:
        return _failed("hold", status, body)
    ends = f" until {_when(until)}" if until is not None else ""
    named = body.get("named")
    note = ("" if named is True or args.kind != "store"
            else "; accepted: no map names this store" if named is False
            else "; accepted (the maps cannot list their stores)")
    print(f"held {args.kind} {target}{ends} in {_workers(body)}{note}")
    return EXIT_OK if status == 200 else EXIT_FAILURE


def release_command(args: argparse.Namespace) -> int:
    """Entry point for ``authsvc release`` (cli.py dispatches here)."""
    try:
        target = parse_target(args.kind, args.target)
    except ValueError as exc:
        print(f"authsvc release: {exc}", file=sys.stderr)
        return EXIT_USAGE
    answer = _request(args, "POST", RELEASE_PATH, {"kind": args.kind, "target": target},
                      "release")
    if answer is None:
        return EXIT_FAILURE
    status, body = answer
    if status not in (200, 502) or "released" not in body:
        return _failed("release", status, body)
    if body.get("released"):
        print(f"released {args.kind} {target} in {_workers(body)}")
    else:
        print(f"{args.kind} {target} was not held; nothing released")
    return EXIT_OK if status == 200 else EXIT_FAILURE
