"""Fault: a MySQL map whose server accepts connections and never answers.

A TCP listener that accepts and stays silent stands in for a wedged
mariadbd (or a black-holed route): the client library waits for a handshake
that never comes.  ``connect_timeout`` must bound every login, each one must
be a temporary failure (never "wrong password" or "no such user"), and the
front end must go on answering.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from authsvc.http.app import create_app
from authsvc.http.auth_http import TEXT_TEMPORARY
from authsvc.redact import Secret
from authsvc.settings import (
    HostPort,
    ListenTls,
    MailProtocol,
    MySqlMapSettings,
    ProxySettings,
    Settings,
)
from tests.component.conftest import make_listener, running
from tests.services.certs import ServerCert

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
UNAVAILABLE = b"a NO [UNAVAILABLE] Account is temporarily unavailable, try again later.\r\n"
#: Far above connect_timeout (0.5 s) plus the failure delay, far below a hang.
BOUND = 5.0


@pytest.fixture
async def silent_mysql() -> AsyncIterator[int]:
    """A port that accepts TCP connections and never sends a byte."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def mysql_map(port: int) -> MySqlMapSettings:
    return MySqlMapSettings(hosts=(HostPort("127.0.0.1", port),), password=Secret("x"),
                            port_column=None, port_constant=143, connect_timeout=0.5,
                            query_timeout=0.5, pool_size=2)


async def test_proxy_logins_are_bounded_and_temporary(
    silent_mysql: int, tmp_path: Path, pki: ServerCert
) -> None:
    listener = make_listener("imap4", MailProtocol.IMAP, ListenTls.NONE,
                             mysql_map(silent_mysql), pki)
    async with running([listener], ProxySettings(auth_failure_delay=0.1,
                                                 backend_timeout=1.0)) as proxy:
        address = (proxy.host("imap4"), proxy.port("imap4"))
        started = time.monotonic()
        replies = await asyncio.gather(
            *(asyncio.to_thread(_login, address, f"user{i}") for i in range(5)))
        elapsed = time.monotonic() - started
        assert all(reply.endswith(UNAVAILABLE) for reply in replies), replies
        assert elapsed < BOUND, elapsed
        # Still answering (a command that needs no map).
        assert (await asyncio.to_thread(_noop, address)).endswith(b"b OK NOOP completed.\r\n")


async def test_serve_answers_temporary_failure_in_bounded_time(
    silent_mysql: int, aiohttp_client: MakeClient, pki: ServerCert
) -> None:
    listener = make_listener("imap4", MailProtocol.IMAP, ListenTls.NONE,
                             mysql_map(silent_mysql), pki)
    client = await aiohttp_client(create_app(Settings(listeners=(listener,))))

    async def auth(user: str) -> dict[str, str]:
        headers = {"Auth-Method": "plain", "Auth-User": user, "Auth-Pass": "pw",
                   "Auth-Protocol": "imap", "Auth-Login-Attempt": "1",
                   "Client-IP": "192.0.2.7", "X-Authsvc-Listener": "imap4"}
        async with client.get("/auth", headers=headers) as reply:
            return {k: v for k, v in reply.headers.items() if k.startswith("Auth-")}

    started = time.monotonic()
    replies = await asyncio.gather(*(auth(f"user{i}") for i in range(5)))
    elapsed = time.monotonic() - started
    assert all(reply["Auth-Status"] == TEXT_TEMPORARY for reply in replies), replies
    assert elapsed < BOUND, elapsed
    async with client.get("/healthz") as reply:
        assert reply.status == 200


def _login(address: tuple[str, int], user: str) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(4096)
        sock.sendall(f"a LOGIN {user} pw\r\n".encode())
        data = b""
        while not (b"a " in data and data.endswith(b"\r\n")):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def _noop(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(4096)
        sock.sendall(b"b NOOP\r\n")
        data = b""
        while b"b " not in data:
            data += sock.recv(4096)
        return data
