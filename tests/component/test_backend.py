"""Towards the store: certificate checks and names, and the client's address per store."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from authsvc.proxy.proxy_protocol import ProxyHeader

from authsvc.settings import (
    BackendOverride,
    BackendTls,
    ForwardClient,
    ProxySettings,
)
from tests.component.conftest import FAST, running, seed_listeners, write_map
from tests.component.fakestore import FakeStore
from tests.services.certs import ServerCert, make_ca

UNAVAILABLE = b"[UNAVAILABLE] Account is temporarily unavailable, try again later."


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


async def login_via(tmp_path: Path, pki: ServerCert, store: FakeStore,
                    settings: ProxySettings, backend_tls: BackendTls) -> bytes:
    path = write_map(tmp_path / "map", {"bob@riseup.net": store})
    listener = seed_listeners(path, pki, backend_tls=backend_tls)[0]
    async with running([listener], settings) as proxy:
        address = (proxy.host("imap4"), proxy.port("imap4"))
        return await asyncio.to_thread(exchange, address, b"a LOGIN bob good\r\n", b"a ")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    cert, _ = make_ca(tmp_path_factory.mktemp("other-ca"), "some other CA")
    return str(cert)


@pytest.mark.parametrize(("overrides", "works"), [
    ({}, True),  # the map's host, 127.0.0.1, is in the certificate (IP SAN)
    ({"backend_tls_name": "mail.test"}, True),
    ({"backend_tls_name": "wrong.example"}, False),
    ({"backend_tls_name": "wrong.example", "backend_verify_name": False}, True),
    ({"backends": (BackendOverride("127.0.0.1", tls_name="mail.test"),),
      "backend_tls_name": "wrong.example"}, True),
    ({"ca": "other"}, False),
    ({"ca": "other", "backend_verify": False}, True),
], ids=["map-host", "configured-name", "wrong-name", "no-name-check", "per-store-name",
        "wrong-ca", "no-verify"])
async def test_store_certificate_checks(
    tmp_path: Path, pki: ServerCert, tls_store: FakeStore, other_ca: str,
    overrides: dict[str, object], works: bool,
) -> None:
    ca = other_ca if overrides.pop("ca", None) == "other" else str(pki.ca)
    settings = replace(FAST, backend_ca_file=ca, **overrides)  # type: ignore[arg-type]
    data = await login_via(tmp_path, pki, tls_store, settings, BackendTls.IMPLICIT)
    if works:
        assert b"a OK [CAPABILITY IMAP4rev1 IDLE MOVE]" in data
        assert tls_store.logins == [("bob", "good")]
    else:
        assert data.endswith(b"a NO " + UNAVAILABLE + b"\r\n")
        assert tls_store.logins == []  # no password to a store we could not check


@pytest.mark.parametrize("mode", [ForwardClient.PROXY_V1, ForwardClient.PROXY_V2])
async def test_proxy_header_to_one_store_only(
    tmp_path: Path, pki: ServerCert, mode: ForwardClient
) -> None:
    haproxy_store = FakeStore("imap", proxy_protocol=True)
    await haproxy_store.start()
    try:
        settings = replace(FAST, backends=(
            BackendOverride("127.0.0.1", haproxy_store.port, forward_client=mode),))
        data = await login_via(tmp_path, pki, haproxy_store, settings, BackendTls.NONE)
    finally:
        await haproxy_store.stop()
    assert b"a OK" in data
    [header] = haproxy_store.proxy_headers
    assert isinstance(header, ProxyHeader)
    assert header.source is not None and header.source[0] == "127.0.0.1"
    assert header.destination is not None and header.destination[0] == "127.0.0.1"
    assert haproxy_store.logins == [("bob", "good")]


async def test_other_stores_get_no_header(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    settings = replace(FAST, backends=(
        BackendOverride("127.0.0.1", imap_store.port + 1, forward_client=ForwardClient.PROXY_V2),))
    data = await login_via(tmp_path, pki, imap_store, settings, BackendTls.NONE)
    assert b"a OK" in data
    assert imap_store.preauth == []
