"""POP3 through the proxy: stdlib poplib clients, a scripted POP3 store."""

from __future__ import annotations

import asyncio
import poplib
import socket
from pathlib import Path

import pytest

from tests.component.conftest import Proxy, running, seed_listeners, write_map
from tests.component.fakestore import STORE_REFUSAL, FakeStore
from tests.services.certs import ServerCert


def connect(proxy: Proxy, how: str, pki: ServerCert) -> poplib.POP3:
    listener = how.split("+")[0]
    host, port = proxy.host(listener), proxy.port(listener)
    if listener == "pop3s":
        return poplib.POP3_SSL(host, port, context=pki.client_context(), timeout=5)
    client = poplib.POP3(host, port, timeout=5)
    if how == "pop3+stls":
        client.stls(context=pki.client_context())
    return client


@pytest.mark.parametrize("how", ["pop3", "pop3+stls", "pop3s"])
@pytest.mark.parametrize("login", ["Bob", "BOB@riseup.net", "bob"])
async def test_seed_names_land_on_the_mapped_store(
    seed_proxy: Proxy, pki: ServerCert, how: str, login: str
) -> None:
    def session() -> tuple[bytes, tuple[int, int]]:
        client = connect(seed_proxy, how, pki)
        client.user(login)
        reply = client.pass_("good")
        stat = client.stat()
        client.quit()
        return reply, stat

    reply, stat = await asyncio.to_thread(session)
    assert reply == b"+OK Logged in."
    assert stat == (1, 22)
    assert seed_proxy.stores["pop3"].logins[-1] == (login.lower(), "good")


async def test_capa_per_listener(seed_proxy: Proxy, pki: ServerCert) -> None:
    def capas() -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
        plain = connect(seed_proxy, "pop3", pki)
        before = plain.capa()
        plain.stls(context=pki.client_context())
        after = plain.capa()
        plain.quit()
        tls = connect(seed_proxy, "pop3s", pki)
        pop3s = tls.capa()
        tls.quit()
        return before, after, pop3s

    before, after, pop3s = await asyncio.to_thread(capas)
    assert "STLS" in before
    assert before["SASL"] == ["PLAIN"]
    assert "STLS" not in after
    assert "STLS" not in pop3s


async def test_wrong_password_unknown_user_and_retry(seed_proxy: Proxy, pki: ServerCert) -> None:
    def attempts() -> list[str]:
        client = connect(seed_proxy, "pop3", pki)
        out = []
        for login, password in (("bob", "wrong"), ("nobody", "x"), ("bob", "good")):
            client.user(login)
            try:
                out.append(client.pass_(password).decode())
            except poplib.error_proto as exc:
                out.append(exc.args[0].decode())
        client.quit()
        return out

    wrong, unknown, ok = await asyncio.to_thread(attempts)
    assert wrong == unknown == "-ERR [AUTH] Authentication failed."
    assert STORE_REFUSAL not in wrong
    assert ok == "+OK Logged in."


async def test_auth_plain_and_pipelined_commands(seed_proxy: Proxy) -> None:
    address = (seed_proxy.host("pop3"), seed_proxy.port("pop3"))

    def run(payload: bytes, until: bytes) -> bytes:
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(payload)
        data = b""
        while until not in data:
            data += sock.recv(65536)
        sock.close()
        return data

    data = await asyncio.to_thread(run, b"AUTH PLAIN AGJvYgBnb29k\r\nSTAT\r\n", b"+OK 1")
    assert data.endswith(b"+OK Logged in.\r\n+OK 1 22\r\n")
    payload = b"USER bob\r\nPASS good\r\nSTAT\r\nRETR 1\r\n"
    data = await asyncio.to_thread(run, payload, b"\r\n.\r\n")
    assert data.endswith(b"+OK 1 22\r\n+OK\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")


async def test_big_retr_is_byte_exact_over_pop3s(tmp_path: Path, pki: ServerCert) -> None:
    lines = [b"line %d ." % i + b"x" * 70 for i in range(60_000)]
    message = b"Subject: big\r\n\r\n.starts with a dot\r\n" + b"\r\n".join(lines) + b"\r\n"
    store = FakeStore("pop3", message=message)
    await store.start()
    try:
        path = write_map(tmp_path / "map", {"bob@riseup.net": store})
        async with running(seed_listeners(path, pki)) as proxy:
            def retr() -> list[bytes]:
                client = connect(proxy, "pop3s", pki)
                client.user("bob")
                client.pass_("good")
                _, got, _ = client.retr(1)
                client.quit()
                return got

            got = await asyncio.to_thread(retr)
        assert b"\r\n".join(got) + b"\r\n" == message
    finally:
        await store.stop()


@pytest.mark.parametrize("behaviour", ["down", "bye", "close_mid_login", "silent"])
async def test_misbehaving_stores(tmp_path: Path, pki: ServerCert, behaviour: str) -> None:
    store = FakeStore("pop3", behaviour=behaviour)
    await store.start()
    if behaviour == "down":
        await store.stop()
    try:
        path = write_map(tmp_path / "map", {"bob@riseup.net": store})
        async with running(seed_listeners(path, pki)) as proxy:
            def login() -> str:
                client = connect(proxy, "pop3", pki)
                client.user("bob")
                try:
                    return client.pass_("good").decode()
                except poplib.error_proto as exc:
                    return str(exc.args[0].decode())
                finally:
                    client.quit()

            reply = await asyncio.to_thread(login)
        assert reply == "-ERR [SYS/TEMP] Account is temporarily unavailable, try again later."
    finally:
        await store.stop()
