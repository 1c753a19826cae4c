"""Claims of docs/security.md that no other test proved: TLS floor and ciphers, password lifetime.

Each test checks what a client sees (a handshake that fails or succeeds) or
what the running proxy still holds (live ``Secret`` objects), so it fails if
the behaviour goes away.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl

import pytest
from authsvc.proxy.certificates import server_tls_context
from authsvc.proxy.events import Credentials

from authsvc.redact import Secret
from authsvc.settings import FileMapSettings, ListenTls, MailProtocol
from tests.component.conftest import Proxy, make_listener
from tests.services.certs import ServerCert

PASSWORD = "good"  # bob's password on the fake store


def _client_context(pki: ServerCert, *, version: ssl.TLSVersion | None = None,
                    ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki.ca))
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    if version is not None:
        context.maximum_version = version
    # SECLEVEL=0 so that it is the proxy, not this client's OpenSSL, that says no.
    context.set_ciphers((ciphers or "DEFAULT") + ":@SECLEVEL=0")
    return context


def _handshake(proxy: Proxy, context: ssl.SSLContext) -> str:
    """The TLS version agreed with the imaps listener, or ``refused``."""
    address = (proxy.host("imaps"), proxy.port("imaps"))
    with socket.create_connection(address, timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.version() or "?"
        except (ssl.SSLError, ConnectionError):
            return "refused"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
@pytest.mark.parametrize(("version", "expected"), [
    (ssl.TLSVersion.TLSv1_1, "refused"),
    (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
    (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
])
async def test_client_tls_floor_is_1_2(seed_proxy: Proxy, pki: ServerCert,
                                       version: ssl.TLSVersion, expected: str) -> None:
    context = _client_context(pki, version=version)
    assert await asyncio.to_thread(_handshake, seed_proxy, context) == expected


def test_listener_context_sets_the_floor_itself(pki: ServerCert) -> None:
    # The default cipher string has no TLS 1.0/1.1 suite either, so a 1.1
    # client fails even without the floor: check the floor directly as well.
    listener = make_listener("imaps", MailProtocol.IMAP, ListenTls.IMPLICIT,
                             FileMapSettings("/nonexistent"), pki)
    context = server_tls_context(listener)
    assert context is not None
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_NONE  # no client certificate is asked for


@pytest.mark.parametrize(("ciphers", "expected"), [
    ("ECDHE-ECDSA-AES128-GCM-SHA256", "TLSv1.2"),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", "TLSv1.2"),
    ("ECDHE-ECDSA-AES128-SHA256", "TLSv1.2"),
    # SHA-1 MAC: left out of Python's default cipher string (!SHA1).
    ("ECDHE-ECDSA-AES128-SHA", "refused"),
    # No forward secrecy, no authentication, no encryption.
    ("AES128-GCM-SHA256", "refused"),
    ("aNULL", "refused"),
    ("eNULL", "refused"),
])
async def test_tls_1_2_ciphers(seed_proxy: Proxy, pki: ServerCert, ciphers: str,
                               expected: str) -> None:
    context = _client_context(pki, version=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
    assert await asyncio.to_thread(_handshake, seed_proxy, context) == expected


def _live_passwords(value: str) -> list[object]:
    """Objects the collector knows that still hold ``value`` as a password."""
    gc.collect()
    return [obj for obj in gc.get_objects()
            if (isinstance(obj, Secret) and obj.reveal() == value)
            or (isinstance(obj, Credentials) and obj.password.reveal() == value)]


async def test_no_password_is_held_once_the_login_is_done(seed_proxy: Proxy) -> None:
    """The proxy keeps the password only until the store has answered the login."""
    probe = Secret("probe-value")
    assert _live_passwords("probe-value") == [probe]  # the search does find live ones
    reader, writer = await asyncio.open_connection(seed_proxy.host("imap4"),
                                                   seed_proxy.port("imap4"))
    await reader.readline()
    writer.write(f"a1 LOGIN bob {PASSWORD}\r\n".encode())
    assert (await reader.readline()).startswith(b"a1 OK")
    writer.write(b"a2 NOOP\r\n")
    assert (await reader.readline()).startswith(b"a2 OK")
    # Logged in and relaying: no Secret or Credentials with the password is alive.
    assert _live_passwords(PASSWORD) == []
    # A refused password is let go too, once the refusal is sent.
    other_reader, other_writer = await asyncio.open_connection(seed_proxy.host("imap4"),
                                                               seed_proxy.port("imap4"))
    await other_reader.readline()
    other_writer.write(b"b1 LOGIN bob not-the-password\r\n")
    assert (await other_reader.readline()).startswith(b"b1 NO")
    assert _live_passwords("not-the-password") == []
    for w in (writer, other_writer):
        w.close()
