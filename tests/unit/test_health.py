"""/healthz, /readyz and /metrics as HAProxy and Prometheus see them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from authsvc.http.app import HEALTH
from authsvc.redact import Secret
from authsvc.runtime.health import Health, MapStates, Phase, Readiness
from authsvc.settings import ControlSettings, HttpSettings
from tests.unit.auth_http_fakes import (
    Maps,
    exchange,
    make_app,
    make_maps,
    nginx_facing_server,
    parse_reply,
    seed_settings,
)

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


@pytest.fixture
def maps() -> Maps:
    return make_maps()


async def readyz(client: Client, headers: dict[str, str] | None = None,
                 ) -> tuple[int, dict[str, object]]:
    async with client.get("/readyz", headers=headers) as reply:
        assert reply.content_type == "application/json"
        return reply.status, await reply.json()


async def test_healthz_is_ok(aiohttp_client: MakeClient, maps: Maps) -> None:
    client = await aiohttp_client(make_app(seed_settings(), maps))
    async with client.get("/healthz") as reply:
        assert (reply.status, await reply.text()) == (200, "ok\n")
    assert maps.scripted.checks == 0  # no I/O


async def test_readyz_reports_maps(aiohttp_client: MakeClient, maps: Maps) -> None:
    client = await aiohttp_client(make_app(seed_settings(), maps))
    assert await readyz(client) == (200, {"status": "ready", "maps": {"scripted": {"up": True}}})


async def test_map_down_keeps_readyz_200_and_says_so(
    aiohttp_client: MakeClient, maps: Maps
) -> None:
    maps.scripted.down = True
    client = await aiohttp_client(make_app(seed_settings(), maps))
    # A stranger (a load balancer, from this host or not) gets the status and
    # the map's name; why it is down (the database's address) is not theirs.
    assert await readyz(client) == (200, {"status": "degraded",
                                          "maps": {"scripted": {"up": False}}})


DETAILS = {"status": "degraded",
           "maps": {"scripted": {"up": False, "error": "db1:3306: Can't connect"}}}
SECRET = "readyz-s3cret"


async def test_readyz_details_need_the_control_secret(
    aiohttp_client: MakeClient, maps: Maps
) -> None:
    maps.scripted.down = True
    settings = seed_settings(HttpSettings(secret=Secret(SECRET)))
    client = await aiohttp_client(make_app(settings, maps))
    stranger = (200, {"status": "degraded", "maps": {"scripted": {"up": False}}})
    assert await readyz(client) == stranger
    assert await readyz(client, {"X-Authsvc-Key": "wrong"}) == stranger
    assert await readyz(client, {"Auth-Pass": SECRET}) == stranger  # only its own header
    assert await readyz(client, {"X-Authsvc-Key": SECRET}) == (200, DETAILS)


async def test_readyz_details_for_the_control_secret(
    aiohttp_client: MakeClient, maps: Maps
) -> None:
    maps.scripted.down = True
    settings = replace(seed_settings(), control=ControlSettings(secret=Secret(SECRET)))
    client = await aiohttp_client(make_app(settings, maps))
    stranger = (200, {"status": "degraded", "maps": {"scripted": {"up": False}}})
    assert await readyz(client, {"X-Authsvc-Key": SECRET}) == stranger  # no [http] secret
    assert await readyz(client, {"X-Authsvc-Control": "wrong"}) == stranger
    assert await readyz(client, {"X-Authsvc-Control": SECRET}) == (200, DETAILS)


async def test_readyz_details_over_the_unix_socket_only_there(tmp_path: Path,
                                                             maps: Maps) -> None:
    """The nginx-facing port and the unix socket of one serve, without a secret."""
    maps.scripted.down = True
    sock = str(tmp_path / "serve.sock")
    request = b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n"
    async with nginx_facing_server(make_app(seed_settings(), maps), unix=[sock]) as port:
        over_tcp = parse_reply(await exchange(port, request))
        over_unix = parse_reply(await exchange(0, request, unix=sock))
    assert over_tcp.status_line == b"HTTP/1.0 200 OK"
    assert b"db1" not in over_tcp.body and b"error" not in over_tcp.body
    assert b'"scripted": {"up": false}' in over_tcp.body
    assert b'"error": "db1:3306: Can\'t connect"' in over_unix.body


async def test_map_down_is_503_when_the_site_asks(aiohttp_client: MakeClient, maps: Maps) -> None:
    maps.scripted.down = True
    settings = seed_settings(HttpSettings(ready_requires_map=True))
    client = await aiohttp_client(make_app(settings, maps))
    status, body = await readyz(client)
    assert (status, body["status"]) == (503, "not_ready")


async def test_draining_is_503(aiohttp_client: MakeClient, maps: Maps) -> None:
    app = make_app(seed_settings(), maps)
    client = await aiohttp_client(app)
    app[HEALTH].set_draining()
    assert await readyz(client) == (503, {"status": "draining"})


async def test_starting_is_503_without_a_check() -> None:
    calls = 0

    async def check() -> MapStates:
        nonlocal calls
        calls += 1
        return {}

    readiness = Readiness(Health(), check)
    assert await readiness.report() == (503, {"status": "starting"})
    assert calls == 0


async def test_check_result_is_cached(aiohttp_client: MakeClient, maps: Maps) -> None:
    client = await aiohttp_client(make_app(seed_settings(), maps))
    for _ in range(5):
        assert (await readyz(client))[0] == 200
    assert maps.scripted.checks == 1


async def test_concurrent_probes_share_one_check() -> None:
    calls = 0

    async def slow_check() -> MapStates:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"m": None}

    health = Health()
    health.set_ready()
    readiness = Readiness(health, slow_check, ttl=0)
    results = await asyncio.gather(*(readiness.report() for _ in range(5)))
    assert calls == 1
    assert all(r == (200, {"status": "ready", "maps": {"m": {"up": True}}}) for r in results)


async def test_recovery_is_seen_after_the_ttl() -> None:
    state: dict[str, str | None] = {"m": "down"}

    async def check() -> MapStates:
        return dict(state)

    health = Health()
    health.set_ready()
    readiness = Readiness(health, check, ttl=0)
    assert (await readiness.report())[1]["status"] == "degraded"
    state["m"] = None
    assert (await readiness.report())[1]["status"] == "ready"


async def test_a_hanging_check_reports_the_maps_down() -> None:
    async def hanging() -> MapStates:
        await asyncio.sleep(10)
        return {}

    health = Health()
    health.set_ready()
    readiness = Readiness(health, hanging, timeout=0.05)
    status, body = await readiness.report(details=True)
    assert status == 200
    assert body["maps"] == {"maps": {"up": False, "error": "check timed out"}}


def test_phases() -> None:
    health = Health()
    seen = [health.phase]
    health.set_ready()
    seen.append(health.phase)
    health.set_draining()
    seen.append(health.phase)
    assert seen == [Phase.STARTING, Phase.READY, Phase.DRAINING]


async def test_metrics_endpoint(aiohttp_client: MakeClient, maps: Maps) -> None:
    client = await aiohttp_client(make_app(seed_settings(), maps))
    async with client.get("/auth", headers={"Auth-User": "bob", "Auth-Protocol": "imap"}):
        pass
    maps.scripted.down = True
    await readyz(client)
    async with client.get("/metrics") as reply:
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await reply.text()
    assert 'authsvc_auth_decisions_total{protocol="imap",result="ok"} 1\n' in text
    assert 'authsvc_auth_duration_seconds_count 1\n' in text
    # The scripted map has no cache: its state comes from the readiness check.
    assert 'authsvc_map_up{map="scripted"} 0\n' in text
