"""The routing core with a scripted in-memory map: decisions, fallbacks, failure kinds."""

from __future__ import annotations

from dataclasses import replace

import pytest

from authsvc.maps import MapEntry, MapUnavailable, RouteCache
from authsvc.maps.cached import CachedMap
from authsvc.routing import CacheStats, FailureKind, LoginRequest, Refusal, Route, Router
from authsvc.settings import (
    BackendTls,
    CacheSettings,
    FileMapSettings,
    HostPort,
    ListenerSettings,
    LoginPolicy,
    MailProtocol,
    MapSettings,
    MySqlMapSettings,
    NoMapSettings,
    RegexMapSettings,
    Settings,
    Stage,
)

SEED_POLICY = LoginPolicy(
    lower_case=frozenset(Stage), add_domain=frozenset({Stage.LOOKUP}), explicit_domain="riseup.net"
)


class ScriptedMap:
    """A map whose answers the test sets; it records every key asked."""

    def __init__(self, entries: dict[str, MapEntry], *, down: bool = False) -> None:
        self.entries = entries
        self.down = down
        self.asked: list[str] = []

    async def lookup(self, key: str) -> MapEntry | None:
        self.asked.append(key)
        if self.down:
            raise MapUnavailable("db1:3306: Can't connect")
        return self.entries.get(key)

    async def check(self) -> None:
        if self.down:
            raise MapUnavailable("db1:3306: Can't connect")

    def describe(self) -> str:
        return "scripted"

    async def close(self) -> None:
        return None


def listener(name: str, protocol: MailProtocol, port: int, **kw: object) -> ListenerSettings:
    return ListenerSettings(
        name=name, protocol=protocol, default_port=port, login=SEED_POLICY, **kw  # type: ignore[arg-type]
    )


def make_router(backend: ScriptedMap, **kw: object) -> Router:
    listeners = (
        listener("imap4", MailProtocol.IMAP, 143, **kw),
        listener("pop3", MailProtocol.POP3, 110, **kw),
    )
    settings = Settings(listeners=listeners)
    return Router(settings, {ls.name: backend for ls in listeners})


async def test_bob_routes_with_seed_rules() -> None:
    backend = ScriptedMap({"bob@riseup.net": MapEntry("10.0.0.5")})
    decision = await make_router(backend).route(LoginRequest("Bob", MailProtocol.IMAP))
    assert decision == Route(
        host="10.0.0.5",
        port=143,
        backend_login="bob",
        backend_tls=BackendTls.NONE,
        key="bob@riseup.net",
        listener="imap4",
    )
    assert backend.asked == ["bob@riseup.net"]


async def test_listener_picks_the_default_port() -> None:
    backend = ScriptedMap({"bob@riseup.net": MapEntry("10.0.0.5")})
    decision = await make_router(backend).route(LoginRequest("bob", MailProtocol.POP3))
    assert isinstance(decision, Route)
    assert (decision.port, decision.listener) == (110, "pop3")


async def test_map_port_wins() -> None:
    backend = ScriptedMap({"bob@riseup.net": MapEntry("10.0.0.5", 1143)})
    decision = await make_router(backend).route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(decision, Route)
    assert decision.port == 1143


async def test_unknown_user_is_no_route() -> None:
    decision = await make_router(ScriptedMap({})).route(LoginRequest("eve", MailProtocol.IMAP))
    assert isinstance(decision, Refusal)
    assert decision.kind is FailureKind.NO_ROUTE
    assert not decision.kind.temporary
    assert decision.key == "eve@riseup.net"


async def test_map_down_is_temporary_not_no_route() -> None:
    router = make_router(ScriptedMap({}, down=True))
    decision = await router.route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(decision, Refusal)
    assert decision.kind is FailureKind.MAP_UNAVAILABLE
    assert decision.kind.temporary


async def test_outgoing_server_when_not_in_map() -> None:
    router = make_router(
        ScriptedMap({}),
        default_servers=(HostPort("10.9.9.9"), HostPort("10.9.9.8", 2143)),
    )
    first = await router.route(LoginRequest("eve", MailProtocol.IMAP))
    second = await router.route(LoginRequest("eve", MailProtocol.IMAP))
    assert isinstance(first, Route) and isinstance(second, Route)
    # Perdition rotates outgoing_server per attempt (perdition/perdition.c).
    assert {(first.host, first.port), (second.host, second.port)} == {
        ("10.9.9.9", 143),
        ("10.9.9.8", 2143),
    }
    assert first.source == "default"


