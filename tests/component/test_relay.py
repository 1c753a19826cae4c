"""After login: backpressure, half-close, the idle timeout, a store that dies mid-session."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests.component.conftest import running, seed_listeners, write_map
from tests.component.fakestore import FakeStore
from tests.services.certs import ServerCert


def logged_in(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=5)
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


async def test_backpressure_pauses_a_fast_store_for_a_slow_client(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    size = 32 * 1024 * 1024
    async with running(seed_listeners(path, pki)) as proxy:
        sock = await asyncio.to_thread(logged_in, (proxy.host("imap4"), proxy.port("imap4")))
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
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    async with running(seed_listeners(path, pki)) as proxy:
        def half_close() -> bytes:
            sock = logged_in((proxy.host("imap4"), proxy.port("imap4")))
            sock.sendall(b"b NOOP\r\n")
            sock.shutdown(socket.SHUT_WR)
            data = read_until(sock, b"\x00never")  # to EOF
            sock.close()
            return data

        assert await asyncio.to_thread(half_close) == b"b OK NOOP done\r\n"


async def test_idle_timeout_closes_a_quiet_session(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    async with running(seed_listeners(path, pki, idle_timeout=0.3)) as proxy:
        def idle() -> bytes:
            sock = logged_in((proxy.host("imap4"), proxy.port("imap4")))
            sock.sendall(b"b NOOP\r\n")
            data = read_until(sock, b"\x00never")  # EOF once idle
            sock.close()
            return data

        assert await asyncio.to_thread(idle) == b"b OK NOOP done\r\n"


async def test_a_dead_store_ends_only_its_own_sessions(tmp_path: Path, pki: ServerCert) -> None:
    store_a, store_b = FakeStore("imap"), FakeStore("imap")
    await store_a.start()
    await store_b.start()
    path = write_map(tmp_path / "map", {"bob@riseup.net": store_a, "alice@riseup.net": store_b})
    try:
        async with running(seed_listeners(path, pki)) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            bob = await asyncio.to_thread(logged_in, address)

            def alice_login() -> socket.socket:
                sock = socket.create_connection(address, timeout=5)
                sock.sendall(b"a LOGIN alice alice-pw\r\n")
                assert b"a OK" in read_until(sock, b"a OK")
                return sock

            alice = await asyncio.to_thread(alice_login)
            await store_a.stop()  # bob's store goes away mid-session
            assert await asyncio.to_thread(read_until, bob, b"\x00never") == b""
            alice.sendall(b"b SELECT INBOX\r\n")
            assert (await asyncio.to_thread(read_until, alice, b"b OK")).endswith(
                b"b OK [READ-WRITE] SELECT done\r\n")
            bob.close()
            alice.close()
    finally:
        await store_a.stop()
        await store_b.stop()
