"""3,000 idle sessions stay open through a rendered nginx and through ``authsvc proxy``.

Each front end is set up the way the docs say for ``sessions = 3000``
(authsvc/sizing.py): nginx from ``render-nginx --standalone`` with ``[nginx]
sessions_per_node = 3000`` (its worker_connections and worker_rlimit_nofile
come from the render), ``auth_http`` answered by a real ``authsvc serve``;
``authsvc proxy`` under the smallest descriptor limit in which ``check-config``
says 3,000 sessions fit.  Behind both is the scripted idle store
(tests/services/idlestore.py): Dovecot would fork a process per login.

The clients log in from 127.0.0.77 with bounded concurrency, then every
session must still answer after a while idle, the store must count all of
them logged in and open, and the front end must have refused nobody.  The
former standalone render, ``worker_processes 1; worker_connections 1024;``,
held at most (1024 - 1 listening socket) / 2 = 511 sessions.  This machine's
hard descriptor limit is 20,000: every limit used here stays under it.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authsvc.commands import descriptor_warnings
from authsvc.config import load_settings
from authsvc.render import NginxOptions, render_nginx
from authsvc.sizing import nginx_sizing, proxy_nofile_for
from tests.services.idlestore import IdleStoreProcess, running_idle_store
from tests.services.mailclient import CLIENT_ADDRESS
from tests.services.nginx import nginx_binary, running_nginx
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.require import require
from tests.services.serve import ServeProcess

pytestmark = pytest.mark.integration

SESSIONS = 3000
#: Logins in flight at once: enough to be quick, few enough for a busy 2-core machine.
CONCURRENCY = 64
#: Generous, for a shared 2-core machine: all the logins (a few seconds when it
#: is quiet), then each later step over every session.
LOGIN_TIMEOUT = 180.0
STEP_TIMEOUT = 60.0
#: How long every session stays idle before it must answer again: the sessions
#: are meant to stay, not merely to have logged in (a duration under test).
IDLE = 2.0
#: Descriptors the test process needs besides its client sockets.
OWN_DESCRIPTORS = 256

Session = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(scope="module")
def descriptors() -> Iterator[None]:
    """Raise this process's soft limit (the clients, and what it starts, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(SESSIONS + OWN_DESCRIPTORS, proxy_nofile_for(SESSIONS),
                 nginx_sizing(SESSIONS, 1).worker_rlimit_nofile)
    ceiling = hard if hard != resource.RLIM_INFINITY else needed
    require(ceiling >= needed, f"RLIMIT_NOFILE hard limit {hard} is below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(ceiling, 4 * needed)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def store(descriptors: None) -> Iterator[IdleStoreProcess]:
    with running_idle_store() as started:
        yield started


def _config(path: Path, store: IdleStoreProcess, *, mail_port: int, serve_port: int) -> Path:
    path.write_text(f"""
[http]
listen = "127.0.0.1:{serve_port}"

[nginx]
sessions_per_node = {SESSIONS}

[proxy]
# Every test client comes from one address.
client_preauth_limit = 0
nofile = {proxy_nofile_for(SESSIONS)}

[[listener]]
name = "imap"
protocol = "imap"
bind = ["127.0.0.1:{mail_port}"]
outgoing_server = ["{store.host}:{store.port}"]
connection_limit = {SESSIONS}
""")
    return path


async def _read_tagged(reader: asyncio.StreamReader, tag: bytes) -> list[bytes]:
    """Lines up to and including the one tagged ``tag``."""
    lines: list[bytes] = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError(f"closed before {tag!r}: {lines!r}")
        lines.append(line)
        if line.startswith(tag + b" "):
            return lines


async def _log_in(port: int, number: int, gate: asyncio.Semaphore) -> Session:
    async with gate:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(CLIENT_ADDRESS, 0))
        greeting = await reader.readline()
        assert greeting.startswith(b"* OK"), greeting
        writer.write(b"a1 LOGIN user%d secret\r\n" % number)
        reply = await _read_tagged(reader, b"a1")
        assert reply[-1].startswith(b"a1 OK"), (number, reply)
        return reader, writer


