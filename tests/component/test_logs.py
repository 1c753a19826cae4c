"""The session log: one structured line per session, and never a password."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from authsvc.log import KeyValueFormatter
from authsvc.routing import open_router
from authsvc.settings import CacheSettings, LogSettings, Settings
from tests.component.conftest import running, seed_listeners, write_map
from tests.component.fakestore import STORE_REFUSAL, FakeStore
from tests.helpers.eventually import eventually_async
from tests.services.certs import ServerCert

PASSWORD = "Pa55-w0rd-xyzzy"


def talk(address: tuple[str, int], payload: bytes, until: bytes) -> bytes:
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


async def test_no_password_in_any_log_even_with_debug_and_connection_logging(
    tmp_path: Path, pki: ServerCert, caplog: pytest.LogCaptureFixture
) -> None:
    imap = FakeStore("imap", users={"bob": PASSWORD})
    pop3 = FakeStore("pop3", users={"bob": PASSWORD})
    await imap.start()
    await pop3.start()
    imap_map = write_map(tmp_path / "i", {"bob@riseup.net": imap})
    pop_map = write_map(tmp_path / "p", {"bob@riseup.net": pop3})
    listeners = [seed_listeners(imap_map, pki)[0], seed_listeners(pop_map, pki)[2]]
    plain = base64.b64encode(b"\0bob\0" + PASSWORD.encode())
    caplog.set_level(logging.DEBUG)
    try:
        async with running(listeners, log=LogSettings(level="debug",
                                                      connection_logging=True)) as proxy:
            i = (proxy.host("imap4"), proxy.port("imap4"))
            p = (proxy.host("pop3"), proxy.port("pop3"))
            pw = PASSWORD.encode()
            sessions = [
                (i, b"a LOGIN bob wrong-" + pw + b"\r\nb LOGIN bob " + pw + b"\r\nc LOGOUT\r\n",
                 b"c OK"),
                (i, b"a LOGIN {3}\r\nbob {%d}\r\n" % len(pw) + pw + b"\r\nb LOGOUT\r\n", b"b OK"),
                (i, b"a AUTHENTICATE PLAIN " + plain + b"\r\nb LOGOUT\r\n", b"b OK"),
                (i, b"a AUTHENTICATE PLAIN\r\n" + plain + b"\r\nb LOGOUT\r\n", b"b OK"),
                (p, b"USER bob\r\nPASS " + pw + b"\r\nQUIT\r\n", b"+OK bye"),
                (p, b"AUTH PLAIN " + plain + b"\r\nQUIT\r\n", b"+OK bye"),
                (p, b"USER nobody\r\nPASS " + pw + b"\r\nQUIT\r\n", b"+OK Logging out"),
            ]
            for address, payload, until in sessions:
                assert until in await asyncio.to_thread(talk, address, payload, until)
            # every session has logged its line
            await eventually_async(lambda: not proxy.server.sessions)
    finally:
        await imap.stop()
        await pop3.stop()
    formatter = KeyValueFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "line=\"C: a LOGIN 'bob' ***\"" in text  # connection logging was on
    for secret in (PASSWORD, plain.decode(), base64.b64encode(PASSWORD.encode()).decode()):
        assert secret not in text
    lines = [formatter.format(r) for r in caplog.records if fields(r).get("event") == "session"]
    assert len(lines) == len(sessions)
    assert re.search(
        r" logger=proxy\.session event=session session=\d+ listener=imap4 protocol=imap "
        r"client=127\.0\.0\.1:\d+ local=127\.0\.0\.1:\d+ tls=none login=bob mechanism=LOGIN "
        r"backend=127\.0\.0\.1:\d+ backend_login=bob result=ok attempts=2 "
        r"end=(client|backend)_eof bytes_in=\d+ bytes_out=\d+ duration=[\d.]+$", lines[0]
    ), lines[0]
    # The store's refusal text is only logged, with the failed attempt.
    failures = [fields(r) for r in caplog.records if fields(r).get("event") == "login_failed"]
    assert any(STORE_REFUSAL in str(f["reason"]) for f in failures)
    assert any(f["login"] == "nobody" and f["kind"] == "no_route" for f in failures)
    assert "result=auth_failed" in lines[-1]


def fields(record: logging.LogRecord) -> dict[str, object]:
    found = getattr(record, "fields", None)
    return found if isinstance(found, dict) else {}


async def test_a_listener_the_router_lacks_is_a_temporary_failure_logged_as_an_error(
    tmp_path: Path, pki: ServerCert, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeStore("imap", users={"bob": PASSWORD})
    await store.start()
    listener = seed_listeners(write_map(tmp_path / "i", {"bob@riseup.net": store}), pki)[0]
    # The routing configuration names the listener differently: an operator's mistake.
    other = Settings(listeners=(replace(listener, name="imap-elsewhere"),),
                     cache=CacheSettings(enabled=False))
    caplog.set_level(logging.INFO)
    try:
        async with open_router(other) as router, running([listener], router=router) as proxy:
            address = (proxy.host("imap4"), proxy.port("imap4"))
            reply = await asyncio.to_thread(talk, address, b"a LOGIN bob " + PASSWORD.encode()
                                            + b"\r\n", b"a NO")
    finally:
        await store.stop()
    # The client is told to try again (authsvc/failures.py), never "wrong password".
    assert b"a NO [UNAVAILABLE] " in reply
    failed = [r for r in caplog.records if fields(r).get("event") == "login_failed"]
    assert [(r.levelno, fields(r)["kind"]) for r in failed] == [
        (logging.ERROR, "unknown_listener")]
    assert "no imap listener named 'imap4'" in str(fields(failed[0])["reason"])
