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
* The same through ``authsvc proxy``: stdlib imaplib clients from their own
  loopback addresses, a real Dovecot behind it.
* With Redis 6 ACL users (``redis_username``, ``redis_sentinel_username``) the
  throttle and a hold work, and a user Redis refuses is Redis down, logged
  without the user's name.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.control import control_section
from tests.helpers.eventually import eventually
from tests.services.dovecot import dovecot_stores
from tests.services.mailclient import IMAP4
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.redis import SentinelSet
from tests.services.require import require_binary
from tests.services.serve import ServeProcess
from tests.services.stack import STORE_ADDRESSES

pytestmark = pytest.mark.integration

SECRET = "sentinel-test-secret"
CONTROL_SECRET = "operator-only-7a2e"
REDIS_PASSWORD = "redis-data-pw-3b9f"
SENTINEL_PASSWORD = "redis-watch-pw-4c1d"
ATTACKER, NEIGHBOUR = "192.0.2.66", "192.0.2.67"
BOB = "bob@riseup.net"
TEMPORARY = "Temporary server problem, try again later"


def sentinel_keys(tmp: Path, redis: SentinelSet, *, username: str | None = None,
                  sentinel_username: str | None = None) -> str:
    (tmp / "redis.pass").write_text(REDIS_PASSWORD + "\n")
    (tmp / "sentinel.pass").write_text(SENTINEL_PASSWORD + "\n")
    return (f"redis_sentinels = {json.dumps(redis.sentinel_addresses)}\n"
            'redis_service = "authsvc"\n'
            f'redis_password_file = "{tmp / "redis.pass"}"\n'
            f'redis_sentinel_password_file = "{tmp / "sentinel.pass"}"\n'
            + (f'redis_username = "{username}"\n' if username else "")
            + (f'redis_sentinel_username = "{sentinel_username}"\n'
               if sentinel_username else ""))


def throttle_section(keys: str, **limits: float) -> str:
    """``[throttle]`` on Redis behind ``keys``; redis_retry 3 s: the few requests
    of a failover window are answered from local counts, whenever the sentinels finish."""
    given = {"free_failures": 3, "delay": 1, "max_delay": 8, "address_limit": 30, **limits}
    return ('\n[throttle]\nenabled = true\nkey = "a-test-key-of-32-characters-----"\n'
            + "".join(f"{k} = {v}\n" for k, v in given.items())
            + 'login_limit = 1000\nstore = "redis"\nredis_timeout = 0.3\nredis_retry = 3\n'
            + keys)


def control(tmp: Path) -> str:
    return control_section(tmp, free_port(), CONTROL_SECRET)


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
    config.write_text(base_config(tmp_path) + throttle_section(sentinel_keys(tmp_path, redis)))
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
    config = tmp_path / "authsvc.toml"
    config.write_text(base_config(tmp_path) + control(tmp_path) + f"""
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


# --- Redis 6 ACL users -----------------------------------------------------------------------

DATA_USER, WATCH_USER = "authsvc-data-9d2", "authsvc-watch-6e4"


def test_the_throttle_and_a_hold_with_acl_users(tmp_path: Path) -> None:
    """authsvc's users have only the rules docs/operations.md gives (tests/services/redis.py)."""
    with SentinelSet(tmp_path / "redis", password=REDIS_PASSWORD,
                     sentinel_password=SENTINEL_PASSWORD, username=DATA_USER,
                     sentinel_username=WATCH_USER) as redis:
        config = tmp_path / "authsvc.toml"
        keys = sentinel_keys(tmp_path, redis, username=DATA_USER, sentinel_username=WATCH_USER)
        config.write_text(base_config(tmp_path) + control(tmp_path)
                          + throttle_section(keys) + f'\n[holds]\nstore = "redis"\n{keys}')
        with ServeProcess([config], tmp_path / "one") as node:
            eventually(lambda: "what=control" in node.log_text(), 20)
            assert attack(node, ATTACKER, 5) == ["1", "1", "1", "1", "2"]
            data = redis.primary.client()
            try:
                assert failures_in(data, ATTACKER) == 5
                # WAIT is among the user's commands: the replica acknowledged the hold.
                ok(config, "hold", "user", BOB, "--reason", "mailbox move")
                assert ask(node, BOB, NEIGHBOUR)["Auth-Status"] == TEMPORARY
                assert list(data.hgetall("authsvc:holds")) == [f"user:{BOB}"]
            finally:
                data.close()
            log = node.log_text()
        assert "throttle_fallback" not in log

        # A user Redis (the throttle's) or the sentinels (the holds') do not
        # know: Redis is down to authsvc, and nothing it says names a user.
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(
            base_config(tmp_path) + control(tmp_path) + throttle_section(sentinel_keys(
                tmp_path, redis, username="nobody-3c8", sentinel_username=WATCH_USER))
            + '\n[holds]\nstore = "redis"\n'
            + sentinel_keys(tmp_path, redis, username=DATA_USER, sentinel_username="nobody-3c8"))
        with ServeProcess([wrong], tmp_path / "two") as node:
            assert ask(node, "bob", NEIGHBOUR)["Auth-Server"] == "127.0.0.2"
            eventually(lambda: "event=throttle_fallback store=local" in node.log_text(),
                       what="the fallback's log line")
            said = cli(wrong, "hold", "list")
            log = node.log_text()
    line = next(x for x in log.splitlines() if "event=throttle_fallback" in x)
    assert "AuthenticationError" in line, line
    assert said.returncode != 0 and "MasterNotFoundError" in said.stdout + said.stderr, said
    for text in (log, said.stdout + said.stderr):
        for secret in (DATA_USER, WATCH_USER, "nobody-3c8", REDIS_PASSWORD, SENTINEL_PASSWORD):
            assert secret not in text, (secret, text[-2000:])


# --- authsvc proxy ---------------------------------------------------------------------------

#: Clients of the proxy, each from its own loopback address (the throttle counts per address).
FROM_ATTACKER, FROM_NEIGHBOUR, FROM_NEWCOMER = "127.0.0.66", "127.0.0.67", "127.0.0.68"
USERS = {"carol": "carol-secret", "bob": "bob-secret"}
REFUSED, HELD = "AUTHENTICATIONFAILED", "UNAVAILABLE"


class FromAddress(IMAP4):
    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=5)


