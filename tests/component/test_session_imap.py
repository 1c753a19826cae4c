"""The proxy over real loopback sockets: stdlib imaplib clients, a scripted IMAP store."""

from __future__ import annotations

import asyncio
import imaplib
import socket
import ssl
import time
from pathlib import Path

import pytest

from authsvc.settings import BackendTls, ListenTls, MailProtocol, ProxySettings
from tests.component.conftest import (
    FAST,
    Proxy,
    make_listener,
    running,
    seed_listeners,
    write_map,
)
from tests.component.fakestore import STORE_REFUSAL, FakeStore
from tests.helpers.eventually import eventually_async
from tests.services.certs import ServerCert
from tests.services.require import require

AUTH_FAILED = b"[AUTHENTICATIONFAILED] Authentication failed."
UNAVAILABLE = b"[UNAVAILABLE] Account is temporarily unavailable, try again later."


def connect(proxy: Proxy, how: str, pki: ServerCert) -> imaplib.IMAP4:
    """``imap4``, ``imap4+starttls`` or ``imaps``: a logged-out imaplib client."""
    listener = how.split("+")[0]
    host, port = proxy.host(listener), proxy.port(listener)
    if listener == "imaps":
        return imaplib.IMAP4_SSL(host, port, ssl_context=pki.client_context(), timeout=5)
    client = imaplib.IMAP4(host, port, timeout=5)
    if how == "imap4+starttls":
        client.starttls(ssl_context=pki.client_context())
    return client


@pytest.mark.parametrize("how", ["imap4", "imap4+starttls", "imaps"])
@pytest.mark.parametrize("login", ["Bob", "BOB@riseup.net", "bob"])
async def test_seed_names_land_on_the_mapped_store(
    seed_proxy: Proxy, pki: ServerCert, how: str, login: str
) -> None:
    store = seed_proxy.stores["imap"]

    def session() -> tuple[str, list[bytes]]:
        client = connect(seed_proxy, how, pki)
        status, data = client.login(login, "good")
        assert client.select("INBOX")[0] == "OK"
        client.logout()
        return status, data

    status, data = await asyncio.to_thread(session)
    assert status == "OK"
    # The store's capabilities, under the client's tag.
    assert data == [b"[CAPABILITY IMAP4rev1 IDLE MOVE] Logged in."]
    # lower_case all: the store gets the lower-cased name as typed (no domain added).
    assert store.logins[-1] == (login.lower(), "good")
    assert store.commands[0].endswith(b"SELECT INBOX")


async def test_greetings_and_capabilities_per_listener(seed_proxy: Proxy, pki: ServerCert) -> None:
    def greet() -> tuple[bytes, bytes, tuple[str, ...]]:
        plain = imaplib.IMAP4(seed_proxy.host("imap4"), seed_proxy.port("imap4"), timeout=5)
        before = plain.welcome
        plain.starttls(ssl_context=pki.client_context())
        after = plain.capabilities
        plain.logout()
        tls = connect(seed_proxy, "imaps", pki)
        tls_welcome = tls.welcome
        tls.logout()
        return before, tls_welcome, after

    before, imaps, after = await asyncio.to_thread(greet)
    assert before == (b"* OK [CAPABILITY IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT"
                      b" THREAD=REFERENCES SORT QUOTA IDLE STARTTLS AUTH=PLAIN SASL-IR]"
                      b" authsvc ready.")
    assert b"STARTTLS" not in imaps  # port 993 never offers it, though the seed lists it
    assert "STARTTLS" not in after


async def test_wrong_password_unknown_user_and_retry(seed_proxy: Proxy, pki: ServerCert) -> None:
    def attempts() -> list[tuple[str, object, float]]:
        client = connect(seed_proxy, "imap4", pki)
        results: list[tuple[str, object, float]] = []
        for login, password in (("bob", "wrong"), ("nobody", "x"), ("Bob", "good")):
            started = time.monotonic()
            try:
                results.append(("OK", client.login(login, password)[1], 0.0))
            except imaplib.IMAP4.error as exc:
                results.append(("NO", exc.args[0], time.monotonic() - started))
        client.logout()
        return results

    (s1, wrong, t1), (s2, unknown, t2), (s3, _, _) = await asyncio.to_thread(attempts)
    assert (s1, s2, s3) == ("NO", "NO", "OK")
    assert wrong == unknown == AUTH_FAILED
    assert isinstance(wrong, bytes)
    assert STORE_REFUSAL.encode() not in wrong
    # Both refusals wait for the configured deadline (a lower bound, not a speed test).
    assert t1 >= FAST.auth_failure_delay * 0.9
    assert t2 >= FAST.auth_failure_delay * 0.9


