"""Hot reload of ``authsvc serve``: SIGHUP under a steady stream of nginx requests.

``python -m authsvc serve`` with a popmap, one worker and two; raw nginx
``auth_http`` requests from several threads must all get their route while
SIGHUPs arrive, and a moved route must be answered within a second.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.eventually import eventually
from tests.helpers.prometheus import Scrape
from tests.services.serve import ServeProcess

pytestmark = pytest.mark.integration

SECRET = "reload-secret"


def request(user: str) -> bytes:
    return (
        f"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
        f"Auth-User: {user}\r\nAuth-Pass: pw\r\nAuth-Protocol: imap\r\n"
        f"Auth-Login-Attempt: 1\r\nClient-IP: 192.0.2.9\r\nX-Authsvc-Listener: imap4\r\n"
        f"X-Authsvc-Key: {SECRET}\r\n\r\n"
    ).encode()


def ask(port: int, user: str) -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request(user))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.") and " 200 " in head.split("\r\n")[0], head
    return dict(line.split(": ", 1) for line in head.split("\r\n")[1:])


def write_popmap(path: Path, carol: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(f"alice@riseup.net: 127.0.0.2:1143\ncarol@riseup.net: {carol}:1143\n")
    tmp.rename(path)


def write_config(tmp: Path, *, extra: str = "", popmap: str = "popmap", ttl: int = 300) -> Path:
    (tmp / "secret").write_text(SECRET + "\n")
    config = tmp / "authsvc.toml"
    config.write_text(f"""
[login]
lower_case = ["all"]
explicit_domain = "riseup.net"
add_domain = ["lookup"]

[cache]
ttl = {ttl}

[map]
type = "file"
path = "{tmp / popmap}"

[http]
secret_file = "{tmp / 'secret'}"

[log]
level = "info"

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = 1143
{extra}""")
    return config


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServeProcess]:
    write_popmap(tmp_path / "popmap", "127.0.0.2")
    config = write_config(tmp_path)
    process = ServeProcess([config], tmp_path, workers=request.param)
    process.start()
    yield process
    process.stop()


def log_count(serve: ServeProcess, event: str) -> int:
    return serve.log_text().count(f"event={event}")


def wait_for(serve: ServeProcess, event: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while log_count(serve, event) < count:
        assert time.monotonic() < deadline, serve.log_tail()
        time.sleep(0.05)


def test_sighup_under_load_fails_no_request_and_moves_a_route(
    serve: ServeProcess, tmp_path: Path
) -> None:
    assert serve.pid is not None
    workers = serve.workers
    wait_for(serve, "listening", workers)
    assert ask(serve.port, "carol")["Auth-Server"] == "127.0.0.2"
    stop = threading.Event()
    answered = [0]
    failures: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                headers = ask(serve.port, "alice")
                if headers.get("Auth-Status") != "OK" or headers.get("Auth-Server") != "127.0.0.2":
                    failures.append(repr(headers))
                answered[0] += 1
            except Exception as exc:  # a dropped connection or a refused request
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            os.kill(serve.pid, signal.SIGHUP)
            time.sleep(0.2)
        write_popmap(tmp_path / "popmap", "127.0.0.3")
        os.kill(serve.pid, signal.SIGHUP)
        moved_at = time.monotonic()
        servers = []
        while time.monotonic() - moved_at < 1.0:
            # Several answers in a row, so each worker is asked (SO_REUSEPORT).
            servers = [ask(serve.port, "carol")["Auth-Server"] for _ in range(6)]
            if set(servers) == {"127.0.0.3"}:
                break
        before = answered[0]
        eventually(lambda: answered[0] >= before + 20, what="20 answers after the move")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert failures == []
    assert set(servers) == {"127.0.0.3"}, servers
    wait_for(serve, "reloaded", 4 * workers)
    assert log_count(serve, "reload_failed") == 0


def test_invalid_config_is_refused_and_counted(serve: ServeProcess, tmp_path: Path) -> None:
    assert serve.pid is not None
    # The broken config also names another popmap: it must not be taken.
    write_popmap(tmp_path / "popmap2", "127.0.0.3")
    write_config(tmp_path, extra="[bogus]\nkey = 1\n", popmap="popmap2")
    os.kill(serve.pid, signal.SIGHUP)
    wait_for(serve, "reload_failed", serve.workers)
    assert {ask(serve.port, "carol")["Auth-Server"] for _ in range(6)} == {"127.0.0.2"}
    status, metrics = serve.get("/metrics")
    assert status == 200
    assert f'authsvc_reloads_total{{result="failed"}} {serve.workers}' in metrics


def test_a_reload_keeps_a_maps_series_across_a_ttl_change_and_drops_a_retired_one(
    serve: ServeProcess, tmp_path: Path
) -> None:
    assert serve.pid is not None
    wait_for(serve, "listening", serve.workers)

    def map_labels() -> set[str]:
        status, text = serve.get("/metrics")
        assert status == 200
        got = Scrape(text)
        labels = got.label_values("authsvc_map_up", "map")
        assert got.label_values("authsvc_cache_hits_total", "map") == labels
        return labels

    first = {f"file:{tmp_path / 'popmap'}"}
    assert map_labels() == first
    write_config(tmp_path, ttl=30)  # the cache's TTL is not part of the map's name
    os.kill(serve.pid, signal.SIGHUP)
    wait_for(serve, "reloaded", serve.workers)
    assert {frozenset(map_labels()) for _ in range(4)} == {frozenset(first)}

    write_popmap(tmp_path / "popmap2", "127.0.0.3")
    write_config(tmp_path, popmap="popmap2")
    os.kill(serve.pid, signal.SIGHUP)
    wait_for(serve, "reloaded", 2 * serve.workers)
    assert ask(serve.port, "carol")["Auth-Server"] == "127.0.0.3"
    # Whichever worker answers: the retired map's series are gone.
    assert {frozenset(map_labels()) for _ in range(4)} == {
        frozenset({f"file:{tmp_path / 'popmap2'}"})}