async def _noop(session: Session) -> bytes:
    reader, writer = session
    writer.write(b"a2 NOOP\r\n")
    return (await _read_tagged(reader, b"a2"))[-1]


async def _hold_sessions(port: int) -> tuple[int, int, float]:
    """Log ``SESSIONS`` in, idle, check each again; (answering, counted at the store, seconds)."""
    gate = asyncio.Semaphore(CONCURRENCY)
    started = time.monotonic()
    tasks = [asyncio.ensure_future(_log_in(port, n, gate)) for n in range(SESSIONS)]
    try:
        sessions = await asyncio.wait_for(asyncio.gather(*tasks), LOGIN_TIMEOUT)
        elapsed = time.monotonic() - started
        await asyncio.sleep(IDLE)
        replies = await asyncio.wait_for(
            asyncio.gather(*(_noop(s) for s in sessions)), STEP_TIMEOUT)
        answering = sum(reply.startswith(b"a2 OK") for reply in replies)
        reader, writer = sessions[0]
        writer.write(b"a3 XSESSIONS\r\n")
        lines = await asyncio.wait_for(_read_tagged(reader, b"a3"), STEP_TIMEOUT)
        counted = int(lines[0].split()[2]) if lines[0].startswith(b"* XSESSIONS ") else -1
        return answering, counted, elapsed
    finally:
        writers = []
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                writers.append(task.result()[1])
                writers[-1].close()
            else:
                task.cancel()
        await asyncio.wait_for(asyncio.gather(*(w.wait_closed() for w in writers),
                                              *tasks, return_exceptions=True), STEP_TIMEOUT)


def test_nginx_holds_3000_idle_sessions(
    tmp_path: Path, store: IdleStoreProcess
) -> None:
    nginx_binary()
    mail_port = free_port("127.0.0.1")
    config = _config(tmp_path / "authsvc.toml", store, mail_port=mail_port,
                     serve_port=free_port("127.0.0.1"))
    settings = load_settings([str(config)]).settings
    prefix = tmp_path / "nginx"
    text = render_nginx(settings, NginxOptions(standalone=True, prefix=str(prefix))).text
    sizing = nginx_sizing(SESSIONS, 1)
    assert f"\n    worker_connections {sizing.worker_connections};\n" in text
    assert f"\nworker_rlimit_nofile {sizing.worker_rlimit_nofile};\n" in text
    with (ServeProcess([config], tmp_path, port=settings.http.listen.port) as serve,
          running_nginx(text, prefix, [mail_port]) as nginx):
        answering, counted, elapsed = asyncio.run(_hold_sessions(mail_port))
        print(f"nginx: {SESSIONS} logins in {elapsed:.1f} s")
        log = nginx.log_text()
        assert serve.running(), serve.log_tail()
    assert (answering, counted) == (SESSIONS, SESSIONS), (elapsed, log[-3000:])
    assert "worker_connections are not enough" not in log
    assert "Too many open files" not in log


def test_proxy_holds_3000_idle_sessions(
    tmp_path: Path, store: IdleStoreProcess
) -> None:
    mail_port = free_port("127.0.0.1")
    config = _config(tmp_path / "authsvc.toml", store, mail_port=mail_port,
                     serve_port=free_port("127.0.0.1"))
    settings = load_settings([str(config)]).settings
    # check-config's view: 3,000 sessions fit in exactly this limit, and not in one less.
    assert descriptor_warnings(settings) == []
    assert settings.proxy.nofile is not None
    with ProxyProcess(config, tmp_path / "proxy.log", nofile=settings.proxy.nofile) as proxy:
        proxy.start(listening=1)
        answering, counted, elapsed = asyncio.run(_hold_sessions(mail_port))
        print(f"proxy: {SESSIONS} logins in {elapsed:.1f} s")
        assert (answering, counted) == (SESSIONS, SESSIONS), (
            elapsed, proxy.log_text()[-3000:])
        assert proxy.lines("refused") == []
        assert proxy.lines("accept_failed") == []