async def test_too_many_failures_bye(seed_proxy: Proxy, pki: ServerCert) -> None:
    def fail_three() -> bytes:
        sock = socket.create_connection((seed_proxy.host("imap4"), seed_proxy.port("imap4")))
        sock.settimeout(5)
        sock.sendall(b"a LOGIN bob x\r\nb LOGIN bob y\r\nc LOGIN bob z\r\nd NOOP\r\n")
        return read_all(sock)

    data = await asyncio.to_thread(fail_three)
    assert data.endswith(
        b"a NO " + AUTH_FAILED + b"\r\nb NO " + AUTH_FAILED + b"\r\nc NO " + AUTH_FAILED +
        b"\r\n* BYE Too many authentication failures.\r\n")


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def exchange(address: tuple[str, int], payload: bytes, until: bytes) -> bytes:
    """Send ``payload`` in one write, read until ``until`` appears (or EOF)."""
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


async def test_login_and_select_in_one_write_both_answered(seed_proxy: Proxy) -> None:
    address = (seed_proxy.host("imap4"), seed_proxy.port("imap4"))
    payload = b"a1 LOGIN bob good\r\na2 SELECT INBOX\r\na3 NOOP\r\n"
    data = await asyncio.to_thread(exchange, address, payload, b"a3 OK")
    assert b"a1 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in.\r\n" in data
    assert b"* 1 EXISTS\r\na2 OK [READ-WRITE] SELECT done\r\na3 OK NOOP done\r\n" in data


async def test_authenticate_plain(seed_proxy: Proxy, pki: ServerCert) -> None:
    def run() -> str:
        client = connect(seed_proxy, "imaps", pki)
        status, _ = client.authenticate("PLAIN", lambda _: b"\0Bob\0good")
        client.logout()
        return status

    assert await asyncio.to_thread(run) == "OK"
    assert seed_proxy.stores["imap"].logins[-1] == ("bob", "good")


async def test_sasl_ir_and_literal_password(seed_proxy: Proxy) -> None:
    address = (seed_proxy.host("imap4"), seed_proxy.port("imap4"))
    payload = b"a AUTHENTICATE PLAIN AGJvYgBnb29k\r\n"
    assert b"a OK [CAPABILITY" in await asyncio.to_thread(exchange, address, payload, b"a OK")
    payload = b"a LOGIN {3}\r\nbob {4}\r\ngood\r\n"
    data = await asyncio.to_thread(exchange, address, payload, b"a OK")
    assert data.count(b"+ Ready for literal data.") == 2


async def test_idle(seed_proxy: Proxy) -> None:
    address = (seed_proxy.host("imap4"), seed_proxy.port("imap4"))

    def idle() -> bytes:
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(b"a LOGIN bob good\r\nb SELECT INBOX\r\nc IDLE\r\n")
        data = b""
        while b"* 2 EXISTS" not in data:
            data += sock.recv(4096)
        sock.sendall(b"DONE\r\n")
        while b"c OK" not in data:
            data += sock.recv(4096)
        sock.close()
        return data

    data = await asyncio.to_thread(idle)
    assert b"+ idling\r\n* 2 EXISTS\r\n" in data
    assert b"c OK IDLE terminated" in data


async def test_big_fetch_is_byte_exact_over_imaps(
    tmp_path: Path, pki: ServerCert
) -> None:
    message = bytes(range(256)) * (5 * 4096)  # 5 MB, every byte value
    store = FakeStore("imap", message=message)
    await store.start()
    try:
        path = write_map(tmp_path / "map", {"bob@riseup.net": store})
        async with running(seed_listeners(path, pki)) as proxy:
            def fetch(listener: str) -> bytes:
                client = connect(proxy, listener, pki)
                client.login("bob", "good")
                client.select("INBOX")
                _, data = client.fetch("1", "(BODY[])")
                client.logout()
                part = data[0]
                assert isinstance(part, tuple)
                return part[1]

            assert await asyncio.to_thread(fetch, "imaps") == message
            assert await asyncio.to_thread(fetch, "imap4") == message
    finally:
        await store.stop()


@pytest.mark.parametrize(
    ("behaviour", "reply"),
    [("down", UNAVAILABLE), ("bye", UNAVAILABLE), ("close_mid_login", UNAVAILABLE),
     ("silent", UNAVAILABLE), ("stall", UNAVAILABLE)],
)
async def test_misbehaving_stores_give_a_temporary_failure(
    tmp_path: Path, pki: ServerCert, behaviour: str, reply: bytes
) -> None:
    store = FakeStore("imap", behaviour=behaviour)
    await store.start()
    if behaviour == "down":
        await store.stop()
    try:
        path = write_map(tmp_path / "map", {"bob@riseup.net": store})
        proxy_settings = ProxySettings(auth_failure_delay=0.1, backend_timeout=0.5)
        async with running(seed_listeners(path, pki), proxy_settings) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            data = await asyncio.to_thread(exchange, address, b"a LOGIN bob good\r\n", b"a NO")
            assert data.endswith(b"a NO " + reply + b"\r\n")
            # ...and the proxy still serves the next client.
            data = await asyncio.to_thread(exchange, address, b"b NOOP\r\n", b"b OK")
            assert data.endswith(b"b OK NOOP completed.\r\n")
    finally:
        await store.stop()


