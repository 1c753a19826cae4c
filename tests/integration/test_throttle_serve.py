"""Brute-force throttling in ``authsvc serve``, through nginx-shaped requests.

Real ``authsvc serve`` processes (one, two workers, two nodes sharing a
private Redis).  What nginx would do with each answer is read off the reply
headers: ``Auth-Wait: N`` keeps the client's session for another try after N
seconds, no ``Auth-Wait`` closes it (ngx_mail_auth_http_module, "Protocol").
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from authsvc.metricfiles import read_file
from tests.helpers.eventually import eventually
from tests.helpers.prometheus import Scrape
from tests.services.redis import RedisServer
from tests.services.serve import ServeProcess
from tests.services.sqlite_lock import lock_held

pytestmark = pytest.mark.integration

ATTACKER = "192.0.2.66"
NEIGHBOUR = "192.0.2.67"
WEBMAIL = "198.51.100.7"
LIMIT = 30
SECRET = "throttle-control-secret"


def request(user: str, client: str) -> bytes:
    return (
        f"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
        f"Auth-User: {user}\r\nAuth-Pass: wrong\r\nAuth-Protocol: imap\r\n"
        f"Auth-Login-Attempt: 1\r\nClient-IP: {client}\r\nX-Authsvc-Listener: imap4\r\n"
        f"X-Authsvc-Key: {SECRET}\r\n\r\n"
    ).encode()


def ask(serve: ServeProcess, user: str, client: str) -> dict[str, str]:
    with socket.create_connection((serve.host, serve.port), timeout=5) as sock:
        sock.sendall(request(user, client))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return dict(line.split(": ", 1) for line in head.split("\r\n")[1:])


def write_config(tmp: Path, *, store: str = "memory", redis_url: str = "") -> Path:
    (tmp / "map").write_text("bob: 127.0.0.2:143\n")
    (tmp / "secret").write_text(SECRET + "\n")
    redis = f'redis_url = "{redis_url}"\nredis_timeout = 0.3\nredis_retry = 1\n' \
        if redis_url else ""
    config = tmp / f"authsvc-{store}.toml"
    config.write_text(f"""
[map]
type = "file"
path = "{tmp / 'map'}"

[[listener]]
name = "imap4"
protocol = "imap"

[http]
auth_wait = 1
max_attempts = 1000
secret_file = "{tmp / 'secret'}"

[throttle]
enabled = true
key = "a-test-key-of-32-characters-----"
free_failures = 3
delay = 1
max_delay = 8
address_limit = {LIMIT}
login_limit = 1000
trusted = ["198.51.100.0/24"]
store = "{store}"
{redis}""")
    return config


def attack(serve: ServeProcess | list[ServeProcess], client: str,
           count: int = 40) -> list[str | None]:
    """``count`` unknown users from ``client``; each answer's Auth-Wait (None = closed)."""
    nodes = serve if isinstance(serve, list) else [serve]
    waits = []
    for i in range(count):
        reply = ask(nodes[i % len(nodes)], f"nobody{i}", client)
        assert reply["Auth-Status"] == "Invalid login or password"
        waits.append(reply.get("Auth-Wait"))
    return waits


def assert_escalates_then_closes(waits: list[str | None]) -> None:
    # free_failures = 3: the first three get [http] auth_wait; then 1, 2, 4, 8, 8...
    assert waits[:3] == ["1", "1", "1"]
    assert waits[3:8] == ["1", "2", "4", "8", "8"]
    # The LIMIT-th failure reaches the cap: no Auth-Wait, nginx closes.
    assert all(w is not None for w in waits[:LIMIT - 1]), waits
    assert waits[LIMIT - 1:] == [None] * (len(waits) - LIMIT + 1), waits


@pytest.fixture
def single(tmp_path: Path) -> Iterator[ServeProcess]:
    with ServeProcess([write_config(tmp_path)], tmp_path / "one") as serve:
        yield serve


def test_refusals_escalate_then_close_and_block_even_bob(single: ServeProcess) -> None:
    assert ask(single, "bob", ATTACKER)["Auth-Server"] == "127.0.0.2"  # nothing resets it
    assert_escalates_then_closes(attack(single, ATTACKER))
    refused = ask(single, "bob", ATTACKER)
    assert refused == {"Auth-Status": "Invalid login or password", "Content-Length": "0"}
    single.wait_for_decision(login="bob", client=ATTACKER, result="throttled")
    assert ask(single, "bob", NEIGHBOUR)["Auth-Server"] == "127.0.0.2"
    status, text = single.get("/metrics")
    assert status == 200
    # Past the cap nothing more is counted: the check refuses before routing.
    assert "authsvc_throttle_failures_total 30\n" in text
    assert "authsvc_throttle_blocked_total 12\n" in text
    assert 'authsvc_throttle_store_info{store="memory"} 1\n' in text
    assert 'authsvc_auth_decisions_total{protocol="imap",result="throttled"}' in text


