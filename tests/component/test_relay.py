"""After login: both relays (zero copy with splice(2), and user space).

Each behaviour is checked on both paths (``zero_copy`` on and off, real
loopback sockets, the scripted store): backpressure, half-close, the idle
timeout, a store that dies mid-session, a 20 MB transfer each way arriving
byte for byte, a kick, a drain, and the byte counts of the session line and
``/metrics``.  A plain session starts in user space and goes zero copy once
a direction has moved ``relay.SPLICE_AFTER`` bytes; the ``zero_copy`` tests
set that to 0 so the spliced path is the one tested from the first byte,
and the 20 MB transfer, the ``/metrics`` count and the fallbacks cross it
with the default, switching mid-stream.  The zero-copy relay's fallbacks
are checked by making ``splice`` refuse the descriptors and ``pipe2`` or
``dup`` find none free.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from authsvc.proxy import relay as relay_module
from authsvc.proxy import zerocopy
from authsvc.proxy.session import Session

from authsvc.settings import ThrottleSettings
from tests.component.conftest import FAST, Proxy, running, seed_listeners, write_map
from tests.component.fakestore import FakeStore
from tests.component.test_observability import get, start
from tests.helpers.eventually import eventually_async
from tests.helpers.prometheus import Scrape
from tests.services.certs import ServerCert
from tests.services.require import require

#: The rule the proxy runs with, before a fixture sets it to 0.
SPLICE_AFTER = relay_module.SPLICE_AFTER


def require_splice() -> None:
    """The zero-copy relay needs ``os.splice``: missing skips locally, fails under CI=true."""
    require(zerocopy.splice_available(),
            "os.splice is Linux-only (the user-space relay is used elsewhere)")


@pytest.fixture(params=[True, False], ids=["zero_copy", "user_space"])
def zero_copy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Which relay; zero copy from the first byte after login (``SPLICE_AFTER`` 0)."""
    value = request.param
    assert isinstance(value, bool)
    if value:
        require_splice()
    monkeypatch.setattr(relay_module, "SPLICE_AFTER", 0)
    return value


def logged_in(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"a LOGIN bob good\r\n")
    data = b""
    while b"a OK" not in data:
        data += sock.recv(4096)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = bytearray()
    while marker not in data[-4096:]:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def line_with(sock: socket.socket, marker: bytes) -> bytes:
    """Read up to the end of the line that holds ``marker``."""
    data = b""
    while marker not in data or not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


async def relaying(proxy: Proxy, zero_copy: bool, count: int = 1) -> list[Session]:
    """The logged-in sessions, once ``count`` relay on the path the test asked for."""
    def ready() -> list[Session]:
        sessions = [s for s in proxy.server.relayed()
                    if s.facts(0) is not None and s.client is not None
                    and s.client.detached == zero_copy]
        return sessions if len(sessions) == count else []

    return await eventually_async(ready)


def session_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    found = (getattr(r, "fields", None) for r in caplog.records)
    return [f for f in found if isinstance(f, dict) and f.get("event") == "session"]


async def test_backpressure_pauses_a_fast_store_for_a_slow_client(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, zero_copy: bool
) -> None:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    # Larger than the sockets' kernel buffers can hold, even autotuned up to
    # tcp_rmem's and tcp_wmem's maximum (tcp(7); tens of MB on some hosts).
    size = 64 * 1024 * 1024
    proxy_settings = replace(FAST, zero_copy=zero_copy)
    async with running(seed_listeners(path, pki), proxy_settings) as proxy:
        sock = await asyncio.to_thread(logged_in, (proxy.host("imap4"), proxy.port("imap4")))
        await relaying(proxy, zero_copy)
        sock.sendall(b"f FLOOD %d\r\n" % size)
        # The client reads nothing: the store must be held back (the proxy
        # stops reading it), not buffered in the proxy's memory.
        previous = -1
        while imap_store.flooded != previous:
            previous = imap_store.flooded
            await asyncio.sleep(0.3)
        assert 0 < imap_store.flooded < size // 2
        data = await asyncio.to_thread(read_until, sock, b"f OK flooded\r\n")
        sock.close()
    header = b"* FLOOD {%d}\r\n" % size
    assert data.startswith(header)
    assert len(data) == len(header) + size + len(b"f OK flooded\r\n")
    assert imap_store.flooded == size


