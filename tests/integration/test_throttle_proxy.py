"""Brute-force throttling in ``authsvc proxy``, with real clients and a real Dovecot.

Each test's client connects from its own loopback address (127.0.0.77,
127.0.0.78, ...), so its counts are its own.  Delays are kept small
([proxy] auth_failure_delay 0.8 s, [throttle] delay 0.5 s doubling to 1 s)
and asserted with a tolerance: the tarpit is a behaviour, not a benchmark.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authsvc.cli import main
from tests.helpers.eventually import eventually
from tests.helpers.prometheus import Scrape
from tests.services.dovecot import DovecotStore, dovecot_stores
from tests.services.mailclient import RawLines
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.require import require_binary
from tests.services.sqlite_lock import lock_held
from tests.services.stack import STORE_ADDRESSES

pytestmark = pytest.mark.integration

PROXY_ADDRESS = "127.0.0.1"
USERS = {"b": {"bob": "bob-secret"}}
#: [proxy] auth_failure_delay: longer than a Dovecot refusal takes, so every
#: failure is answered at this fixed time plus the tarpit.
BASE = 0.8
SLACK = 0.35
NO_TEXT = b"NO [AUTHENTICATIONFAILED]"
SECRET = "throttle-control-secret"


@dataclass
class World:
    store: DovecotStore
    proxy: ProxyProcess
    port: int
    health: int
    config: Path

    def metrics(self) -> str:
        url = f"http://{PROXY_ADDRESS}:{self.health}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    def failures_of(self, client: str) -> int:
        """The address count ``GET /throttle`` shows for ``client`` (0 when none)."""
        url = f"http://{PROXY_ADDRESS}:{self.health}/throttle"
        asked = urllib.request.Request(url, headers={"X-Authsvc-Key": SECRET})
        with urllib.request.urlopen(asked, timeout=5) as reply:  # noqa: S310
            listed = json.load(reply)
        return sum(int(e["failures"]) for e in listed["entries"]
                   if e["kind"] == "address" and e["who"] == client)


def write_config(root: Path, port: int, health: int, *, auth_failure_delay: float = BASE,
                 free_failures: int = 2, address_limit: int = 6) -> Path:
    (root / "secret").write_text(SECRET + "\n")
    config = root / "authsvc.toml"
    config.write_text(f"""
[http]
secret_file = "{root / 'secret'}"

[proxy]
auth_failure_delay = {auth_failure_delay}
backend_timeout = 5
drain_timeout = 1
max_login_attempts = 100
health_listen = "{PROXY_ADDRESS}:{health}"

[throttle]
enabled = true
key = "proxy-test-key-0123456789abcdef"
free_failures = {free_failures}
delay = 0.5
max_delay = 1.0
address_limit = {address_limit}
login_limit = 1000
trusted = ["127.0.0.90/32"]

