"""Implicit TLS to the store in the proxy's own TLS layer: bytes, refusals, close and kick.

The certificate checks (names, CAs, ``backend_verify``) are
``test_backend.py``'s; here the store speaks TLS from the first byte
(``backend_tls = implicit``) and the client talks TLS too (the imaps
listener), so both sides of the session run TLS in ``proxy/transport.py``.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from authsvc.settings import BackendTls
from tests.component.conftest import FAST, Proxy, running, seed_listeners, write_map
from tests.component.fakestore import FakeStore
from tests.helpers.eventually import eventually_async
from tests.services.certs import ServerCert

UNAVAILABLE = b"[UNAVAILABLE] Account is temporarily unavailable, try again later."
#: Bigger than a TLS record, a read of the socket and the relay's buffer.
SIZE = 3 * 1024 * 1024 + 17


def payload(seed: int) -> bytes:
    """SIZE bytes of every value but NUL (the fake store marks literals with NUL)."""
    rng = random.Random(seed)
    return bytes(rng.randrange(1, 256) for _ in range(SIZE))


@pytest.fixture(scope="module")
def message() -> bytes:
    return payload(1)


@pytest.fixture
async def tls_store(pki: ServerCert, message: bytes) -> AsyncIterator[FakeStore]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    store = FakeStore("imap", tls=context, message=message)
    await store.start()
    yield store
    await store.stop()


def open_imaps(proxy: Proxy, pki: ServerCert) -> ssl.SSLSocket:
    raw = socket.create_connection((proxy.host("imaps"), proxy.port("imaps")), timeout=10)
    return pki.client_context().wrap_socket(raw, server_hostname="127.0.0.1")


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = bytearray()
    while marker not in data[-4096:]:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def login(sock: socket.socket) -> bytes:
    sock.sendall(b"a LOGIN bob good\r\n")
    return read_until(sock, b"a ")


def read_to_end(sock: socket.socket) -> bytes:
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return bytes(data)


@pytest.fixture
async def tls_both(tmp_path: Path, pki: ServerCert, tls_store: FakeStore,
                   ) -> AsyncIterator[Proxy]:
    path = write_map(tmp_path / "map", {"bob@riseup.net": tls_store})
    listeners = seed_listeners(path, pki, backend_tls=BackendTls.IMPLICIT)
    async with running(listeners, replace(FAST, backend_ca_file=str(pki.ca))) as proxy:
        yield proxy


async def test_large_transfers_are_byte_exact_both_ways(
    tls_both: Proxy, pki: ServerCert, tls_store: FakeStore, message: bytes,
) -> None:
    upload = payload(2)

    def session() -> tuple[bytes, bytes, bytes]:
        with open_imaps(tls_both, pki) as sock:
            sock.recv(4096)  # the greeting
            answer = login(sock)
            sock.sendall(b"u APPEND INBOX {%d+}\r\n" % len(upload) + upload + b"\r\n")
            appended = read_until(sock, b"u OK")
            sock.sendall(b"f FETCH 1 BODY[]\r\n")
            fetched = read_until(sock, b"f OK FETCH done\r\n")
            return answer, appended, fetched

    answer, appended, fetched = await asyncio.to_thread(session)
    assert b"a OK [CAPABILITY IMAP4rev1 IDLE MOVE]" in answer
    assert tls_store.logins == [("bob", "good")]
    assert appended.endswith(b"u OK APPEND done\r\n")
    assert tls_store.commands[0] == b"u APPEND INBOX \x00LIT" + upload + b"\x00"
    header = b"* 1 FETCH (BODY[] {%d}\r\n" % len(message)
    assert fetched == header + message + b")\r\nf OK FETCH done\r\n"


async def test_a_plaintext_store_behind_implicit_tls_is_a_temporary_failure(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore,
) -> None:
    # The handshake meets a plaintext greeting: no password goes out, and the
    # client hears what a failed certificate check gives (test_backend.py).
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    listeners = seed_listeners(path, pki, backend_tls=BackendTls.IMPLICIT)
    async with running(listeners, replace(FAST, backend_ca_file=str(pki.ca))) as proxy:

        def attempt() -> bytes:
            with open_imaps(proxy, pki) as sock:
                sock.recv(4096)
                return login(sock)

        data = await asyncio.to_thread(attempt)
    assert data.endswith(b"a NO " + UNAVAILABLE + b"\r\n")
    assert imap_store.logins == []


async def test_logout_and_client_close_end_the_session(
    tls_both: Proxy, pki: ServerCert,
) -> None:
    def logout() -> bytes:
        with open_imaps(tls_both, pki) as sock:
            sock.recv(4096)
            login(sock)
            sock.sendall(b"o LOGOUT\r\n")
            return read_to_end(sock)

    assert (await asyncio.to_thread(logout)).endswith(b"* BYE bye\r\no OK LOGOUT done\r\n")
    await eventually_async(lambda: tls_both.server.sessions == 0, what="sessions after LOGOUT")

    sock = await asyncio.to_thread(open_imaps, tls_both, pki)
    await asyncio.to_thread(sock.recv, 4096)
    await asyncio.to_thread(login, sock)
    await eventually_async(lambda: len(tls_both.server.relayed()) == 1)
    sock.close()
    await eventually_async(lambda: tls_both.server.sessions == 0, what="sessions after close")


async def test_kick_closes_both_sides(
    tls_both: Proxy, pki: ServerCert, tls_store: FakeStore,
) -> None:
    sock = await asyncio.to_thread(open_imaps, tls_both, pki)
    try:
        await asyncio.to_thread(sock.recv, 4096)
        await asyncio.to_thread(login, sock)
        sessions = await eventually_async(tls_both.server.relayed)
        assert sessions[0].kick()
        assert await asyncio.to_thread(read_to_end, sock) == b""
    finally:
        sock.close()
    await eventually_async(lambda: tls_both.server.sessions == 0, what="sessions after kick")
    # The store saw its connection end too (its session loop closes its writer).
    await eventually_async(lambda: all(w.is_closing() for w in tls_store._writers),
                           what="the store's side closed")
