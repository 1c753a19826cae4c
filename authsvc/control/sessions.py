"""``GET /sessions`` and ``POST /sessions/kick``: the proxy's relayed sessions, in every worker.

The operator asks the control listener (``listener.py``, which checks the
caller).  Each worker relays its own sessions, so both requests are repeated
on every worker (``fanout.py``): the list is joined, and the kick reports how
many sessions each worker closed.  Which sessions is a :class:`Selector`
(``selectors.py``).

A kick closes both sockets of a session at once, with no ``* BYE``: a relay
does not parse the store's stream and cannot know where a line ends
(docs/operations.md, "Ending sessions: what the client sees").  ``rate=N``
paces the kicks at N per second over all the workers, each taking its
share, so that a store's clients do not all reconnect in the same second.
``dry_run=1`` closes nothing and says what would be closed.  A kick needs a
selector: every session is ``user=*``.

``authsvc serve`` relays nothing (nginx holds its sessions): it answers both
paths with a 501 that says to run ``doveadm kick`` on the store
(:func:`not_relayed_routes`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import fields
from typing import Protocol

from aiohttp import web

from authsvc.control.fanout import FanOut, Peers
from authsvc.control.paths import SESSIONS_KICK_PATH, SESSIONS_LIST_PATH
from authsvc.control.selectors import Selector, SessionFacts, parse_selector, shown_client

logger = logging.getLogger("authsvc.control")

LIST_PATH = SESSIONS_LIST_PATH
KICK_PATH = SESSIONS_KICK_PATH

#: serve's answer on both paths.
NOT_RELAYED = ("authsvc serve relays no sessions: nginx holds them; run "
               "'doveadm kick USER' on the store (docs/operations.md)")


class LiveSession(Protocol):
    """One relayed session, as the proxy's server gives it."""

    def facts(self, worker: int) -> SessionFacts | None:
        """What is known of it; None once it no longer relays."""

    def kick(self) -> bool:
        """Close both sockets now; False when it had ended already."""


class SessionTable(Protocol):
    """The sessions one worker relays."""

    def relayed(self) -> Iterable[LiveSession]: ...


#: The list's JSON fields: every fact but the bare client address.
_SHOWN = tuple(f.name for f in fields(SessionFacts) if f.name != "client_ip")


def row(facts: SessionFacts, client_ip: str = "full") -> dict[str, object]:
    """One session as the list's JSON shows it; ``client_ip`` is ``[log] client_ip``."""
    # getattr over the field names: dataclasses.asdict deep-copies every
    # value, ten times slower with 10,000 sessions (bench/sessions_bench.py).
    out = {name: getattr(facts, name) for name in _SHOWN}
    out["client"] = shown_client(facts, client_ip)
    return out


def _params(request: web.Request, form: dict[str, str]) -> dict[str, str]:
    params = dict(request.query)
    params.update(form)
    return params


class SessionControl:
    """The two handlers, bound to one worker's sessions."""

    def __init__(self, table: SessionTable, peers: Peers | None, timeout: float = 5.0, *,
                 client_ip: str = "full") -> None:
        self._table = table
        self._client_ip = client_ip
        self._fan_out = FanOut(peers, timeout)

    def routes(self) -> list[web.RouteDef]:
        return [web.get(LIST_PATH, self.list), web.post(KICK_PATH, self.kick)]

    def _select(self, selector: Selector) -> list[tuple[LiveSession, SessionFacts]]:
        matches = selector.matcher()
        worker = os.getpid()
        found = []
        for session in list(self._table.relayed()):
            facts = session.facts(worker)
            if facts is not None and matches(facts):
                found.append((session, facts))
        return found

    async def list(self, request: web.Request) -> web.Response:
        """Every relayed session the selector matches, in every worker."""
        try:
            selector = parse_selector(dict(request.query))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

        async def local() -> dict[str, object]:
            found = self._select(selector)
            return {"count": len(found), "sessions": [row(facts, self._client_ip)
                                                    for _, facts in found]}

        status, body = await self._fan_out.answer(request, selector.as_form(), local,
                                                  sums=("count",), lists=("sessions",))
        return web.json_response(body, status=status)

    async def kick(self, request: web.Request) -> web.Response:
        """Close the matching sessions (``dry_run=1``: only count them), ``rate=`` per second."""
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        params = _params(request, form)
        try:
            selector = parse_selector(params)
            rate = float(params["rate"]) if params.get("rate") else None
            if rate is not None and not 0 < rate < 1e9:
                raise ValueError(f"rate {params['rate']!r} must be a positive number")
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if selector.empty:
            return web.json_response({"error": "a kick needs user=, client= or store= "
                                               "(user=* for every session)"}, status=400)
        dry_run = params.get("dry_run") in ("1", "true", "yes")
        # The rate is the pool's, shared by every worker this request reaches.
        share = rate / self._fan_out.reach(request) if rate is not None else None
        repeated = selector.as_form()
        if dry_run:
            repeated["dry_run"] = "1"
        if share is not None:
            repeated["rate"] = repr(share)

        async def local() -> dict[str, object]:
            found = self._select(selector)
            kicked = 0 if dry_run else await _kick(found, share)
            return {"matched": len(found), "kicked": kicked,
                    "by_worker": [{"worker": os.getpid(), "matched": len(found),
                                   "kicked": kicked}]}

        status, body = await self._fan_out.answer(request, repeated, local,
                                                  sums=("matched", "kicked"),
                                                  lists=("by_worker",),
                                                  unbounded=share is not None)
        body["dry_run"] = dry_run
        if not self._fan_out.from_peer(request):
            logger.info("", extra={"fields": {
                "event": "kick", "what": selector.describe(), "dry_run": dry_run,
                "rate": rate, "matched": body.get("matched"), "kicked": body.get("kicked"),
                "workers": body.get("workers")}})
        return web.json_response(body, status=status)


async def _kick(found: list[tuple[LiveSession, SessionFacts]], rate: float | None) -> int:
    """Close each session, the n-th at n/rate seconds from now; how many were still open."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    kicked = 0
    for n, (session, _) in enumerate(found):
        if rate is not None and n:
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
        if session.kick():
            kicked += 1
    return kicked


def not_relayed_routes() -> list[web.RouteDef]:
    """serve's answer on both paths: a 501 that says where its sessions are."""

    async def not_here(_request: web.Request) -> web.Response:
        return web.json_response({"error": NOT_RELAYED}, status=501)

    return [web.get(LIST_PATH, not_here), web.post(KICK_PATH, not_here)]
