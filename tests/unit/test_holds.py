"""Holds: masks and stores, the set the router consults, expiry, the state file, both faces.

The router checks holds after the map (``authsvc/routing.py``), so these tests
route through a real :class:`Router` with a scripted map and a real route
cache: a hold must stop a cached route too (serve's ``answer_now``), and a
user the map moved to another store must not be held by the old store's hold.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from authsvc.failures import FailureKind
from authsvc.holds.rules import Hold, HoldSet, parse_mask, parse_store, parse_target
from authsvc.holds.state import HOLD_FAMILIES, HoldKeeper
from authsvc.holds.store import FileHoldStore, HoldStoreError
from authsvc.http.auth_http import AuthService, Outcome
from authsvc.http.resolve import Resolver
from authsvc.maps import MapEntry
from authsvc.maps.cached import CachedMap
from authsvc.metrics import Metrics
from authsvc.routing import LoginRequest, Refusal, Route, Router
from authsvc.settings import CacheSettings, HoldsSettings, MailProtocol, RegexMapSettings
from tests.unit.auth_http_fakes import seed_settings
from tests.unit.test_routing import ScriptedMap, make_router

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryStore:
    """A HoldStore in memory, for the keeper's own logic."""

    def __init__(self, holds: list[Hold] | None = None, *, broken: bool = False) -> None:
        self.holds = {h.ident: h for h in holds or []}
        self.broken = broken

    async def read(self) -> list[Hold]:
        if self.broken:
            raise HoldStoreError("unreadable")
        return list(self.holds.values())

    async def put(self, hold: Hold) -> None:
        self.holds[hold.ident] = hold

    async def remove(self, kind: str, target: str) -> bool:
        return self.holds.pop((kind, target), None) is not None

    def describe(self) -> str:
        return "memory"

    async def close(self) -> None:
        return None


def keeper_with(*holds: Hold, clock: Clock | None = None) -> HoldKeeper:
    keeper = HoldKeeper(HoldsSettings(), store=MemoryStore(list(holds)),
                        clock=clock or Clock())
    keeper.current = HoldSet(holds)
    return keeper


# --- masks and stores ------------------------------------------------------------------


def test_masks_are_lower_cased_and_checked() -> None:
    assert parse_mask(" Bob@RiseUp.net ") == "bob@riseup.net"
    assert parse_mask("*@riseup.net") == "*@riseup.net"
    for bad, says in (("", "empty"), ("bob smith", "blank"), ("bob\x00", "blank or control"),
                      ("[ab]*", r"only '\*' and '\?'"), ("x" * 321, "longer")):
        with pytest.raises(ValueError, match=says):
            parse_mask(bad)


def test_stores_use_the_one_address_syntax() -> None:
    assert parse_store("Store1.Example") == "store1.example"
    assert parse_store("10.0.0.5:143") == "10.0.0.5:143"
    assert parse_store("[2001:DB8::1]:993") == "[2001:db8::1]:993"
    assert parse_store("2001:db8::1") == "2001:db8::1"
    for bad in ("", "store:", "store:99999", "::1:80x", "bad host", "[10.0.0.5]:143"):
        with pytest.raises(ValueError, match="store"):
            parse_store(bad)
    with pytest.raises(ValueError, match="unknown hold kind"):
        parse_target("domain", "riseup.net")


def test_a_set_matches_keys_masks_and_stores() -> None:
    holds = HoldSet([
        Hold("user", "bob@riseup.net"),
        Hold("user", "*@example.org"),
        Hold("user", "a?c@riseup.net"),
        Hold("store", "10.0.0.7"),
        Hold("store", "10.0.0.8:993"),
        Hold("store", "2001:db8::1"),
    ])
    assert holds.match("Bob@RiseUp.net", "10.0.0.1", 143, NOW) is not None
    assert holds.match("carol@riseup.net", "10.0.0.1", 143, NOW) is None
    assert holds.match("anyone@example.org", "10.0.0.1", 143, NOW) is not None
    assert holds.match("abc@riseup.net", "10.0.0.1", 143, NOW) is not None
    assert holds.match("abbc@riseup.net", "10.0.0.1", 143, NOW) is None
    # A store without a port holds every port; with one, only that port.
    assert holds.match("carol@riseup.net", "10.0.0.7", 110, NOW) is not None
    assert holds.match("carol@riseup.net", "10.0.0.8", 993, NOW) is not None
    assert holds.match("carol@riseup.net", "10.0.0.8", 143, NOW) is None
    # The map may write an IPv6 address another way.
    assert holds.match("carol@riseup.net", "2001:DB8:0::1", 143, NOW) is not None


