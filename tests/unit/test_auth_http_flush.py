"""POST /cache/flush: who may flush, what it drops, and that every worker's cache hears it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from authsvc.control.client import call, target
from authsvc.control.flush import FLUSH_PATH, Peers, parse_flush
from authsvc.maps import MapEntry
from authsvc.settings import HostPort, HttpSettings, Settings
from tests.unit.auth_http_fakes import (
    Maps,
    exchange,
    make_app,
    make_maps,
    nginx_facing_server,
    nginx_request,
    parse_reply,
    secret_settings,
    seed_settings,
)


async def post_flush(settings: Settings, form: dict[str, str],
                     url: str | None = None) -> tuple[int, dict[str, object]]:
    """``authsvc flush``'s request, through the control client."""
    return await call(settings, "POST", FLUSH_PATH, form, url=url)

KEY = (b"X-Authsvc-Key", b"s3cret-key")


@asynccontextmanager
async def unix_server(app: web.Application, path: str) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def route_of(port: int, user: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> str:
    reply = parse_reply(await exchange(port, nginx_request(user, extra=(
        (b"X-Authsvc-Listener", b"imap4"), *extra))))
    return reply.get("Auth-Server") or str(reply.get("Auth-Status"))


async def test_flush_over_the_unix_socket_drops_a_route_at_once(tmp_path: Path) -> None:
    maps = make_maps(cached=True)
    app = make_app(seed_settings(), maps)
    sock = str(tmp_path / "ctl.sock")
    async with nginx_facing_server(app, unix=[sock]) as port:
        assert await route_of(port, b"Bob") == "10.0.0.5"
        maps.scripted.entries["bob@riseup.net"] = MapEntry("10.0.0.99")  # the mailbox moved
        assert await route_of(port, b"Bob") == "10.0.0.5"  # still cached
        settings = seed_settings(HttpSettings(unix=sock))
        status, body = await post_flush(settings, {"user": "bob@riseup.net"})
        assert (status, body) == (200, {"dropped": 1, "workers": 1, "failed": []})
        assert await route_of(port, b"Bob") == "10.0.0.99"


async def test_flush_domain_and_all(tmp_path: Path) -> None:
    maps = make_maps(cached=True)
    app = make_app(seed_settings(), maps)
    sock = str(tmp_path / "ctl.sock")
    settings = seed_settings(HttpSettings(unix=sock))
    async with nginx_facing_server(app, unix=[sock]) as port:
        for user in (b"bob", b"alice", b"nobody"):
            await route_of(port, user)
        assert (await post_flush(settings, {"domain": "RISEUP.net"}))[1]["dropped"] == 3
        await route_of(port, b"bob")
        assert (await post_flush(settings, {"all": "1"}))[1]["dropped"] == 1


async def test_tcp_flush_needs_the_secret() -> None:
    app = make_app(secret_settings(), make_maps(cached=True))
    async with nginx_facing_server(app) as port:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.post(base + "/cache/flush", data={"all": "1"}) as reply:
                assert reply.status == 403
            async with session.post(base + "/cache/flush", data={"all": "1"},
                                    headers={"X-Authsvc-Key": "nope"}) as reply:
                assert reply.status == 403
        settings = secret_settings()
        status, body = await post_flush(settings, {"all": "1"}, url=base)
        assert (status, body["workers"]) == (200, 1)


async def test_tcp_flush_without_a_secret_configured_is_refused() -> None:
    app = make_app(seed_settings(), make_maps(cached=True))
    async with nginx_facing_server(app) as port:
        status, body = await post_flush(seed_settings(), {"all": "1"},
                                        url=f"http://127.0.0.1:{port}")
    assert status == 403
    assert "unix socket" in str(body["error"])


@pytest.mark.parametrize(
    ("params", "ok"),
    [({"user": "a@b"}, True), ({"domain": "b"}, True), ({"all": "1"}, True),
     ({}, False), ({"user": "a", "domain": "b"}, False), ({"all": "0"}, False)],
)
def test_parse_flush(params: dict[str, str], ok: bool) -> None:
    assert isinstance(parse_flush(params), str) is not ok


async def test_bad_flush_request_is_400(tmp_path: Path) -> None:
    sock = str(tmp_path / "ctl.sock")
    async with unix_server(make_app(seed_settings(), make_maps(cached=True)), sock):
        status, body = await post_flush(seed_settings(HttpSettings(unix=sock)), {})
    assert status == 400
    assert "exactly one" in str(body["error"])


def test_target() -> None:
    settings = seed_settings()
    assert target(settings, None) == (None, "http://127.0.0.1:9143")
    assert target(settings, "unix:/run/a.sock") == ("/run/a.sock", "http://localhost")
    assert target(settings, "http://[::1]:1/") == (None, "http://[::1]:1")
    assert target(seed_settings(HttpSettings(unix="/run/b.sock")), None) == (
        "/run/b.sock", "http://localhost")
    # An IPv6 [http] listen is bracketed in the URL.
    assert target(seed_settings(HttpSettings(listen=HostPort("::1", 9143))), None) == (
        None, "http://[::1]:9143")


@pytest.fixture
def sibling_pid() -> Iterator[int]:
    """A live pid to name the second worker's control socket after."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


async def test_flush_reaches_every_worker(tmp_path: Path, sibling_pid: int) -> None:
    """Two workers, two caches: a flush sent to one is repeated on the other."""
    run_dir = str(tmp_path)
    workers: list[tuple[Maps, web.Application, Peers]] = []
    for pid in (None, sibling_pid):
        maps = make_maps(cached=True)
        peers = Peers(run_dir, pid=pid)
        workers.append((maps, make_app(secret_settings(), maps, peers=peers), peers))
    (maps_a, app_a, peers_a), (maps_b, app_b, peers_b) = workers
    async with (
        nginx_facing_server(app_a, unix=[peers_a.own]) as port_a,
        nginx_facing_server(app_b, unix=[peers_b.own]) as port_b,
    ):
        for port in (port_a, port_b):
            assert await route_of(port, b"Bob", (KEY,)) == "10.0.0.5"
        for maps in (maps_a, maps_b):
            maps.scripted.entries["bob@riseup.net"] = MapEntry("10.0.0.99")
        settings: Settings = secret_settings()
        status, body = await post_flush(settings, {"user": "bob@riseup.net"},
                                        url=f"http://127.0.0.1:{port_a}")
        assert (status, body) == (200, {"dropped": 2, "workers": 2, "failed": []})
        for port in (port_a, port_b):
            assert await route_of(port, b"Bob", (KEY,)) == "10.0.0.99"


async def test_a_dead_worker_is_skipped_and_an_unreachable_one_reported(
    tmp_path: Path, sibling_pid: int
) -> None:
    maps = make_maps(cached=True)
    peers = Peers(str(tmp_path))
    (tmp_path / "control-999999999.sock").write_text("")  # no such process: skipped
    stale = socket.socket(socket.AF_UNIX)  # a live worker that does not answer
    stale.bind(str(tmp_path / f"control-{sibling_pid}.sock"))
    stale.close()
    app = make_app(seed_settings(), maps, peers=peers)
    public = str(tmp_path / "public.sock")
    async with nginx_facing_server(app, unix=[peers.own, public]):
        status, body = await post_flush(seed_settings(HttpSettings(unix=public)), {"all": "1"})
    assert (status, body["workers"], body["failed"]) == (502, 1, [f"control-{sibling_pid}.sock"])