@pytest.mark.parametrize("map_settings", [
    MySqlMapSettings(default_server_on_error=True),
    FileMapSettings("/srv/popmap", default_server_on_error=True),
    RegexMapSettings("/srv/popmap.re", default_server_on_error=True),
], ids=lambda m: m.kind)
async def test_outgoing_server_on_map_error_only_when_asked(map_settings: MapSettings) -> None:
    down = ScriptedMap({}, down=True)
    plain = make_router(down, default_servers=(HostPort("10.9.9.9"),),
                        map=replace(map_settings, default_server_on_error=False))
    refused = await plain.route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(refused, Refusal) and refused.kind is FailureKind.MAP_UNAVAILABLE

    asked = make_router(down, default_servers=(HostPort("10.9.9.9"),), map=map_settings)
    routed = await asked.route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(routed, Route) and routed.host == "10.9.9.9"


async def test_username_from_database() -> None:
    entry = MapEntry("10.0.0.5", None, user="Carol")
    plain = make_router(ScriptedMap({"bob@riseup.net": entry}))
    decision = await plain.route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(decision, Route) and decision.backend_login == "bob"

    policy = LoginPolicy(
        lower_case=frozenset(Stage),
        add_domain=frozenset({Stage.LOOKUP}),
        explicit_domain="riseup.net",
        username_from_database=True,
    )
    settings = Settings(listeners=(ListenerSettings("imap4", MailProtocol.IMAP, login=policy),))
    router = Router(settings, {"imap4": ScriptedMap({"bob@riseup.net": entry})})
    decision = await router.route(LoginRequest("bob", MailProtocol.IMAP))
    # The map's user goes through REMOTE_LOGIN mangling (username.c): lower-cased.
    assert isinstance(decision, Route) and decision.backend_login == "carol"


async def test_stale_entry_is_marked() -> None:
    backend = ScriptedMap({"bob@riseup.net": MapEntry("10.0.0.5", stale=True)})
    decision = await make_router(backend).route(LoginRequest("bob", MailProtocol.IMAP))
    assert isinstance(decision, Route) and decision.source == "stale"


@pytest.mark.parametrize("login", ["", "bob\x00evil", "x" * 300])
async def test_bad_login_never_reaches_the_map(login: str) -> None:
    backend = ScriptedMap({})
    decision = await make_router(backend).route(LoginRequest(login, MailProtocol.IMAP))
    assert isinstance(decision, Refusal) and decision.kind is FailureKind.BAD_LOGIN
    assert backend.asked == []


async def test_unknown_listener() -> None:
    router = make_router(ScriptedMap({}))
    named = await router.route(LoginRequest("bob", MailProtocol.IMAP, listener="nope"))
    assert isinstance(named, Refusal) and named.kind is FailureKind.UNKNOWN_LISTENER
    wrong_protocol = await router.route(LoginRequest("bob", MailProtocol.IMAP, listener="pop3"))
    assert isinstance(wrong_protocol, Refusal)
    assert wrong_protocol.kind is FailureKind.UNKNOWN_LISTENER


async def test_trace_records_every_step() -> None:
    backend = ScriptedMap({"bob@riseup.net": MapEntry("10.0.0.5")})
    trace = await make_router(backend).trace(LoginRequest("Bob", MailProtocol.IMAP))
    assert trace.listener == "imap4"
    assert [s.value for s in trace.lookup_steps] == ["Bob", "Bob@riseup.net", "bob@riseup.net"]
    assert trace.key == "bob@riseup.net"
    assert trace.map_answer == "10.0.0.5"
    assert [s.value for s in trace.backend_steps] == ["Bob", "bob"]
    assert isinstance(trace.decision, Route)


async def test_check_maps_reports_state() -> None:
    router = make_router(ScriptedMap({}, down=True), map=FileMapSettings("/srv/popmap"))
    assert await router.check_maps() == {"file:/srv/popmap": "db1:3306: Can't connect"}


