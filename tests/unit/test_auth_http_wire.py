"""Byte-for-byte: the request nginx 1.22 writes in, the exact reply bytes nginx reads out.

The server runs through ``NginxSite``, the site ``authsvc serve`` uses, so
the DEL escaper (``authsvc/http/wire.py``) is part of every exchange here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from authsvc.http.auth_http import TEXT_INVALID, TEXT_TEMPORARY
from authsvc.http.wire import MAX_FIELD_SIZE, parse_head
from authsvc.runtime.binding import ListenError, bind_unix
from tests.unit.auth_http_fakes import (
    PASSWORD,
    Reply,
    exchange,
    make_app,
    make_maps,
    nginx_facing_server,
    nginx_request,
    parse_reply,
    seed_settings,
)


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = make_app(seed_settings(), make_maps())
    async with nginx_facing_server(app, max_field_size=MAX_FIELD_SIZE,
                                   max_line_size=MAX_FIELD_SIZE) as bound:
        yield bound


def test_request_builder_matches_nginx_escaping() -> None:
    # What nginx 1.22 sent for login "ok sp%ce", password "p%w dé".
    raw = nginx_request(b"ok sp%ce", "p%w dé".encode())
    assert b"\r\nAuth-User: ok%20sp%25ce\r\n" in raw
    assert b"\r\nAuth-Pass: p%25w%20d\xc3\xa9\r\n" in raw
    assert raw.startswith(b"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n")
    assert raw.endswith(b"\r\n\r\n")
    assert b"Connection" not in raw


async def test_success_reply_bytes(port: int) -> None:
    raw = await exchange(port, nginx_request(b"Bob"))
    assert raw == (
        b"HTTP/1.0 200 OK\r\n"
        b"Auth-Status: OK\r\n"
        b"Auth-Server: 10.0.0.5\r\n"
        b"Auth-Port: 143\r\n"
        b"Auth-User: bob\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )  # and the server closed: exchange() read to EOF


async def test_refusal_reply_bytes(port: int) -> None:
    raw = await exchange(port, nginx_request(b"nobody"))
    assert raw == (
        b"HTTP/1.0 200 OK\r\n"
        b"Auth-Status: " + TEXT_INVALID.encode() + b"\r\n"
        b"Auth-Wait: 3\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


async def test_map_down_reply_bytes(port: int) -> None:
    # Attempt 11 is past max_attempts (10): no Auth-Wait, nginx closes the session.
    reply = parse_reply(await exchange(port, nginx_request(b"nowhere", attempt=11)))
    assert reply.get("Auth-Status") == TEXT_TEMPORARY
    assert reply.get("Auth-Wait") is None


async def test_raw_utf8_login(port: int) -> None:
    reply = parse_reply(await exchange(port, nginx_request("jöhn".encode())))
    assert (reply.get("Auth-Status"), reply.get("Auth-Server")) == ("OK", "10.0.0.10")
    assert reply.get("Auth-User") is None


async def test_raw_latin1_login_is_read_as_latin1(port: int) -> None:
    reply = parse_reply(await exchange(port, nginx_request(b"j\xf6hn")))
    assert (reply.get("Auth-Status"), reply.get("Auth-Server")) == ("OK", "10.0.0.10")


async def test_latin1_login_that_needs_rewriting_is_refused(port: int) -> None:
    # lower_case would make it "jöhn", but aiohttp can only write UTF-8 back in
    # Auth-User, which is not the byte string the client typed.
    reply = parse_reply(await exchange(port, nginx_request(b"J\xf6hn")))
    assert reply.get("Auth-Status") == TEXT_INVALID


async def test_escaped_crlf_in_login_cannot_inject_headers(port: int) -> None:
    reply = parse_reply(await exchange(port, nginx_request(b"bob\r\nAuth-Status: OK")))
    assert reply.get("Auth-Status") == TEXT_INVALID
    assert [k for k, _ in reply.headers].count(b"Auth-Status") == 1


async def test_password_with_del_is_routed(port: int) -> None:
    reply = parse_reply(await exchange(port, nginx_request(b"Bob", b"pass\x7fword")))
    assert reply.get("Auth-Status") == "OK"


async def test_del_split_across_reads(port: int) -> None:
    request = nginx_request(b"Bob", b"\x7f" * 40)
    reply = parse_reply(await exchange(port, request, chunks=7))
    assert reply.get("Auth-Status") == "OK"


async def test_login_with_del_is_an_ordinary_refusal(port: int) -> None:
    reply = parse_reply(await exchange(port, nginx_request(b"bo\x7fb")))
    assert (reply.get("Auth-Status"), reply.get("Auth-Wait")) == (TEXT_INVALID, "3")


async def test_plain_aiohttp_answers_400_to_del() -> None:
    """Why wire.py exists: without it, aiohttp rejects the request before our handler.

    The reply has no Auth-Status/Auth-Server, so nginx logs "did not send
    server or port" and the client sees ``* BAD internal server error``
    (docs/serve.md, "Decoding").
    """
    app = make_app(seed_settings(), make_maps())
    async with nginx_facing_server(app, shim=False) as bare_port:
        reply = parse_reply(await exchange(bare_port, nginx_request(b"Bob", b"pass\x7fword")))
    assert reply.status_line.startswith(b"HTTP/1.0 400")
    assert reply.get("Auth-Status") is None
    assert reply.get("Auth-Server") is None


async def test_overlong_escaped_login_gets_a_refusal_not_a_400(port: int) -> None:
    # 4000 spaces: 12000 bytes once escaped, past aiohttp's default 8190 limit.
    reply = parse_reply(await exchange(port, nginx_request(b" " * 4000)))
    assert reply.status_line == b"HTTP/1.0 200 OK"
    assert reply.get("Auth-Status") == TEXT_INVALID


async def test_password_never_echoed(port: int) -> None:
    raw = await exchange(port, nginx_request(b"Bob"))
    assert PASSWORD.encode() not in raw
    assert b"Tr0ub4dor" not in raw


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.sock")
    sock = bind_unix(path)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o660)
    app = make_app(seed_settings(), make_maps())
    from aiohttp import web

    from authsvc.http.app import AUTH
    from authsvc.http.site import NginxSite

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = NginxSite(runner, sock, app[AUTH])
    await site.start()
    try:
        request = nginx_request(b"Bob").replace(b"Host: 127.0.0.1", b"Host: localhost")
        reply = parse_reply(await exchange(0, request, unix=path))
        assert (reply.get("Auth-Status"), reply.get("Auth-User")) == ("OK", "bob")
    finally:
        await site.stop()
        await runner.cleanup()
        sock.close()


def test_bind_unix_replaces_a_stale_socket_but_not_a_live_one(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.sock")
    live = bind_unix(path)
    with pytest.raises(ListenError, match="in use"):
        bind_unix(path)
    live.close()  # the file stays behind, as after a crash
    assert os.path.exists(path)
    bind_unix(path).close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ListenError, match="not a socket"):
        bind_unix(str(tmp_path / "file"))



# -- the fast path and aiohttp agree ------------------------------------------------------------


@pytest.fixture
async def aiohttp_port() -> AsyncIterator[int]:
    """The same app with every request parsed by aiohttp (wire.py's DEL escaping only)."""
    app = make_app(seed_settings(), make_maps())
    async with nginx_facing_server(app, fast_path=False, max_field_size=MAX_FIELD_SIZE,
                                   max_line_size=MAX_FIELD_SIZE) as bound:
        yield bound


@pytest.mark.parametrize(
    "request_bytes",
    [
        nginx_request(b"Bob"),
        nginx_request(b"nobody", attempt=12),
        nginx_request("jöhn".encode()),
        nginx_request(b"J\xf6hn"),
        nginx_request(b"Bob", b"pass\x7fword"),
        nginx_request(b"bob", protocol=b"smtp"),
        nginx_request(b"bob", method=b"cram-md5"),
        nginx_request(b"bob", protocol=b"pop3", extra=((b"X-Authsvc-Listener", b"pop3s"),)),
        nginx_request(b"bob", extra=((b"X-Authsvc-Listener", b"nope"),)),
        nginx_request(b" " * 4000),
        b"GET /auth HTTP/1.0\r\nHost: x\r\nAuth-Protocol: imap\r\n\r\n",
    ],
    ids=["ok", "refused", "utf8", "latin1-rewrite", "del", "smtp", "cram", "pop3s",
         "bad-listener", "long", "no-user"],
)
async def test_fast_path_answers_like_aiohttp(
    port: int, aiohttp_port: int, request_bytes: bytes
) -> None:
    fast = parse_reply(await exchange(port, request_bytes))
    slow = parse_reply(await exchange(aiohttp_port, request_bytes))
    def auth_headers(reply: Reply) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in reply.headers if k.startswith(b"Auth-")]
    assert auth_headers(fast) == auth_headers(slow)
    assert auth_headers(fast)
    assert fast.status_line == slow.status_line == b"HTTP/1.0 200 OK"
    assert fast.get("Date") is None and slow.get("Date") is not None  # who answered


