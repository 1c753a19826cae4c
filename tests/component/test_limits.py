"""Limits: the extra client hears why and the listener keeps serving (Perdition's died)."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
from authsvc.proxy.proxy_protocol import V2_SIGNATURE, encode_v2

from authsvc.settings import FileMapSettings, ListenTls, MailProtocol
from tests.component.conftest import FAST, make_listener, running, write_map
from tests.component.fakestore import FakeStore
from tests.helpers.eventually import eventually_async
from tests.services.certs import ServerCert

BUSY_IMAP = b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
BUSY_POP3 = b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n"
CLIENT_BUSY = b"* BYE [UNAVAILABLE] Too many connections from your address, try again later.\r\n"


def connect(address: tuple[str, int], first: bytes = b"") -> tuple[socket.socket, bytes]:
    """A client that reads its first line (the greeting or the refusal)."""
    sock = socket.create_connection(address, timeout=5)
    if first:
        sock.sendall(first)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return sock, data


def rest(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    sock.close()
    return data


@pytest.mark.parametrize(("protocol", "busy"), [(MailProtocol.IMAP, BUSY_IMAP),
                                                (MailProtocol.POP3, BUSY_POP3)])
async def test_connection_limit_three_fourth_refused_fifth_served_after_one_left(
    tmp_path: Path, pki: ServerCert, protocol: MailProtocol, busy: bytes
) -> None:
    path = write_map(tmp_path / "map", {})
    listener = make_listener("front", protocol, ListenTls.NONE, FileMapSettings(str(path)), pki,
                             connection_limit=3)
    async with running([listener]) as proxy:
        address = (proxy.host("front"), proxy.port("front"))
        first = [await asyncio.to_thread(connect, address) for _ in range(3)]
        assert all(not greeting.startswith(busy) and greeting for _, greeting in first)
        fourth, refusal = await asyncio.to_thread(connect, address)
        assert refusal == busy
        assert await asyncio.to_thread(rest, fourth) == b""
        first[0][0].close()
        # the first session has ended
        await eventually_async(lambda: proxy.server.admission.live("front") == 2)
        fifth, greeting = await asyncio.to_thread(connect, address)
        assert greeting.startswith(b"* OK" if protocol is MailProtocol.IMAP else b"+OK")
        for sock, _ in first[1:]:
            sock.close()
        fifth.close()


async def test_implicit_tls_listener_refuses_without_plaintext(
    tmp_path: Path, pki: ServerCert
) -> None:
    path = write_map(tmp_path / "map", {})
    listener = make_listener("front", MailProtocol.IMAP, ListenTls.IMPLICIT,
                             FileMapSettings(str(path)), pki, connection_limit=1)
    async with running([listener]) as proxy:
        address = (proxy.host("front"), proxy.port("front"))
        held = socket.create_connection(address, timeout=5)
        await eventually_async(lambda: proxy.server.admission.live("front") == 1)
        extra = socket.create_connection(address, timeout=5)
        assert await asyncio.to_thread(rest, extra) == b""
        held.close()


async def test_client_limit_counts_the_address_from_the_proxy_header(
    tmp_path: Path, pki: ServerCert
) -> None:
    path = write_map(tmp_path / "map", {})
    listener = make_listener("front", MailProtocol.IMAP, ListenTls.NONE,
                             FileMapSettings(str(path)), pki, proxy_protocol=True,
                             proxy_protocol_from=("127.0.0.1/32",))
    settings = replace(FAST, client_limit=2)
    one = encode_v2(("192.0.2.7", 1000), ("198.51.100.1", 143))
    other = encode_v2(("192.0.2.8", 1000), ("198.51.100.1", 143))
    async with running([listener], settings) as proxy:
        address = (proxy.host("front"), proxy.port("front"))
        held = [await asyncio.to_thread(connect, address, one) for _ in range(2)]
        assert all(greeting.startswith(b"* OK") for _, greeting in held)
        third, refusal = await asyncio.to_thread(connect, address, one)
        assert refusal == CLIENT_BUSY
        assert await asyncio.to_thread(rest, third) == b""
        fourth, greeting = await asyncio.to_thread(connect, address, other)
        assert greeting.startswith(b"* OK")
        # The refused connection gave its place back: three held, no more.
        assert proxy.server.admission.live("front") == 3
        for sock, _ in [*held, (fourth, b"")]:
            sock.close()
        await eventually_async(lambda: proxy.server.admission.live("front") == 0)


async def test_preauth_limit_and_room_after_a_login(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    listener = make_listener("front", MailProtocol.IMAP, ListenTls.NONE,
                             FileMapSettings(str(path)), pki)
    async with running([listener], replace(FAST, preauth_limit=2)) as proxy:
        address = (proxy.host("front"), proxy.port("front"))
        a, _ = await asyncio.to_thread(connect, address)
        b, _ = await asyncio.to_thread(connect, address)
        c, refusal = await asyncio.to_thread(connect, address)
        assert refusal == BUSY_IMAP
        c.close()
        a.sendall(b"a LOGIN bob good\r\n")
        assert (await asyncio.to_thread(a.recv, 4096)).startswith(b"a OK")
        d, greeting = await asyncio.to_thread(connect, address)
        assert greeting.startswith(b"* OK")  # a logged-in session is not pre-auth
        for sock in (a, b, d):
            sock.close()


async def test_login_deadline_ends_a_busy_but_never_authenticating_client(
    tmp_path: Path, pki: ServerCert
) -> None:
    path = write_map(tmp_path / "map", {})
    listener = make_listener("front", MailProtocol.IMAP, ListenTls.NONE,
                             FileMapSettings(str(path)), pki, login_timeout=5.0)
    async with running([listener], replace(FAST, login_deadline=0.4)) as proxy:
        address = (proxy.host("front"), proxy.port("front"))

        def chatter() -> bytes:
            sock, _ = connect(address)
            data = b""
            started = time.monotonic()
            try:
                while time.monotonic() - started < 5:
                    sock.sendall(b"n NOOP\r\n")
                    data += sock.recv(4096)
                    if b"* BYE" in data:
                        break
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.close()
            return data

        data = await asyncio.to_thread(chatter)
    assert b"n OK" in data
    assert b"* BYE Autologout; idle for too long." in data


async def test_twenty_per_real_address_by_default_trusted_and_the_balancer_exempt(
    tmp_path: Path, pki: ServerCert
) -> None:
    """Behind a PROXY balancer the header's address counts (docs/proxy.md, "Limits")."""
    path = write_map(tmp_path / "map", {})
    listener = make_listener("front", MailProtocol.IMAP, ListenTls.NONE,
                             FileMapSettings(str(path)), pki, proxy_protocol=True,
                             proxy_protocol_from=("127.0.0.1/32",))
    settings = replace(FAST, trusted=("192.0.2.80/28",))
    assert settings.client_preauth_limit == 20  # the default
    flood = encode_v2(("192.0.2.7", 1000), ("198.51.100.1", 143))
    other = encode_v2(("192.0.2.8", 1000), ("198.51.100.1", 143))
    webmail = encode_v2(("192.0.2.81", 1000), ("198.51.100.1", 143))
    async with running([listener], settings) as proxy:
        address = (proxy.host("front"), proxy.port("front"))
        held = [await asyncio.to_thread(connect, address, flood) for _ in range(20)]
        assert all(greeting.startswith(b"* OK") for _, greeting in held)
        extra, refusal = await asyncio.to_thread(connect, address, flood)
        assert refusal == CLIENT_BUSY
        assert await asyncio.to_thread(rest, extra) == b""
        more = [await asyncio.to_thread(connect, address, header)
                for header in [other] + [webmail] * 25]
        assert all(greeting.startswith(b"* OK") for _, greeting in more)
        # The balancer's own health checks (LOCAL, no address) count as its address,
        # which is exempt: it is the one that says who the clients are.
        local = V2_SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
        checks = [await asyncio.to_thread(connect, address, local) for _ in range(25)]
        assert all(greeting.startswith(b"* OK") for _, greeting in checks)
        for sock, _ in [*held, *more, *checks]:
            sock.close()


