"""The one client of the control endpoints, for ``authsvc flush`` and ``authsvc throttle``.

It reaches a running ``authsvc serve`` (or ``authsvc proxy``'s health port,
with ``--url``) over the unix socket when the config has one (or
``--url unix:/path``), else over TCP with the shared secret from the config
(``trust.py`` says why either is trusted), and returns the HTTP status and the
JSON body.
"""

from __future__ import annotations

import json

import aiohttp

from authsvc.settings import Settings


def target(settings: Settings, url: str | None) -> tuple[str | None, str]:
    """(unix socket path or None, base URL) to reach the server."""
    if url is not None:
        if url.startswith("unix:"):
            return url[len("unix:"):], "http://localhost"
        return None, url.rstrip("/")
    if settings.http.unix is not None:
        return settings.http.unix, "http://localhost"
    return None, f"http://{settings.http.listen}"


async def call(settings: Settings, method: str, path: str, form: dict[str, str] | None = None,
               url: str | None = None, limit: float = 10.0) -> tuple[int, dict[str, object]]:
    """One request to a control endpoint; (HTTP status, JSON body)."""
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
