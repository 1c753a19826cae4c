"""Hot reload's parts: which maps survive a reload, and how a failed one is handled.

No database is reached: MySQL maps connect lazily, so building and comparing
them is enough to see which instances a reload keeps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authsvc.config import ConfigError
from authsvc.metrics import Metrics
from authsvc.reload import RELOAD_FAMILIES, Reloader, ReloadSource
from authsvc.routing import LoginRequest, Route, Router, RouterSwitch
from authsvc.settings import (
    FileMapSettings,
    HostPort,
    ListenerSettings,
    MailProtocol,
    MySqlMapSettings,
    Settings,
)

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


def test_reload_command_needs_a_real_pid(capsys: pytest.CaptureFixture[str]) -> None:
    from authsvc.cli import main

    assert main(["reload", "--pid", "1"]) == 2
    assert "not a process to signal" in capsys.readouterr().err
