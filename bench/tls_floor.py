"""What OpenSSL itself keeps per idle TLS connection, below anything the proxy allocates.

The proxy's TLS runs in :class:`~proxy.tls.TlsEndpoint` (``ssl.SSLObject`` on
two memory BIOs).  This bench makes ``--pairs`` pairs of endpoints in one
process, a server endpoint (the proxy facing a client) and a client endpoint
(the proxy facing a store with implicit TLS), with the test CA's EC P-256
certificate (``tests/services/certs.py``) checked by name as the proxy checks
a store's.  Each pair completes its handshake over memory, moves one command
and one reply each way (so a TLS 1.3 client has read the server's session
tickets), and is then kept idle.  No socket, no event loop, no session: what
is left is OpenSSL's state and the two small Python wrappers per endpoint.

Counted from glibc's own books (``mallinfo2(3)``: bytes in use, small and
mmapped), which OpenSSL's ``CRYPTO_malloc`` goes through, and from
``tracemalloc`` for the Python objects; then the client endpoints are freed
and counted again, which splits the pair into its two sides.  Both
``ssl.SSLContext`` objects are made once, as the proxy makes one per listener
and one for the stores.  CPython sets ``SSL_MODE_RELEASE_BUFFERS`` on every
context (Modules/_ssl.c), so an idle endpoint holds no record buffers; the
figures are what remains.

Run (from the repository root; a few seconds)::

    .venv/bin/python -m bench.tls_floor --json bench/results/tls_floor.json
    # defaults: --pairs 2000 --versions 1.3 1.2
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import ssl
import sys
import tempfile
import tracemalloc
from pathlib import Path

from authsvc.proxy.tls import TlsEndpoint

from bench.record import finish, run_info
from tests.services.certs import ServerCert, make_test_pki

VERSIONS = {"1.3": ssl.TLSVersion.TLSv1_3, "1.2": ssl.TLSVersion.TLSv1_2}


class _MallInfo2(ctypes.Structure):
    """``struct mallinfo2`` (glibc 2.33 and later), every field a ``size_t``."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back: small blocks and mmapped ones."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def contexts(pki: ServerCert, version: ssl.TLSVersion) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client-facing, store-facing) contexts, made as proxy/certificates.py makes them."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.maximum_version = version
    server.load_cert_chain(pki.cert, pki.key)
    client = ssl.create_default_context(cafile=str(pki.ca))
    return server, client


def pair(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[TlsEndpoint, TlsEndpoint]:
    """A handshaken, idle pair: (the server endpoint, the client endpoint)."""
    near = TlsEndpoint(server, server_side=True)
    far = TlsEndpoint(client, server_side=False, server_hostname="localhost")
    flight = far.start()
    for _ in range(8):
        near.receive(flight)
        far.receive(near.outgoing())
        flight = far.outgoing()
        if near.handshake_done and far.handshake_done and not flight:
            break
    else:
        raise RuntimeError("the handshake did not finish")
    far.send(b"a1 NOOP\r\n")
    near.receive(far.outgoing())
    near.send(b"a1 OK NOOP completed\r\n")
    far.receive(near.outgoing())
    return near, far


def measure(pki: ServerCert, version: str, pairs: int) -> dict[str, object]:
    """KiB per pair, per side, and the Python share, for one TLS version."""
    server, client = contexts(pki, VERSIONS[version])
    for _ in range(32):  # warm: OpenSSL's provider caches, the contexts' first use
        pair(server, client)
    gc.collect()
    tracemalloc.start()
    heap_before = heap_in_use()
    python_before = tracemalloc.get_traced_memory()[0]
    held = [pair(server, client) for _ in range(pairs)]
    gc.collect()
    heap_held = heap_in_use()
    python_held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    negotiated = held[0][0].info("version")
    servers = [near for near, _ in held]
    del held
    gc.collect()
    heap_servers = heap_in_use()
    del servers
    gc.collect()
    kib = 1024 * pairs
    return {
        "version": version, "negotiated": negotiated, "pairs": pairs,
        "kib_per_pair": round((heap_held - heap_before) / kib, 2),
        "kib_server_endpoint": round((heap_servers - heap_before) / kib, 2),
        "kib_client_endpoint": round((heap_held - heap_servers) / kib, 2),
        "kib_python_per_pair": round((python_held - python_before) / kib, 2),
        "openssl": ssl.OPENSSL_VERSION,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_floor",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--versions", nargs="*", choices=sorted(VERSIONS),
                        default=["1.3", "1.2"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    record = run_info()
    with tempfile.TemporaryDirectory(prefix="authsvc-tls-floor-") as tmp:
        pki = make_test_pki(Path(tmp))
        rows = []
        for version in args.versions:
            row = measure(pki, version, args.pairs)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"run": finish(record), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