def test_an_expired_hold_matches_nothing() -> None:
    holds = HoldSet([Hold("user", "bob@riseup.net", until=NOW + 60)])
    assert holds.match("bob@riseup.net", "10.0.0.5", 143, NOW + 59) is not None
    assert holds.match("bob@riseup.net", "10.0.0.5", 143, NOW + 60) is None
    assert holds.counts(NOW + 61) == {"user": 0, "store": 0}
    assert holds.next_expiry(NOW) == NOW + 60


def test_a_stored_hold_is_checked_as_a_new_one() -> None:
    hold = Hold("store", "10.0.0.5:143", reason="fsck", until=NOW + 1, since=NOW, by="::1")
    assert Hold.from_json(json.loads(json.dumps(hold.as_json()))) == hold
    with pytest.raises(ValueError, match="blank"):
        Hold.from_json({"kind": "user", "target": "bad mask"})
    with pytest.raises(ValueError, match="until"):
        Hold.from_json({"kind": "user", "target": "bob", "until": "soon"})


# --- the router ------------------------------------------------------------------------


def router_with(keeper: HoldKeeper, entries: dict[str, MapEntry]) -> tuple[Router, ScriptedMap]:
    plain = make_router(ScriptedMap(entries))
    backend = ScriptedMap(entries)
    cache = CachedMap(backend, CacheSettings())
    return Router(plain.settings, {ls.name: cache for ls in plain.settings.listeners},
                  keeper), backend


async def test_a_held_user_is_refused_after_the_map_cached_or_not() -> None:
    keeper = keeper_with()
    router, backend = router_with(keeper, {"bob@riseup.net": MapEntry("10.0.0.5")})
    request = LoginRequest("bob", MailProtocol.IMAP)
    assert isinstance(await router.route(request), Route)  # the cache is warm now
    keeper.current = HoldSet([Hold("user", "bob@riseup.net", reason="moving")])
    decision = router.route_now(request)  # a cached answer, in the caller's frame
    assert isinstance(decision, Refusal)
    assert decision.kind is FailureKind.HELD
    assert decision.key == "bob@riseup.net"
    assert backend.asked == ["bob@riseup.net"]  # the hold needed no new map query
    keeper.current = HoldSet()
    assert isinstance(router.route_now(request), Route)


async def test_a_moved_user_is_not_held_by_the_old_store() -> None:
    keeper = keeper_with(Hold("store", "10.0.0.5"))
    router, backend = router_with(keeper, {"bob@riseup.net": MapEntry("10.0.0.5"),
                                           "carol@riseup.net": MapEntry("10.0.0.6")})
    refused = await router.route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(refused, Refusal) and refused.kind is FailureKind.HELD
    assert isinstance(await router.route(LoginRequest("carol", MailProtocol.POP3)), Route)
    backend.entries["bob@riseup.net"] = MapEntry("10.0.0.6")  # the map row is updated
    router.invalidate(key="bob@riseup.net")  # and flushed
    moved = await router.route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(moved, Route) and moved.host == "10.0.0.6"


async def test_a_hold_on_one_port_leaves_the_others() -> None:
    keeper = keeper_with(Hold("store", "10.0.0.5:110"))
    router, _ = router_with(keeper, {"bob@riseup.net": MapEntry("10.0.0.5")})
    assert isinstance(await router.route(LoginRequest("bob", MailProtocol.IMAP)), Route)
    pop = await router.route(LoginRequest("bob", MailProtocol.POP3))
    assert isinstance(pop, Refusal) and pop.kind is FailureKind.HELD


async def test_an_expired_hold_lets_logins_through_at_once() -> None:
    clock = Clock()
    keeper = keeper_with(Hold("user", "bob@riseup.net", until=NOW + 30), clock=clock)
    router, _ = router_with(keeper, {"bob@riseup.net": MapEntry("10.0.0.5")})
    held = await router.route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(held, Refusal) and held.kind is FailureKind.HELD
    clock.now = NOW + 30
    route = await router.route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(route, Route) and route.host == "10.0.0.5"


