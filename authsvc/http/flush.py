"""``authsvc flush``: ask a running ``authsvc serve`` to drop cached routes.

It posts ``user=``/``domain=``/``all=1`` to ``/cache/flush``: over the unix
socket when the config has one (or ``--url unix:/path``), else over TCP with
the shared secret from the config.  The server repeats the flush on every
worker (``control.py``) and answers with how many routes were dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import aiohttp

from authsvc.http.control import FLUSH_PATH
from authsvc.settings import Settings

EXIT_OK = 0
EXIT_FAILURE = 1


def target(settings: Settings, url: str | None) -> tuple[str | None, str]:
    """(unix socket path or None, base URL) to reach the server."""
    if url is not None:
        if url.startswith("unix:"):
            return url[len("unix:"):], "http://localhost"
        return None, url.rstrip("/")
    if settings.http.unix is not None:
        return settings.http.unix, "http://localhost"
    return None, f"http://{settings.http.listen}"


async def post_flush(settings: Settings, form: dict[str, str], url: str | None = None,
                     limit: float = 10.0) -> tuple[int, dict[str, object]]:
    """POST the flush; (HTTP status, JSON body)."""
    unix, base = target(settings, url)
    connector = aiohttp.UnixConnector(path=unix) if unix is not None else None
    headers = {}
    if settings.http.secret is not None and unix is None:
        headers[settings.http.secret_header] = settings.http.secret.reveal()
    async with (
        aiohttp.ClientSession(connector=connector,
                              timeout=aiohttp.ClientTimeout(total=limit)) as session,
        session.post(base + FLUSH_PATH, data=form, headers=headers) as reply,
    ):
        text = await reply.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"error": text.strip()[:200]}
        return reply.status, body if isinstance(body, dict) else {"error": str(body)}


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
        status, body = asyncio.run(post_flush(settings, form, args.url))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"authsvc flush: cannot reach authsvc serve: {exc or type(exc).__name__}",
              file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        print(f"authsvc flush: HTTP {status}: {body.get('error') or body}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"dropped {body.get('dropped')} cached route(s) in {body.get('workers')} worker(s)")
    return EXIT_OK