async def test_a_connection_in_the_descriptor_headroom_hears_a_temporary_failure(
    tmp_path: Path, pki: ServerCert
) -> None:
    """The decision with an injected limit; test_flood_proxy.py has the real one."""
    path = write_map(tmp_path / "map", {})
    listeners = [make_listener("imap", MailProtocol.IMAP, ListenTls.NONE,
                               FileMapSettings(str(path)), pki),
                 make_listener("pop", MailProtocol.POP3, ListenTls.NONE,
                               FileMapSettings(str(path)), pki)]
    probe = socket.socket()
    free = probe.fileno()  # the lowest free descriptor now
    probe.close()
    # 4 descriptors below the headroom (32) are left for clients.
    async with running(listeners, descriptors=free + 4 + 32) as proxy:
        imap = (proxy.host("imap"), proxy.port("imap"))
        pop = (proxy.host("pop"), proxy.port("pop"))
        held = []
        while True:
            sock, line = await asyncio.to_thread(connect, imap)
            if not line.startswith(b"* OK"):
                break
            held.append(sock)
        assert line == BUSY_IMAP
        assert await asyncio.to_thread(rest, sock) == b""
        assert 0 < len(held) <= 4
        sock, line = await asyncio.to_thread(connect, pop)
        assert line == BUSY_POP3
        sock.close()
        for sock in held:
            sock.close()


async def test_a_reload_changes_the_limits_for_new_connections(
    tmp_path: Path, pki: ServerCert
) -> None:
    """docs/operations.md, "Reload, restart": the counts go on, the new limit applies."""
    path = write_map(tmp_path / "map", {})
    listener = make_listener("front", MailProtocol.IMAP, ListenTls.NONE,
                             FileMapSettings(str(path)), pki)
    async with running([listener]) as proxy:
        address = (proxy.host("front"), proxy.port("front"))
        held = [await asyncio.to_thread(connect, address) for _ in range(2)]
        assert all(greeting.startswith(b"* OK") for _, greeting in held)
        proxy.server.reconfigure(replace(proxy.settings, proxy=replace(
            FAST, client_preauth_limit=2)), proxy.router)
        extra, refusal = await asyncio.to_thread(connect, address)
        assert refusal == CLIENT_BUSY
        extra.close()
        proxy.server.reconfigure(replace(proxy.settings, proxy=replace(
            FAST, client_preauth_limit=2, trusted=("127.0.0.1/32",))), proxy.router)
        again, greeting = await asyncio.to_thread(connect, address)
        assert greeting.startswith(b"* OK")
        for sock, _ in [*held, (again, b"")]:
            sock.close()