async def test_serve_answers_a_held_cached_route_with_a_temporary_failure() -> None:
    keeper = keeper_with()
    settings = seed_settings()
    cache = CachedMap(ScriptedMap({"bob@riseup.net": MapEntry("10.0.0.5")}), CacheSettings())
    router = Router(settings, {ls.name: cache for ls in settings.listeners}, keeper)
    metrics = Metrics()
    service = AuthService(settings, metrics, Resolver())
    service.bind(router)
    nginx = {"auth-method": "plain", "auth-user": "bob", "auth-pass": "pw",
             "auth-protocol": "imap", "auth-login-attempt": "1", "client-ip": "192.0.2.7",
             "x-authsvc-listener": "imap4"}
    first = await service.answer(nginx, "127.0.0.1")
    assert first.headers["Auth-Status"] == "OK"  # warm
    keeper.current = HoldSet([Hold("store", "10.0.0.5")])
    outcome = service.answer_now(nginx, "127.0.0.1")
    assert isinstance(outcome, Outcome)  # decided at once: no map query, no task
    assert outcome.headers == {"Auth-Status": "Temporary server problem, try again later",
                               "Auth-Wait": "3"}
    assert outcome.result == "held"
    assert 'result="held"} 1' in metrics.render()


def test_store_named_knows_file_maps_and_outgoing_server(tmp_path: Path) -> None:
    from authsvc.maps.file import FileMap
    from authsvc.settings import FileMapSettings

    popmap = tmp_path / "popmap"
    popmap.write_text("bob@riseup.net: 10.0.0.5\ncarol@riseup.net: 10.0.0.6:1143\n")
    plain = make_router(ScriptedMap({}))
    file_map = CachedMap(FileMap(FileMapSettings(path=str(popmap))), CacheSettings())
    router = Router(plain.settings, {ls.name: file_map for ls in plain.settings.listeners})
    assert router.store_named("10.0.0.5", None) is True
    assert router.store_named("10.0.0.5", 143) is True  # the listener's default port
    assert router.store_named("10.0.0.6", 1143) is True
    assert router.store_named("10.0.0.6", 143) is False
    assert router.store_named("10.9.9.9", None) is False
    # A map that cannot list its stores (regex, MySQL) cannot tell.
    regex = make_router(ScriptedMap({}), map=RegexMapSettings(path=str(popmap)))
    assert regex.store_named("10.9.9.9", None) is None


# --- the keeper and the state file ---------------------------------------------------------


async def test_the_state_file_round_trips_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state" / "holds.json"
    store = FileHoldStore(str(path))
    assert await store.read() == []
    hold = Hold("user", "bob@riseup.net", reason="moving", since=NOW)
    await store.put(hold)
    await store.put(Hold("store", "10.0.0.5"))
    await store.put(Hold("user", "bob@riseup.net", reason="again", since=NOW))  # replaces
    held = {h.ident: h for h in await store.read()}
    assert held.keys() == {("user", "bob@riseup.net"), ("store", "10.0.0.5")}
    assert held[("user", "bob@riseup.net")].reason == "again"
    assert await store.remove("store", "10.0.0.5") is True
    assert await store.remove("store", "10.0.0.5") is False
    # Only the file and its lock: every temporary file was renamed over it.
    assert sorted(os.listdir(path.parent)) == ["holds.json", "holds.json.lock"]
    assert path.stat().st_mode & 0o077 == 0


async def test_a_corrupt_state_file_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "holds.json"
    path.write_text("{not json")
    with pytest.raises(HoldStoreError, match="not a holds file"):
        await FileHoldStore(str(path)).read()


async def test_the_keeper_keeps_its_holds_when_the_store_fails() -> None:
    store = MemoryStore([Hold("store", "10.0.0.5")])
    keeper = HoldKeeper(HoldsSettings(), store=store)
    assert await keeper.load() is True
    store.broken = True
    assert await keeper.load() is False
    assert keeper.check("bob@riseup.net", "10.0.0.5", 143) is not None


async def test_the_gauge_counts_holds_and_follows_expiry() -> None:
    clock = Clock(NOW)
    metrics = Metrics(families=HOLD_FAMILIES)
    store = MemoryStore([Hold("store", "10.0.0.5"), Hold("user", "*@example.org"),
                         Hold("user", "bob@riseup.net", until=NOW + 0.05)])
    keeper = HoldKeeper(HoldsSettings(), metrics, store=store, clock=clock)
    await keeper.start()
    text = metrics.render()
    assert 'authsvc_holds{kind="user"} 2' in text
    assert 'authsvc_holds{kind="store"} 1' in text
    clock.now = NOW + 1
    await asyncio.sleep(0.2)  # the expiry timer is due after 0.06 s of loop time
    assert 'authsvc_holds{kind="user"} 1' in metrics.render()
    assert [h.target for h in await keeper.listing()] == ["10.0.0.5", "*@example.org"]
    await keeper.close()


async def test_release_says_whether_a_hold_was_in_force() -> None:
    keeper = HoldKeeper(HoldsSettings(), store=MemoryStore([Hold("user", "bob@riseup.net")]))
    assert await keeper.release("user", "bob@riseup.net") is True
    assert await keeper.release("user", "bob@riseup.net") is False
