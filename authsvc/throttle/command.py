"""``authsvc throttle list`` / ``authsvc throttle clear ADDRESS|LOGIN``.

Talks to a running ``authsvc serve`` like ``authsvc flush`` does
(``authsvc/http/flush.py``): over the unix socket when the config has one (or
``--url unix:/path``), else over TCP with the shared secret.  The counts live
in the shared store, so one request sees (and clears) every worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import aiohttp

from authsvc.http.flush import target
from authsvc.settings import Settings
from authsvc.throttle.control import CLEAR_PATH, LIST_PATH

EXIT_OK = 0
EXIT_FAILURE = 1


async def call(settings: Settings, method: str, path: str, form: dict[str, str] | None = None,
               url: str | None = None, limit: float = 10.0) -> tuple[int, dict[str, object]]:
    """One request to the control endpoint; (HTTP status, JSON body)."""
    unix, base = target(settings, url)
    connector = aiohttp.UnixConnector(path=unix) if unix is not None else None
    headers = {}
    if settings.http.secret is not None and unix is None:
        headers[settings.http.secret_header] = settings.http.secret.reveal()
    async with (
        aiohttp.ClientSession(connector=connector,
                              timeout=aiohttp.ClientTimeout(total=limit)) as session,
        session.request(method, base + path, data=form, headers=headers) as reply,
    ):
        text = await reply.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"error": text.strip()[:200]}
        return reply.status, body if isinstance(body, dict) else {"error": str(body)}


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
