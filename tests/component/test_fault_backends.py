"""Faults at the stores: one killed mid-session, one that accepts and never greets.

Scripted stores (``fakestore.py``) misbehave on demand where a real Dovecot
cannot.  What a client must see: its own session ends when its store dies,
while sessions and logins on the other store carry on; a store that never
greets costs a temporary failure (``[UNAVAILABLE]``, RFC 5530 §3) within
``backend_timeout``, never a hang and never "wrong password".
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from authsvc.settings import ProxySettings
from tests.component.conftest import running, seed_listeners, write_map
from tests.component.fakestore import FakeStore
from tests.services.certs import ServerCert

UNAVAILABLE = b"[UNAVAILABLE] Account is temporarily unavailable, try again later.\r\n"
FAST = ProxySettings(auth_failure_delay=0.1, backend_timeout=0.5)


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {data!r}")
        data += chunk
    return data


def login(address: tuple[str, int], user: str, password: str) -> tuple[socket.socket, bytes]:
    """A connection after LOGIN, and the tagged answer to it."""
    sock = socket.create_connection(address, timeout=10)
    read_until(sock, b"\r\n")
    sock.sendall(f"a LOGIN {user} {password}\r\n".encode())
    reply = read_until(sock, b"a ")
    reply += read_until(sock, b"\r\n") if not reply.endswith(b"\r\n") else b""
    return sock, reply


def rest(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


async def test_store_killed_mid_session_leaves_the_others_working(
    tmp_path: Path, pki: ServerCert
) -> None:
    doomed, healthy = FakeStore("imap"), FakeStore("imap")
    await doomed.start()
    await healthy.start()
    path = write_map(tmp_path / "map", {"alice@riseup.net": doomed, "bob@riseup.net": healthy})
    try:
        async with running(seed_listeners(path, pki), FAST) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            alice, alice_reply = await asyncio.to_thread(login, address, "alice", "alice-pw")
            bob, bob_reply = await asyncio.to_thread(login, address, "bob", "good")
            assert b"a OK" in alice_reply and b"a OK" in bob_reply
            # Kill the store: its connections reset, its port closed.
            for writer in doomed._writers:
                writer.transport.abort()
            await doomed.stop()
            # alice's session ends (nothing invented in her stream)...
            assert await asyncio.to_thread(rest, alice) == b""
            # ...bob's carries on, and new logins go where they can.
            bob.sendall(b"b NOOP\r\n")
            assert await asyncio.to_thread(read_until, bob, b"b OK") == b"b OK NOOP done\r\n"
            again, reply = await asyncio.to_thread(login, address, "bob", "good")
            assert b"a OK" in reply
            refused, reply = await asyncio.to_thread(login, address, "alice", "alice-pw")
            assert reply.endswith(b"a NO " + UNAVAILABLE)
            for sock in (alice, bob, again, refused):
                sock.close()
    finally:
        await doomed.stop()
        await healthy.stop()


async def test_store_that_never_greets_is_a_temporary_failure_within_the_timeout(
    tmp_path: Path, pki: ServerCert
) -> None:
    silent, healthy = FakeStore("imap", behaviour="silent"), FakeStore("imap")
    await silent.start()
    await healthy.start()
    path = write_map(tmp_path / "map", {"alice@riseup.net": silent, "bob@riseup.net": healthy})
    try:
        async with running(seed_listeners(path, pki), FAST) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            started = time.monotonic()
            stuck = asyncio.create_task(asyncio.to_thread(login, address, "alice", "alice-pw"))
            # The hung store holds up nobody else.
            bob, reply = await asyncio.to_thread(login, address, "bob", "good")
            assert b"a OK" in reply
            alice, reply = await stuck
            elapsed = time.monotonic() - started
            assert reply.endswith(b"a NO " + UNAVAILABLE)
            # Bounded by backend_timeout (0.5 s): far below the client's 10 s.
            assert elapsed < 5.0, elapsed
            assert silent.logins == []  # it never got as far as a password
            for sock in (alice, bob):
                sock.close()
    finally:
        await silent.stop()
        await healthy.stop()
