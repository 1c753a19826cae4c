"""What an idle relayed session keeps in Python objects: a guard on the proxy's per-session state.

docs/benchmarks.md ("Proxy") measures PSS per idle session against nginx
with ``bench/proxy_bench.py``; OpenSSL's share is ``bench/tls_floor.py``'s.
This test counts the other share, the Python objects allocated under the
proxy's own frames (``tracemalloc``, every frame of the traceback looked at)
while sessions log in and then sit idle, per session.  The store, the
clients and the test run in the same process but never under an
``authsvc`` frame, so they are not counted.

The bounds sit a fifth above what the code keeps (4.4-5.9 KB on stdlib
asyncio, 5.2-6.4 on uvloop, from one run to the next within 3%), so that
a regression of the kind the benchmarks found fails: a buffer per
connection (asyncio's ``SSLProtocol`` keeps 256 KiB), an asyncio transport
per socket (about 1 KB each), or a task and its frames kept for a relayed
session's life (about 1.3 KB).
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import ssl
import tracemalloc
from dataclasses import replace
from pathlib import Path

import authsvc.proxy
import pytest

import authsvc
from authsvc.settings import BackendTls
from tests.component.conftest import FAST, running, seed_listeners, write_map
from tests.component.fakestore import FakeStore
from tests.helpers.eventually import eventually_async
from tests.services.certs import ServerCert

SESSIONS = 150
#: Bytes of Python objects per idle session, under authsvc's frames, at most:
#: on stdlib asyncio, and on uvloop (whose transports keep more Python objects).
BOUNDS = {"plain": (5_300, 6_400), "tls_client": (6_200, 6_700), "tls_both": (7_100, 7_700)}
#: Fewer than this and the filter missed the proxy's modules (a session's
#: Channels, records and relay alone are more): the count would prove nothing.
FLOOR = 2_500


def log_in(address: tuple[str, int], context: ssl.SSLContext | None) -> socket.socket:
    """A client that logged in and now says nothing (its socket stays open)."""
    sock = socket.create_connection(address, timeout=10)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(b"a LOGIN bob good\r\n")
    data = b""
    while b"a OK" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before the login's OK: {data!r}"
        data += chunk
    return sock


def proxy_bytes(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """The allocations with a frame of ``authsvc`` (``authsvc.proxy`` too) in their traceback.

    Both packages' folders: an editable install may keep them apart.
    """
    folders = {str(Path(package.__file__).parent) for package in (authsvc, authsvc.proxy)
               if package.__file__ is not None}
    return snapshot.filter_traces([tracemalloc.Filter(True, f"{folder}/*", all_frames=True)
                                   for folder in sorted(folders)])


@pytest.mark.parametrize("mode", sorted(BOUNDS))
async def test_an_idle_relayed_session_keeps_a_few_kilobytes_of_python_objects(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, tls_store: FakeStore, mode: str,
) -> None:
    store = tls_store if mode == "tls_both" else imap_store
    path = write_map(tmp_path / "map", {"bob@riseup.net": store})
    listeners = seed_listeners(
        path, pki, backend_tls=BackendTls.IMPLICIT if mode == "tls_both" else BackendTls.NONE)
    settings = replace(FAST, backend_ca_file=str(pki.ca))
    name = "imap4" if mode == "plain" else "imaps"
    context = None if mode == "plain" else pki.client_context()
    async with running(listeners, settings) as proxy:
        address = (proxy.host(name), proxy.port(name))
        # Warm: the route cache, the TLS contexts' first use, the code paths.
        for sock in [await asyncio.to_thread(log_in, address, context) for _ in range(5)]:
            sock.close()
        await eventually_async(lambda: not proxy.server.relayed())
        gc.collect()
        tracemalloc.start(12)
        try:
            before = proxy_bytes(tracemalloc.take_snapshot())
            clients = await asyncio.gather(*(asyncio.to_thread(log_in, address, context)
                                             for _ in range(SESSIONS)))
            await eventually_async(lambda: len(proxy.server.relayed()) == SESSIONS)
            await asyncio.sleep(0.2)  # the last logins' leftovers (timers, log lines) settle
            gc.collect()
            after = proxy_bytes(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        for sock in clients:
            sock.close()
    grown = after.compare_to(before, "lineno")
    per_session = sum(stat.size_diff for stat in grown) / SESSIONS
    top = "\n".join(f"{stat.size_diff / SESSIONS:8.0f} B  {stat.traceback}"
                    for stat in grown[:12])
    bound = BOUNDS[mode][os.environ.get("AUTHSVC_LOOP", "").strip().lower() == "uvloop"]
    assert FLOOR <= per_session <= bound, f"{per_session:.0f} B per idle session:\n{top}"