def test_only_a_route_cache_is_asked_for_peek_stats_and_invalidate() -> None:
    cache: RouteCache = CachedMap(ScriptedMap({}), CacheSettings())  # mypy checks the fit
    assert isinstance(cache, RouteCache)
    assert not isinstance(ScriptedMap({}), RouteCache)
    router = make_router(ScriptedMap({}))
    assert router.cache_stats() == {"none": None}
    assert router.invalidate() == 0


@pytest.mark.parametrize(("map_settings", "label"), [
    (MySqlMapSettings(hosts=(HostPort("db1", 3306), HostPort("db2"))),
     "mysql:db1:3306/dbPerdition.tblPerdition"),
    (MySqlMapSettings(hosts=(HostPort("::1"),), database="nest", table="mailboxes",
                      query_timeout=9.0, port_constant=110), "mysql:[::1]/nest.mailboxes"),
    (FileMapSettings("/etc/perdition/popmap"), "file:/etc/perdition/popmap"),
    (RegexMapSettings("/etc/perdition/popmap.re", perdition_prefix_quirk=True),
     "regex:/etc/perdition/popmap.re"),
    (NoMapSettings(), "none"),
    (MySqlMapSettings(name="nest"), "nest"),
    (FileMapSettings("/etc/perdition/popmap", name="flat"), "flat"),
])
def test_a_map_label_is_its_name_or_what_identifies_it(map_settings: MapSettings,
                                                       label: str) -> None:
    assert map_settings.label == label


async def test_maps_reading_one_table_share_one_series() -> None:
    """The seed: IMAP and POP3 maps differ only in the constant port, so one label."""
    imap_map = MySqlMapSettings(hosts=(HostPort("db1"),), database="nest", table="mailboxes")
    pop_map = replace(imap_map, port_constant=110)
    imap_cache = CachedMap(ScriptedMap({"bob@riseup.net": MapEntry("10.0.0.5")}),
                           CacheSettings())
    pop_cache = CachedMap(ScriptedMap({}, down=True), CacheSettings())
    listeners = (listener("imap4", MailProtocol.IMAP, 143, map=imap_map),
                 listener("imaps", MailProtocol.IMAP, 143, map=imap_map),
                 listener("pop3", MailProtocol.POP3, 110, map=pop_map))
    router = Router(Settings(listeners=listeners),
                    {"imap4": imap_cache, "imaps": imap_cache, "pop3": pop_cache})
    for protocol in (MailProtocol.IMAP, MailProtocol.IMAP, MailProtocol.POP3):
        await router.route(LoginRequest("bob", protocol))
    stats = router.cache_stats()
    assert list(stats) == ["mysql:db1/nest.mailboxes"]
    assert stats["mysql:db1/nest.mailboxes"] == CacheStats(
        hits=1, misses=2, negative_hits=0, stale=0, errors=1, map_up=False)
    assert await router.check_maps() == {"mysql:db1/nest.mailboxes": "db1:3306: Can't connect"}


class HostListMap(ScriptedMap):
    """A scripted map with a failover list (``ReportsHosts``)."""

    def __init__(self, hosts: list[tuple[str, int, bool]]) -> None:
        super().__init__({})
        self.hosts = hosts

    def host_answers(self) -> list[tuple[str, int, bool]]:
        return self.hosts


def test_map_hosts_add_up_by_label_through_the_cache() -> None:
    imap_map = MySqlMapSettings(hosts=(HostPort("db1"), HostPort("db2")), database="nest",
                                table="mailboxes")
    pop_map = replace(imap_map, port_constant=110)
    imap = CachedMap(HostListMap([("db1", 5, False), ("db2", 2, True)]), CacheSettings())
    pop = HostListMap([("db1", 1, True), ("db2", 0, False)])  # no cache in front
    listeners = (listener("imap4", MailProtocol.IMAP, 143, map=imap_map),
                 listener("pop3", MailProtocol.POP3, 110, map=pop_map),
                 listener("other", MailProtocol.IMAP, 143))
    router = Router(Settings(listeners=listeners),
                    {"imap4": imap, "pop3": pop, "other": ScriptedMap({})})
    # Answers add up; a host is in use when any of the label's maps uses it.
    assert router.map_hosts() == {"mysql:db1/nest.mailboxes": [("db1", 6, True),
                                                                ("db2", 2, True)]}
