"""``authsvc proxy`` in front of a Dovecot whose per-address auth penalty is on.

Dovecot's penalty (Dovecot's docs, "Authentication penalty support") holds
every login from an address with recent failures: measured with 2.3.19 and
``auth_failure_delay = 0``, 0.5, 4.5, 8.5, then 15.5 s per wrong password.
Two things must hold behind the proxy (docs/proxy.md, "Dovecot's auth
penalty"; docs/security.md, "User enumeration"):

* with ``forward_client = "id"`` and the proxy in Dovecot's
  ``login_trusted_networks``, Dovecot charges the penalty to the real client,
  so one client's wrong passwords leave another client's login fast;
* an unknown user (refused by the map, never seen by Dovecot) takes as long
  as a wrong password from the same address, with the same words.

And the opposite, which is why: with ``forward_client = "none"`` Dovecot
penalises the proxy's address, and another client's login waits.

Each client connects from its own loopback address; Dovecot trusts only the
proxy's (127.0.0.1), so the clients' addresses are penalised like any other.
The penalty's steps are Dovecot's constants, so the timing test runs its
three addresses side by side: about a minute in all.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.dovecot import DovecotStore, dovecot_stores
from tests.services.mailclient import RawLines
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.require import require_binary
from tests.services.stack import STORE_ADDRESSES

pytestmark = pytest.mark.integration

PROXY_ADDRESS = "127.0.0.1"
USERS = {"b": {"bob": "bob-secret", "alice": "alice-secret"}}
#: [proxy] auth_failure_delay: above a refusal of an unpenalised Dovecot (0.5 s).
BASE = 1.0
#: Longer than Dovecot's longest penalty (15 s) plus the proxy's deadline.
READ_TIMEOUT = 40.0


@dataclass
class World:
    store: DovecotStore
    proxy: ProxyProcess
    port: int
    root: Path


def write_config(root: Path, name: str, port: int, forward_client: str) -> Path:
    config = root / f"{name}.toml"
    config.write_text(f"""
[proxy]
auth_failure_delay = {BASE}
backend_timeout = 30
drain_timeout = 1
max_login_attempts = 100
forward_client = "{forward_client}"

[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
bind = ["{PROXY_ADDRESS}:{port}"]
login_timeout = 120
[listener.map]
type = "file"
path = "{root / 'map'}"
""")
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_binary("dovecot")
    root = tmp_path_factory.mktemp("store-penalty")
    with dovecot_stores(USERS, STORE_ADDRESSES, trusted_networks=(f"{PROXY_ADDRESS}/32",),
                        penalty=True) as stores:
        store = stores["b"]
        port = free_port(PROXY_ADDRESS)
        address = f"{STORE_ADDRESSES['b']}:{store.ports.imap}"
        (root / "map").write_text(f"bob: {address}\nalice: {address}\n")
        config = write_config(root, "authsvc", port, "id")
        # Two workers: the record of the store's refusal times is shared by both.
        proxy = ProxyProcess(config, root / "proxy.log", workers=2)
        proxy.start(listening=2)
        try:
            yield World(store, proxy, port, root)
        finally:
            proxy.stop()


@contextlib.contextmanager
def client(world: World, source: str) -> Iterator[RawLines]:
    lines = RawLines(PROXY_ADDRESS, world.port, source=source)
    lines.sock.settimeout(READ_TIMEOUT)
    try:
        assert lines.line().startswith(b"* OK")
        yield lines
    finally:
        lines.sock.close()


def login(world: World, source: str, user: str, password: str) -> tuple[bytes, float]:
    """``LOGIN user password`` on a fresh connection: the reply without its tag, and seconds."""
    with client(world, source) as lines:
        started = time.monotonic()
        reply = lines.command(f"t LOGIN {user} {password}".encode(), b"t")[-1]
        return reply.removeprefix(b"t "), time.monotonic() - started


def test_wrong_passwords_from_one_client_leave_another_clients_login_fast(
        world: World) -> None:
    took = [login(world, "127.0.0.101", "bob", f"wrong-{i}") for i in range(3)]
    assert all(reply.startswith(b"NO [AUTHENTICATIONFAILED]") for reply, _ in took), took
    # Dovecot's penalty is on, and charged to the client: its third try waited.
    assert took[2][1] > 4.0, took
    reply, elapsed = login(world, "127.0.0.102", "alice", "alice-secret")
    assert reply.startswith(b"OK"), reply
    assert elapsed < 1.0, (elapsed, took)


def test_unknown_users_take_as_long_as_wrong_passwords_while_dovecot_penalises(
        world: World) -> None:
    def probe(source: str, unknown_first: bool) -> list[tuple[str, bytes, float]]:
        for i in range(4):  # warm Dovecot's penalty up for this address
            login(world, source, "bob", f"warm-{i}")
        kinds = ["unknown", "wrong"] if unknown_first else ["wrong", "unknown"]
        found = []
        for kind in kinds:
            user, password = ("nobody", "guess") if kind == "unknown" else ("bob", "guess")
            found.append((kind, *login(world, source, user, password)))
        return found

    sources = [("127.0.0.103", True), ("127.0.0.104", False), ("127.0.0.105", True)]
    with ThreadPoolExecutor(max_workers=len(sources)) as pool:
        results = [row for rows in pool.map(lambda s: probe(*s), sources) for row in rows]
    unknown = [elapsed for kind, _, elapsed in results if kind == "unknown"]
    wrong = [elapsed for kind, _, elapsed in results if kind == "wrong"]
    assert {reply for _, reply, _ in results} == {
        b"NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"}
    # Dovecot penalised these addresses (each wrong password waited), and the
    # unknown users waited as long.
    assert min(wrong) > 8.0, results
    assert abs(statistics.median(unknown) - statistics.median(wrong)) < 0.5, results


def test_without_the_clients_address_one_clients_wrong_passwords_slow_another(
        world: World) -> None:
    """The opposite, with ``forward_client = "none"``: Dovecot penalises the proxy.

    Last in this file: it leaves the proxy's own address penalised at Dovecot,
    which the tests above (forwarding the client's address) never meet.
    """
    port = free_port(PROXY_ADDRESS)
    config = write_config(world.root, "none", port, "none")
    proxy = ProxyProcess(config, world.root / "none.log")
    proxy.start(listening=1)
    try:
        none = World(world.store, proxy, port, world.root)
        took = [login(none, "127.0.0.106", "bob", f"wrong-{i}") for i in range(2)]
        reply, elapsed = login(none, "127.0.0.107", "alice", "alice-secret")
    finally:
        proxy.stop()
    assert reply.startswith(b"OK"), reply
    assert elapsed > 3.0, (elapsed, took)
