"""/healthz, /readyz, /metrics of the proxy, and Perdition's Auth: line on a syslog socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from authsvc.proxy.run import serve
from authsvc.proxy.server import ProxyServer

from authsvc.redact import Secret
from authsvc.settings import (
    CacheSettings,
    FileMapSettings,
    HostPort,
    HttpSettings,
    ListenTls,
    MailProtocol,
    ProxySettings,
    Settings,
    ThrottleSettings,
)
from tests.component.conftest import FAST, make_listener, write_map
from tests.component.fakestore import FakeStore
from tests.helpers.eventually import eventually_async
from tests.helpers.prometheus import Scrape
from tests.services.certs import ServerCert
from tests.services.ports import free_port


@dataclass
class Running:
    server: ProxyServer
    health: str
    syslog: socket.socket
    map_path: str

    def address(self, listener: str) -> tuple[str, int]:
        return self.server.addresses(listener)[0]


@contextlib.asynccontextmanager
async def start(tmp_path: Path, pki: ServerCert, imap_store: FakeStore,
                throttle: ThrottleSettings, http: HttpSettings | None = None,
                ) -> AsyncIterator[Running]:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    file_map = FileMapSettings(str(path))
    listeners = (make_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS, file_map, pki),
                 make_listener("imaps", MailProtocol.IMAP, ListenTls.IMPLICIT, file_map, pki))
    syslog_path = str(tmp_path / "syslog.sock")
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(syslog_path)
    syslog.settimeout(5)
    port = free_port("127.0.0.1")
    proxy: ProxySettings = replace(FAST, health_listen=HostPort("127.0.0.1", port),
                                   drain_timeout=0.5, auth_log=True,
                                   auth_log_target=syslog_path)
    settings = Settings(listeners=listeners, proxy=proxy, cache=CacheSettings(enabled=False),
                        throttle=throttle, http=http or HttpSettings())
    stop = asyncio.Event()
    started: asyncio.Future[ProxyServer] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve(settings, stop, started=started))
    try:
        server = await asyncio.wait_for(started, 10)
        yield Running(server, f"http://127.0.0.1:{port}", syslog, str(path))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        syslog.close()


@pytest.fixture
async def running_proxy(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> AsyncIterator[Running]:
    async with start(tmp_path, pki, imap_store, ThrottleSettings()) as running:
        yield running


def exchange(address: tuple[str, int], payload: bytes, until: bytes) -> bytes:
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(payload)
    data = b""
    while until not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


def drained(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    sock.close()
    return data


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client, client.get(url, headers=headers) as response:
        return response.status, await response.text()


async def test_readyz_tells_strangers_the_status_and_the_secret_holder_why(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    """The health port answers /readyz as serve does (docs/proxy.md, "Health port")."""
    secret = "health-s3cret"
    async with start(tmp_path, pki, imap_store, ThrottleSettings(),
                     HttpSettings(secret=Secret(secret))) as running:
        os.unlink(running.map_path)  # the file map's next check fails

        async def degraded() -> bool:
            return '"degraded"' in (await get(running.health + "/readyz"))[1]

        await eventually_async(degraded)
        status, stranger = await get(running.health + "/readyz")
        status_key, told = await get(running.health + "/readyz", {"X-Authsvc-Key": secret})
    label = "file:" + running.map_path  # the map's name (docs/configuration.md)
    assert (status, status_key) == (200, 200)
    assert json.loads(stranger) == {"status": "degraded", "maps": {label: {"up": False}}}
    details = json.loads(told)["maps"][label]
    assert details["up"] is False and "No such file" in details["error"]


async def test_health_and_metrics_count_sessions_logins_tls_failures_and_bytes(
    running_proxy: Running
) -> None:
    assert await get(running_proxy.health + "/healthz") == (200, "ok\n")
    status, body = await get(running_proxy.health + "/readyz")
    assert status == 200
    assert '"status": "ready"' in body
    # One session logged in and held open, one failed login, one bad handshake.
    held = socket.create_connection(running_proxy.address("imap4"), timeout=5)
    await asyncio.to_thread(held.recv, 4096)
    held.sendall(b"a LOGIN bob good\r\n")
    assert (await asyncio.to_thread(held.recv, 4096)).startswith(b"a OK")
    refused = await asyncio.to_thread(exchange, running_proxy.address("imap4"),
                                      b"a LOGIN bob bad\r\n", b"a NO")
    assert b"a NO [AUTHENTICATIONFAILED]" in refused
    waiting = socket.create_connection(running_proxy.address("imap4"), timeout=5)
    await asyncio.to_thread(waiting.recv, 4096)
    bad_tls = socket.create_connection(running_proxy.address("imaps"), timeout=5)
    bad_tls.sendall(b"\x16\x03\x01\x00\x05hello, not TLS")
    # Closed with no plaintext reply: a TLS alert record (0x15) at most.
    heard = await asyncio.to_thread(drained, bad_tls)
    assert heard == b"" or heard[0] == 0x15, heard
    # the refused and the bad-TLS sessions have ended: only held and waiting are left
    await eventually_async(lambda: running_proxy.server.sessions == 2)
    status, text = await get(running_proxy.health + "/metrics")
    assert status == 200
    got = Scrape(text)
    assert got.value("authsvc_proxy_sessions", listener="imap4") == 1
    assert got.value("authsvc_proxy_preauth_sessions", listener="imap4") == 1
    assert got.value("authsvc_proxy_connections_total", listener="imap4") == 3
    assert got.value("authsvc_proxy_logins_total", listener="imap4", result="ok") == 1
    assert got.value("authsvc_proxy_logins_total", listener="imap4", result="backend_auth") == 1
    assert got.value("authsvc_proxy_tls_handshake_failures_total", listener="imaps",
                     side="client") == 1
    assert got.value("authsvc_proxy_bytes_total", listener="imap4", direction="in") == 35
    assert got.value("authsvc_proxy_bytes_total", listener="imap4", direction="out") > 100
    assert got.value("authsvc_workers") == 1
    # The listeners share one file map: one series, named by its path.
    assert got.label_values("authsvc_map_up", "map") == {f"file:{running_proxy.map_path}"}
    held.close()
    waiting.close()


def datagrams(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(9000) for _ in range(count)]


async def test_auth_lines_reach_the_syslog_socket(running_proxy: Running) -> None:
    data = await asyncio.to_thread(
        exchange, running_proxy.address("imap4"),
        b"a LOGIN Bob bad\r\nb LOGIN nobody x\r\nc LOGIN bob good\r\nd LOGOUT\r\n", b"d OK")
    assert b"c OK" in data
    lines = await asyncio.to_thread(datagrams, running_proxy.syslog, 3)
    pattern = (rb"^<21>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d perdition\.imap4\[\d+\]: Auth: "
               rb"127\.0\.0\.1:\d+->127\.0\.0\.1:\d+ client-secure=plaintext "
               rb"authorisation_id=NONE authentication_id=\"(?P<login>[^\"]+)\" "
               rb"server=\"(?P<server>[^\"]+)\" protocol=IMAP4 server-secure=plaintext "
               rb"status=\"(?P<status>[^\"]+)\"$")
    found = [re.match(pattern, line) for line in lines]
    assert all(found), lines
    assert [(m["login"], m["status"]) for m in found if m] == [
        (b"Bob", b"failed: Re-Authentication Failure"),
        (b"nobody", b"failed: Could not determine server"),
        (b"bob", b"ok"),
    ]
    assert [m["server"] for m in found if m][1] == b"(null):143"


async def test_a_throttled_login_reads_as_a_refused_password_and_counts_as_throttled(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    throttle = ThrottleSettings(enabled=True, address_limit=1, free_failures=5)
    async with start(tmp_path, pki, imap_store, throttle) as running:
        address = running.address("imap4")
        # The first wrong password reaches address_limit: refused, then closed.
        first = await asyncio.to_thread(exchange, address, b"a LOGIN Bob bad\r\n", b"a NO")
        # The right password from the same address: the same refusal, then closed
        # (authsvc/failures.py, THROTTLED); the store never sees it.
        second = await asyncio.to_thread(exchange, address, b"b LOGIN bob good\r\n", b"b NO")
        for reply, tag in ((first, b"a"), (second, b"b")):
            assert tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n" in reply
        lines = await asyncio.to_thread(datagrams, running.syslog, 2)
        statuses = [re.search(rb'server="([^"]+)" .* status="([^"]+)"$', line) for line in lines]
        assert [(m[1], m[2]) for m in statuses if m] == [
            (f"{imap_store.host}:{imap_store.port}".encode(),
             b"failed: Re-Authentication Failure"),
            (b"(null):143", b"failed: Re-Authentication Failure"),
        ]
        _, text = await get(running.health + "/metrics")
        got = Scrape(text)
        for result in ("backend_auth", "throttled"):
            assert got.value("authsvc_proxy_logins_total", listener="imap4", result=result) == 1
