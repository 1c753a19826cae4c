"""Claims of docs/security.md about ``authsvc serve`` and render-nginx that no other test proved.

nginx escapes a login or password into up to three times its bytes.  serve
takes request heads up to ``MAX_HEAD`` (64 KiB) and header lines up to
``MAX_FIELD_SIZE`` (32 KiB), however the head is cut into reads; past either,
serve refuses the request with a 431 that quotes nothing (aiohttp's own 400
would quote the start of the line), and keeps serving.  A head aiohttp's
parser would refuse gets serve's own 400, which quotes nothing either, and
neither the log (every logger at debug, aiohttp's access log on) nor any
reply byte holds any part of the password in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator

import pytest

from authsvc.http.app import AUTH
from authsvc.http.auth_http import TEXT_INVALID
from authsvc.http.wire import BAD_REQUEST_REPLY, MAX_FIELD_SIZE, MAX_HEAD
from authsvc.log import make_handler
from authsvc.render import NginxOptions, render_nginx
from authsvc.settings import LogSettings
from tests.golden.cases import nest
from tests.helpers.bad_heads import CASES, Case, leaks, password, send
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


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_malformed_head_leaks_no_part_of_its_password(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    # caplog holds the records as made (before any filter of ours touches
    # them), ``ours`` the lines serve's own handler writes.
    for name in ("", "aiohttp.server", "aiohttp.access", "aiohttp.web", "authsvc"):
        caplog.set_level(logging.DEBUG, logger=name)
    ours = io.StringIO()
    handler = make_handler(LogSettings(level="debug"), ours)
    logging.getLogger().addHandler(handler)
    secret = password()
    app = make_app(seed_settings(), make_maps())
    try:
        async with nginx_facing_server(app, access_log=logging.getLogger("aiohttp.access"),
                                       max_field_size=MAX_FIELD_SIZE,
                                       max_line_size=MAX_FIELD_SIZE) as bound:
            reply = await asyncio.to_thread(send, bound, case, secret)
        app[AUTH].flush_log()
    finally:
        logging.getLogger().removeHandler(handler)
    logged = (caplog.text + ours.getvalue()).encode("utf-8", "surrogateescape")
    assert leaks(reply, secret) == [], reply
    assert leaks(logged, secret) == [], logged
    assert b"aiohttp" not in reply and b"Server:" not in reply
    if b" 400 " in reply:
        assert reply.endswith(BAD_REQUEST_REPLY)  # the one fixed text
        bad = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "bad_request"]
        assert len(bad) == 1
        assert set(bad[0].fields) == {"event", "peer", "offset", "length"}  # type: ignore[attr-defined]


def test_nginx_mail_tls_is_1_2_and_up_with_nginx_default_ciphers() -> None:
    # The rendered mail {} names the protocols and leaves ssl_ciphers to nginx's
    # default (HIGH:!aNULL:!MD5): docs/security.md says so.
    text = render_nginx(nest(), NginxOptions()).text
    assert "    ssl_protocols TLSv1.2 TLSv1.3;\n" in text
    assert "ssl_ciphers" not in text
    assert "ssl_prefer_server_ciphers" not in text
