"""One trust check (``authsvc/control/trust.py``) for the control endpoints and ``GET /auth``.

Trusted: the unix socket, or the shared secret.  Never a TCP peer for its
address, IPv6 literals included: an inet socket address is a tuple, so no
host string (``::1``, ``[::1]``, ``fe80::1%lo``) can pass for a unix path.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from authsvc.control.flush import FLUSH_PATH, CacheControl
from authsvc.control.trust import over_unix_socket, trusted
from authsvc.redact import Secret
from tests.services.require import require

SECRET = Secret("s3cret-key")
HEADER = "X-Authsvc-Key"


@pytest.mark.parametrize("sockname", [
    "/run/authsvc/auth.sock", "relative.sock", b"\0abstract",
])
def test_a_unix_socket_is_trusted_without_a_secret(sockname: object) -> None:
    assert over_unix_socket(sockname)
    assert trusted({}, None, HEADER, sockname=sockname)
    assert trusted({}, SECRET, HEADER, sockname=sockname)


@pytest.mark.parametrize("sockname", [
    ("127.0.0.1", 9143), ("::1", 9143, 0, 0), ("::ffff:127.0.0.1", 9143, 0, 0),
    ("fe80::1%lo", 9143, 0, 1), ("2001:db8::7", 443, 0, 0), None,
])
def test_an_inet_peer_is_never_trusted_for_its_address(sockname: object) -> None:
    assert not over_unix_socket(sockname)
    assert not trusted({}, None, HEADER, sockname=sockname)  # the control endpoints
    assert not trusted({}, SECRET, HEADER, sockname=sockname)
    assert trusted({"x-authsvc-key": "s3cret-key"}, SECRET, HEADER, sockname=sockname)


def test_the_secret_header_is_case_insensitive_in_both_header_maps() -> None:
    # aiohttp's case-insensitive headers, and wire.py's lower-cased dict.
    assert trusted(CIMultiDict({"X-AUTHSVC-KEY": "s3cret-key"}), SECRET, HEADER)
    assert trusted({"x-authsvc-key": "s3cret-key"}, SECRET, HEADER)
    assert not trusted({"x-authsvc-key": "s3cret-kez"}, SECRET, HEADER)
    assert not trusted({"x-authsvc-key": ""}, SECRET, HEADER)
    assert not trusted({}, SECRET, HEADER)


def test_non_utf8_bytes_are_not_the_secret() -> None:
    # aiohttp decodes header bytes with surrogateescape; such text cannot encode.
    assert not trusted({"x-authsvc-key": "s3cret-\udcff"}, SECRET, HEADER)


def test_auth_http_is_open_without_a_secret_and_closed_with_one() -> None:
    assert trusted({}, None, HEADER, open_without_secret=True)
    assert not trusted({}, SECRET, HEADER, open_without_secret=True)
    assert trusted({"x-authsvc-key": "s3cret-key"}, SECRET, HEADER, open_without_secret=True)


@asynccontextmanager
async def flush_endpoint_on_ipv6(secret: Secret | None) -> AsyncIterator[str]:
    """``POST /cache/flush`` (maps not open: a trusted caller gets 503) on ``[::1]``."""
    probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        probe.bind(("::1", 0))
    except OSError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            require(False, "no IPv6 loopback here")
        raise
    app = web.Application()
    app.router.add_post(FLUSH_PATH, CacheControl(secret, HEADER).handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    probe.listen(16)
    await web.SockSite(runner, probe).start()
    try:
        yield f"http://[::1]:{probe.getsockname()[1]}{FLUSH_PATH}"
    finally:
        await runner.cleanup()


async def post(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as session, session.post(
            url, data={"all": "1"}, headers=headers or {}) as reply:
        return reply.status


async def test_an_ipv6_peer_needs_the_secret() -> None:
    async with flush_endpoint_on_ipv6(SECRET) as url:
        assert await post(url) == 403
        assert await post(url, {HEADER: "nope"}) == 403
        assert await post(url, {HEADER: "s3cret-key"}) == 503  # trusted; no maps yet
    async with flush_endpoint_on_ipv6(None) as url:
        assert await post(url) == 403
        assert await post(url, {HEADER: "s3cret-key"}) == 403
