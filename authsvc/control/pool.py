"""One operator request, sent to one node or to every node of the pool (``--pool``).

A command (``commands.py``) builds a :class:`Request`, what to send and how
to word the answer, and hands it to :func:`send` with its arguments; the
targets are decided here, the same way for every command:

* ``--pool``: every ``[[haproxy.nodes]]`` entry, at its ``control`` address
  (docs/configuration.md), all at once.  One line per node, in the
  config's order: ``NAME: ok: <summary>`` or ``NAME: error: <why>``.  A node
  without a ``control`` address is an error line, never skipped; the exit
  status is 1 when any node failed or could not be reached.
  ``--node NAME`` (repeatable) narrows the pool to those nodes; a name the
  config does not have is bad input.
* otherwise ``--url``, or the local ``[control] listen`` (``client.py``):
  the command's full output, and an error on one line of stderr.

Exit status: 0 done; 1 a node failed, refused or could not be reached;
2 bad input, reported before anything is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from authsvc.control.client import call, node_url
from authsvc.settings import PoolNode, Settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Body = dict[str, object]


class BadInput(ValueError):
    """Input a command refuses before sending anything (exit 2)."""


@dataclass(frozen=True)
class Request:
    """What a command sends, and how its answer reads."""

    method: str
    path: str
    #: One line for an answer: the node's line with ``--pool``.
    summary: Callable[[Body], str]
    form: dict[str, str] = field(default_factory=dict)
    #: The answer in full, for one node (default: the summary); with ``--pool``,
    #: its lines follow the node's line, indented, when ``detail`` is set.
    show: Callable[[Body], str] | None = None
    detail: bool = False
    #: Numbers in ``form`` that the pool shares: each of N nodes gets value / N
    #: (a kick's rate is the pool's, not each node's).
    shared: tuple[str, ...] = ()
    #: Bound on the whole request, seconds (None: none, for a paced kick).
    limit: float | None = 10.0


async def _ask(settings: Settings, request: Request, form: dict[str, str],
               url: str | None) -> Body:
    """The answer, or ``{"error": ...}`` when the node failed or could not be reached."""
    try:
        status, body = await call(settings, request.method, request.path, form, url,
                                  limit=request.limit)
    except (OSError, http.client.HTTPException) as exc:
        return {"error": f"cannot reach authsvc: {exc or type(exc).__name__}"}
    if status != 200:
        return {"error": f"HTTP {status}: {body.get('error') or body}"}
    return body


def pool_nodes(settings: Settings, names: list[str]) -> list[PoolNode]:
    """The nodes ``--pool`` reaches, or BadInput."""
    nodes = list(settings.haproxy.nodes)
    if not nodes:
        raise BadInput("--pool: the config has no [[haproxy.nodes]]")
    if names:
        known = {node.name for node in nodes}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise BadInput(f"--node: no node named {', '.join(map(repr, unknown))} in "
                           f"[[haproxy.nodes]] (known: {', '.join(sorted(known))})")
        nodes = [node for node in nodes if node.name in names]
    return nodes


def _shared(form: dict[str, str], shared: tuple[str, ...], parts: int) -> dict[str, str]:
    out = dict(form)
    for name in shared:
        if name in out:
            out[name] = repr(float(out[name]) / parts)
    return out


def send(args: argparse.Namespace, command: str, request: Request) -> int:
    """Send ``request`` where ``args`` say; print the outcome; the exit status."""
    from authsvc.config import load_settings

    settings = load_settings(args.config).settings
    as_json = bool(getattr(args, "json", False))
    if not args.pool and not args.node:
        body = asyncio.run(_ask(settings, request, request.form, args.url))
        if "error" in body:
            print(f"authsvc {command}: {body['error']}", file=sys.stderr)
            return EXIT_FAILURE
        show = request.show or request.summary
        print(json.dumps(body, indent=2) if as_json else show(body))
        return EXIT_OK
    if args.url is not None:
        print(f"authsvc {command}: give --url or --pool, not both", file=sys.stderr)
        return EXIT_USAGE
    try:
        nodes = pool_nodes(settings, args.node)
    except BadInput as exc:
        print(f"authsvc {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    form = _shared(request.form, request.shared, len(nodes))

    async def every() -> list[Body]:
        async def one(node: PoolNode) -> Body:
            if node.control is None:
                return {"error": "no control address (set control = \"host:port\" in its "
                                 "[[haproxy.nodes]] entry)"}
            return await _ask(settings, request, form, node_url(settings, node.control))

        return list(await asyncio.gather(*(one(node) for node in nodes)))

    answers = asyncio.run(every())
    failed = sum("error" in body for body in answers)
    if as_json:
        print(json.dumps({node.name: body for node, body in zip(nodes, answers, strict=True)},
                         indent=2))
    else:
        for node, body in zip(nodes, answers, strict=True):
            if "error" in body:
                print(f"{node.name}: error: {body['error']}")
                continue
            print(f"{node.name}: ok: {request.summary(body)}")
            if request.detail and request.show is not None:
                for line in request.show(body).splitlines():
                    print(f"  {line}")
    if failed:
        print(f"authsvc {command}: {failed} of {len(nodes)} node(s) failed", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