def imap_login(port: int, user: str, password: str, source: str = FROM_NEIGHBOUR) -> str:
    """``LOGIN`` through the proxy with stdlib imaplib: "OK", or the refusal imaplib raised."""
    imap = FromAddress(port, source)
    try:
        imap.login(user, password)
        return "OK"
    except imaplib.IMAP4.error as exc:
        return str(exc)
    finally:
        with contextlib.suppress(Exception):  # the proxy may have closed already
            imap.logout()


def test_the_proxy_through_a_failover(tmp_path: Path, redis: SentinelSet) -> None:
    require_binary("dovecot")
    with dovecot_stores({"a": USERS}, STORE_ADDRESSES) as stores:
        store = f"{STORE_ADDRESSES['a']}:{stores['a'].ports.imap}"
        (tmp_path / "map").write_text(f"carol: {store}\nbob: {store}\n")
        port, keys = free_port(), sentinel_keys(tmp_path, redis)
        config = tmp_path / "authsvc.toml"
        # free_failures = address_limit: no tarpit, the fourth failure is the last.
        config.write_text(f"""
[proxy]
auth_failure_delay = 0.1
backend_timeout = 5
drain_timeout = 1
max_login_attempts = 100
{control(tmp_path)}{throttle_section(keys, free_failures=4, address_limit=4)}
[holds]
store = "redis"
{keys}
[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1:{port}"]
[listener.map]
type = "file"
path = "{tmp_path / 'map'}"
""")

        def login(user: str, password: str, source: str = FROM_NEIGHBOUR) -> str:
            return imap_login(port, user, password, source)

        def attacked(tag: str) -> None:
            """Four wrong passwords from the attacker, then even the right one is refused."""
            for i in range(4):
                assert REFUSED in login("carol", f"{tag}-{i}", FROM_ATTACKER)
            assert REFUSED in login("carol", USERS["carol"], FROM_ATTACKER)

        with ProxyProcess(config, tmp_path / "proxy.log") as proxy:
            proxy.start(listening=2)
            assert login("carol", USERS["carol"]) == "OK"
            ok(config, "hold", "user", "bob", "--reason", "mailbox move")
            assert HELD in login("bob", USERS["bob"])
            attacked("before")
            old = redis.primary.client()
            assert failures_in(old, FROM_ATTACKER) >= 4
            old.close()
            eventually(redis.replicated, what="the replica has the counts and the hold")

            redis.primary.kill()
            # The window: local counts.  Nobody is refused for it, the hold
            # holds, and the attacker is refused again at address_limit.
            assert login("carol", USERS["carol"]) == "OK"
            proxy.wait_for("throttle_fallback", store="local")
            attacked("window")
            assert HELD in login("bob", USERS["bob"])

            eventually(lambda: redis.primary_port() == redis.replica.port, 30,
                       what="the sentinels promote the replica")

            def back_on_redis() -> bool:
                assert login("carol", USERS["carol"]) == "OK"
                return any(line.get("store") == "redis"
                           for line in proxy.lines("throttle_fallback"))

            eventually(back_on_redis, 20, what="the proxy back on Redis (redis_retry)")
            new = redis.replica.client()
            try:
                # The count from before the kill refuses the right password at once.
                assert failures_in(new, FROM_ATTACKER) >= 4
                assert REFUSED in login("carol", USERS["carol"], FROM_ATTACKER)
                assert REFUSED in login("carol", "newcomer", FROM_NEWCOMER)
                assert failures_in(new, FROM_NEWCOMER) == 1
            finally:
                new.close()
            assert HELD in login("bob", USERS["bob"])
            # Each right password was refused by the throttle, not by Dovecot.
            throttled = [line["client"].rsplit(":", 1)[0] for line in proxy.lines("login_failed")
                         if line.get("kind") == "throttled"]
            assert throttled == [FROM_ATTACKER] * 3, throttled
            logs = proxy.log_text()
        # A proxy started after the failover reads the hold from the new primary.
        with ProxyProcess(config, tmp_path / "proxy2.log") as proxy:
            proxy.start(listening=2)
            assert HELD in login("bob", USERS["bob"])
            assert login("carol", USERS["carol"]) == "OK"
            logs += proxy.log_text()
    assert {line.get("kind") for line in proxy.lines("login_failed")} == {"held"}
    assert REDIS_PASSWORD not in logs and SENTINEL_PASSWORD not in logs
