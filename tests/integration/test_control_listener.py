"""The control listener on both faces, with ``--workers 2``: real processes, real clients.

``authsvc serve`` and ``authsvc proxy`` each run two workers and a
``[control] listen`` port with its own secret and an allow-list of
127.0.0.1.  The tests show that ``authsvc flush`` reaches every worker
through that port (and, in the proxy, that the next login really goes where
the map now says), that a request without the secret, with a wrong one, or
from outside the allow-list is refused with the fixed body, that every
request is logged as ``event=control`` without the secret, and that serve's
old ``POST /cache/flush`` still answers, with one deprecation warning per
path and worker.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.control import control_section
from tests.helpers.eventually import eventually
from tests.services.dovecot import dovecot_stores
from tests.services.mailclient import RawLines
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.require import require_binary
from tests.services.serve import ServeProcess, parse_fields
from tests.services.stack import STORE_ADDRESSES

pytestmark = pytest.mark.integration

CONTROL_SECRET = "operator-only-7f3a"
NGINX_SECRET = "nginx-only-19c2"
OUTSIDER = "127.0.0.2"  # a loopback source outside [control] allow
USERS = {"b": {"bob": "bob-secret"}}




def request(port: int, method: str, path: str, *, secret: str | None = None,
            source: str = "127.0.0.1", body: str = "all=1") -> tuple[int, str]:
    """One request to the control port; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if secret is not None:
        headers["X-Authsvc-Control"] = secret
    try:
        conn.request(method, path, body=body if method == "POST" else None, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authsvc", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30, check=False)


def assert_refusals(port: int) -> None:
    """No secret or a wrong one: 401; outside the allow-list, even with it: 403."""
    unauthorized = ('{"error": "unauthorized: send the control secret in '
                    'X-Authsvc-Control"}')
    forbidden = '{"error": "forbidden: this address may not use the control listener"}'
    for method, path in (("POST", "/cache/flush"), ("GET", "/throttle")):
        assert request(port, method, path) == (401, unauthorized)
        assert request(port, method, path, secret="wrong") == (401, unauthorized)
        assert request(port, method, path, secret=NGINX_SECRET) == (401, unauthorized)
        assert request(port, method, path, secret=CONTROL_SECRET,
                       source=OUTSIDER) == (403, forbidden)


def control_lines(log: str) -> list[dict[str, str | None]]:
    return [parse_fields(line) for line in log.splitlines() if " event=control " in line]


# --- authsvc serve -------------------------------------------------------------------


@pytest.fixture
def serve_config(tmp_path: Path) -> tuple[Path, int]:
    control = free_port()
    (tmp_path / "nginx-secret").write_text(NGINX_SECRET + "\n")
    (tmp_path / "map").write_text("bob@riseup.net: 127.0.0.2\n")
    config = tmp_path / "authsvc.toml"
    config.write_text(f"""
[map]
type = "file"
path = "{tmp_path / 'map'}"

[http]
secret_file = "{tmp_path / 'nginx-secret'}"
{control_section(tmp_path, control, CONTROL_SECRET)}
[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = {free_port()}
""")
    return config, control


def test_serve_control_listener_with_two_workers(serve_config: tuple[Path, int],
                                                 tmp_path: Path) -> None:
    config, control = serve_config
    with ServeProcess([config], tmp_path, workers=2) as serve:
        # Both workers serve the control port (and their peer sockets).
        eventually(lambda: serve.log_text().count("what=control") == 2, 20)
        # The operator's command, through [control] listen from --config.
        done = cli(config, "flush", "--all")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "dropped 0 cached route(s) in 2 worker(s)\n"
        done = cli(config, "flush", "--user", "bob@riseup.net", "--url",
                   f"http://127.0.0.1:{control}")
        assert done.returncode == 0, done.stderr
        assert done.stdout.endswith("in 2 worker(s)\n")
        assert cli(config, "throttle", "list").returncode == 0
        done = cli(config, "throttle", "clear", "192.0.2.1")
        assert (done.returncode, done.stdout) == (0, "cleared 0 counter(s) for 192.0.2.1\n")

        # The command with a wrong secret: one line, exit 1, nothing flushed.
        (tmp_path / "wrong-secret").write_text("not-the-secret\n")
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(config.read_text().replace(str(tmp_path / "control-secret"),
                                                    str(tmp_path / "wrong-secret")))
        done = cli(wrong, "flush", "--all")
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == ("authsvc flush: HTTP 401: unauthorized: send the control "
                               "secret in X-Authsvc-Control\n")

        assert_refusals(control)
        # serve's auth_http port does not take the control secret in its place.
        status, _ = request(serve.port, "POST", "/cache/flush", secret=CONTROL_SECRET)
        assert status == 403

        # The old place still answers for one release, and says so once per path.
        for _ in range(6):
            conn = http.client.HTTPConnection("127.0.0.1", serve.port, timeout=10)
            conn.request("POST", "/cache/flush", body="all=1", headers={
                "X-Authsvc-Key": NGINX_SECRET,
                "Content-Type": "application/x-www-form-urlencoded"})
            reply = conn.getresponse()
            assert reply.status == 200, reply.read()
            assert reply.read().endswith(b'"workers": 2, "failed": []}')
            conn.close()
        log = serve.log_text()
        warned = re.findall(r"pid=(\d+) .*event=deprecated path=/cache/flush", log)
        assert 1 <= len(warned) == len(set(warned)) <= 2, log

    log = serve.log_text()
    assert CONTROL_SECRET not in log and NGINX_SECRET not in log
    lines = control_lines(log)
    ok = [f for f in lines if f["result"] == "ok"]
    assert {f["command"] for f in ok} >= {"POST /cache/flush", "GET /throttle"}
    assert all(f["client"] == "127.0.0.1" and f["status"] == "200" for f in ok)
    refused = {(f["client"], f["command"], f["status"], f["result"])
               for f in lines if f["result"] != "ok"}
    assert refused == {
        ("127.0.0.1", "POST /cache/flush", "401", "unauthorized"),
        ("127.0.0.1", "GET /throttle", "401", "unauthorized"),
        (OUTSIDER, "POST /cache/flush", "403", "forbidden"),
        (OUTSIDER, "GET /throttle", "403", "forbidden"),
    }


# --- authsvc proxy -------------------------------------------------------------------


def login(port: int) -> None:
    """``LOGIN bob``: whatever the answer, the session line names the store it went to."""
    with RawLines("127.0.0.1", port) as lines:
        assert lines.line().startswith(b"* OK")
        lines.command(b"a LOGIN bob bob-secret", b"a")
        lines.command(b"b LOGOUT", b"b")


def sessions_by_pid(proxy: ProxyProcess, backend: str) -> set[str]:
    return {line["pid"] for line in proxy.lines("session") if line.get("backend") == backend}


def test_proxy_flush_reaches_every_worker(tmp_path: Path) -> None:
    require_binary("dovecot")
    with dovecot_stores(USERS, STORE_ADDRESSES) as stores:
        store = stores["b"]
        old = f"{STORE_ADDRESSES['b']}:{store.ports.imap}"
        new = f"{STORE_ADDRESSES['b']}:{free_port(STORE_ADDRESSES['b'])}"  # nobody listens
        port, control = free_port(), free_port()
        (tmp_path / "map").write_text(f"bob: {old}\n")
        config = tmp_path / "authsvc.toml"
        config.write_text(f"""
[proxy]
backend_timeout = 5
drain_timeout = 1
{control_section(tmp_path, control, CONTROL_SECRET)}
[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
bind = ["127.0.0.1:{port}"]
[listener.map]
type = "file"
path = "{tmp_path / 'map'}"
""")
        with ProxyProcess(config, tmp_path / "proxy.log", workers=2) as proxy:
            proxy.start(listening=4)  # each worker: the IMAP listener, the control port

            def both_workers_route_to(backend: str) -> bool:
                login(port)
                return len(sessions_by_pid(proxy, backend)) == 2

            # SO_REUSEPORT spreads the logins: both workers cache bob's route.
            eventually(lambda: both_workers_route_to(old), 30, interval=0)
            (tmp_path / "map").write_text(f"bob: {new}\n")
            # The file map looks at its file at most once a second (authsvc/maps/file.py):
            # past that, only the route cache still holds the old store.
            time.sleep(1.5)
            before = len(proxy.lines("session"))
            for _ in range(6):
                login(port)
            assert {line["backend"] for line in proxy.lines("session")[before:]} == {old}

            done = cli(config, "flush", "--user", "bob")
            assert done.returncode == 0, done.stderr
            assert done.stdout == "dropped 2 cached route(s) in 2 worker(s)\n"
            before = len(proxy.lines("session"))
            eventually(lambda: both_workers_route_to(new), 30, interval=0)
            assert {line["backend"] for line in proxy.lines("session")[before:]} == {new}

            assert_refusals(control)
            done = cli(config, "throttle", "list")
            assert done.returncode == 0, done.stderr
        log = proxy.log_text()
    assert CONTROL_SECRET not in log
    flushes = [f for f in control_lines(log) if f["command"] == "POST /cache/flush"
               and f["result"] == "ok"]
    assert len(flushes) == 1 and flushes[0]["client"] == "127.0.0.1"
    # The worker that took the request and the one it repeated it to.
    assert len(set(re.findall(r"pid=(\d+) logger=authsvc\.control event=flush", log))) == 2