async def test_map_down_is_a_temporary_failure(tmp_path: Path, pki: ServerCert) -> None:
    missing = tmp_path / "no-such-map"
    async with running(seed_listeners(missing, pki)) as proxy:
        address = (proxy.host("imap4"), proxy.port("imap4"))
        data = await asyncio.to_thread(exchange, address, b"a LOGIN bob good\r\n", b"a NO")
    assert data.endswith(b"a NO " + UNAVAILABLE + b"\r\n")


def ipv6_loopback() -> bool:
    """True when ``::1`` can be bound: the only thing a host without IPv6 lacks."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_ipv6(tmp_path: Path, pki: ServerCert, imap_store: FakeStore) -> None:
    require(ipv6_loopback(), "no IPv6 loopback: ::1 cannot be bound")
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    listener = make_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS,
                             seed_listeners(path, pki)[0].map, pki, host="::1")
    async with running([listener]) as proxy:
        assert proxy.host("imap4") == "::1"

        def login() -> str:
            client = imaplib.IMAP4("::1", proxy.port("imap4"), timeout=5)
            client.starttls(ssl_context=pki.client_context())
            status = client.login("bob", "good")[0]
            client.logout()
            return status

        assert await asyncio.to_thread(login) == "OK"


async def test_tls_required_listener(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    listener = seed_listeners(path, pki, tls_required=True)[0]
    async with running([listener]) as proxy:
        def run() -> tuple[bytes, str, str]:
            client = imaplib.IMAP4(proxy.host("imap4"), proxy.port("imap4"), timeout=5)
            welcome = client.welcome
            try:
                client.login("bob", "good")
                plain = "OK"
            except imaplib.IMAP4.error as exc:
                plain = str(exc)
            client.starttls(ssl_context=pki.client_context())
            status = client.login("bob", "good")[0]
            client.logout()
            return welcome, plain, status

        welcome, plain, status = await asyncio.to_thread(run)
    assert b"LOGINDISABLED" in welcome
    assert b"AUTH=PLAIN" not in welcome
    assert "PRIVACYREQUIRED" in plain or "LOGINDISABLED" in plain
    assert status == "OK"


async def test_connection_limit_refuses_extra_and_keeps_listening(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore
) -> None:
    path = write_map(tmp_path / "map", {"bob@riseup.net": imap_store})
    listener = seed_listeners(path, pki, connection_limit=1)[0]
    async with running([listener]) as proxy:
        address = (proxy.host("imap4"), proxy.port("imap4"))
        first = socket.create_connection(address, timeout=5)
        assert (await asyncio.to_thread(first.recv, 4096)).startswith(b"* OK")
        extra = await asyncio.to_thread(exchange, address, b"", b"\r\n")
        assert extra == b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
        first.close()
        await eventually_async(lambda: proxy.server.sessions == 0)
        data = await asyncio.to_thread(exchange, address, b"a NOOP\r\n", b"a OK")
        assert data.endswith(b"a OK NOOP completed.\r\n")


async def test_plain_listener_refuses_starttls_client_ssl_errors(
    seed_proxy: Proxy, pki: ServerCert
) -> None:
    # A TLS client on the plain port: the proxy closes, the client sees an error.
    def tls_on_plain() -> type[BaseException] | None:
        raw = socket.create_connection((seed_proxy.host("imap4"), seed_proxy.port("imap4")))
        raw.recv(4096)  # the greeting, which the TLS client would not expect
        try:
            pki.client_context().wrap_socket(raw, server_hostname="127.0.0.1").close()
        except (ssl.SSLError, OSError) as exc:
            return type(exc)
        return None

    assert await asyncio.to_thread(tls_on_plain) is not None


async def test_implicit_tls_to_the_store(tmp_path: Path, pki: ServerCert) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    store = FakeStore("imap", tls=context)
    await store.start()
    try:
        path = write_map(tmp_path / "map", {"bob@riseup.net": store})
        listener = seed_listeners(path, pki, backend_tls=BackendTls.IMPLICIT)[0]
        checked = ProxySettings(auth_failure_delay=0.1, backend_ca_file=str(pki.ca))
        async with running([listener], checked) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            data = await asyncio.to_thread(exchange, address, b"a LOGIN bob good\r\n", b"a ")
            assert b"a OK [CAPABILITY IMAP4rev1 IDLE MOVE]" in data
        # A store whose certificate the proxy cannot check is a temporary failure.
        async with running([listener], ProxySettings(auth_failure_delay=0.1)) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            data = await asyncio.to_thread(exchange, address, b"a LOGIN bob good\r\n", b"a ")
            assert data.endswith(b"a NO " + UNAVAILABLE + b"\r\n")
    finally:
        await store.stop()
