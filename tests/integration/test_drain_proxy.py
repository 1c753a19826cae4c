"""Graceful drain of ``authsvc proxy`` on SIGTERM, with real Dovecot stores.

100 logged-in sessions are idle when SIGTERM arrives, logins keep arriving,
and one client sits before login.  What each must see:

* new connections are refused, and ``/readyz`` answers 503 while draining;
* the client before login gets ``* BYE [UNAVAILABLE] ...`` and is closed;
* a relayed session that logs out during the drain finishes normally;
* the rest are closed at ``drain_timeout`` with nothing injected into the
  relayed stream (the proxy cannot know where the store's line ends);
* the process exits 0.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.eventually import eventually
from tests.integration.test_reload_proxy import HOST, PASSWORDS, World, login_subject, make_world
from tests.services.proxy import ProxyProcess

pytestmark = pytest.mark.integration

SESSIONS = 100
FINISHING = 10  # of the SESSIONS, how many log out during the drain


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with make_world(tmp_path_factory.mktemp("drain")) as w:
        yield w


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {data!r}")
        data += chunk
    return data


def logged_in(world: World, index: int) -> socket.socket:
    user = "alice" if index % 2 else "bob"
    sock = socket.create_connection((HOST, world.ports["imap4"]), timeout=10)
    read_until(sock, b"\r\n")
    sock.sendall(f"a LOGIN {user} {PASSWORDS[user]}\r\n".encode())
    read_until(sock, b"a OK")
    return sock


def rest_of_stream(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Everything until the peer closes (raises on timeout: the session was not closed)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def readyz(port: int) -> str:
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            return rest_of_stream(sock, 5).split(b"\r\n", 1)[0].decode()
    except OSError as exc:
        return f"{type(exc).__name__}"


def test_sigterm_drains_100_relayed_sessions_and_exits_0(world: World, tmp_path: Path) -> None:
    world.write_popmap("a")
    world.write_config()  # drain_timeout = 2
    proxy = ProxyProcess(world.config, tmp_path / "proxy.log")
    proxy.start(listening=2)
    assert proxy.process is not None
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        held = list(pool.map(lambda i: logged_in(world, i), range(SESSIONS)))
    waiting = socket.create_connection((HOST, world.ports["imap4"]), timeout=10)
    assert read_until(waiting, b"\r\n").startswith(b"* OK")
    assert readyz(world.ports["health"]).endswith("200 OK")

    # Logins keep arriving while the proxy stops: each either works or is
    # refused/closed cleanly; none may hang or read a wrong mailbox.
    stop = threading.Event()
    arriving: list[str] = []

    def arrive() -> None:
        while not stop.is_set():
            try:
                arriving.append(login_subject(world, "alice"))
            except OSError as exc:
                arriving.append(type(exc).__name__)
            except Exception as exc:  # imaplib.abort etc: closed during drain
                arriving.append(type(exc).__name__)

    thread = threading.Thread(target=arrive, daemon=True)
    thread.start()
    eventually(lambda: "store-a" in arriving, what="a login before SIGTERM")
    os.kill(proxy.process.pid, signal.SIGTERM)
    # The pre-login client is told, then closed.
    goodbye = rest_of_stream(waiting)
    assert goodbye == b"* BYE [UNAVAILABLE] Server shutting down, try again later.\r\n"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, world.ports["imap4"]), timeout=2)
    assert "503" in readyz(world.ports["health"])
    # Some sessions finish on their own during the drain...
    for sock in held[:FINISHING]:
        sock.sendall(b"z LOGOUT\r\n")
        ending = rest_of_stream(sock)
        assert b"* BYE" in ending and b"z OK" in ending
    # ...the rest are closed at drain_timeout, with not one byte injected.
    for sock in held[FINISHING:]:
        assert rest_of_stream(sock) == b""
    assert proxy.process.wait(20) == 0
    stop.set()
    thread.join(20)
    assert arriving and set(arriving) <= {"store-a", "ConnectionRefusedError", "abort",
                                           "ConnectionResetError", "error"}, set(arriving)
    ends = [line.get("end") for line in proxy.lines("session")]
    assert ends.count("shutdown") >= SESSIONS - FINISHING
    for sock in [*held, waiting]:
        sock.close()
