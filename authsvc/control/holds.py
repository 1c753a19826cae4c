"""``/holds``: place, list and release holds, in every worker (docs/operations.md, "Holds").

* ``GET /holds``: the holds in force, as the store has them;
* ``POST /holds/hold`` with ``kind`` (user or store), ``target`` (a mask or
  ``HOST[:PORT]``), optional ``reason`` and ``until`` (Unix time);
* ``POST /holds/release`` with ``kind`` and ``target``.

The worker that receives a change writes the store once (``authsvc/holds/store.py``),
then every worker of the node reads the store again: the request is repeated on
each worker's peer socket (``fanout.py``), where it only reloads.  The answer
counts the workers that reloaded; a worker that did not is named and the
status is 502, so the operator knows to repeat it.  Each change is logged as
``event=hold`` or ``event=release`` with the caller, the target, the reason
and the expiry.  Bad input is a 400 with a one-line error, and changes nothing.
"""

from __future__ import annotations

import logging
import math
import time

from aiohttp import web

from authsvc.address import parse_hostport
from authsvc.control.fanout import FanOut, Peers
from authsvc.holds.rules import STORE, Hold, check_reason, parse_target
from authsvc.holds.state import HoldKeeper
from authsvc.holds.store import HoldStoreError
from authsvc.routing import Router

logger = logging.getLogger("authsvc.control")

LIST_PATH = "/holds"
HOLD_PATH = "/holds/hold"
RELEASE_PATH = "/holds/release"


def _until(text: str | None, now: float) -> float | None:
    """``until=`` as Unix time in the future, or ValueError."""
    if text is None or not text.strip():
        return None
    try:
        until = float(text)
    except ValueError:
        raise ValueError(f"until={text!r} is not a Unix time") from None
    if not math.isfinite(until) or until <= now:
        raise ValueError("until is not in the future")
    return until


class HoldControl:
    """The three handlers, bound to one process's holds; ``router`` is set once maps are open."""

    def __init__(self, keeper: HoldKeeper, peers: Peers | None = None,
                 timeout: float = 5.0) -> None:
        self._keeper = keeper
        self._fan_out = FanOut(peers, timeout)
        self.router: Router | None = None

    def routes(self) -> list[web.RouteDef]:
        """For the control listener, which has checked the caller already."""
        return [web.get(LIST_PATH, self.listing), web.post(HOLD_PATH, self.hold),
                web.post(RELEASE_PATH, self.release)]

    async def listing(self, request: web.Request) -> web.Response:
        try:
            holds = await self._keeper.listing()
        except HoldStoreError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response({"holds": [hold.as_json() for hold in holds],
                                  "store": self._keeper.store.describe()})

    async def _form(self, request: web.Request) -> dict[str, str]:
        params = dict(request.query)
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        return params

    async def _reload_all(self, request: web.Request, form: dict[str, str],
                          body: dict[str, object]) -> web.Response:
        """Every worker reads the store again; ``body`` plus the workers' count."""

        async def local() -> dict[str, object]:
            return {"loaded": 1 if await self._keeper.load() else 0}

        status, summed = await self._fan_out.answer(request, form, local, sums=("loaded",))
        summed.update(body)
        if summed.get("loaded") != summed.get("workers"):
            status = 502  # a worker could not read the store: it keeps its old holds
        return web.json_response(summed, status=status)

    async def hold(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if self._fan_out.from_peer(request):
            return await self._reload_all(request, form, {})
        now = time.time()
        kind = form.get("kind", "")
        try:
            target = parse_target(kind, form.get("target", ""))
            reason = check_reason(form.get("reason"))
            until = _until(form.get("until"), now)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        hold = Hold(kind=kind, target=target, reason=reason, until=until, since=now,
                    by=request.remote)
        try:
            await self._keeper.place(hold)
        except HoldStoreError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        logger.info("", extra={"fields": {
            "event": "hold", "client": request.remote, "kind": kind, "target": target,
            "reason": reason, "until": _iso(until)}})
        known = None
        if kind == STORE and self.router is not None:
            address = parse_hostport(target)
            known = self.router.store_named(address.host, address.port)
        return await self._reload_all(request, {"kind": kind, "target": target},
                                      {"hold": hold.as_json(), "named": known})

    async def release(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if self._fan_out.from_peer(request):
            return await self._reload_all(request, form, {})
        kind = form.get("kind", "")
        try:
            target = parse_target(kind, form.get("target", ""))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            released = await self._keeper.release(kind, target)
        except HoldStoreError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        logger.info("", extra={"fields": {
            "event": "release", "client": request.remote, "kind": kind, "target": target,
            "result": "released" if released else "not_held"}})
        return await self._reload_all(request, {"kind": kind, "target": target},
                                      {"kind": kind, "target": target,
                                       "released": 1 if released else 0})


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
