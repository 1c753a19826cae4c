"""Fault: a full descriptor table (EMFILE) in ``serve``, and ``proxy`` kept out of one.

Each runs as a subprocess under a low ``RLIMIT_NOFILE`` (set in the child
before exec).  Idle connections fill serve's descriptor table until ``accept``
fails; then they are released, and an nginx request to serve must work again:
the listener survived (Perdition's died on a failed accept,
docs/perdition-compatibility.md).  The proxy plans for its limit instead
(docs/proxy.md, "Limits"): the extra idle clients hear its temporary-failure
greeting, ``accept`` never fails, and a real login (imaplib through the proxy
to Dovecot) works once they leave.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_reload_proxy import HOST, World, login_subject, make_world
from tests.integration.test_reload_serve import ask, write_config, write_popmap
from tests.services.ports import free_port

pytestmark = pytest.mark.integration

#: Low enough to fill with a few idle connections, high enough to start.
NOFILE = 64
IDLE = 120


def _low_nofile() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def start(args: list[str], log: Path, ready: Callable[[], bool]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "authsvc", *args], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=_low_nofile)
    deadline = time.monotonic() + 20
    while not ready():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return process


def exhaust(port: int, log: Path, marker: str, hello: bytes = b"") -> list[socket.socket]:
    """Idle connections, each sending ``hello``, until the server logs that accept failed."""
    idle = []
    for _ in range(IDLE):
        sock = socket.create_connection((HOST, port), timeout=5)
        sock.sendall(hello)
        idle.append(sock)
    deadline = time.monotonic() + 10
    while marker not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    return idle


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        raise


def retry(action: Callable[[], str], want: str, seconds: float = 15.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        try:
            got = action()
        except Exception as exc:  # still recovering: the connection may be refused or cut
            got = f"{type(exc).__name__}: {exc}"
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with make_world(tmp_path_factory.mktemp("emfile")) as w:
        yield w


def test_proxy_refuses_idle_clients_before_its_descriptors_run_out(
    world: World, tmp_path: Path
) -> None:
    """At 64 descriptors the derived preauth_limit is 10: the rest hear why, none is reset."""
    world.write_popmap("a")
    world.write_config()
    log = tmp_path / "proxy.log"
    process = start(["proxy", "-c", str(world.config)], log,
                    lambda: log.read_text().count("event=listening") >= 2)
    try:
        assert "preauth_limit=10 " in log.read_text()  # (64 - 32) // 3
        assert login_subject(world, "alice") == "store-a"
        idle: list[socket.socket] = []
        heard: list[socket.socket] = []
        for _ in range(IDLE):
            sock = socket.create_connection((HOST, world.ports["imap4"]), timeout=5)
            line = sock.makefile("rb").readline()
            (idle if line.startswith(b"* OK") else heard).append(sock)
            if not line.startswith(b"* OK"):
                assert line == b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
                assert sock.recv(1) == b""
        assert (len(idle), len(heard)) == (10, IDLE - 10)
        assert process.poll() is None
        assert "event=accept_failed" not in log.read_text()
        for sock in idle + heard:
            sock.close()
        assert retry(lambda: login_subject(world, "alice"), "store-a") == "store-a"
        assert login_subject(world, "bob", tls="implicit") == "store-b"
    finally:
        code = stop(process)
    assert code == 0


def test_serve_listener_survives_emfile(tmp_path: Path) -> None:
    write_popmap(tmp_path / "popmap", "127.0.0.2")
    config = write_config(tmp_path)
    port = free_port(HOST)
    log = tmp_path / "serve.log"
    process = start(["serve", "-c", str(config), "--listen", f"{HOST}:{port}"], log,
                    lambda: "event=listening" in log.read_text())
    try:
        assert ask(port, "alice")["Auth-Server"] == "127.0.0.2"
        # Each sends the start of a head and waits: serve's listening socket
        # defers accept until data arrives (site.py), and holds a connection
        # whose head is incomplete.  Its acceptor pauses and retries a second later.
        idle = exhaust(port, log, "event=accept_failed", b"GET /auth HTTP/1.0\r\n")
        assert process.poll() is None
        for sock in idle:
            sock.close()
        assert retry(lambda: ask(port, "alice")["Auth-Server"], "127.0.0.2") == "127.0.0.2"
    finally:
        code = stop(process)
    assert code == 0
