"""Every worker answers: one operator request, repeated on each worker's peer socket, summed.

With ``--workers N`` each worker has its own caches, but a request reaches
only one worker: the kernel hands a TCP connection to one accepting process.
So every worker also listens on a private peer socket ``control-<pid>.sock``
in the run directory (mode 0600, in a directory of mode 0700 made by
``authsvc/runtime/workers.py``).  The worker that receives an operator
request applies it, repeats it on every other worker's peer socket and
answers with the sum.  A request that arrives on a peer socket
is applied locally only, so it never loops.  Both faces use this for every
command whose state is per worker (``flush.py``, ``sessions.py``); the throttle's counts are
shared already (``throttle.py``) and need no fan-out.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

from authsvc.control.trust import sockname_of

logger = logging.getLogger("authsvc.control")

#: One worker's answer to a command: a JSON object whose ``sums`` fields are integers.
Local = Callable[[], Awaitable[dict[str, object]]]


class Peers:
    """This worker's peer socket and the other workers' (``--workers N``)."""

    def __init__(self, directory: str, *, pid: int | None = None) -> None:
        """``pid`` names this worker's socket (default: the process id; tests set it)."""
        self.directory = directory
        self.own = str(Path(directory, f"control-{pid if pid is not None else os.getpid()}.sock"))

    def others(self) -> list[str]:
        """Peer sockets of the other workers that are still alive."""
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


class FanOut:
    """Apply a command here, repeat it on every other worker, sum the answers."""

    def __init__(self, peers: Peers | None, timeout: float = 5.0) -> None:
        self.peers = peers
        self._timeout = timeout

    def from_peer(self, request: web.Request) -> bool:
        """Whether ``request`` was repeated to us by another worker."""
        return self.peers is not None and sockname_of(request) == self.peers.own

    def reach(self, request: web.Request) -> int:
        """How many workers ``request`` will reach: this one and, unless it came
        from a peer, every other live one (a paced kick shares its rate among them)."""
        if self.peers is None or self.from_peer(request):
            return 1
        return 1 + len(self.peers.others())

    async def answer(self, request: web.Request, form: Mapping[str, str], local: Local,
                     sums: tuple[str, ...], lists: tuple[str, ...] = (), *,
                     unbounded: bool = False) -> tuple[int, dict[str, object]]:
        """(HTTP status, body): ``local``'s body with ``sums`` added up and ``lists``
        joined over every worker.

        The body also says how many workers answered (``workers``) and which
        peer sockets did not (``failed``, then HTTP 502).  ``unbounded`` lifts
        the bound on a peer's answer, for a paced kick whose length only the
        peer knows.
        """
        workers, failed = 1, []
        if self.peers is not None and not self.from_peer(request):
            others = self.peers.others()
            limit = None if unbounded else self._timeout
            # Every worker works at once: a paced kick takes as long in each.
            mine = asyncio.ensure_future(local())
            replies = await asyncio.gather(
                *(self._repeat(path, request.method, request.path, form, limit)
                  for path in others))
            body = await mine
            for path, reply in zip(others, replies, strict=True):
                if reply is None:
                    failed.append(Path(path).name)
                    continue
                workers += 1
                for name in sums:
                    body[name] = _count(body.get(name)) + _count(reply.get(name))
                for name in lists:
                    body[name] = _items(body.get(name)) + _items(reply.get(name))
        else:
            body = await local()
        body["workers"] = workers
        body["failed"] = failed
        return (502 if failed else 200), body

    async def _repeat(self, path: str, method: str, url_path: str,
                      form: Mapping[str, str], limit: float | None) -> dict[str, object] | None:
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=path),
                    timeout=aiohttp.ClientTimeout(total=limit),
                ) as session,
                session.request(method, f"http://localhost{url_path}",
                                params=dict(form) if method == "GET" else None,
                                data=None if method == "GET" else dict(form)) as reply,
            ):
                body = await reply.json()
                if reply.status != 200 or not isinstance(body, dict):
                    raise ValueError(f"HTTP {reply.status}")
                return body
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            logger.warning("control request not repeated on %s: %s", Path(path).name,
                           str(exc) or type(exc).__name__)
            return None


def _items(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
