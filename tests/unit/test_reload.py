"""Hot reload: which maps survive a reload, how a failed one is handled, and serve reloading.

No database is reached: MySQL maps connect lazily, so building and comparing
them is enough to see which instances a reload keeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from authsvc.config import ConfigError
from authsvc.http.app import METRICS, SERVING
from authsvc.http.server import run_server
from authsvc.metrics import Metrics
from authsvc.reload import RELOAD_FAMILIES, Reloader, ReloadSource
from authsvc.routing import LoginRequest, Route, Router, RouterSwitch
from authsvc.runtime.signals import SighupReload
from authsvc.settings import (
    FileMapSettings,
    HostPort,
    ListenerSettings,
    MailProtocol,
    MySqlMapSettings,
    Settings,
)
from tests.helpers.prometheus import Scrape
from tests.unit.auth_http_fakes import exchange, nginx_request, parse_reply

MYSQL = MySqlMapSettings(hosts=(HostPort("127.0.0.1", 1),), connect_timeout=0.1)


def settings(popmap: Path, mysql: MySqlMapSettings = MYSQL) -> Settings:
    return Settings(listeners=(
        ListenerSettings(name="imap4", protocol=MailProtocol.IMAP, map=mysql),
        ListenerSettings(name="pop3", protocol=MailProtocol.POP3,
                         map=FileMapSettings(str(popmap))),
    ))


def maps_of(router: Router) -> dict[str, object]:
    return dict(router._maps)


async def test_mysql_map_and_cache_survive_a_reload_file_map_is_read_again(
    tmp_path: Path,
) -> None:
    popmap = tmp_path / "popmap"
    popmap.write_text("bob: 10.0.0.1\n")
    switch = RouterSwitch(settings(popmap))
    try:
        before = maps_of(switch.router)
        route = await switch.router.route(LoginRequest("bob", MailProtocol.POP3))
        assert isinstance(route, Route) and route.host == "10.0.0.1"
        popmap.write_text("bob: 10.0.0.2\n")
        router, close_retired = switch.replace(settings(popmap))
        after = maps_of(router)
        assert after["imap4"] is before["imap4"]  # same CachedMap: its routes stay
        assert after["pop3"] is not before["pop3"]
        route = await router.route(LoginRequest("bob", MailProtocol.POP3))
        assert isinstance(route, Route) and route.host == "10.0.0.2"
        await close_retired()
        # A changed MySQL map is a new map; the old one is retired.
        router, close_retired = switch.replace(settings(popmap, MySqlMapSettings(
            hosts=(HostPort("127.0.0.1", 2),), connect_timeout=0.1)))
        assert maps_of(router)["imap4"] is not after["imap4"]
        await close_retired()
    finally:
        await switch.close()


async def test_failed_reload_keeps_the_router_and_is_counted(tmp_path: Path) -> None:
    popmap = tmp_path / "popmap"
    popmap.write_text("")
    good = settings(popmap)
    loads: list[Settings | Exception] = [ConfigError([]), good]

    def load() -> Settings:
        item = loads.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    source = ReloadSource(("unused.toml",))
    object.__setattr__(source, "load", load)  # frozen dataclass: a test-only stand-in
    applied: list[Router] = []
    metrics = Metrics(families=RELOAD_FAMILIES)
    switch = RouterSwitch(good)
    first = switch.router
    reloader = Reloader(source, switch, lambda _s, router: applied.append(router),
                        metrics=metrics, retire_after=0)
    try:
        assert await reloader.reload() is False
        assert switch.router is first and applied == []
        assert await reloader.reload() is True
        assert applied == [switch.router] and switch.router is not first
        text = metrics.render()
        assert 'authsvc_reloads_total{result="failed"} 1' in text
        assert 'authsvc_reloads_total{result="ok"} 1' in text
    finally:
        await reloader.close()
        await switch.close()


async def test_an_in_process_reload_drops_the_retired_maps_series_and_keeps_a_ttl_change(
    tmp_path: Path,
) -> None:
    """Both faces attach the new router's maps to their metrics on reload (app.py, proxy)."""
    for name in ("popmap", "popmap2"):
        (tmp_path / name).write_text("bob: 10.0.0.1\n")
    first = settings(tmp_path / "popmap")
    loads = [replace(first, cache=replace(first.cache, ttl=5.0)),
             settings(tmp_path / "popmap2", replace(MYSQL, query_timeout=9.0))]
    source = ReloadSource(("unused.toml",))
    object.__setattr__(source, "load", lambda: loads.pop(0))  # frozen: a test-only stand-in
    metrics = Metrics(str(tmp_path), families=RELOAD_FAMILIES)
    switch = RouterSwitch(first)
    metrics.attach_maps(switch.router.cache_stats())
    reloader = Reloader(source, switch, lambda _s, router: metrics.attach_maps(
        router.cache_stats()), metrics=metrics, retire_after=0)
    mysql = "mysql:127.0.0.1:1/dbPerdition.tblPerdition"

    def labels() -> set[str]:
        return Scrape(metrics.render()).label_values("authsvc_map_up", "map")

    try:
        assert labels() == {mysql, f"file:{tmp_path / 'popmap'}"}
        assert await reloader.reload() is True  # a TTL change: new caches, same names
        assert labels() == {mysql, f"file:{tmp_path / 'popmap'}"}
        assert await reloader.reload() is True  # another map file; a MySQL timeout
        assert labels() == {mysql, f"file:{tmp_path / 'popmap2'}"}
    finally:
        await reloader.close()
        await switch.close()
        metrics.close()


