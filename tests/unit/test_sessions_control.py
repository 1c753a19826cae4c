"""Sessions list and kick, and ``--pool``, in process: selectors, endpoints, pool targets.

The selectors (``authsvc/control/selectors.py``) parse and match as doveadm's
masks do; the endpoints (``authsvc/control/sessions.py``) list and kick a
fake table's sessions, refuse bad input with a 400 and pace a kick; serve
answers both paths 501; ``--pool`` (``authsvc/control/pool.py``) refuses an
unknown node name and a config with no nodes, and shares a kick's rate; a
node's ``control`` address is validated with every other address.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from authsvc.config import ConfigError, load_settings
from authsvc.control.pool import BadInput, _shared, pool_nodes
from authsvc.control.selectors import (
    Selector,
    SessionFacts,
    client_network,
    parse_selector,
    store_target,
    user_mask,
)
from authsvc.control.session_commands import _kicked, format_sessions, resolve
from authsvc.control.sessions import NOT_RELAYED, SessionControl, not_relayed_routes
from authsvc.settings import HaproxySettings, HostPort, PoolNode
from tests.unit.auth_http_fakes import seed_settings

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

FACTS = SessionFacts(
    worker=1, session=1, listener="imap4", protocol="imap", login="bob", user="bob@riseup.net",
    client="[::ffff:10.1.2.3]:40000", client_ip="::ffff:10.1.2.3", store="10.0.0.2:143",
    store_ip="10.0.0.2", store_port=143, store_host="store-a.example:143", client_tls="none",
    store_tls="plaintext", started=1_700_000_000.0, bytes_in=10, bytes_out=20)


def test_user_masks_are_doveadm_masks() -> None:
    assert user_mask("*@riseup.net").fullmatch("bob@riseup.net")
    assert not user_mask("*@riseup.net").fullmatch("bob@riseup.net.evil")
    assert user_mask("b?b@*").fullmatch("bob@x")
    assert not user_mask("b?b@*").fullmatch("boob@x")
    assert user_mask("[ab]").fullmatch("[ab]")  # no character classes
    assert not user_mask("[ab]").fullmatch("a")
    assert not user_mask("BOB@*").fullmatch("bob@x")  # as the map key is
    for bad in ("", "bob smith", "bob\x00", "a" * 513):
        with pytest.raises(ValueError, match="user mask"):
            user_mask(bad)


def test_client_and_store_selectors() -> None:
    assert str(client_network("10.0.0.0/8")) == "10.0.0.0/8"
    assert str(client_network("10.1.2.3")) == "10.1.2.3/32"
    with pytest.raises(ValueError, match=re.escape("client '10.0.0.300/8'")):
        client_network("10.0.0.300/8")
    assert store_target("store-a.example:143") == ("store-a.example", 143)
    assert store_target("[2001:db8::1]:993") == ("2001:db8::1", 993)
    assert store_target("10.0.0.2") == ("10.0.0.2", None)
    for bad in ("no_such host", "h:99999", "[10.0.0.1]", ""):
        with pytest.raises(ValueError, match="store"):
            store_target(bad)


def test_matching() -> None:
    def matches(**selector: object) -> bool:
        return Selector(**selector).matcher()(FACTS)  # type: ignore[arg-type]

    assert matches()
    assert matches(user="*@riseup.net") and not matches(user="alice@*")
    # An IPv4 client on a dual-stack socket is its IPv4 address.
    assert matches(client="10.0.0.0/8") and not matches(client="192.0.2.0/24")
    assert not matches(client="::/0")
    assert matches(stores=("10.0.0.2", "10.0.0.3")) and not matches(stores=("10.0.0.3",))
    assert matches(stores=("10.0.0.2",), store_port=143)
    assert not matches(stores=("10.0.0.2",), store_port=993)
    assert matches(user="bob@*", client="10.1.2.3", stores=("::ffff:10.0.0.2",))


def test_parse_selector() -> None:
    assert parse_selector({}) == Selector()
    assert parse_selector({}).empty
    parsed = parse_selector({"user": "*", "store": "10.0.0.2,[2001:db8::1]", "store_port": "143"})
    assert parsed == Selector(user="*", stores=("10.0.0.2", "2001:db8::1"), store_port=143)
    assert parse_selector(parsed.as_form()) == parsed
    for bad in ({"user": ""}, {"client": "x"}, {"store": "store-a.example"},
                {"store_port": "0"}):
        with pytest.raises(ValueError, match=r"user|client|store|port"):
            parse_selector(bad)


def test_resolve_gives_every_address() -> None:
    assert "127.0.0.1" in resolve("localhost")
    assert resolve("10.0.0.2") == ("10.0.0.2",)
    with pytest.raises(BadInput, match=re.escape("cannot resolve 'nonexistent.invalid'")):
        resolve("nonexistent.invalid")


def test_wording() -> None:
    assert format_sessions({"sessions": []}) == "no sessions"
    table = format_sessions({"sessions": [{"worker": 1, "session": 7, "listener": "imap4",
                                           "user": "bob@riseup.net", "login": "bob",
                                           "client": "10.1.2.3:40000", "store": "10.0.0.2:143",
                                           "client_tls": "starttls", "store_tls": "ssl",
                                           "started": 0, "bytes_in": 1, "bytes_out": 2}]})
    heading, line = table.splitlines()
    assert heading.split()[:4] == ["WORKER", "ID", "LISTENER", "USER"]
    assert line.split() == ["1", "7", "imap4", "bob@riseup.net", "bob", "10.1.2.3:40000",
                            "10.0.0.2:143", "starttls/ssl", "1970-01-01T00:00:00Z", "1", "2"]
    assert _kicked({"matched": 3, "kicked": 3, "workers": 2, "dry_run": False,
                    "by_worker": [{"worker": 11, "kicked": 1, "matched": 1},
                                  {"worker": 12, "kicked": 2, "matched": 2}]}) == \
        "closed 3 session(s) in 2 worker(s) (by worker pid: 11: 1, 12: 2)"
    assert _kicked({"matched": 3, "kicked": 0, "workers": 1, "dry_run": True,
                    "by_worker": [{"worker": 11, "kicked": 0, "matched": 3}]}).startswith(
        "would close 3 session(s) in 1 worker(s)")


# --- the endpoints, on a fake table ------------------------------------------------------


@dataclass
class FakeSession:
    facts_: SessionFacts
    kicked_at: float | None = None

    def facts(self, worker: int) -> SessionFacts | None:
        return None if self.kicked_at is not None else replace(self.facts_, worker=worker)

    def kick(self) -> bool:
        if self.kicked_at is not None:
            return False
        self.kicked_at = time.monotonic()
        return True


@dataclass
class FakeTable:
    sessions: list[FakeSession]

    def relayed(self) -> list[FakeSession]:
        return self.sessions


def table_of(count: int) -> FakeTable:
    return FakeTable([FakeSession(replace(FACTS, session=n, user=f"u{n}@riseup.net"))
                      for n in range(count)])


async def client_for(make: MakeClient, table: FakeTable) -> Client:
    app = web.Application()
    app.router.add_routes(SessionControl(table, None).routes())
    return await make(app)


async def test_list_endpoint(aiohttp_client: MakeClient) -> None:
    client = await client_for(aiohttp_client, table_of(3))
    reply = await client.get("/sessions")
    body = await reply.json()
    assert reply.status == 200 and body["count"] == 3 and body["workers"] == 1
    assert "client_ip" not in body["sessions"][0]
    assert body["sessions"][0]["client"] == FACTS.client
    reply = await client.get("/sessions", params={"user": "u1@*"})
    assert [s["user"] for s in (await reply.json())["sessions"]] == ["u1@riseup.net"]
    reply = await client.get("/sessions", params={"client": "nope"})
    assert reply.status == 400
    assert (await reply.json())["error"].startswith("client 'nope'")


async def test_kick_endpoint(aiohttp_client: MakeClient) -> None:
    table = table_of(4)
    client = await client_for(aiohttp_client, table)
    reply = await client.post("/sessions/kick", data={})
    assert reply.status == 400 and "needs user=" in (await reply.json())["error"]
    for bad in ({"user": ""}, {"user": "*", "rate": "0"}, {"user": "*", "rate": "x"},
                {"store": "store-a.example"}):
        reply = await client.post("/sessions/kick", data=bad)
        assert reply.status == 400, bad
    assert all(s.kicked_at is None for s in table.sessions)

    reply = await client.post("/sessions/kick", data={"user": "*", "dry_run": "1"})
    body = await reply.json()
    assert (body["matched"], body["kicked"], body["dry_run"]) == (4, 0, True)
    assert all(s.kicked_at is None for s in table.sessions)

    reply = await client.post("/sessions/kick", data={"user": "u0@*"})
    body = await reply.json()
    assert (body["matched"], body["kicked"]) == (1, 1)
    assert [s.kicked_at is not None for s in table.sessions] == [True, False, False, False]

    # Paced: three kicks at 10 a second take at least 0.2 s (two gaps).
    start = time.monotonic()
    reply = await client.post("/sessions/kick", data={"user": "*", "rate": "10"})
    body = await reply.json()
    assert (body["matched"], body["kicked"]) == (3, 3)
    times = sorted(s.kicked_at for s in table.sessions[1:] if s.kicked_at is not None)
    assert times[0] - start < 0.5
    assert times[1] - times[0] >= 0.09 and times[2] - times[1] >= 0.09


async def test_serve_answers_501(aiohttp_client: MakeClient) -> None:
    app = web.Application()
    app.router.add_routes(not_relayed_routes())
    client = await aiohttp_client(app)
    for reply in (await client.get("/sessions"), await client.post("/sessions/kick")):
        assert reply.status == 501
        assert (await reply.json()) == {"error": NOT_RELAYED}
    assert "doveadm kick" in NOT_RELAYED


# --- the pool ----------------------------------------------------------------------------


def test_pool_nodes() -> None:
    nodes = (PoolNode("n1", "10.0.0.10", control=HostPort("10.0.0.10", 9190)),
             PoolNode("n2", "10.0.0.11"))
    settings = replace(seed_settings(), haproxy=HaproxySettings(nodes=nodes))
    assert pool_nodes(settings, []) == list(nodes)
    assert pool_nodes(settings, ["n2"]) == [nodes[1]]
    with pytest.raises(BadInput, match="no node named 'n9'"):
        pool_nodes(settings, ["n9"])
    with pytest.raises(BadInput, match=re.escape("no [[haproxy.nodes]]")):
        pool_nodes(seed_settings(), [])
    # A kick's rate is the pool's: each node takes its share.
    assert _shared({"rate": "10", "user": "*"}, ("rate",), 4) == {"rate": "2.5", "user": "*"}


def test_node_control_address_is_validated(tmp_path: Path) -> None:
    base = ('[[listener]]\nname = "imap4"\nprotocol = "imap"\noutgoing_server = ["127.0.0.9"]\n'
            '[[haproxy.nodes]]\nname = "n1"\nhost = "10.0.0.10"\n')
    config = tmp_path / "a.toml"
    config.write_text(base + 'control = "10.0.0.10:9190"\n')
    node = load_settings([str(config)]).settings.haproxy.nodes[0]
    assert node.control == HostPort("10.0.0.10", 9190)
    config.write_text(base + 'control = "10.0.0.10"\n')
    with pytest.raises(ConfigError, match=r"control.*needs a port"):
        load_settings([str(config)])