[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
bind = ["{PROXY_ADDRESS}:{port}"]
login_timeout = 30
[listener.map]
type = "file"
path = "{root / 'map'}"
""")
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_binary("dovecot")
    root = tmp_path_factory.mktemp("throttle-proxy")
    with dovecot_stores(USERS, STORE_ADDRESSES) as stores:
        store = stores["b"]
        port = free_port(PROXY_ADDRESS)
        health = free_port(PROXY_ADDRESS)
        (root / "map").write_text(f"bob: {STORE_ADDRESSES['b']}:{store.ports.imap}\n")
        config = write_config(root, port, health)
        proxy = ProxyProcess(config, root / "proxy.log")
        proxy.start(listening=1)
        try:
            yield World(store, proxy, port, health, config)
        finally:
            proxy.stop()


@contextlib.contextmanager
def client(world: World, source: str) -> Iterator[RawLines]:
    lines = RawLines(PROXY_ADDRESS, world.port, source=source)
    try:
        assert lines.line().startswith(b"* OK")
        yield lines
    finally:
        lines.sock.close()


def login(lines: RawLines, tag: str, password: str) -> tuple[bytes, float]:
    """``LOGIN bob <password>``: the tagged reply and how long it took."""
    started = time.monotonic()
    reply = lines.command(f"{tag} LOGIN bob {password}".encode(), tag.encode())[-1]
    return reply, time.monotonic() - started


def login_as(lines: RawLines, tag: str, user: str) -> tuple[bytes, float]:
    """``LOGIN <user> wrong``: the tagged reply and how long it took."""
    started = time.monotonic()
    reply = lines.command(f"{tag} LOGIN {user} wrong".encode(), tag.encode())[-1]
    return reply, time.monotonic() - started


def assert_took(elapsed: float, expected: float) -> None:
    assert expected - 0.05 <= elapsed <= expected + SLACK, (elapsed, expected)


def test_wrong_passwords_escalate_then_close(world: World) -> None:
    with client(world, "127.0.0.77") as lines:
        # free_failures = 2: no tarpit; then 0.5 s, 1 s, 1 s on top of the base delay.
        for i, extra in enumerate([0.0, 0.0, 0.5, 1.0, 1.0]):
            reply, elapsed = login(lines, f"a{i}", f"wrong-{i}")
            assert reply.startswith(f"a{i} ".encode() + NO_TEXT), reply
            assert_took(elapsed, BASE + extra)
        # The sixth failure reaches address_limit: the same refusal, then the close.
        reply, _ = login(lines, "a5", "wrong-5")
        assert reply.startswith(b"a5 " + NO_TEXT), reply
        assert lines.closed_by_peer()
    # Now even the right password is refused from this address, in the same words...
    with client(world, "127.0.0.77") as lines:
        reply, _ = login(lines, "b1", "bob-secret")
        assert reply.startswith(b"b1 " + NO_TEXT), reply
        assert lines.closed_by_peer()
    # ...while bob from another address logs in.
    with client(world, "127.0.0.78") as lines:
        reply, _ = login(lines, "c1", "bob-secret")
        assert reply.startswith(b"c1 OK"), reply
    found = world.proxy.wait_for("login_failed", client="127.0.0.77", reason="throttled")
    assert found, world.proxy.log_text()[-2000:]
    text = world.metrics()
    assert "authsvc_throttle_blocked_total 2\n" in text  # the sixth failure, then bob
    # bob's refused attempt is counted as throttled (authsvc/failures.py), the
    # sixth failure as the store's refusal it was.
    assert 'authsvc_proxy_logins_total{listener="imap4",result="throttled"} 1\n' in text
    assert 'authsvc_throttle_store_info{store="memory"} 1\n' in text


def test_one_device_repeating_one_wrong_password_counts_once(world: World) -> None:
    with client(world, "127.0.0.79") as lines:
        for i in range(8):  # more than address_limit: never throttled
            reply, elapsed = login(lines, f"r{i}", "the-old-password")
            assert reply.startswith(f"r{i} ".encode() + NO_TEXT), reply
            assert_took(elapsed, BASE)
        reply, _ = login(lines, "ok", "bob-secret")
        assert reply.startswith(b"ok OK"), reply


def test_a_success_resets_the_count(world: World) -> None:
    with client(world, "127.0.0.80") as lines:
        for i, extra in enumerate([0.0, 0.0, 0.5, 1.0]):
            _, elapsed = login(lines, f"w{i}", f"typo-{i}")
            assert_took(elapsed, BASE + extra)
        reply, _ = login(lines, "ok", "bob-secret")
        assert reply.startswith(b"ok OK"), reply
    with client(world, "127.0.0.80") as lines:
        # Back to no tarpit at all: the four failures were taken back out.
        for i in range(2):
            reply, elapsed = login(lines, f"x{i}", f"again-{i}")
            assert reply.startswith(f"x{i} ".encode() + NO_TEXT), reply
            assert_took(elapsed, BASE)


def test_a_trusted_network_is_never_throttled(world: World) -> None:
    with client(world, "127.0.0.90") as lines:
        for i in range(8):
            reply, elapsed = login(lines, f"t{i}", f"webmail-{i}")
            assert reply.startswith(f"t{i} ".encode() + NO_TEXT), reply
            assert_took(elapsed, BASE)
        reply, _ = login(lines, "ok", "bob-secret")
        assert reply.startswith(b"ok OK"), reply


def test_throttle_list_and_clear_reach_the_proxy(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    with client(world, "127.0.0.81") as lines:
        for i in range(2):
            reply, _ = login(lines, f"l{i}", f"wrong-{i}")
            assert reply.startswith(f"l{i} ".encode() + NO_TEXT), reply
    url = ["--config", str(world.config), "--url", f"http://{PROXY_ADDRESS}:{world.health}"]
    assert main(["throttle", "list", *url]) == 0
    assert "127.0.0.81" in capsys.readouterr().out
    assert main(["throttle", "clear", "127.0.0.81", *url]) == 0
    assert "cleared" in capsys.readouterr().out
    assert main(["throttle", "list", *url]) == 0
    assert "127.0.0.81" not in capsys.readouterr().out


@pytest.fixture
def short_run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where the workers' run directory goes: short, for its unix socket's path."""
    with tempfile.TemporaryDirectory(prefix="at") as run:
        monkeypatch.setenv("RUNTIME_DIRECTORY", run)
        yield Path(run)


def test_a_worker_holding_the_store_lock_stalls_no_login(
        world: World, tmp_path: Path, short_run_dir: Path) -> None:
    run = short_run_dir
    (tmp_path / "map").write_text(f"bob: {STORE_ADDRESSES['b']}:{world.store.ports.imap}\n")
    port, health = free_port(PROXY_ADDRESS), free_port(PROXY_ADDRESS)
    # No tarpit, and logins the map does not know (refused without asking Dovecot,
    # whose refusals take their time): a login's answer takes what the proxy takes.
    config = write_config(tmp_path, port, health, auth_failure_delay=0, free_failures=100,
                          address_limit=100)
    proxy = ProxyProcess(config, tmp_path / "proxy.log", workers=2)
    proxy.start(listening=2)
    two = World(world.store, proxy, port, health, config)
    try:
        with client(two, "127.0.0.85") as lines:
            assert login_as(lines, "w", "nobody")[0].startswith(b"w " + NO_TEXT)
        [store] = run.glob("*/throttle.sqlite3")
        took = []
        with lock_held(store, 1.0) as holder:
            for i in range(2):
                with client(two, "127.0.0.85") as lines:
                    for j in range(2):
                        reply, elapsed = login_as(lines, f"w{j}", f"nobody{i}{j}")
                        assert reply.startswith(f"w{j} ".encode() + NO_TEXT), reply
                        took.append(elapsed)
            with client(two, "127.0.0.86") as lines:  # a success resets its pair: a write
                reply, elapsed = login(lines, "ok", "bob-secret")
                assert reply.startswith(b"ok OK"), reply
                took.append(elapsed)
            assert holder.poll() is None, took  # all of them while the lock was held
        # Not one waited for the lock (it would have waited up to a second).
        assert max(took) < 0.05, took
        # Once it is free, every failure is in the shared count, once.
        eventually(lambda: two.failures_of("127.0.0.85") == 5, 5,
                   what="the five failures in the shared count")
        # Any worker answers the scrape, and sums the other's counters from the
        # file that worker refreshes on its own schedule: wait for it.
        eventually(lambda: Scrape(two.metrics()).value("authsvc_throttle_queued_total") >= 1, 5,
                   what="authsvc_throttle_queued_total >= 1")
        # One line per worker that queued, not one per update.
        said = proxy.log_text().count("event=throttle_store store=queued")
        assert 1 <= said <= 2, proxy.log_text()[-3000:]
    finally:
        proxy.stop()