async def test_half_close_still_gets_the_answer(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, zero_copy: bool
) -> None:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    async with running(seed_listeners(path, pki), replace(FAST, zero_copy=zero_copy)) as proxy:
        sock = await asyncio.to_thread(logged_in, (proxy.host("imap4"), proxy.port("imap4")))
        await relaying(proxy, zero_copy)

        def half_close() -> bytes:
            sock.sendall(b"b NOOP\r\n")
            sock.shutdown(socket.SHUT_WR)
            data = to_eof(sock)
            sock.close()
            return data

        assert await asyncio.to_thread(half_close) == b"b OK NOOP done\r\n"
    assert imap_store.commands == [b"b NOOP"]


async def test_idle_timeout_closes_a_quiet_session(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, zero_copy: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "proxy.session")
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    listeners = seed_listeners(path, pki, idle_timeout=0.3)
    async with running(listeners, replace(FAST, zero_copy=zero_copy)) as proxy:
        def idle() -> bytes:
            sock = logged_in((proxy.host("imap4"), proxy.port("imap4")))
            sock.sendall(b"b NOOP\r\n")
            data = to_eof(sock)  # EOF once idle
            sock.close()
            return data

        assert await asyncio.to_thread(idle) == b"b OK NOOP done\r\n"
        line = await eventually_async(lambda: session_lines(caplog))
    assert line[0]["end"] == "idle_timeout"


async def test_a_dead_store_ends_only_its_own_sessions(
    tmp_path: Path, pki: ServerCert, zero_copy: bool
) -> None:
    store_a, store_b = FakeStore("imap"), FakeStore("imap")
    await store_a.start()
    await store_b.start()
    path = write_map(tmp_path / "map", {"bob@riseup.net": store_a, "alice@riseup.net": store_b})
    try:
        async with running(seed_listeners(path, pki),
                           replace(FAST, zero_copy=zero_copy)) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            bob = await asyncio.to_thread(logged_in, address)

            def alice_login() -> socket.socket:
                sock = socket.create_connection(address, timeout=5)
                sock.sendall(b"a LOGIN alice alice-pw\r\n")
                assert b"a OK" in read_until(sock, b"a OK")
                return sock

            alice = await asyncio.to_thread(alice_login)
            await relaying(proxy, zero_copy, count=2)
            await store_a.stop()  # bob's store goes away mid-session
            assert await asyncio.to_thread(to_eof, bob) == b""
            alice.sendall(b"b SELECT INBOX\r\n")
            assert (await asyncio.to_thread(read_until, alice, b"b OK")).endswith(
                b"b OK [READ-WRITE] SELECT done\r\n")
            bob.close()
            alice.close()
    finally:
        await store_a.stop()
        await store_b.stop()


def transfer(sock: socket.socket, upload: bytes) -> tuple[bytes, int]:
    """FETCH the store's message while APPENDing ``upload``; all the client read, and sent."""
    sent = 0
    received: list[bytes] = []

    def reader() -> None:
        received.append(read_until(sock, b"u OK APPEND done\r\n"))

    thread = threading.Thread(target=reader)
    thread.start()
    commands = b"f FETCH 1 BODY[]\r\nu APPEND INBOX {%d+}\r\n" % len(upload)
    sock.sendall(commands)
    sock.sendall(upload)
    sock.sendall(b"\r\n")
    sent = len(commands) + len(upload) + 2
    thread.join(60)
    return received[0], sent


