"""Draining: a stopping server answers /readyz 503, refuses new connections, finishes in flight."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from authsvc.http.app import READINESS
from authsvc.http.server import run_server
from authsvc.maps import MapEntry
from tests.helpers.eventually import eventually_async
from tests.unit.auth_http_fakes import (
    ScriptedMap,
    exchange,
    make_maps,
    map_builder,
    nginx_request,
    parse_reply,
    seed_settings,
)


class SlowMap(ScriptedMap):
    """Answers after a delay, so a request is still in flight when the server stops."""

    def __init__(self, entries: dict[str, MapEntry]) -> None:
        super().__init__(entries)
        self.asked_event = asyncio.Event()

    async def lookup(self, key: str) -> MapEntry | None:
        self.asked.append(key)
        self.asked_event.set()
        await asyncio.sleep(0.3)
        return self.entries.get(key)


async def test_stop_drains_in_flight_requests_and_refuses_new_ones() -> None:
    maps = make_maps()
    slow = SlowMap(maps.scripted.entries)
    maps.scripted = maps.backend = slow
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    started: asyncio.Future[web.Application] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(run_server(
        seed_settings(), sock, stop=stop, started=started, drain_timeout=5,
        build_map=map_builder(maps)))
    app = await asyncio.wait_for(started, 5)

    in_flight = asyncio.create_task(exchange(port, nginx_request(b"Bob")))
    await asyncio.wait_for(slow.asked_event.wait(), 5)
    stop.set()

    async def draining_and_closed() -> bool:
        assert await app[READINESS].report() == (503, {"status": "draining"})
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return True
        writer.close()
        raise AssertionError("still accepting while draining")

    await eventually_async(draining_and_closed)

    reply = parse_reply(await asyncio.wait_for(in_flight, 5))
    assert (reply.get("Auth-Status"), reply.get("Auth-Server")) == ("OK", "10.0.0.5")
    assert await asyncio.wait_for(server, 5) == 0
