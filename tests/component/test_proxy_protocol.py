"""Listeners behind HAProxy: PROXY v1/v2 headers, trust, LOCAL checks, TLS right behind.

Real loopback sockets; the client plays HAProxy (it writes the header itself,
from 127.0.0.1, which the listeners trust) and the stores are scripted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from authsvc.proxy.proxy_protocol import encode_v1, encode_v2, encode_v2_local

from authsvc.settings import (
    FileMapSettings,
    ForwardClient,
    ListenerSettings,
    ListenTls,
    MailProtocol,
    ProxySettings,
)
from tests.component.conftest import FAST, Proxy, make_listener, running, write_map
from tests.component.fakestore import FakeStore
from tests.helpers.eventually import eventually_async
from tests.services.certs import ServerCert

CLIENT = ("192.0.2.7", 50214)
HAPROXY_FRONT = ("198.51.100.1", 143)
V2 = encode_v2(CLIENT, HAPROXY_FRONT)
TRUSTED = ("127.0.0.1/32",)


def behind_haproxy(listener: ListenerSettings, trusted: tuple[str, ...] = TRUSTED
                   ) -> ListenerSettings:
    return replace(listener, proxy_protocol=True, proxy_protocol_from=trusted)


def talk(address: tuple[str, int], payload: bytes, until: bytes | None) -> bytes:
    """Send ``payload`` in one write; read until ``until`` (None: until EOF or reset).

    A connection closed with our bytes unread ends in a reset rather than EOF;
    either way nothing was said.
    """
    sock = socket.create_connection(address, timeout=5)
    data = b""
    try:
        sock.sendall(payload)
        while until is None or until not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return data


def session_lines(caplog: pytest.LogCaptureFixture, event: str = "session"
                  ) -> list[dict[str, object]]:
    found = []
    for record in caplog.records:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields.get("event") == event:
            found.append(fields)
    return found


async def settled(proxy: Proxy) -> None:
    """Every session has ended (and logged its line)."""
    await eventually_async(lambda: not proxy.server.sessions)


@contextlib.asynccontextmanager
async def proxy_with(
    tmp_path: Path, pki: ServerCert, store: FakeStore, *, protocol: MailProtocol,
    tls: ListenTls = ListenTls.NONE, settings: ProxySettings = FAST,
    trusted: tuple[str, ...] = TRUSTED,
) -> AsyncIterator[Proxy]:
    path = write_map(tmp_path / "map", {"bob@riseup.net": store})
    listener = make_listener("front", protocol, tls, FileMapSettings(str(path)), pki)
    async with running([behind_haproxy(listener, trusted)], settings) as proxy:
        yield proxy


def address_of(proxy: Proxy) -> tuple[str, int]:
    return proxy.host("front"), proxy.port("front")


async def test_v2_header_the_real_client_reaches_logs_and_store(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = replace(FAST, forward_client=ForwardClient.ID)
    async with proxy_with(tmp_path, pki, imap_store, protocol=MailProtocol.IMAP,
                          settings=settings) as proxy:
        # The header and a pipelined LOGIN in one write: the header is taken
        # exactly, the command is left for the session.
        data = await asyncio.to_thread(talk, address_of(proxy),
                                       V2 + b"a LOGIN bob good\r\nb LOGOUT\r\n", b"b OK")
        await settled(proxy)
    assert data.startswith(b"* OK [CAPABILITY ")
    assert b"a OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in" in data
    assert imap_store.preauth == [
        b'A1 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "50214" '
        b'"x-connected-ip" "198.51.100.1" "x-connected-port" "143")']
    [line] = session_lines(caplog)
    assert line["client"] == "192.0.2.7:50214"
    assert line["local"] == "198.51.100.1:143"
    assert str(line["via"]).startswith("127.0.0.1:")
    assert line["result"] == "ok"


async def test_v1_header_pop3_and_xclient(
    tmp_path: Path, pki: ServerCert, pop3_store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = replace(FAST, forward_client=ForwardClient.ID)
    header = encode_v1(("2001:db8::7", 40000), ("2001:db8::1", 110))
    async with proxy_with(tmp_path, pki, pop3_store, protocol=MailProtocol.POP3,
                          settings=settings) as proxy:
        data = await asyncio.to_thread(
            talk, address_of(proxy), header + b"USER bob\r\nPASS wrong\r\n", b"-ERR")
        await settled(proxy)
    assert data.startswith(b"+OK ")
    assert data.endswith(b"-ERR [AUTH] Authentication failed.\r\n")
    assert pop3_store.preauth == [b"XCLIENT ADDR=2001:db8::7 PORT=40000"]
    [failed] = session_lines(caplog, "login_failed")
    assert failed["client"] == "[2001:db8::7]:40000"


async def test_local_header_of_haproxy_checks_gets_the_banner(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with proxy_with(tmp_path, pki, imap_store, protocol=MailProtocol.IMAP) as proxy:
        data = await asyncio.to_thread(talk, address_of(proxy),
                                       encode_v2_local() + b"a1 LOGOUT\r\n", None)
        await settled(proxy)
    assert data.startswith(b"* OK [CAPABILITY ")
    assert b"* BYE" in data
    [line] = session_lines(caplog)
    assert str(line["client"]).startswith("127.0.0.1:")  # the connection's own address


async def test_untrusted_peer_is_closed_without_a_greeting(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with proxy_with(tmp_path, pki, imap_store, protocol=MailProtocol.IMAP,
                          trusted=("127.0.0.2/32",)) as proxy:
        data = await asyncio.to_thread(talk, address_of(proxy), V2 + b"a LOGIN bob good\r\n",
                                       None)
    assert data == b""
    assert imap_store.logins == []
    [refused] = session_lines(caplog, "refused")
    assert refused["reason"] == "proxy_untrusted"
    assert session_lines(caplog) == []


CLIENT_HELLO_START = bytes.fromhex("1603010200010001fc0303")


@pytest.mark.parametrize("payload", [
    b"a1 LOGIN bob good\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.1 1 2\n",
    b"PROXY TCP4 192.0.2.007 192.0.2.1 1 2\r\n",
    CLIENT_HELLO_START,
    encode_v2(CLIENT, HAPROXY_FRONT)[:12] + b"\x31" + V2[13:],  # version 3
    b"",  # nothing at all: the header timeout
    b"PROXY TCP4 192.0.2.7 ",  # half a header, then nothing
], ids=["command", "lf-only", "leading-zero", "tls", "v3", "silent", "half"])
async def test_malformed_or_missing_header_closes_without_a_greeting(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, payload: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = replace(FAST, proxy_protocol_timeout=0.3)
    async with proxy_with(tmp_path, pki, imap_store, protocol=MailProtocol.IMAP,
                          settings=settings) as proxy:
        data = await asyncio.to_thread(talk, address_of(proxy), payload, None)
        await settled(proxy)
    assert data == b""
    [refused] = session_lines(caplog, "refused")
    assert refused["reason"] == "proxy_invalid"


def tls_behind_header(address: tuple[str, int], header: bytes, context: ssl.SSLContext,
                      payload: bytes, until: bytes) -> bytes:
    """A TLS client whose ClientHello goes out in ONE write with the PROXY header."""
    sock = socket.create_connection(address, timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")

    def pump() -> None:
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("closed by the proxy")
        incoming.write(data)

    try:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        sock.sendall(header + outgoing.read())
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out := outgoing.read():
                    sock.sendall(out)
                pump()
        tls.write(payload)
        sock.sendall(outgoing.read())
        data = b""
        while until not in data:
            try:
                data += tls.read(65536)
            except ssl.SSLWantReadError:
                if out := outgoing.read():
                    sock.sendall(out)
                pump()
        return data
    finally:
        sock.close()


@pytest.mark.parametrize("header", [V2, encode_v1(CLIENT, HAPROXY_FRONT), encode_v2_local()],
                         ids=["v2", "v1", "local"])
async def test_tls_client_hello_in_the_same_packet_as_the_header(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, header: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with proxy_with(tmp_path, pki, imap_store, protocol=MailProtocol.IMAP,
                          tls=ListenTls.IMPLICIT) as proxy:
        data = await asyncio.to_thread(tls_behind_header, address_of(proxy), header,
                                       pki.client_context(), b"a LOGIN bob good\r\n", b"a OK")
        await settled(proxy)
    assert data.startswith(b"* OK [CAPABILITY ")
    assert b"a OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in" in data
    [line] = session_lines(caplog)
    assert line["tls"] == "implicit"
    if header != encode_v2_local():
        assert line["client"] == "192.0.2.7:50214"


async def test_plain_listener_without_proxy_protocol_is_unchanged(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    """A header sent to a listener that does not expect one is just a bad command."""
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    listener = make_listener("front", MailProtocol.IMAP, ListenTls.NONE,
                             FileMapSettings(str(path)), pki)
    async with running([listener]) as proxy:
        data = await asyncio.to_thread(talk, address_of(proxy),
                                       b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", b"BAD")
    assert data.startswith(b"* OK")
    assert b"PROXY BAD" in data
