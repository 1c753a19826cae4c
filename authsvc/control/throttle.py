"""``GET /throttle`` and ``POST /throttle/clear``: the running service's throttle state.

The operator asks the control listener (``listener.py``, which checks the
caller), on serve and proxy alike.  The counts live in the shared store (the
run directory's SQLite file, or Redis), so whichever worker answers sees, and
clears, them all: no fan-out to the other workers is needed (``fanout.py``).

For one release, ``authsvc serve`` also answers them on its own port and
``authsvc proxy`` on its health port (:meth:`ThrottleControl.routes`), trusted
there like ``POST /cache/flush`` (``trust.py``): callers on the unix socket,
or with the ``[http]`` secret; anyone else gets a 403, since the list names
logins and addresses.  Each process logs a deprecation warning the first time.
"""

from __future__ import annotations

import logging

from aiohttp import web

from authsvc.control.deprecation import Deprecation
from authsvc.control.paths import THROTTLE_CLEAR_PATH, THROTTLE_LIST_PATH
from authsvc.control.trust import sockname_of, trusted
from authsvc.redact import Secret
from authsvc.throttle.service import Throttle

logger = logging.getLogger("authsvc.throttle")

LIST_PATH = THROTTLE_LIST_PATH
CLEAR_PATH = THROTTLE_CLEAR_PATH


class ThrottleControl:
    """The two handlers, bound to one process's :class:`Throttle`."""

    def __init__(self, throttle: Throttle, secret: Secret | None, secret_header: str, *,
                 deprecation: Deprecation | None = None) -> None:
        """``secret``/``secret_header``: the ``[http]`` check of :meth:`routes`."""
        self._throttle = throttle
        self._secret = secret
        self._secret_header = secret_header
        self._deprecation = deprecation

    def routes(self) -> list[web.RouteDef]:
        """The handlers on a face's own port: each checks the caller (deprecated there)."""
        return [web.get(LIST_PATH, self.list), web.post(CLEAR_PATH, self.clear)]

    def operator_routes(self) -> list[web.RouteDef]:
        """The handlers on the control listener, which has checked the caller already."""
        return [web.get(LIST_PATH, self.entries), web.post(CLEAR_PATH, self.forget)]

    def _trusted(self, request: web.Request) -> bool:
        if not trusted(request.headers, self._secret, self._secret_header,
                       sockname=sockname_of(request)):
            return False
        if self._deprecation is not None:
            self._deprecation.note(request.path)
        return True

    def _forbidden(self, request: web.Request) -> web.Response:
        logger.warning("", extra={"fields": {"event": "throttle_control", "result": "forbidden",
                                             "client": request.remote}})
        return web.json_response({"error": "forbidden: use the unix socket or the secret"},
                                 status=403)

    async def list(self, request: web.Request) -> web.Response:
        """Every counter with failures in its window."""
        if not self._trusted(request):
            return self._forbidden(request)
        return await self.entries(request)

    async def entries(self, request: web.Request) -> web.Response:
        """``list`` for a caller already trusted."""
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
        return await self.forget(request)

    async def forget(self, request: web.Request) -> web.Response:
        """``clear`` for a caller already trusted."""
        params = dict(request.query)
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        who = (params.get("who") or "").strip()
        if not who:
            return web.json_response({"error": "give who=ADDRESS or who=LOGIN"}, status=400)
        dropped = await self._throttle.clear(who)
        return web.json_response({"who": who, "dropped": dropped})
