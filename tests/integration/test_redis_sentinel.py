"""The throttle and the holds on Redis Sentinel, through a failover: the primary is SIGKILLed.

A private Sentinel set (tests/services/redis.py: a primary, its replica,
three sentinels, passwords on both) behind real ``authsvc serve`` processes
that name it in the Sentinel form.  What nginx would do with each answer is
read off the reply headers (ngx_mail_auth_http_module, "Protocol"):
``Auth-Wait: N`` is a refusal with a delay, ``Auth-Server`` a route.

* The throttle keeps its rule through the failover window (local counts,
  ``authsvc_throttle_fallback`` and a log line), then counts on the new
  primary, which still has the counts written before the kill.
* A hold acknowledged by ``authsvc hold`` (after ``WAIT 1``) is in force after
  the failover; with no replica left, a new hold fails and says why.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.eventually import eventually
from tests.services.ports import free_port
from tests.services.redis import SentinelSet
from tests.services.serve import ServeProcess

pytestmark = pytest.mark.integration

SECRET = "sentinel-test-secret"
CONTROL_SECRET = "operator-only-7a2e"
REDIS_PASSWORD = "redis-data-pw-3b9f"
SENTINEL_PASSWORD = "redis-watch-pw-4c1d"
ATTACKER, NEIGHBOUR = "192.0.2.66", "192.0.2.67"
BOB = "bob@riseup.net"
TEMPORARY = "Temporary server problem, try again later"


def sentinel_keys(tmp: Path, redis: SentinelSet) -> str:
    (tmp / "redis.pass").write_text(REDIS_PASSWORD + "\n")
    (tmp / "sentinel.pass").write_text(SENTINEL_PASSWORD + "\n")
    return (f"redis_sentinels = {json.dumps(redis.sentinel_addresses)}\n"
            'redis_service = "authsvc"\n'
            f'redis_password_file = "{tmp / "redis.pass"}"\n'
            f'redis_sentinel_password_file = "{tmp / "sentinel.pass"}"\n')


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path / "redis", password=REDIS_PASSWORD,
                     sentinel_password=SENTINEL_PASSWORD) as sentinels:
        yield sentinels


def ask(serve: ServeProcess, user: str, client: str) -> dict[str, str]:
    """One nginx auth request (a wrong password is no matter to serve); the reply's headers."""
    with socket.create_connection((serve.host, serve.port), timeout=10) as sock:
        sock.sendall((
            f"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
            f"Auth-User: {user}\r\nAuth-Pass: wrong\r\nAuth-Protocol: imap\r\n"
            f"Auth-Login-Attempt: 1\r\nClient-IP: {client}\r\nX-Authsvc-Listener: imap4\r\n"
            f"X-Authsvc-Key: {SECRET}\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return dict(line.split(": ", 1) for line in head.split("\r\n")[1:])


def attack(serve: ServeProcess, client: str, count: int) -> list[str | None]:
    """``count`` unknown users from ``client``; each answer's Auth-Wait."""
    waits = []
    for i in range(count):
        reply = ask(serve, f"nobody{i}", client)
        assert reply["Auth-Status"] == "Invalid login or password", reply
        waits.append(reply.get("Auth-Wait"))
    return waits


def failures_in(client: Any, address: str) -> int:
    """An address's failures as Redis holds them (throttle/redis.py: one hash of buckets)."""
    return sum(int(v) for v in client.hgetall(f"authsvc:throttle:a:{address}").values())


def metric(serve: ServeProcess, line: str) -> bool:
    status, text = serve.get("/metrics")
    return status == 200 and f"\n{line}\n" in text


def base_config(tmp: Path) -> str:
    (tmp / "map").write_text("bob@riseup.net: 127.0.0.2\nbob: 127.0.0.2\n")
    (tmp / "secret").write_text(SECRET + "\n")
    return f"""
[map]
type = "file"
path = "{tmp / 'map'}"

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = {free_port()}

[http]
auth_wait = 1
max_attempts = 1000
secret_file = "{tmp / 'secret'}"
"""


# --- the throttle ---------------------------------------------------------------------------


def test_the_throttle_counts_through_a_failover(tmp_path: Path, redis: SentinelSet) -> None:
    config = tmp_path / "authsvc.toml"
    # redis_retry 3 s: the few requests of the window below are answered
    # from local counts, whenever the sentinels finish.
    config.write_text(base_config(tmp_path) + f"""
[throttle]
enabled = true
key = "a-test-key-of-32-characters-----"
free_failures = 3
delay = 1
max_delay = 8
address_limit = 30
login_limit = 1000
store = "redis"
redis_timeout = 0.3
redis_retry = 3
{sentinel_keys(tmp_path, redis)}""")
    with ServeProcess([config], tmp_path / "serve") as node:
        # free_failures = 3 get [http] auth_wait; then 1, 2, 4, 8 (max_delay).
        assert attack(node, ATTACKER, 10) == ["1", "1", "1", "1", "2", "4", "8", "8", "8", "8"]
        old = redis.primary.client()
        assert failures_in(old, ATTACKER) == 10
        old.close()
        eventually(redis.replicated, what="the replica has the counts")

        redis.primary.kill()
        # The window: Redis fails, local counts answer.  Nobody is refused for it...
        assert ask(node, "bob", NEIGHBOUR)["Auth-Server"] == "127.0.0.2"
        eventually(lambda: "event=throttle_fallback store=local" in node.log_text(),
                   what="the fallback's log line")
        assert metric(node, "authsvc_throttle_fallback 1")
        # ...and nobody is let through: failures still count, and escalate.
        assert attack(node, "192.0.2.99", 5) == ["1", "1", "1", "1", "2"]
        assert metric(node, "authsvc_throttle_fallback 1")

        eventually(lambda: redis.primary_port() == redis.replica.port, 30,
                   what="the sentinels promote the replica")

        def back_on_redis() -> bool:
            assert ask(node, "bob", NEIGHBOUR)["Auth-Server"] == "127.0.0.2"
            return "event=throttle_fallback store=redis reason=reachable" in node.log_text()

        eventually(back_on_redis, 20, what="the node back on Redis (redis_retry)")
        assert metric(node, "authsvc_throttle_fallback 0")
        new = redis.replica.client()
        try:
            # Written before the kill, kept by the replica, and still in force.
            assert failures_in(new, ATTACKER) == 10
            assert ask(node, "nobody", ATTACKER).get("Auth-Wait") == "8"
            assert failures_in(new, ATTACKER) == 11
            # New failures go to the new primary.
            assert attack(node, "192.0.2.100", 3) == ["1", "1", "1"]
            assert failures_in(new, "192.0.2.100") == 3
        finally:
            new.close()
        log = node.log_text()
        assert REDIS_PASSWORD not in log and SENTINEL_PASSWORD not in log


# --- the holds -------------------------------------------------------------------------------


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authsvc", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30, check=False)


def ok(config: Path, *args: str) -> str:
    done = cli(config, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_a_hold_acknowledged_before_the_kill_holds_after_the_failover(
        tmp_path: Path, redis: SentinelSet) -> None:
    (tmp_path / "control-secret").write_text(CONTROL_SECRET + "\n")
    config = tmp_path / "authsvc.toml"
    config.write_text(base_config(tmp_path) + f"""
[control]
listen = "127.0.0.1:{free_port()}"
secret_file = "{tmp_path / 'control-secret'}"
allow = ["127.0.0.1/32"]

[holds]
store = "redis"
{sentinel_keys(tmp_path, redis)}""")
    with ServeProcess([config], tmp_path / "one") as serve:
        eventually(lambda: "what=control" in serve.log_text(), 20)
        assert ask(serve, BOB, NEIGHBOUR)["Auth-Server"] == "127.0.0.2"
        ok(config, "hold", "store", "127.0.0.2", "--reason", "disk swap")
        # At once: the command's success means a replica has the hold (WAIT 1).
        redis.primary.kill()
        eventually(lambda: redis.primary_port() == redis.replica.port, 30,
                   what="the sentinels promote the replica")
    # A node started after the failover reads the hold from the new primary.
    with ServeProcess([config], tmp_path / "two") as serve:
        for _ in range(3):
            assert ask(serve, BOB, NEIGHBOUR)["Auth-Status"] == TEMPORARY
        listing = json.loads(ok(config, "hold", "list", "--json"))
        assert [(h["target"], h["reason"]) for h in listing["holds"]] == [
            ("127.0.0.2", "disk swap")]
        assert listing["store"] == "redis sentinel service authsvc"
        # No replica is left: a new hold is not acknowledged, and the command says so.
        done = cli(config, "hold", "user", "carol@riseup.net", "--reason", "fsck")
        assert done.returncode == 1, (done.stdout, done.stderr)
        said = done.stdout + done.stderr
        assert "0 of the 1 replica(s) required ([holds] redis_replicas)" in said, said
        log = serve.log_text()
    assert REDIS_PASSWORD not in log and SENTINEL_PASSWORD not in log
