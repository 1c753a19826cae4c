"""serve's limits on a request head agree with aiohttp's, refuse early, and end in time.

* More than ``MAX_HEADERS`` (126, the stricter of aiohttp's parsers) header
  lines: aiohttp answers 400 past 128 (llhttp, the parser it runs); serve
  answers its fixed 400 past 126 in both of its paths.
* A byte no parser takes (``authsvc/http/head.py``) is refused with that 400
  at once, before the head is complete, not held until its blank line.
* A head not complete within ``[http] head_timeout`` is closed with no reply.

Replies are read over loopback through the same site ``authsvc serve`` runs,
and, for the 400s, compared with what plain aiohttp does with the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest
from aiohttp import web

from authsvc.http.auth_http import AuthService
from authsvc.http.protocol import InFlight, NginxProtocol
from authsvc.http.server import run_server
from authsvc.http.wire import BAD_REQUEST_REPLY, MAX_FIELD_SIZE, MAX_HEADERS, ReplyCache
from authsvc.settings import HttpSettings
from tests.unit.auth_http_fakes import (
    exchange,
    make_app,
    make_maps,
    map_builder,
    nginx_facing_server,
    nginx_request,
    parse_reply,
    seed_settings,
)


def with_headers(count: int) -> bytes:
    """nginx's request for bob with ``count`` header lines in all."""
    request = nginx_request(b"bob")
    head = request[:-4]
    padding = count - head.count(b"\r\n")
    return head + b"".join(b"\r\nX-Pad-%d: x" % i for i in range(padding)) + b"\r\n\r\n"


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = make_app(seed_settings(), make_maps())
    async with nginx_facing_server(app, max_field_size=MAX_FIELD_SIZE,
                                   max_line_size=MAX_FIELD_SIZE) as bound:
        yield bound


@pytest.fixture
async def aiohttp_port() -> AsyncIterator[int]:
    app = make_app(seed_settings(), make_maps())
    async with nginx_facing_server(app, shim=False, max_field_size=MAX_FIELD_SIZE,
                                   max_line_size=MAX_FIELD_SIZE) as bound:
        yield bound


async def test_the_fast_path_takes_as_many_headers_as_aiohttp(
    port: int, aiohttp_port: int
) -> None:
    for server in (port, aiohttp_port):
        reply = parse_reply(await exchange(server, with_headers(MAX_HEADERS)))
        assert reply.get("Auth-Status") == "OK", server


@pytest.mark.parametrize("count", [MAX_HEADERS + 1, 129, 200])
async def test_more_headers_than_aiohttp_takes_get_a_fixed_400(
    port: int, aiohttp_port: int, count: int
) -> None:
    request = with_headers(count)
    if count > 128:  # llhttp's limit; aiohttp's pure-Python parser stops at 126
        assert (await exchange(aiohttp_port, request)).startswith(b"HTTP/1.0 400 Bad Request")
    # Whole in the first peek, and in pieces through the protocol.
    assert await exchange(port, request) == BAD_REQUEST_REPLY
    assert await exchange(port, request, chunks=7) == BAD_REQUEST_REPLY
    assert b"Server:" not in BAD_REQUEST_REPLY


async def _reply_before_the_head_ends(port: int, partial: bytes) -> tuple[bytes, float]:
    """Send ``partial`` (no blank line) and read; the reply and how long it took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.monotonic()
        writer.write(partial)
        await writer.drain()
        data = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                while chunk := await reader.read(65536):
                    data += chunk
        return data, time.monotonic() - started
    finally:
        writer.close()


@pytest.mark.parametrize("partial", [
    b"GET /auth HTTP/1.0\r\nAuth-User: bob\r\nAuth-Pass: Sekr1t\x01-more",  # a control byte
    b"GET /auth HTTP/1.0\nHost: x\n\n",  # bare LF: never a CRLFCRLF
    b"GET /auth HTTP/1.0\r\nAuth Pass: Sekr1t",  # a space in a name
    b"GET /auth HTTP/1.0\r\n Auth-Pass: Sekr1t",  # a folded line
    b"GET /auth HTTP/1.0\r\nAuth-Pass: Sekr1t\rX",  # a bare CR
], ids=["control", "bare-lf", "name", "fold", "bare-cr"])
async def test_a_head_that_cannot_become_valid_is_refused_at_once(
    port: int, partial: bytes
) -> None:
    reply, took = await _reply_before_the_head_ends(port, partial)
    assert reply == BAD_REQUEST_REPLY  # quotes nothing, no Server header
    assert took < 4  # not held for the blank line, nor for any deadline
    # The same bytes cut into reads: through the protocol, still at once.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for start in range(0, len(partial), 9):
            writer.write(partial[start:start + 9])
            await writer.drain()
            await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            assert await reader.read() == BAD_REQUEST_REPLY
    finally:
        writer.close()


async def test_a_head_not_complete_in_time_is_closed_without_a_reply() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    started: asyncio.Future[web.Application] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(run_server(
        seed_settings(HttpSettings(head_timeout=0.5)), sock, stop=stop, started=started,
        build_map=map_builder(make_maps())))
    try:
        await asyncio.wait_for(started, 5)
        # Half of nginx's request: serve waits for the rest, then gives up.
        reply, took = await _reply_before_the_head_ends(port, nginx_request(b"bob")[:60])
        assert reply == b""
        assert 0.4 < took < 4
        # A whole request in time is answered as ever.
        assert parse_reply(await exchange(port, nginx_request(b"bob"),
                                          chunks=3)).get("Auth-Status") == "OK"
    finally:
        stop.set()
        assert await asyncio.wait_for(server, 5) == 0


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = asyncio.Event()
        self.written = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def abort(self) -> None:
        self.aborted.set()


async def test_a_connection_that_says_nothing_is_closed_at_the_deadline() -> None:
    # What a unix socket, or a TCP client past TCP_DEFER_ACCEPT, reaches: the protocol.
    transport = _Transport()
    protocol = NginxProtocol(asyncio.Protocol, cast(AuthService, None), "/auth", InFlight(),
                             ReplyCache(), head_timeout=0.1)
    protocol.connection_made(transport)
    await asyncio.wait_for(transport.aborted.wait(), 5)
    assert transport.written == b""
