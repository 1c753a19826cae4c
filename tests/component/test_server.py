"""Stopping the proxy: pre-login sessions end at once, logged-in ones may finish; the loop."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import pytest
from authsvc.proxy.certificates import ProxyConfigError
from authsvc.proxy.server import ProxyServer

from authsvc.routing import open_router
from authsvc.runtime.loop import loop_name
from authsvc.settings import (
    CacheSettings,
    FileMapSettings,
    ListenTls,
    MailProtocol,
    ProxySettings,
    Settings,
)
from tests.component.conftest import make_listener, running, seed_listeners, write_map
from tests.component.fakestore import FakeStore
from tests.services.certs import ServerCert


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


async def test_stop_closes_pre_login_sessions_and_drains_logged_in_ones(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    settings = Settings(listeners=seed_listeners(path, pki)[:1],
                        proxy=ProxySettings(drain_timeout=0.5),
                        cache=CacheSettings(enabled=False))
    async with open_router(settings) as router:
        server = ProxyServer(settings, router)
        await server.start()
        address = server.addresses("imap4")[0]
        idle = socket.create_connection(address, timeout=5)
        busy = socket.create_connection(address, timeout=5)
        busy.sendall(b"a LOGIN bob good\r\n")
        data = b""
        while b"a OK" not in data:
            data += await asyncio.to_thread(busy.recv, 4096)
        assert server.sessions == 2
        stopping = asyncio.ensure_future(server.stop(settings.proxy.drain_timeout))
        # The logged-in session still works while the server drains...
        busy.sendall(b"b NOOP\r\n")
        assert (await asyncio.to_thread(busy.recv, 4096)) == b"b OK NOOP done\r\n"
        # ...the one that never logged in is gone, and nobody new gets in.
        assert (await asyncio.to_thread(recv_all, idle)).startswith(b"* OK")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5)
        await stopping
        assert server.sessions == 0
        assert await asyncio.to_thread(recv_all, busy) == b""
        idle.close()
        busy.close()


async def test_tls_listener_without_certificate_is_refused_at_start(
    tmp_path: Path, pki: ServerCert
) -> None:
    from dataclasses import replace

    from authsvc.settings import TlsSettings

    listener = replace(seed_listeners(tmp_path / "map", pki)[1], tls_files=TlsSettings())
    settings = Settings(listeners=(listener,))
    async with open_router(settings) as router:
        with pytest.raises(ProxyConfigError, match="certificate"):
            await ProxyServer(settings, router).start()


async def test_the_limits_line_names_the_loop_the_tests_asked_for(
    tmp_path: Path, pki: ServerCert, caplog: pytest.LogCaptureFixture
) -> None:
    """tests/run.sh runs this directory on uvloop too (AUTHSVC_LOOP=uvloop)."""
    caplog.set_level(logging.INFO)
    asked = os.environ.get("AUTHSVC_LOOP", "").strip().lower()
    expected = "uvloop" if asked == "uvloop" else "asyncio"
    path = write_map(tmp_path / "map", {})
    listener = make_listener("front", MailProtocol.IMAP, ListenTls.NONE,
                             FileMapSettings(str(path)), pki)
    async with running([listener]):
        assert loop_name() == expected
    [limits] = [getattr(r, "fields", {}) for r in caplog.records
                if getattr(r, "fields", {}).get("event") == "limits"]
    assert limits["loop"] == expected
