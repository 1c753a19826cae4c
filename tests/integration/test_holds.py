"""Holds on both faces, with ``--workers 2``: real processes, warm caches, a restart.

``authsvc serve`` and ``authsvc proxy`` each run two workers, a ``[control]``
port and a ``[holds]`` state file.  The tests warm both workers' route
caches, then show through the operator's commands that:

* a held user is refused with the temporary failure by every worker, at
  once, although its route is cached (serve: ``Auth-Wait``; proxy:
  ``NO [UNAVAILABLE]``), and a release lets it in at once;
* a hold on a store does not hold a user the map has moved away from it;
* a proxy restarted while a store is held still holds it;
* bad input changes nothing, and releasing what is not held says so.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.control import control_section
from tests.helpers.eventually import eventually
from tests.helpers.prometheus import Scrape
from tests.services.dovecot import dovecot_stores
from tests.services.mailclient import RawLines
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.redis import RedisServer
from tests.services.require import require_binary
from tests.services.serve import ServeProcess, parse_fields
from tests.services.stack import STORE_ADDRESSES

pytestmark = pytest.mark.integration

CONTROL_SECRET = "operator-only-5c1d"
TEMPORARY = "Temporary server problem, try again later"
BOB, CAROL = "bob@riseup.net", "carol@riseup.net"


def common_sections(root: Path, control: int) -> str:
    return control_section(root, control, CONTROL_SECRET) + f"""
[holds]
state_file = "{root / 'state' / 'holds.json'}"
"""


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authsvc", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30, check=False)


def ok(config: Path, *args: str) -> str:
    done = cli(config, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


# --- authsvc serve -------------------------------------------------------------------


def ask(serve: ServeProcess, login: str) -> dict[str, str]:
    """One nginx auth request on a new connection; the Auth-* headers of the reply."""
    conn = http.client.HTTPConnection("127.0.0.1", serve.port, timeout=10)
    try:
        conn.request("GET", "/auth", headers={
            "Auth-Method": "plain", "Auth-User": login, "Auth-Pass": "pw",
            "Auth-Protocol": "imap", "Auth-Login-Attempt": "1", "Client-IP": "192.0.2.9",
            "X-Authsvc-Listener": "imap4"})
        reply = conn.getresponse()
        reply.read()
        return {k: v for k, v in reply.getheaders() if k.startswith("Auth-")}
    finally:
        conn.close()


def answered_by(serve: ServeProcess, login: str, result: str) -> set[str | None]:
    """The workers (pids) that have answered ``login`` with ``result``."""
    return {d.get("pid") for d in serve.decisions()
            if d.get("login") == login and d.get("result") == result}


def test_serve_holds_with_warm_caches(tmp_path: Path) -> None:
    control = free_port()
    (tmp_path / "map").write_text("bob@riseup.net: 127.0.0.2\ncarol@riseup.net: 127.0.0.3\n")
    config = tmp_path / "authsvc.toml"
    config.write_text(f"""
