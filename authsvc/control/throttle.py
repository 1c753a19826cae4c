"""``GET /throttle`` and ``POST /throttle/clear``: the running service's throttle state.

Trusted like ``POST /cache/flush`` (``trust.py``): callers on the unix
socket, or with the shared secret; anyone else gets a 403, since the list
names logins and addresses.  ``authsvc serve`` serves them on its own port,
``authsvc proxy`` on its health port.  The counts live in the shared store (the
run directory's SQLite file, or Redis), so whichever worker answers sees, and
clears, them all: no fan-out to the other workers is needed.
"""

from __future__ import annotations

import logging

from aiohttp import web

from authsvc.control.trust import sockname_of, trusted
from authsvc.redact import Secret
from authsvc.throttle.service import Throttle

logger = logging.getLogger("authsvc.throttle")

LIST_PATH = "/throttle"
CLEAR_PATH = "/throttle/clear"


class ThrottleControl:
    """The two handlers, bound to one process's :class:`Throttle`."""

    def __init__(self, throttle: Throttle, secret: Secret | None, secret_header: str) -> None:
        self._throttle = throttle
        self._secret = secret
        self._secret_header = secret_header

    def routes(self) -> list[web.RouteDef]:
        return [web.get(LIST_PATH, self.list), web.post(CLEAR_PATH, self.clear)]

    def _trusted(self, request: web.Request) -> bool:
        return trusted(request.headers, self._secret, self._secret_header,
                       sockname=sockname_of(request))

    def _forbidden(self, request: web.Request) -> web.Response:
        logger.warning("", extra={"fields": {"event": "throttle_control", "result": "forbidden",
                                             "client": request.remote}})
        return web.json_response({"error": "forbidden: use the unix socket or the secret"},
                                 status=403)

    async def list(self, request: web.Request) -> web.Response:
        """Every counter with failures in its window."""
        if not self._trusted(request):
            return self._forbidden(request)
        throttle = self._throttle
        return web.json_response({
            "enabled": throttle.enabled,
            "store": throttle.settings.store,
            "fallback": throttle.on_fallback,
            "address_limit": throttle.settings.address_limit,
            "entries": await throttle.entries(),
        })

    async def clear(self, request: web.Request) -> web.Response:
        """Forget an address, a network or a login (``who=``)."""
        if not self._trusted(request):
            return self._forbidden(request)
        params = dict(request.query)
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        who = (params.get("who") or "").strip()
        if not who:
            return web.json_response({"error": "give who=ADDRESS or who=LOGIN"}, status=400)
        dropped = await self._throttle.clear(who)
        return web.json_response({"who": who, "dropped": dropped})
