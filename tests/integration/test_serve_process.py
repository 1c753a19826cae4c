"""``authsvc serve`` as a real subprocess: two workers, metrics totals, flush, signals.

The map is MySQL on the shared MariaDB (a database of our own, ``mariadb_db``),
configured from native TOML as an operator would.  Logging is at debug with
aiohttp's access log on, and the test checks that no form of the password
reached the log.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.prometheus import Scrape
from tests.services.mariadb import TestDatabase
from tests.services.ports import free_port

pytestmark = pytest.mark.integration

SECRET = "proc-secret-42"
PASSWORD = b"Sub Pr0cess%pw+"
ROWS = [("procbob@riseup.net", "127.0.0.2"), ("procalice@riseup.net", "127.0.0.3")]


def escape(raw: bytes) -> bytes:
    """nginx's Auth-User/Auth-Pass escaping (NGX_ESCAPE_MAIL_AUTH, ngx_string.c)."""
    return b"".join(b"%%%02X" % b if b <= 0x20 or b == 0x25 else bytes([b]) for b in raw)


def nginx_request(user: bytes, attempt: int = 1) -> bytes:
    return (
        b"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
        b"Auth-User: " + escape(user) + b"\r\nAuth-Pass: " + escape(PASSWORD) + b"\r\n"
        b"Auth-Protocol: imap\r\nAuth-Login-Attempt: " + str(attempt).encode() + b"\r\n"
        b"Client-IP: 192.0.2.9\r\nX-Authsvc-Listener: imap4\r\n"
        b"X-Authsvc-Local-Name: mail.riseup.net\r\nX-Authsvc-Key: " + SECRET.encode() +
        b"\r\n\r\n"
    )


def ask(address: tuple[str, int] | str, request: bytes) -> dict[str, str]:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(address)
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return dict(line.split(": ", 1) for line in head.split("\r\n")[1:])


def write_config(tmp: Path, db: TestDatabase) -> Path:
    (tmp / "secret").write_text(SECRET + "\n")
    password = db.write_password_file(tmp / "db-password")
    config = tmp / "authsvc.toml"
    config.write_text(f"""
[login]
lower_case = ["lookup", "backend_login"]
add_domain = ["lookup"]
explicit_domain = "riseup.net"

[map]
type = "mysql"
hosts = ["{db.host}:{db.port}"]
database = "{db.name}"
table = "mailboxes"
user = "{db.reader_user}"
password_file = "{password}"
server_column = "storage_ip"
user_column = "address"
port_constant = 143

[http]
secret_file = "{tmp / 'secret'}"

[log]
level = "debug"
connection_logging = true

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = {free_port()}
""")
    return config


class Serve:
    """``python -m authsvc serve ...`` with its log in a file."""

    def __init__(self, config: Path, log: Path, *where: str, workers: int = 2) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "authsvc", "serve", "-c", str(config), *where,
                 "--workers", str(workers)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.text())) < count:
            assert self.process.poll() is None, self.text()
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} x{count} not in log:\n{self.text()}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
            raise


@pytest.fixture
def config(tmp_path: Path, mariadb_db: TestDatabase) -> Path:
    for address, store in ROWS:
        mariadb_db.set_storage(address, store)
    return write_config(tmp_path, mariadb_db)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - our loopback URL
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def flush_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authsvc", "flush", "-c", str(config), *args],
        capture_output=True, text=True, timeout=30, check=False)


def map_label(db: TestDatabase) -> str:
    """write_config's map has no name: its label is the first host, database and table."""
    return f"mysql:{db.host}:{db.port}/{db.name}.mailboxes"