[map]
type = "file"
path = "{tmp_path / 'map'}"
{common_sections(tmp_path, control)}
[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = {free_port()}
""")
    with ServeProcess([config], tmp_path, workers=2) as serve:
        eventually(lambda: serve.log_text().count("what=control") == 2, 20)

        def warm(login: str) -> bool:
            assert ask(serve, login)["Auth-Status"] == "OK"
            return len(answered_by(serve, login, "ok")) == 2 and all(
                d.get("source") == "map" for d in serve.decisions()
                if d.get("login") == login)

        # Both workers have bob and carol in their route cache.
        eventually(lambda: warm(BOB) and warm(CAROL), 30, interval=0)

        assert ok(config, "hold", "user", "bob@riseup.net", "--reason", "moving",
                  "--for", "2h") .startswith("held user bob@riseup.net until ")
        # From now on every worker refuses bob, at once, from its warm cache.
        serve.decisions(settle=True)
        for _ in range(10):
            assert ask(serve, BOB) == {"Auth-Status": TEMPORARY, "Auth-Wait": "3"}
        eventually(lambda: ask(serve, BOB) and len(answered_by(serve, BOB, "held")) == 2,
                   30, interval=0)
        assert ask(serve, CAROL)["Auth-Status"] == "OK"

        # A store hold; carol then moves (map row + flush) and is not held by it.
        assert ok(config, "hold", "store", "127.0.0.3") == (
            "held store 127.0.0.3 in 2 of 2 worker(s)\n")
        assert ask(serve, CAROL) == {"Auth-Status": TEMPORARY, "Auth-Wait": "3"}
        (tmp_path / "map").write_text("bob@riseup.net: 127.0.0.2\ncarol@riseup.net: 127.0.0.4\n")
        time.sleep(1.5)  # the file map looks at its file at most once a second
        ok(config, "flush", "--user", "carol@riseup.net")
        for _ in range(10):
            assert ask(serve, CAROL) == {"Auth-Status": "OK", "Auth-Server": "127.0.0.4",
                                           "Auth-Port": "143"}

        # A store no map names: accepted, and it says so.
        assert ok(config, "hold", "store", "10.9.9.9:143") == (
            "held store 10.9.9.9:143 in 2 of 2 worker(s); accepted: no map names this store\n")
        listing = json.loads(ok(config, "hold", "list", "--json"))["holds"]
        assert [(h["kind"], h["target"], h["reason"]) for h in listing] == [
            ("store", "10.9.9.9:143", None), ("store", "127.0.0.3", None),
            ("user", "bob@riseup.net", "moving")]
        table = ok(config, "hold", "list")
        assert "bob@riseup.net" in table and "moving" in table

        # Bad input: one line, exit 2, nothing changed.
        done = cli(config, "hold", "user", "bob smith@riseup.net")
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.count("\n") == 1
        assert len(json.loads(ok(config, "hold", "list", "--json"))["holds"]) == 3

        metrics = Scrape(serve.get("/metrics")[1])
        assert metrics.value("authsvc_holds", kind="user") == 1
        assert metrics.value("authsvc_holds", kind="store") == 2
        assert metrics.value("authsvc_auth_decisions_total", protocol="imap",
                             result="held") >= 12

        # Release: bob logs in at once, on every worker, with no TTL wait.
        assert ok(config, "release", "user", "bob@riseup.net") == (
            "released user bob@riseup.net in 2 of 2 worker(s)\n")
        for _ in range(10):
            assert ask(serve, BOB)["Auth-Status"] == "OK"
        assert ok(config, "release", "user", "bob@riseup.net") == (
            "user bob@riseup.net was not held; nothing released\n")
    log = serve.log_text()
    holds = [parse_fields(line) for line in log.splitlines() if " event=hold " in line]
    assert (holds[0]["client"], holds[0]["kind"], holds[0]["target"], holds[0]["reason"]) == (
        "127.0.0.1", "user", "bob@riseup.net", "moving")
    assert holds[0]["until"] is not None
    releases = [parse_fields(line) for line in log.splitlines() if " event=release " in line]
    assert [(r["client"], r["target"], r["result"]) for r in releases] == [
        ("127.0.0.1", "bob@riseup.net", "released"), ("127.0.0.1", "bob@riseup.net", "not_held")]
    assert CONTROL_SECRET not in log


# --- authsvc proxy -------------------------------------------------------------------


def login(port: int) -> bytes:
    """``LOGIN bob``: the tagged answer."""
    with RawLines("127.0.0.1", port) as lines:
        assert lines.line().startswith(b"* OK")
        answer = lines.command(b"a LOGIN bob bob-secret", b"a")[-1]
        lines.command(b"b LOGOUT", b"b")
        return answer


def test_proxy_holds_survive_a_restart(tmp_path: Path) -> None:
    require_binary("dovecot")
    users = {"a": {"bob": "bob-secret"}, "b": {"bob": "bob-secret"}}
    with dovecot_stores(users, STORE_ADDRESSES) as stores:
        imap = stores["a"].ports.imap
        store_a = f"{STORE_ADDRESSES['a']}:{imap}"
        store_b = f"{STORE_ADDRESSES['b']}:{imap}"
        port, control = free_port(), free_port()
        (tmp_path / "map").write_text(f"bob: {store_a}\n")
        config = tmp_path / "authsvc.toml"
        config.write_text(f"""
[proxy]
backend_timeout = 5
drain_timeout = 1
auth_failure_delay = 0.1
{common_sections(tmp_path, control)}
[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
bind = ["127.0.0.1:{port}"]
[listener.map]
type = "file"
path = "{tmp_path / 'map'}"
""")
        held = b"a NO [UNAVAILABLE] Account is temporarily unavailable, try again later.\r\n"
        with ProxyProcess(config, tmp_path / "proxy.log", workers=2) as proxy:
            proxy.start(listening=4)

            def by_pid(result: str, backend: str | None = None) -> set[str]:
                return {line["pid"] for line in proxy.lines("session")
                        if line.get("result") == result
                        and (backend is None or line.get("backend") == backend)}

            def held_by() -> set[str]:
                return {line["pid"] for line in proxy.lines("login_failed")
                        if line.get("kind") == "held"}

            def logged_in_everywhere(backend: str) -> bool:
                assert login(port).startswith(b"a OK")
                return len(by_pid("ok", backend)) == 2

            eventually(lambda: logged_in_everywhere(store_a), 30, interval=0)  # warm caches

            ok(config, "hold", "user", "bob")
            eventually(lambda: login(port) == held and len(held_by()) == 2, 30, interval=0)
            for _ in range(6):
                assert login(port) == held

            # Hold bob's store, release bob: still held, by the store now.
            out = ok(config, "hold", "store", store_a, "--reason", "fsck")
            assert out == f"held store {store_a} in 2 of 2 worker(s)\n"
            ok(config, "release", "user", "bob")
            assert login(port) == held
            # bob moves to store b (map row, flush): the old store's hold is not his.
            (tmp_path / "map").write_text(f"bob: {store_b}\n")
            time.sleep(1.5)
            ok(config, "flush", "--user", "bob")
            eventually(lambda: logged_in_everywhere(store_b), 30, interval=0)

        # A restart while store a is held: the hold is in the state file.
        (tmp_path / "map").write_text(f"bob: {store_a}\n")
        with ProxyProcess(config, tmp_path / "proxy2.log", workers=2) as proxy:
            proxy.start(listening=4)
            for _ in range(6):
                assert login(port) == held
            assert {line["result"] for line in proxy.lines("session")} == {"temporary_failure"}
            assert {line["kind"] for line in proxy.lines("login_failed")} == {"held"}
            listing = json.loads(ok(config, "hold", "list", "--json"))["holds"]
            assert [(h["target"], h["reason"]) for h in listing] == [(store_a, "fsck")]
            assert ok(config, "release", "store", store_a) == (
                f"released store {store_a} in 2 of 2 worker(s)\n")
            for _ in range(6):
                assert login(port).startswith(b"a OK")
            assert {line["backend"] for line in proxy.lines("session")
                    if line["result"] == "ok"} == {store_a}


# --- [holds] store = "redis" --------------------------------------------------------


def test_serve_holds_in_redis_survive_a_restart(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        control = free_port()
        (tmp_path / "map").write_text("bob@riseup.net: 127.0.0.2\n")
        config = tmp_path / "authsvc.toml"
        config.write_text(f"""
[map]
type = "file"
path = "{tmp_path / 'map'}"
{common_sections(tmp_path, control).replace('state_file = ', '# state_file = ')}
store = "redis"
redis_url = "{redis.url}"

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = {free_port()}
""")
        with ServeProcess([config], tmp_path / "one", workers=2) as serve:
            eventually(lambda: serve.log_text().count("what=control") == 2, 20)
            assert ask(serve, BOB)["Auth-Status"] == "OK"
            ok(config, "hold", "store", "127.0.0.2", "--reason", "disk swap")
            for _ in range(6):
                assert ask(serve, BOB)["Auth-Status"] == TEMPORARY
        assert not (tmp_path / "state").exists()  # nothing went to a state file
        with ServeProcess([config], tmp_path / "two", workers=2) as serve:
            for _ in range(6):
                assert ask(serve, BOB)["Auth-Status"] == TEMPORARY
            listing = json.loads(ok(config, "hold", "list", "--json"))
            assert [(h["target"], h["reason"]) for h in listing["holds"]] == [
                ("127.0.0.2", "disk swap")]
            assert listing["store"] == "redis"
            ok(config, "release", "store", "127.0.0.2")
            for _ in range(6):
                assert ask(serve, BOB)["Auth-Status"] == "OK"
            log = serve.log_text()
        assert redis.url not in log
    finally:
        redis.stop()