def test_list_and_clear_through_the_cli(single: ServeProcess, tmp_path: Path) -> None:
    attack(single, ATTACKER)
    config = str(tmp_path / "authsvc-memory.toml")
    url = single.url
    listed = subprocess.run([sys.executable, "-m", "authsvc", "throttle", "list", "-c", config,
                             "--url", url], capture_output=True, text=True, timeout=20)
    assert listed.returncode == 0, listed.stderr
    assert f"address  {ATTACKER}  failures=30  BLOCKED" in listed.stdout
    cleared = subprocess.run([sys.executable, "-m", "authsvc", "throttle", "clear", ATTACKER,
                              "-c", config, "--url", url], capture_output=True, text=True,
                             timeout=20)
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.startswith("cleared ")
    assert ask(single, "bob", ATTACKER)["Auth-Server"] == "127.0.0.2"


def test_trusted_network_is_never_throttled(single: ServeProcess) -> None:
    waits = attack(single, WEBMAIL, 60)
    assert waits == ["1"] * 60
    assert ask(single, "bob", WEBMAIL)["Auth-Server"] == "127.0.0.2"


def test_two_workers_add_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(run))  # where serve makes its run directory
    with ServeProcess([write_config(tmp_path)], tmp_path / "two", workers=2) as serve:
        waits = attack(serve, ATTACKER)
        # Blocked at exactly LIMIT: counted per worker, it would take about twice as many.
        assert_escalates_then_closes(waits)
        assert ask(serve, "bob", ATTACKER).get("Auth-Server") is None
        # Both workers answered some of them (the kernel spreads new connections
        # over their sockets): each worker's metrics file counts its own answers.
        per_worker = [
            sum(value for (family, _), value in read_file(path)
                if family == "authsvc_auth_decisions_total")
            for path in run.glob("*/metrics-*.bin")
        ]
        assert len(per_worker) == 2, per_worker
        assert all(count > 0 for count in per_worker), per_worker
        assert sum(per_worker) == 41


@pytest.fixture
def short_run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where the workers' run directory goes: short, for its unix socket's path."""
    with tempfile.TemporaryDirectory(prefix="at") as run:
        monkeypatch.setenv("RUNTIME_DIRECTORY", run)
        yield Path(run)


def failures_of(serve: ServeProcess, client: str) -> int:
    """The address count ``GET /throttle`` shows for ``client`` (0 when none)."""
    url = serve.url + "/throttle"  # http://host:port of the process this test started
    asked = urllib.request.Request(url, headers={"X-Authsvc-Key": SECRET})  # noqa: S310
    with urllib.request.urlopen(asked, timeout=5) as reply:  # noqa: S310
        listed = json.load(reply)
    return sum(int(e["failures"]) for e in listed["entries"]
               if e["kind"] == "address" and e["who"] == client)


def test_a_worker_holding_the_store_lock_stalls_no_login(
        tmp_path: Path, short_run_dir: Path) -> None:
    run = short_run_dir
    client = "192.0.2.70"
    with ServeProcess([write_config(tmp_path)], tmp_path / "two", workers=2) as serve:
        ask(serve, "nobody", client)
        [store] = run.glob("*/throttle.sqlite3")
        with lock_held(store, 1.0) as holder:
            took = []
            for i in range(6):
                started = time.monotonic()
                assert ask(serve, f"nobody{i}", client)["Auth-Status"] == \
                    "Invalid login or password"
                took.append(time.monotonic() - started)
            assert holder.poll() is None  # all of them while the lock was held
        # Not one waited for the lock (it would have waited up to a second).
        assert max(took) < 0.05, took
        # Once it is free, every failure is in the shared count, once.
        eventually(lambda: failures_of(serve, client) == 7, 5,
                   what="the seven failures in the shared count")

        def queued() -> float:
            status, text = serve.get("/metrics")
            assert status == 200
            return Scrape(text).value("authsvc_throttle_queued_total")

        eventually(lambda: queued() >= 1, 5, what="authsvc_throttle_queued_total >= 1")
        # One line per worker that queued, not one per update.
        said = serve.log_text().count("event=throttle_store store=queued")
        assert 1 <= said <= 2, serve.log_text()[-3000:]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_two_nodes_share_redis_and_survive_its_death(tmp_path: Path,
                                                     redis: RedisServer) -> None:
    config = write_config(tmp_path, store="redis", redis_url=redis.url)
    with ServeProcess([config], tmp_path / "a", name="a") as a, \
            ServeProcess([config], tmp_path / "b", name="b") as b:
        # Alternate nodes: one count, so the cap is reached at LIMIT in total.
        assert_escalates_then_closes(attack([a, b], ATTACKER))
        for node in (a, b):
            assert ask(node, "bob", ATTACKER).get("Auth-Server") is None
            assert ask(node, "bob", NEIGHBOUR)["Auth-Server"] == "127.0.0.2"
        redis.kill()
        # No outage: local counts take over on each node (fresh, so not blocked)...
        for node in (a, b):
            started = time.monotonic()
            assert ask(node, "bob", ATTACKER)["Auth-Server"] == "127.0.0.2"
            assert time.monotonic() - started < 5  # bounded by redis_timeout, not a hang
            assert ask(node, "bob", NEIGHBOUR)["Auth-Server"] == "127.0.0.2"
            # ...and they still count: refusals escalate and close on local counts.
            waits = attack(node, "192.0.2.99")
            assert_escalates_then_closes(waits)
            assert "event=throttle_fallback store=local" in node.log_text()
            status, text = node.get("/metrics")
            assert status == 200
            assert "authsvc_throttle_fallback 1\n" in text
            assert "authsvc_throttle_store_errors_total " in text
