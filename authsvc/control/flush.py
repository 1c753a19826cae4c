"""``POST /cache/flush``: drop cached routes when a mailbox moves, in every worker.

The operator asks the control listener (``listener.py``, which checks the
caller), on ``authsvc serve`` and on ``authsvc proxy`` alike; both faces route
through the same :class:`~authsvc.routing.Router`, so the key rules are the
same (docs/operations.md, "Flush keys").  Each worker has its own cache, so
the flush is repeated on every worker and the answer is the sum
(``fanout.py``).

``authsvc serve`` still answers the same path on its nginx-facing port for
one release (:meth:`CacheControl.handle`), for callers that we trust there
(``trust.py``): over a unix socket, or with the ``[http]`` secret; anyone else
gets a 403.  Each worker logs a deprecation warning the first time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from authsvc.control.deprecation import Deprecation
from authsvc.control.fanout import FanOut, Peers
from authsvc.control.paths import FLUSH_PATH
from authsvc.control.trust import sockname_of, trusted
from authsvc.redact import Secret
from authsvc.routing import Router

__all__ = ["FLUSH_PATH", "CacheControl", "FlushRequest", "Peers", "parse_flush"]

logger = logging.getLogger("authsvc.control")



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


class CacheControl:
    """The flush handlers; ``router`` is set once the maps are open."""

    def __init__(self, secret: Secret | None, secret_header: str,
                 peers: Peers | None = None, timeout: float = 5.0, *,
                 deprecation: Deprecation | None = None) -> None:
        """``secret``/``secret_header``: the ``[http]`` check of :meth:`handle`."""
        self._secret = secret
        self._secret_header = secret_header
        self._fan_out = FanOut(peers, timeout)
        self._deprecation = deprecation
        self.router: Router | None = None

    @property
    def peers(self) -> Peers | None:
        return self._fan_out.peers

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /cache/flush`` on serve's auth_http port: checked here, deprecated."""
        if not trusted(request.headers, self._secret, self._secret_header,
                       sockname=sockname_of(request)):
            logger.warning("cache flush refused", extra={"fields": {
                "event": "flush", "result": "forbidden", "client": request.remote}})
            return web.json_response({"error": "forbidden: use the unix socket or the secret"},
                                     status=403)
        if self._deprecation is not None and not self._fan_out.from_peer(request):
            self._deprecation.note(request.path)
        return await self.operate(request)

    async def operate(self, request: web.Request) -> web.Response:
        """``POST /cache/flush`` with ``user=``, ``domain=`` or ``all=1`` (form or query).

        The caller is trusted already: the control listener checked it, or it
        is another worker on its peer socket.
        """
        params = dict(request.query)
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        what = parse_flush(params)
        if isinstance(what, str):
            return web.json_response({"error": what}, status=400)
        router = self.router
        if router is None:
            return web.json_response({"error": "not ready"}, status=503)

        async def local() -> dict[str, object]:
            return {"dropped": router.invalidate(key=what.key, domain=what.domain)}

        status, body = await self._fan_out.answer(request, what.as_form(), local,
                                                  sums=("dropped",))
        failed = body["failed"]
        logger.info("", extra={"fields": {
            "event": "flush", "what": what.describe(), "dropped": body["dropped"],
            "workers": body["workers"],
            "failed": ",".join(failed) if isinstance(failed, list) and failed else None}})
        return web.json_response(body, status=status)