def test_two_workers_totals_flush_and_signals(config: Path, tmp_path: Path,
                                              mariadb_db: TestDatabase) -> None:
    label = map_label(mariadb_db)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = Serve(config, tmp_path / "serve.log", "--listen", f"127.0.0.1:{port}")
    try:
        serve.wait_for(r"event=listening", count=2)
        for n in range(40):  # a fresh connection each, as nginx does
            user = b"ProcBob" if n % 2 else b"procalice"
            reply = ask(("127.0.0.1", port), nginx_request(user))
            assert reply["Auth-Status"] == "OK"
            assert reply["Auth-Server"] == ("127.0.0.2" if n % 2 else "127.0.0.3")
        serve.wait_for(r"event=auth ", count=40)
        pids = set(re.findall(r"pid=(\d+) logger=authsvc\.auth", serve.text()))
        assert len(pids) == 2, "SO_REUSEPORT spread 40 connections over one worker only"

        for _ in range(6):  # whichever worker answers, the totals are the same
            status, text = get(base + "/metrics")
            assert status == 200
            got = Scrape(text)
            assert got.value("authsvc_auth_decisions_total", protocol="imap", result="ok") == 40
            assert got.value("authsvc_auth_duration_seconds_count") == 40
            assert got.value("authsvc_workers") == 2
            # One map, named by what identifies it (docs/maps.md), in both workers' files.
            assert got.label_values("authsvc_map_up", "map") == {label}
        # Cache counters reach the other worker's file within a second (metrics.py).
        deadline = time.monotonic() + 5
        while True:
            got = Scrape(get(base + "/metrics")[1])
            lookups = (got.value("authsvc_cache_hits_total", map=label)
                       + got.value("authsvc_cache_misses_total", map=label))
            if lookups == 40 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert lookups == 40

        done = flush_cli(config, "--user", "procbob@riseup.net", "--url", base)
        assert done.returncode == 0, done.stderr
        assert re.fullmatch(r"dropped 2 cached route\(s\) in 2 worker\(s\)\n", done.stdout)

        serve.process.send_signal(signal.SIGHUP)
        serve.wait_for(r"event=reloaded", count=2)  # every worker reloads
        assert ask(("127.0.0.1", port), nginx_request(b"procbob"))["Auth-Status"] == "OK"
        assert serve.process.poll() is None
    finally:
        code = serve.stop()
    assert code == 0, serve.text()
    log = serve.text()
    assert log.count("event=stopped") == 2
    assert "aiohttp.access" in log
    assert "level=debug" in log
    for form in (PASSWORD, escape(PASSWORD), base64.b64encode(PASSWORD),
                 base64.b64encode(b"\0procbob\0" + PASSWORD)):
        assert form.decode() not in log
    assert SECRET not in log


def test_unix_socket_with_two_workers(config: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "auth.sock")
    serve = Serve(config, tmp_path / "serve.log", "--unix", path)
    try:
        serve.wait_for(r"event=listening", count=2)
        for _ in range(10):
            assert ask(path, nginx_request(b"procalice"))["Auth-Server"] == "127.0.0.3"
        done = flush_cli(config, "--all", "--url", f"unix:{path}")
        assert done.returncode == 0, done.stderr
        assert done.stdout.endswith("in 2 worker(s)\n")
    finally:
        code = serve.stop()
    assert code == 0, serve.text()
    assert not os.path.exists(path)


def test_busy_port_and_bad_config_exit_non_zero(config: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        serve = Serve(config, tmp_path / "busy.log", "--listen", f"127.0.0.1:{port}",
                      workers=1)
        assert serve.process.wait(20) == 1
    assert "cannot listen on 127.0.0.1:" in serve.text()
    (tmp_path / "bad.toml").write_text("[http]\nauth_wait = -1\n")
    bad = Serve(tmp_path / "bad.toml", tmp_path / "bad.log", workers=1)
    assert bad.process.wait(20) == 2


def test_a_killed_worker_is_replaced_and_its_counts_stay(config: Path, tmp_path: Path,
                                                          mariadb_db: TestDatabase) -> None:
    port = free_port()
    serve = Serve(config, tmp_path / "serve.log", "--listen", f"127.0.0.1:{port}")
    try:
        serve.wait_for(r"event=listening", count=2)
        for _ in range(20):
            assert ask(("127.0.0.1", port), nginx_request(b"procbob"))["Auth-Status"] == "OK"
        victim = int(re.findall(r"event=worker_started worker=(\d+)", serve.text())[0])
        os.kill(victim, signal.SIGKILL)
        serve.wait_for(rf"event=worker_died worker={victim} code=-9")
        serve.wait_for(r"event=listening", count=3)
        for _ in range(5):
            assert ask(("127.0.0.1", port), nginx_request(b"procbob"))["Auth-Status"] == "OK"
        got = Scrape(get(f"http://127.0.0.1:{port}/metrics")[1])
        assert got.value("authsvc_auth_decisions_total", protocol="imap", result="ok") == 25
        assert got.value("authsvc_workers") == 2
        assert got.value("authsvc_map_up", map=map_label(mariadb_db)) == 1
    finally:
        code = serve.stop()
    assert code == 0, serve.text()
