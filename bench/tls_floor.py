"""What OpenSSL itself keeps per idle TLS connection, below anything the proxy allocates.

The proxy's TLS runs on the socket itself: ``ssl.SSLSocket``, non-blocking,
OpenSSL reading and writing the descriptor through its socket BIO
(``proxy/transport.py``).  This bench makes ``--pairs`` pairs of TLS
endpoints in one process, a server endpoint (the proxy facing a client) and
a client endpoint (the proxy facing a store with implicit TLS), with the
test CA's EC P-256 certificate (``tests/services/certs.py``) checked by name
as the proxy checks a store's.  Each pair, over a socketpair, completes its
handshake and then talks like the start of an IMAP session: the server
greets, and three commands get their replies, every read going on until
OpenSSL wants more (``SSL_ERROR_WANT_READ``), as the proxy reads.  Then it
is kept idle.  No event loop, no session: what is left is OpenSSL's state
and the small Python wrappers.

The same is measured, for comparison, with each endpoint an
``ssl.SSLObject`` on two memory BIOs (``--bios memory``), fed everything that
arrived at once.  That is what asyncio's TLS and a sans-IO TLS layer do, and
what the proxy did before; docs/architecture.md ("Proxy TLS path") says
why the socket BIO won.

Counted from glibc's own books (``mallinfo2(3)``: bytes in use, small and
mmapped), which OpenSSL's ``CRYPTO_malloc`` goes through, and from
``tracemalloc`` for the Python objects; then the client endpoints are freed
and counted again, which splits the pair into its two sides.  Both
``ssl.SSLContext`` objects are made once, as the proxy makes one per listener
and one for the stores.  CPython sets ``SSL_MODE_RELEASE_BUFFERS`` on every
context (Modules/_ssl.c), so an idle endpoint holds no record buffers.

Run (from the repository root; a few seconds)::

    .venv/bin/python -m bench.tls_floor --json bench/results/tls_floor.json
    # defaults: --pairs 2000 --versions 1.3 1.2 --bios socket memory
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import socket
import ssl
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bench.record import finish, run_info
from tests.services.certs import ServerCert, make_test_pki

VERSIONS = {"1.3": ssl.TLSVersion.TLSv1_3, "1.2": ssl.TLSVersion.TLSv1_2}
#: The start of an IMAP session: a greeting, then commands and their replies.
GREETING = b"* OK [CAPABILITY IMAP4rev1] ready\r\n"
DIALOGUE = [(b"a1 CAPABILITY\r\n", b"* CAPABILITY IMAP4rev1 IDLE\r\na1 OK done\r\n"),
            (b"a2 SELECT INBOX\r\n", b"* 3 EXISTS\r\na2 OK [READ-WRITE] done\r\n"),
            (b"a3 NOOP\r\n", b"a3 OK done\r\n")]


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


class Endpoint(Protocol):
    """One side of a pair, whichever BIO it runs on."""

    def handshake(self) -> bool:
        """One step; True once done."""

    def send(self, data: bytes) -> None: ...

    def receive(self) -> bytes:
        """Everything that can be read now (until OpenSSL wants more)."""

    def version(self) -> str | None:
        """The TLS version negotiated."""


class SocketEndpoint:
    """``ssl.SSLSocket`` on a non-blocking socket, as the proxy runs TLS."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool) -> None:
        self.tls = context.wrap_socket(
            sock, server_side=server_side, do_handshake_on_connect=False,
            server_hostname=None if server_side else "localhost")

    def handshake(self) -> bool:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def send(self, data: bytes) -> None:
        self.tls.send(data)

    def version(self) -> str | None:
        return self.tls.version()

    def receive(self) -> bytes:
        got = b""
        while True:
            try:
                got += self.tls.recv(16_384)
            except ssl.SSLWantReadError:
                return got


class MemoryEndpoint:
    """``ssl.SSLObject`` on two memory BIOs over a non-blocking socket."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                    server_hostname=None if server_side else "localhost")

    def _pump(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())
        try:
            data = self.sock.recv(262_144)
        except BlockingIOError:
            return
        self.incoming.write(data)

    def handshake(self) -> bool:
        self._pump()
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._pump()
            return False
        self._pump()
        return True

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._pump()

    def version(self) -> str | None:
        return self.tls.version()

    def receive(self) -> bytes:
        self._pump()
        got = b""
        while True:
            try:
                got += self.tls.read(16_384)
            except ssl.SSLWantReadError:
                self._pump()
                return got


BIOS: dict[str, Callable[[socket.socket, ssl.SSLContext, bool], Endpoint]] = {
    "socket": SocketEndpoint, "memory": MemoryEndpoint}


def pair(make: Callable[[socket.socket, ssl.SSLContext, bool], Endpoint],
         server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[Endpoint, Endpoint]:
    """A handshaken pair that talked a little and is now idle: (server, client)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    near, far = make(a, server, True), make(b, client, False)
    done = [False, False]
    for _ in range(16):
        done = [done[0] or far.handshake(), done[1] or near.handshake()]
        if all(done):
            break
    else:
        raise RuntimeError("the handshake did not finish")
    near.send(GREETING)
    if far.receive() != GREETING:
        raise RuntimeError("no greeting")
    for command, reply in DIALOGUE:
        far.send(command)
        if near.receive() != command:
            raise RuntimeError("a command was lost")
        near.send(reply)
        if far.receive() != reply:
            raise RuntimeError("a reply was lost")
    near.receive()  # nothing more: the read that finds OpenSSL wanting more
    return near, far


def measure(pki: ServerCert, version: str, bios: str, pairs: int) -> dict[str, object]:
    """KiB per pair, per side, and the Python share, for one TLS version and BIO kind."""
    server, client = contexts(pki, VERSIONS[version])
    make = BIOS[bios]
    for _ in range(32):  # warm: OpenSSL's provider caches, the contexts' first use
        pair(make, server, client)
    gc.collect()
    tracemalloc.start()
    heap_before = heap_in_use()
    python_before = tracemalloc.get_traced_memory()[0]
    held = [pair(make, server, client) for _ in range(pairs)]
    gc.collect()
    heap_held = heap_in_use()
    python_held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    negotiated = held[0][0].version()
    servers = [near for near, _ in held]
    del held
    gc.collect()
    heap_servers = heap_in_use()
    del servers
    gc.collect()
    kib = 1024 * pairs
    return {
        "version": version, "bios": bios, "negotiated": negotiated, "pairs": pairs,
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
    parser.add_argument("--bios", nargs="*", choices=sorted(BIOS), default=["socket", "memory"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    record = run_info()
    with tempfile.TemporaryDirectory(prefix="authsvc-tls-floor-") as tmp:
        pki = make_test_pki(Path(tmp))
        rows = []
        for version in args.versions:
            for bios in args.bios:
                row = measure(pki, version, bios, args.pairs)
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"run": finish(record), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