def test_reload_command_needs_a_real_pid(capsys: pytest.CaptureFixture[str]) -> None:
    from authsvc.cli import main

    assert main(["reload", "--pid", "1"]) == 2
    assert "not a process to signal" in capsys.readouterr().err


def _serve_config(tmp_path: Path, popmap: Path) -> Path:
    config = tmp_path / "authsvc.toml"
    config.write_text(f"""
[login]
lower_case = ["all"]
explicit_domain = "riseup.net"
add_domain = ["lookup"]

[map]
type = "file"
path = "{popmap}"

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = 1143
""")
    return config


@pytest.mark.filterwarnings("error")
async def test_serve_reloads_in_process_with_warnings_as_errors(tmp_path: Path) -> None:
    """SIGHUP to a running ``run_server``: new logins get the new map, and aiohttp has
    nothing to warn about (the app's state is changed only through objects stored
    before startup; aiohttp refuses changes to a started app's keys)."""
    popmap = tmp_path / "popmap"
    popmap.write_text("carol@riseup.net: 10.0.0.1:1143\n")
    source = ReloadSource.of([str(_serve_config(tmp_path, popmap))])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    started: asyncio.Future[web.Application] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(run_server(source.load(), sock, stop=stop, started=started,
                                            drain_timeout=1, reload_from=source))
    try:
        app = await asyncio.wait_for(started, 5)

        async def server_of_carol() -> str | None:
            return parse_reply(await exchange(port, nginx_request(b"carol"))).get("Auth-Server")

        assert await server_of_carol() == "10.0.0.1"
        first = app[SERVING].router
        popmap.write_text("carol@riseup.net: 10.0.0.2:1143\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(500):  # the reload runs in a task of its own
            if app[SERVING].router is not first:
                break
            await asyncio.sleep(0.01)
        assert await server_of_carol() == "10.0.0.2"
        assert 'authsvc_reloads_total{result="ok"} 1' in app[METRICS].render()
    finally:
        stop.set()
        assert await asyncio.wait_for(server, 5) == 0
        sock.close()


# -- SIGHUP while a worker starts ---------------------------------------------------------


class Counting:
    def __init__(self) -> None:
        self.requests = 0

    def request(self) -> None:
        self.requests += 1


def test_a_sighup_during_start_is_carried_out_once_started() -> None:
    handler = SighupReload(logging.getLogger("test.sighup"), configured=True)
    handler()  # the supervisor forwarded it before this worker could reload
    handler()  # two before start: one reload reads the files as they are then
    reloader = Counting()
    handler.ready(reloader)
    assert reloader.requests == 1
    handler()
    assert reloader.requests == 2


def test_a_sighup_without_configuration_files_only_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    handler = SighupReload(logging.getLogger("test.sighup"), configured=False)
    with caplog.at_level(logging.INFO):
        handler()
    assert "nothing to reload" in caplog.text
