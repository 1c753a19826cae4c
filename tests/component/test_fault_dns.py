"""Fault: DNS failing for a map that holds host names.

Maps may hold names (Perdition resolves them, docs/maps.md); ``serve`` must
hand nginx an IP (``http/resolve.py``) and the proxy must connect.  When the
resolver is down (``EAI_AGAIN``, injected into the event loop) or the name does
not exist (``.invalid``, RFC 6761 §6.4), the client must get a temporary
failure, never "no such user" or "wrong password", and the next login whose
name does resolve must work.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from authsvc.http.app import create_app
from authsvc.http.auth_http import TEXT_TEMPORARY
from authsvc.settings import (
    FileMapSettings,
    ListenTls,
    MailProtocol,
    ProxySettings,
    Settings,
)
from tests.component.conftest import make_listener, running
from tests.component.fakestore import FakeStore
from tests.services.certs import ServerCert

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
UNAVAILABLE = b"a NO [UNAVAILABLE] Account is temporarily unavailable, try again later.\r\n"


def write_popmap(path: Path, store_port: int) -> Path:
    path.write_text(f"bob@riseup.net: mailstore.example.net:{store_port}\n"
                    f"alice@riseup.net: nowhere.invalid:{store_port}\n"
                    f"carol@riseup.net: 127.0.0.1:{store_port}\n")
    return path


def failing_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The running loop's resolver fails every name as a down DNS server does."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and not host[:1].isdigit():
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_serve_answers_temporary_failure_when_dns_fails(
    aiohttp_client: MakeClient, tmp_path: Path, pki: ServerCert,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_popmap(tmp_path / "popmap", 143)
    listener = make_listener("imap4", MailProtocol.IMAP, ListenTls.NONE,
                             FileMapSettings(str(path)), pki)
    client = await aiohttp_client(create_app(Settings(listeners=(listener,))))
    failing_dns(monkeypatch)

    async def auth(user: str) -> dict[str, str]:
        headers = {"Auth-Method": "plain", "Auth-User": user, "Auth-Pass": "pw",
                   "Auth-Protocol": "imap", "Auth-Login-Attempt": "1",
                   "Client-IP": "192.0.2.7", "X-Authsvc-Listener": "imap4"}
        async with client.get("/auth", headers=headers) as reply:
            assert reply.status == 200
            return {k: v for k, v in reply.headers.items() if k.startswith("Auth-")}

    for user in ("bob", "alice"):  # resolver down; name that does not exist
        reply = await auth(user)
        assert reply["Auth-Status"] == TEXT_TEMPORARY, reply
        assert "Auth-Server" not in reply
    assert (await auth("carol"))["Auth-Server"] == "127.0.0.1"  # literals need no DNS


async def test_proxy_gives_a_temporary_failure_when_dns_fails(
    tmp_path: Path, pki: ServerCert, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = FakeStore("imap", users={"bob": "good", "alice": "good", "carol": "good"})
    await store.start()
    path = write_popmap(tmp_path / "popmap", store.port)
    listener = make_listener("imap4", MailProtocol.IMAP, ListenTls.NONE,
                             FileMapSettings(str(path)), pki)
    failing_dns(monkeypatch)
    proxy_settings = ProxySettings(auth_failure_delay=0.1, backend_timeout=1.0)
    try:
        async with running([listener], proxy_settings) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            for user in ("bob", "alice"):  # resolver down; name that does not exist
                data = await asyncio.to_thread(_login, address, user)
                assert data.endswith(UNAVAILABLE), data
            assert b"a OK" in await asyncio.to_thread(_login, address, "carol")
    finally:
        await store.stop()
    assert store.logins == [("carol", "good")]  # nobody else reached a store


def _login(address: tuple[str, int], user: str) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(4096)
        sock.sendall(f"a LOGIN {user} good\r\n".encode())
        data = b""
        while b"a " not in data or not data.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data
