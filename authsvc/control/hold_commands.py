"""``authsvc hold`` and ``authsvc release``: the operator's holds on users and stores.

* ``authsvc hold user MASK`` / ``hold store HOST[:PORT]`` [``--reason TEXT``]
  [``--for 2h`` | ``--until 2026-12-05T06:00``] places a hold;
* ``authsvc hold list [--json]`` prints the holds in force;
* ``authsvc release user MASK`` / ``release store HOST[:PORT]`` ends one.

They talk to the node's control listener, or with ``--pool`` to every node,
through ``pool.py``, as ``authsvc flush`` does.  A malformed mask, host or
time is refused here, before anything is sent: one line on stderr, exit 2,
nothing changed.  Releasing what is not held
prints so and exits 0: the state asked for is the state there is, and a runbook
or a pool of nodes sharing one Redis store may release twice
(docs/operations.md, "Holds").
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import time

from authsvc.control.holds import HOLD_PATH, LIST_PATH, RELEASE_PATH
from authsvc.control.pool import EXIT_USAGE, Request, send
from authsvc.holds.rules import check_reason, parse_target

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


def _holds(body: dict[str, object]) -> list[dict[str, object]]:
    holds = body.get("holds")
    return [h for h in holds if isinstance(h, dict)] if isinstance(holds, list) else []


def format_holds(body: dict[str, object]) -> str:
    """The listing as a table: kind, target, until, since, by, reason."""
    rows = _holds(body)
    if not rows:
        return "no holds"
    lines = [f"{'KIND':<6} {'TARGET':<32} {'UNTIL':<21} {'SINCE':<21} {'BY':<16} REASON"]
    for h in rows:
        lines.append(f"{h.get('kind', '?')!s:<6} {h.get('target', '?')!s:<32} "
                     f"{_when(h.get('until')):<21} "
                     f"{_when(h.get('since')):<21} {h.get('by') or '-'!s:<16} "
                     f"{h.get('reason') or ''}")
    return "\n".join(lines)


def _workers(body: dict[str, object]) -> str:
    failed = body.get("failed")
    names = [str(name) for name in failed] if isinstance(failed, list) else []
    missing = f"; not reloaded: {', '.join(names)}" if names else ""
    return f"{body.get('loaded')} of {body.get('workers')} worker(s){missing}"


def hold_command(args: argparse.Namespace) -> int:
    """Entry point for ``authsvc hold`` (cli.py dispatches here)."""
    if args.kind == "list":
        return send(args, "hold", Request(
            "GET", LIST_PATH, lambda body: f"{len(_holds(body))} hold(s)",
            show=format_holds, detail=True))
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
    ends = f" until {_when(until)}" if until is not None else ""

    def held(body: dict[str, object]) -> str:
        named = body.get("named")
        note = ("" if named is True or args.kind != "store"
                else "; accepted: no map names this store" if named is False
                else "; accepted (the maps cannot list their stores)")
        return f"held {args.kind} {target}{ends} in {_workers(body)}{note}"

    return send(args, "hold", Request("POST", HOLD_PATH, held, form=form))


def release_command(args: argparse.Namespace) -> int:
    """Entry point for ``authsvc release`` (cli.py dispatches here)."""
    try:
        target = parse_target(args.kind, args.target)
    except ValueError as exc:
        print(f"authsvc release: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def released(body: dict[str, object]) -> str:
        if body.get("released"):
            return f"released {args.kind} {target} in {_workers(body)}"
        return f"{args.kind} {target} was not held; nothing released"

    return send(args, "release", Request(
        "POST", RELEASE_PATH, released, form={"kind": args.kind, "target": target}))
