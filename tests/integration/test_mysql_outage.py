"""Database outages on a PRIVATE mariadbd: stale routes, temporary failures, recovery in place.

The shared MariaDB is never stopped; these tests stop, restart and cut the
connections of a server of their own (``private_mariadb``).  Time in the cache
is a fake clock; the database's own restarts are real.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.cached import CachedMap
from authsvc.maps.mysql import MySqlMap
from authsvc.routing import FailureKind, LoginRequest, Refusal, Route, Router
from authsvc.settings import (
    CacheSettings,
    ListenerSettings,
    LoginPolicy,
    MailProtocol,
    Settings,
    Stage,
)
from tests.services.mariadb import PrivateMariaDb, TestDatabase

pytestmark = pytest.mark.integration

ROWS = [("bob@riseup.net", "10.0.0.2"), ("alice@riseup.net", "10.0.0.3"),
        ("carol@riseup.net", "10.0.0.4")]
CACHE = CacheSettings(ttl=60.0, negative_ttl=10.0, max_size=1000, stale_if_error=600.0)
SEED_POLICY = LoginPolicy(lower_case=frozenset(Stage), add_domain=frozenset({Stage.LOOKUP}),
                          explicit_domain="riseup.net")


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Stack:
    server: PrivateMariaDb
    db: TestDatabase
    mysql: MySqlMap
    cache: CachedMap
    clock: Clock
    router: Router


@pytest.fixture
async def stack(
    private_mariadb: PrivateMariaDb, private_mariadb_db: TestDatabase
) -> AsyncIterator[Stack]:
    private_mariadb_db.add_mailboxes(ROWS)
    # Short timeouts: a stopped server refuses at once, but keep the test quick anyway.
    settings = private_mariadb_db.map_settings(connect_timeout=1.0, query_timeout=1.0)
    mysql = MySqlMap(settings)
    clock = Clock()
    cache = CachedMap(mysql, CACHE, clock=clock)
    listener = ListenerSettings(name="imap4", protocol=MailProtocol.IMAP, login=SEED_POLICY,
                                default_port=143, map=settings)
    router = Router(Settings(listeners=(listener,)), {"imap4": cache})
    yield Stack(private_mariadb, private_mariadb_db, mysql, cache, clock, router)
    await cache.close()


def map_up(stack: Stack) -> bool:
    return stack.cache.stats.map_up


def label(stack: Stack) -> str:
    """The map's name in check_maps (and /readyz, /metrics)."""
    return stack.router.settings.listeners[0].map.label


async def route(stack: Stack, login: str) -> Route | Refusal:
    return await stack.router.route(LoginRequest(login, MailProtocol.IMAP, listener="imap4"))


async def test_server_stopped_then_started(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    assert await stack.cache.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    assert await stack.cache.lookup("alice@riseup.net") == MapEntry("10.0.0.3", 143)

    stack.server.stop()
    stack.clock.now += 61.0  # past the TTL: every lookup asks the database
    with caplog.at_level(logging.WARNING, logger="authsvc.maps.mysql"):
        # Cached routes are served stale, and counted.
        assert await stack.cache.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143, stale=True)
        decision = await route(stack, "Alice")
        assert isinstance(decision, Route)
        assert (decision.host, decision.port, decision.source) == ("10.0.0.3", 143, "stale")
        assert stack.cache.stats.stale == 2
        assert map_up(stack) is False

        # Never looked up: a temporary failure, not "no such user".
        with pytest.raises(MapUnavailable, match=rf"127\.0\.0\.1:{stack.server.port}"):
            await stack.cache.lookup("carol@riseup.net")
        refused = await route(stack, "carol")
        assert isinstance(refused, Refusal)
        assert refused.kind is FailureKind.MAP_UNAVAILABLE
        assert refused.kind.temporary
        assert stack.cache.stats.errors >= 2
        assert (await stack.router.check_maps()) != {label(stack): None}

        stack.server.start()
        # The same map objects recover: no restart, no new map.
        decision = await route(stack, "carol")
        assert isinstance(decision, Route)
        assert (decision.host, decision.source) == ("10.0.0.4", "map")
        assert await stack.cache.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
        assert map_up(stack) is True
        assert await stack.router.check_maps() == {label(stack): None}

    # One line when it went down, one when it came back: not one per request.
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("map unavailable: mysql 127.0.0.1:")
    assert messages[1].startswith("map up again: mysql 127.0.0.1:")


async def test_crash_and_restart(stack: Stack) -> None:
    assert await stack.mysql.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    stack.server.stop(crash=True)  # SIGKILL: no goodbye on the pooled connections
    with pytest.raises(MapUnavailable):
        await stack.mysql.lookup("bob@riseup.net")
    stack.server.start()
    assert await stack.mysql.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)


async def test_restart_between_lookups_is_invisible(stack: Stack) -> None:
    # The pooled connection dies with the server; the retry on a fresh one hides it.
    assert await stack.mysql.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    stack.server.stop()
    stack.server.start()
    assert await stack.mysql.lookup("alice@riseup.net") == MapEntry("10.0.0.3", 143)


async def test_connections_cut_mid_run(stack: Stack) -> None:
    # Warm the pool with several connections, then cut every one from the server side.
    warm = await asyncio.gather(*(stack.mysql.lookup("bob@riseup.net") for _ in range(4)))
    assert warm == [MapEntry("10.0.0.2", 143)] * 4
    assert stack.server.kill_connections(stack.db.reader_user) >= 1
    stack.clock.now += 61.0
    # No error reaches a caller: the dead connection is dropped and the query retried.
    results = await asyncio.gather(
        *(stack.cache.lookup(key) for key in ("bob@riseup.net", "alice@riseup.net") * 3)
    )
    assert results == [MapEntry("10.0.0.2", 143), MapEntry("10.0.0.3", 143)] * 3
    assert stack.cache.stats.stale == 0
    assert stack.cache.stats.errors == 0
    for _ in range(3):
        stack.server.kill_connections(stack.db.reader_user)
        assert await stack.mysql.lookup("carol@riseup.net") == MapEntry("10.0.0.4", 143)


async def test_stale_window_ends(stack: Stack) -> None:
    assert await stack.cache.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    stack.server.stop()
    stack.clock.now += CACHE.ttl + CACHE.stale_if_error - 1
    assert (await stack.cache.lookup("bob@riseup.net")) == MapEntry("10.0.0.2", 143, stale=True)
    stack.clock.now += 2
    with pytest.raises(MapUnavailable):
        await stack.cache.lookup("bob@riseup.net")


async def test_moved_mailbox_is_not_served_stale(stack: Stack) -> None:
    assert await stack.cache.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    stack.db.set_storage("bob@riseup.net", "10.0.0.99")
    assert stack.cache.invalidate(key="bob@riseup.net") == 1
    stack.server.stop()
    with pytest.raises(MapUnavailable):
        await stack.cache.lookup("bob@riseup.net")
    stack.server.start()
    assert await stack.cache.lookup("bob@riseup.net") == MapEntry("10.0.0.99", 143)
