"""Claims of docs/security.md about ``authsvc serve`` and render-nginx that no other test proved.

nginx escapes a login or password into up to three times its bytes.  serve
takes request heads up to ``MAX_HEAD`` (64 KiB) and header lines up to
``MAX_FIELD_SIZE`` (32 KiB), however the head is cut into reads; past either,
serve refuses the request with a 431 that quotes nothing (aiohttp's own 400
would quote the start of the line), and keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from authsvc.http.auth_http import TEXT_INVALID
from authsvc.http.wire import MAX_FIELD_SIZE, MAX_HEAD
from authsvc.render import NginxOptions, render_nginx
from tests.golden.cases import nest
from tests.unit.auth_http_fakes import (
    exchange,
    make_app,
    make_maps,
    nginx_facing_server,
    nginx_request,
    parse_reply,
    seed_settings,
)


async def _send_in_pieces(port: int, request: bytes, pieces: int) -> bytes:
    """Write ``request`` in pieces until the server answers; what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    step = len(request) // pieces + 1
    with contextlib.suppress(ConnectionError):
        for start in range(0, len(request), step):
            writer.write(request[start:start + step])
            await writer.drain()
            await asyncio.sleep(0.01)
    data = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                data += chunk
    writer.close()
    return data


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = make_app(seed_settings(), make_maps())
    async with nginx_facing_server(app, max_field_size=MAX_FIELD_SIZE,
                                   max_line_size=MAX_FIELD_SIZE) as bound:
        yield bound


@pytest.mark.parametrize(("size", "pieces"), [
    (2 * MAX_HEAD, 8),  # a head over MAX_HEAD, still incomplete when it passes it
    (2 * MAX_HEAD, 1),  # the same head in one write
    (MAX_FIELD_SIZE + 1000, 1),  # one line over MAX_FIELD_SIZE, the head under MAX_HEAD
], ids=["head-in-pieces", "head-at-once", "line"])
async def test_head_over_the_cap_gets_no_answer_and_no_echo(port: int, size: int,
                                                           pieces: int) -> None:
    password = b"Sekr1t-" + b"x" * size
    raw = await _send_in_pieces(port, nginx_request(b"Bob", password), pieces=pieces)
    # serve answers 431 and closes gracefully (it reads and drops the rest of
    # our writes first), so the 431 always arrives, and nothing of the password.
    assert raw.startswith(b"HTTP/1.0 431"), raw[:80]
    assert b"Auth-Status" not in raw
    assert b"Sekr1t" not in raw
    # Under the caps a long password is just a password (nginx never sends
    # more than its own buffer's worth).
    raw = await exchange(port, nginx_request(b"Bob", b"y" * (MAX_FIELD_SIZE - 100)))
    assert parse_reply(raw).get("Auth-Status") == "OK"
    # The service goes on answering.
    reply = parse_reply(await exchange(port, nginx_request(b"nobody")))
    assert reply.get("Auth-Status") == TEXT_INVALID


async def test_over_long_password_is_not_echoed(port: int) -> None:
    password = b"Sekr1t-" + b"x" * (MAX_FIELD_SIZE + 1000)
    raw = await _send_in_pieces(port, nginx_request(b"Bob", password), pieces=1)
    assert raw.startswith(b"HTTP/1.0 431")
    assert b"Sekr1t" not in raw


def test_nginx_mail_tls_is_1_2_and_up_with_nginx_default_ciphers() -> None:
    # The rendered mail {} names the protocols and leaves ssl_ciphers to nginx's
    # default (HIGH:!aNULL:!MD5): docs/security.md says so.
    text = render_nginx(nest(), NginxOptions()).text
    assert "    ssl_protocols TLSv1.2 TLSv1.3;\n" in text
    assert "ssl_ciphers" not in text
    assert "ssl_prefer_server_ciphers" not in text