@pytest.mark.parametrize(
    ("head", "fast"),
    [
        (b"GET /auth HTTP/1.0\r\nAuth-User: a", True),
        (b"GET /auth?x=1 HTTP/1.0\r\nAuth-User: a", True),
        (b"GET /auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuth-User: a", True),
        (b"GET /auth HTTP/1.1\r\nConnection: close\r\nAuth-User: a", False),  # no Host
        (b"GET /auth HTTP/1.1\r\nAuth-User: a", False),  # keep-alive: aiohttp's job
        (b"GET /auth HTTP/1.0\r\nConnection: keep-alive", False),
        (b"POST /auth HTTP/1.0\r\nAuth-User: a", False),
        (b"GET /readyz HTTP/1.0", False),
        (b"GET /auth HTTP/1.0\r\nContent-Length: 3", False),
        (b"GET /auth HTTP/1.0\r\nTransfer-Encoding: chunked", False),
        (b"GET /auth HTTP/1.0\r\nBad Header: a", False),
        (b"GET /auth HTTP/1.0\r\n folded", False),
        (b"GET /auth HTTP/1.0\r\nAuth-User: a\x01b", False),
        (b"GET /auth HTTP/1.0\r\nAuth-User: a\nX: b", False),
        (b"GET /auth HTTP/2.0", False),
    ],
)
def test_parse_head_takes_only_nginx_shaped_requests(head: bytes, fast: bool) -> None:
    assert (parse_head(head, "/auth") is not None) is fast


