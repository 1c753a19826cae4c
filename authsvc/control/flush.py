"""``POST /cache/flush``: drop cached routes when a mailbox moves, in every worker.

Only callers that we trust may flush (``trust.py``): requests that reach us
over a unix socket (file permissions decide who can connect) or that carry the
shared secret (``http.secret`` in ``http.secret_header``).  Anyone else gets a 403.

With ``--workers N`` the kernel hands a request to one worker only, but each
worker has its own cache.  So every worker also listens on a private control
socket ``control-<pid>.sock`` in the server's run directory (mode 0700): the
worker that receives a flush applies it, then repeats it on every other
worker's control socket and answers with the total.  A flush that reaches a
control socket is applied locally only, so it never loops.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from authsvc.control.trust import sockname_of, trusted
from authsvc.redact import Secret
from authsvc.routing import Router

logger = logging.getLogger("authsvc.control")

FLUSH_PATH = "/cache/flush"


@dataclass(frozen=True, slots=True)
class FlushRequest:
    """Exactly one of: one map key, one domain, everything."""

    key: str | None = None
    domain: str | None = None
    everything: bool = False

    def describe(self) -> str:
        if self.key is not None:
            return f"user={self.key}"
        if self.domain is not None:
            return f"domain={self.domain}"
        return "all"

    def as_form(self) -> dict[str, str]:
        if self.key is not None:
            return {"user": self.key}
        if self.domain is not None:
            return {"domain": self.domain}
        return {"all": "1"}


def parse_flush(params: Mapping[str, str]) -> FlushRequest | str:
    """The flush asked for, or an error message."""
    given = [name for name in ("user", "domain", "all") if params.get(name)]
    if len(given) != 1:
        return "give exactly one of user=, domain=, all=1"
    if "user" in given:
        return FlushRequest(key=params["user"])
    if "domain" in given:
        return FlushRequest(domain=params["domain"])
    if params["all"] not in ("1", "true", "yes"):
        return "all= must be 1"
    return FlushRequest(everything=True)


class Peers:
    """This worker's control socket and the other workers' (``--workers N``)."""

    def __init__(self, directory: str, *, pid: int | None = None) -> None:
        """``pid`` names this worker's socket (default: the process id; tests set it)."""
        self.directory = directory
        self.own = str(Path(directory, f"control-{pid if pid is not None else os.getpid()}.sock"))

    def others(self) -> list[str]:
        """Control sockets of the other workers that are still alive."""
        found = []
        for path in sorted(Path(self.directory).glob("control-*.sock")):
            if str(path) == self.own:
                continue
            try:
                os.kill(int(path.stem.split("-", 1)[1]), 0)
            except (ValueError, ProcessLookupError, PermissionError):
                continue
            found.append(str(path))
        return found


class CacheControl:
    """The flush handler; ``router`` is set once the maps are open."""

    def __init__(self, secret: Secret | None, secret_header: str,
                 peers: Peers | None = None, timeout: float = 5.0) -> None:
        self._secret = secret
        self._secret_header = secret_header
        self.peers = peers
        self._timeout = timeout
        self.router: Router | None = None

    def _trusted(self, request: web.Request) -> bool:
        return trusted(request.headers, self._secret, self._secret_header,
                       sockname=sockname_of(request))

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /cache/flush`` with ``user=``, ``domain=`` or ``all=1`` (form or query)."""
        if not self._trusted(request):
            logger.warning("cache flush refused", extra={"fields": {
                "event": "flush", "result": "forbidden", "client": request.remote}})
            return web.json_response({"error": "forbidden: use the unix socket or the secret"},
                                     status=403)
        params = dict(request.query)
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        what = parse_flush(params)
        if isinstance(what, str):
            return web.json_response({"error": what}, status=400)
        if self.router is None:
            return web.json_response({"error": "not ready"}, status=503)
        dropped = self.router.invalidate(key=what.key, domain=what.domain)
        workers, failed = 1, []
        if self.peers is not None and sockname_of(request) != self.peers.own:
            results = await asyncio.gather(
                *(self._forward(path, what) for path in self.peers.others())
            )
            for path, result in results:
                if result is None:
                    failed.append(Path(path).name)
                else:
                    dropped += result
                    workers += 1
        logger.info("", extra={"fields": {
            "event": "flush", "what": what.describe(), "dropped": dropped, "workers": workers,
            "failed": ",".join(failed) or None}})
        return web.json_response({"dropped": dropped, "workers": workers, "failed": failed},
                                 status=502 if failed else 200)

    async def _forward(self, path: str, what: FlushRequest) -> tuple[str, int | None]:
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=path),
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                ) as session,
                session.post(f"http://localhost{FLUSH_PATH}", data=what.as_form()) as reply,
            ):
                body = await reply.json()
                return path, int(body["dropped"]) if reply.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
            logger.warning("cache flush not repeated on %s: %s", Path(path).name, exc)
            return path, None
