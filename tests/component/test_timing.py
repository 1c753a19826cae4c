"""Unknown user and wrong password look alike to the client: same words, same delay.

The store here takes ``STORE_REFUSAL_DELAY`` (3 s) to refuse a wrong
password, while an unknown user is refused by the map at once: without the
proxy's fixed deadline (``auth_failure_delay``, 4 s here; docs/proxy.md
"Refusals") the two replies would be three seconds apart, and with a deadline
that is added instead of waited out they would be four. The test asserts the
reply bytes are identical and the delays within 0.5 s of each other. The
store answers a whole second before the deadline, so a descheduled process
on a loaded machine cannot make the store's reply the later one.

A store slower than the deadline (Dovecot's auth penalty) is the second
test: once it has refused an address, failures from that address wait as
long as it took, and failures from other addresses do not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from authsvc.settings import (
    FileMapSettings,
    ListenTls,
    MailProtocol,
    ProxySettings,
    ThrottleSettings,
)
from authsvc.throttle.service import Throttle
from tests.component.conftest import make_listener, running
from tests.services.certs import ServerCert

STORE_REFUSAL_DELAY = 3.0
TOLERANCE = 0.5
SETTINGS = ProxySettings(auth_failure_delay=4.0, backend_timeout=8.0)


async def _slow_store_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              protocol: str) -> None:
    """A store that greets, and refuses every password after STORE_REFUSAL_DELAY."""
    try:
        if protocol == "imap":
            writer.write(b"* OK [CAPABILITY IMAP4rev1] slow store\r\n")
            while line := await reader.readline():
                tag = line.split(b" ", 1)[0]
                if b" LOGIN " in line.upper():
                    await asyncio.sleep(STORE_REFUSAL_DELAY)
                    writer.write(tag + b" NO [AUTHENTICATIONFAILED] store says no\r\n")
                else:
                    writer.write(tag + b" OK done\r\n")
        else:
            writer.write(b"+OK slow store\r\n")
            while line := await reader.readline():
                if line.upper().startswith(b"PASS "):
                    await asyncio.sleep(STORE_REFUSAL_DELAY)
                    writer.write(b"-ERR [AUTH] store says no\r\n")
                else:
                    writer.write(b"+OK\r\n")
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture(params=["imap", "pop3"])
async def slow_store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, int]]:
    protocol: str = request.param

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _slow_store_session(reader, writer, protocol)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield protocol, server.sockets[0].getsockname()[1]
    server.close()


async def _attempt(host: str, port: int, protocol: str, login: str,
                   source: str = "127.0.0.1") -> tuple[bytes, float]:
    """One failed login on a fresh connection from ``source``: (the refusal line, seconds)."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        await reader.readline()  # the greeting
        if protocol == "imap":
            started = time.monotonic()
            writer.write(f"a1 LOGIN {login} wrong-password\r\n".encode())
        else:
            writer.write(f"USER {login}\r\n".encode())
            assert (await reader.readline()).startswith(b"+OK")
            started = time.monotonic()
            writer.write(b"PASS wrong-password\r\n")
        reply = await asyncio.wait_for(reader.readline(), 10)
        return reply, time.monotonic() - started
    finally:
        writer.close()


async def test_unknown_user_and_wrong_password_same_text_and_delay(
    tmp_path: Path, pki: ServerCert, slow_store: tuple[str, int]
) -> None:
    protocol, store_port = slow_store
    popmap = tmp_path / "popmap"
    popmap.write_text(f"bob@riseup.net: 127.0.0.1:{store_port}\n")
    listener = make_listener("timing", MailProtocol(protocol), ListenTls.NONE,
                             FileMapSettings(str(popmap)), pki)
    async with running([listener], SETTINGS) as proxy:
        host, port = proxy.host("timing"), proxy.port("timing")
        # At the same time, each on its own connection: both wait out the same
        # 4 s deadline, so the suite pays it once. The loop's fairness between
        # them is milliseconds, well inside the tolerance.
        (known, known_s), (unknown, unknown_s) = await asyncio.gather(
            _attempt(host, port, protocol, "bob"), _attempt(host, port, protocol, "nobody"))
    expected = (b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n" if protocol == "imap"
                else b"-ERR [AUTH] Authentication failed.\r\n")
    assert known == unknown == expected
    assert b"store says no" not in known
    # The store's three seconds are hidden inside the deadline, not added to it.
    assert abs(known_s - unknown_s) < TOLERANCE, (known_s, unknown_s)
    assert min(known_s, unknown_s) >= SETTINGS.auth_failure_delay * 0.9


async def test_an_unknown_user_waits_as_long_as_the_store_took_to_refuse_the_address(
    tmp_path: Path, pki: ServerCert, slow_store: tuple[str, int]
) -> None:
    """A store that penalises (Dovecot's auth penalty) refuses later than the deadline.

    The proxy's deadline is 1 s here and the store takes 3 s: after the store
    refused this address once, an unknown user from it waits those 3 s too
    (docs/security.md, "User enumeration"), and a login from another address does not.
    """
    protocol, store_port = slow_store
    popmap = tmp_path / "popmap"
    popmap.write_text(f"bob@riseup.net: 127.0.0.1:{store_port}\n")
    listener = make_listener("timing", MailProtocol(protocol), ListenTls.NONE,
                             FileMapSettings(str(popmap)), pki)
    settings = ProxySettings(auth_failure_delay=1.0, backend_timeout=8.0)
    throttle = Throttle(ThrottleSettings(), refusals=True)
    async with running([listener], settings, throttle=throttle) as proxy:
        host, port = proxy.host("timing"), proxy.port("timing")
        # Another address, before and after: only the deadline.
        _, fresh_s = await _attempt(host, port, protocol, "nobody", source="127.0.0.3")
        known, known_s = await _attempt(host, port, protocol, "bob")
        unknown, unknown_s = await _attempt(host, port, protocol, "nobody")
        _, other_s = await _attempt(host, port, protocol, "nobody", source="127.0.0.3")
    assert known == unknown
    assert known_s >= STORE_REFUSAL_DELAY * 0.95, known_s
    assert abs(known_s - unknown_s) < TOLERANCE, (known_s, unknown_s)
    for elapsed in (fresh_s, other_s):
        assert settings.auth_failure_delay * 0.9 <= elapsed < STORE_REFUSAL_DELAY - 1, elapsed
