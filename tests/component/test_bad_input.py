"""Hostile and broken clients: each gets its answer and everyone else keeps being served."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

from authsvc.settings import ListenTls
from tests.component.conftest import Proxy, running, seed_listeners, write_map
from tests.component.fakestore import FakeStore
from tests.services.certs import ServerCert


def talk(address: tuple[str, int], payload: bytes, until: bytes | None = None) -> bytes:
    """Connect, read the greeting, send ``payload``, read until ``until`` or EOF."""
    sock = socket.create_connection(address, timeout=5)
    data = sock.recv(4096)
    sock.sendall(payload)
    while until is None or until not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


async def still_serving(proxy: Proxy) -> None:
    """Another client, on every listener, still logs in and gets answers."""
    imap = (proxy.host("imap4"), proxy.port("imap4"))
    data = await asyncio.to_thread(talk, imap, b"a LOGIN bob good\r\nb NOOP\r\n", b"b OK")
    assert b"a OK [CAPABILITY" in data
    pop3 = (proxy.host("pop3"), proxy.port("pop3"))
    data = await asyncio.to_thread(talk, pop3, b"USER bob\r\nPASS good\r\nSTAT\r\n", b"+OK 1")
    assert data.endswith(b"+OK Logged in.\r\n+OK 1 22\r\n")


async def test_a_megabyte_line(seed_proxy: Proxy) -> None:
    address = (seed_proxy.host("imap4"), seed_proxy.port("imap4"))
    payload = b"a LOGIN " + b"A" * 1_048_576 + b"\r\nb NOOP\r\n"
    data = await asyncio.to_thread(talk, address, payload, b"b OK")
    assert data.endswith(b"* BAD Command line too long.\r\nb OK NOOP completed.\r\n")
    pop3 = (seed_proxy.host("pop3"), seed_proxy.port("pop3"))
    data = await asyncio.to_thread(talk, pop3, b"USER " + b"A" * 1_048_576 + b"\r\nQUIT\r\n")
    assert data.endswith(b"-ERR Command line too long.\r\n+OK Logging out.\r\n")
    await still_serving(seed_proxy)


async def test_nul_and_8bit_garbage(seed_proxy: Proxy) -> None:
    address = (seed_proxy.host("imap4"), seed_proxy.port("imap4"))
    payload = b"\x00\xff\xfe\x80\x01junk\r\na LOGIN {8}\r\n"
    data = await asyncio.to_thread(talk, address, payload, b"+ Ready")
    assert b"* BAD Invalid tag.\r\n+ Ready for literal data.\r\n" in data
    # The NUL inside a literal login is refused, never truncated to "bob".
    payload = b"a LOGIN {8}\r\nbob\x00evil good\r\nb NOOP\r\n"
    data = await asyncio.to_thread(talk, address, payload, b"b OK")
    assert b"a BAD NUL is not allowed in a literal.\r\n" in data
    assert seed_proxy.stores["imap"].logins == []
    pop3 = (seed_proxy.host("pop3"), seed_proxy.port("pop3"))
    data = await asyncio.to_thread(talk, pop3, b"\xff\x00\xfe\r\nUSER bob\x00evil\r\nPASS good\r\n",
                                   b"NUL")
    assert data.endswith(b"-ERR Unknown command.\r\n+OK\r\n"
                         b"-ERR Login or password contains NUL, CR or LF.\r\n")
    assert seed_proxy.stores["pop3"].logins == []
    await still_serving(seed_proxy)


async def test_four_gigabyte_literal(seed_proxy: Proxy) -> None:
    address = (seed_proxy.host("imap4"), seed_proxy.port("imap4"))
    payload = b"a LOGIN {4294967295}\r\nb NOOP\r\n"
    data = await asyncio.to_thread(talk, address, payload, b"b OK")
    assert data.endswith(b"a BAD Literal too large.\r\nb OK NOOP completed.\r\n")
    payload = b"a LOGIN bob {4294967295+}\r\nxxxxxxxx"
    data = await asyncio.to_thread(talk, address, payload)
    assert data.endswith(b"* BYE Literal too large.\r\n")
    await still_serving(seed_proxy)


async def test_tls_client_hello_on_the_plain_ports(seed_proxy: Proxy, pki: ServerCert) -> None:
    for listener in ("imap4", "pop3"):
        raw = socket.create_connection((seed_proxy.host(listener), seed_proxy.port(listener)))
        raw.settimeout(5)
        tls = pki.client_context().wrap_socket(raw, server_hostname="127.0.0.1",
                                               do_handshake_on_connect=False)

        def handshake(sock: ssl.SSLSocket = tls) -> bool:
            try:
                sock.do_handshake()
            except (ssl.SSLError, OSError):
                return False
            return True

        assert await asyncio.to_thread(handshake) is False
        tls.close()
    await still_serving(seed_proxy)


async def test_plain_commands_on_the_tls_ports(seed_proxy: Proxy) -> None:
    for listener in ("imaps", "pop3s"):
        address = (seed_proxy.host(listener), seed_proxy.port(listener))

        def plain(address: tuple[str, int] = address) -> bytes:
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(b"a LOGIN bob good\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            sock.close()
            return data

        data = await asyncio.to_thread(plain)
        # No plaintext answer: at most a TLS alert record (0x15), then EOF.
        assert data == b"" or data[0] == 0x15
    await still_serving(seed_proxy)


async def test_silent_client_is_dropped_after_the_login_timeout(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, pop3_store: FakeStore
) -> None:
    imap_map = write_map(tmp_path / "i.map", {"bob@riseup.net": imap_store})
    listeners = [ls for ls in seed_listeners(imap_map, pki, login_timeout=0.3)]
    async with running(listeners) as proxy:
        for listener, bye in (("imap4", b"* BYE Autologout; idle for too long.\r\n"),
                              ("pop3", b"-ERR Disconnected for inactivity.\r\n")):
            address = (proxy.host(listener), proxy.port(listener))
            data = await asyncio.to_thread(talk, address, b"")
            assert data.endswith(bye)

        # A TLS client that never starts its handshake is dropped too.
        def silent_tls() -> bytes:
            sock = socket.create_connection((proxy.host("imaps"), proxy.port("imaps")), timeout=5)
            data = sock.recv(4096)
            sock.close()
            return data

        assert await asyncio.to_thread(silent_tls) == b""
        assert [ls.tls for ls in listeners][1] is ListenTls.IMPLICIT