def test_parse_head_headers() -> None:
    parsed = parse_head(b"GET /auth HTTP/1.0\r\nAuth-User:  b\xc3\xb6b \r\n"
                        b"Client-IP: 192.0.2.1", "/auth")
    assert parsed is not None
    minor, headers = parsed
    assert minor == 0
    assert headers == {"auth-user": "böb", "client-ip": "192.0.2.1"}  # trimmed


def test_parse_head_leaves_repeated_headers_to_aiohttp() -> None:
    # nginx never repeats a header; a repeat (any case) is aiohttp's to judge.
    head = b"GET /auth HTTP/1.0\r\nAuth-User: b\r\nAUTH-USER: x"
    assert parse_head(head, "/auth") is None


async def test_keep_alive_request_is_served_by_aiohttp_once_then_closed(port: int) -> None:
    # aiohttp answers one checked request per connection: a second head would
    # reach its parser unchecked (docs/serve.md, "The fast path").
    request = nginx_request(b"Bob", b"pw\x7f").replace(b"HTTP/1.0", b"HTTP/1.1")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            raw = await reader.read()
    finally:
        writer.close()
    reply = parse_reply(raw)
    assert (reply.status_line, reply.get("Auth-Status"), reply.get("Auth-User"),
            reply.get("Connection")) == (b"HTTP/1.1 200 OK", "OK", "bob", "close")
    assert b"ok\n" not in raw  # the pipelined /healthz was never parsed


async def test_http11_close_gets_a_fast_answer(port: int) -> None:
    request = nginx_request(b"Bob").replace(b"HTTP/1.0\r\n",
                                             b"HTTP/1.1\r\nConnection: close\r\n")
    raw = await exchange(port, request)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n")
    assert raw.endswith(b"Content-Length: 0\r\nConnection: close\r\n\r\n")


async def test_readyz_on_the_nginx_socket(port: int) -> None:
    raw = await exchange(port, b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
    reply = parse_reply(raw)
    assert reply.status_line == b"HTTP/1.0 200 OK"
    assert b'"status": "ready"' in reply.body