async def test_20_mb_each_way_arrives_byte_exact_and_is_counted(
    tmp_path: Path, pki: ServerCert, zero_copy: bool, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The proxy's own rule: user space first, zero copy from SPLICE_AFTER
    # bytes on, so the transfer switches relays mid-stream.
    monkeypatch.setattr(relay_module, "SPLICE_AFTER", SPLICE_AFTER)
    caplog.set_level(logging.INFO, "proxy.session")
    size = 20 * 1024 * 1024
    store = FakeStore("imap", message=os.urandom(size))
    await store.start()
    upload = os.urandom(size)
    path = write_map(tmp_path / "map", {"bob@riseup.net": store})
    try:
        async with running(seed_listeners(path, pki),
                           replace(FAST, zero_copy=zero_copy)) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            sock = socket.create_connection(address, timeout=30)
            before_login = await asyncio.to_thread(line_with, sock, b"* OK")
            login = b"a LOGIN bob good\r\n"
            sock.sendall(login)
            before_login += await asyncio.to_thread(line_with, sock, b"a OK")
            [session] = await relaying(proxy, zero_copy=False)
            data, sent = await asyncio.to_thread(transfer, sock, upload)
            assert session.client is not None
            assert session.client.detached == zero_copy
            head = b"* 1 FETCH (BODY[] {%d}\r\n" % size
            assert data.startswith(head)
            assert data[len(head):len(head) + size] == store.message  # byte for byte
            assert data[len(head) + size:] == b")\r\nf OK FETCH done\r\nu OK APPEND done\r\n"
            assert store.commands[-1] == b"u APPEND INBOX \x00LIT" + upload + b"\x00"
            # Live counts (``authsvc sessions list``, /metrics) while it relays...
            facts = session.facts(0)
            assert facts is not None
            assert facts.bytes_in == len(login) + sent
            assert facts.bytes_out == len(before_login) + len(data)
            sock.close()
            line = await eventually_async(lambda: session_lines(caplog))
    finally:
        await store.stop()
    # ...and the session line once it has ended.
    assert line[0]["end"] == "client_eof"
    assert line[0]["bytes_in"] == len(login) + sent
    assert line[0]["bytes_out"] == len(before_login) + len(data)


async def test_a_short_session_stays_in_user_space(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, caplog: pytest.LogCaptureFixture,
) -> None:
    """A login, SELECT, LOGOUT moves far less than SPLICE_AFTER: no hand-over is paid."""
    require_splice()
    caplog.set_level(logging.INFO, "proxy.session")
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    async with running(seed_listeners(path, pki)) as proxy:
        sock = await asyncio.to_thread(logged_in, (proxy.host("imap4"), proxy.port("imap4")))
        [session] = await relaying(proxy, zero_copy=False)
        sock.sendall(b"b SELECT INBOX\r\n")
        await asyncio.to_thread(read_until, sock, b"b OK")
        assert session.client is not None and not session.client.detached
        sock.sendall(b"z LOGOUT\r\n")
        assert (await asyncio.to_thread(to_eof, sock)).endswith(b"z OK LOGOUT done\r\n")
        sock.close()
        line = await eventually_async(lambda: session_lines(caplog))
    assert line[0]["end"] == "backend_eof"


async def test_kick_closes_both_sides_at_once(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, zero_copy: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "proxy.session")
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    async with running(seed_listeners(path, pki), replace(FAST, zero_copy=zero_copy)) as proxy:
        address = (proxy.host("imap4"), proxy.port("imap4"))
        kept = await asyncio.to_thread(logged_in, address)
        kicked = await asyncio.to_thread(logged_in, address)
        first, second = await relaying(proxy, zero_copy, count=2)
        assert second.kick()
        assert not second.kick()  # once
        assert await asyncio.to_thread(to_eof, kicked) == b""
        line = await eventually_async(lambda: session_lines(caplog))
        assert line[0]["end"] == "kicked"
        assert line[0]["session"] == second.record.session
        # The other session relays on.
        kept.sendall(b"b NOOP\r\n")
        assert await asyncio.to_thread(read_until, kept, b"b OK") == b"b OK NOOP done\r\n"
        assert first.facts(0) is not None
        kept.close()
        kicked.close()


async def test_drain_lets_a_session_finish_and_cuts_the_rest_at_the_timeout(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, zero_copy: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "proxy.session")
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    async with running(seed_listeners(path, pki), replace(FAST, zero_copy=zero_copy)) as proxy:
        address = (proxy.host("imap4"), proxy.port("imap4"))
        finishing = await asyncio.to_thread(logged_in, address)
        lingering = await asyncio.to_thread(logged_in, address)
        await relaying(proxy, zero_copy, count=2)
        drain_timeout = 1.0
        stop = asyncio.ensure_future(proxy.server.stop(drain_timeout))
        await eventually_async(lambda: not proxy.server.addresses("imap4"))
        # During the drain a session still relays both ways, and may log out.
        finishing.sendall(b"z LOGOUT\r\n")
        assert (await asyncio.to_thread(to_eof, finishing)).endswith(b"z OK LOGOUT done\r\n")
        finishing.close()
        # The other is closed at the timeout with nothing added to its stream.
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await asyncio.to_thread(to_eof, lingering) == b""
        await stop
        assert loop.time() - began < drain_timeout + 1.0
        ends = sorted(str(f["end"]) for f in session_lines(caplog))
        assert ends == ["backend_eof", "shutdown"]
        lingering.close()


async def test_metrics_count_the_bytes_of_a_spliced_session(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    require_splice()
    imap_store.message = os.urandom(1_000_000)
    async with start(tmp_path, pki, imap_store, ThrottleSettings()) as running_proxy:
        address = running_proxy.address("imap4")
        sock = socket.create_connection(address, timeout=10)
        received = await asyncio.to_thread(line_with, sock, b"* OK")
        sent = b"a LOGIN bob good\r\nf FETCH 1 BODY[]\r\n"
        sock.sendall(sent)
        received += await asyncio.to_thread(read_until, sock, b"f OK FETCH done\r\n")
        [session] = [s for s in running_proxy.server.relayed() if s.client is not None]
        assert session.client is not None and session.client.detached

        async def counted() -> bool:
            _, text = await get(running_proxy.health + "/metrics")
            got = Scrape(text)
            assert got.value("authsvc_proxy_bytes_total", listener="imap4",
                             direction="in") == len(sent)
            assert got.value("authsvc_proxy_bytes_total", listener="imap4",
                             direction="out") == len(received)
            return True

        await eventually_async(counted)
        sock.close()


@pytest.mark.parametrize("refusal", ["splice_einval", "no_pipe"])
async def test_a_refused_splice_or_pipe_falls_back_to_copying_on_the_same_sockets(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, refusal: str,
) -> None:
    require_splice()

    def refuse(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EINVAL, "splice refused")

    def no_pipe(flags: int) -> tuple[int, int]:
        raise OSError(errno.EMFILE, "out of descriptors")

    if refusal == "splice_einval":
        monkeypatch.setattr(zerocopy, "_SPLICE", refuse)
    else:
        monkeypatch.setattr(os, "pipe2", no_pipe)
    caplog.set_level(logging.INFO, "proxy.session")
    imap_store.message = os.urandom(3_000_000)
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    async with running(seed_listeners(path, pki)) as proxy:
        sock = await asyncio.to_thread(logged_in, (proxy.host("imap4"), proxy.port("imap4")))
        [session] = await relaying(proxy, zero_copy=False)
        # 3 MB crosses SPLICE_AFTER: the relay hands over, and the refusal
        # comes on the spliced path.
        sock.sendall(b"f FETCH 1 BODY[]\r\n")
        data = await asyncio.to_thread(read_until, sock, b"f OK FETCH done\r\n")
        assert imap_store.message in data
        assert session.client is not None and session.client.detached
        sock.shutdown(socket.SHUT_WR)
        assert await asyncio.to_thread(to_eof, sock) == b""
        sock.close()
        line = await eventually_async(lambda: session_lines(caplog))
    assert line[0]["end"] == "client_eof"
