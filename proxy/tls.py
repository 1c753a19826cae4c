"""TlsEndpoint: one side of a TLS connection over memory buffers (sans-IO).

The proxy's TLS, towards clients and stores (implicit TLS and STARTTLS/STLS),
runs here rather than in asyncio's ``SSLProtocol``, for memory
(docs/architecture.md, "Proxy TLS path"): ``SSLProtocol`` allocates a
256 KiB receive buffer per connection up front, about 276 KiB per idle TLS
session on CPython 3.11.  Here the only buffers are OpenSSL's own (released
while idle) and two ``ssl.MemoryBIO`` objects that hold bytes only while
they are in flight, fed a record at a time so that neither keeps a burst's
size afterwards.

No I/O and no event loop: the caller feeds what the socket delivered to
:meth:`receive` (which returns the plaintext it decrypted), encrypts with
:meth:`send`, and writes whatever :meth:`outgoing` returns to the socket.
``tests/unit/proxy/test_tls.py`` pairs a server and a client endpoint.
"""

from __future__ import annotations

import contextlib
import ssl

#: Largest plaintext read from OpenSSL at once: one TLS record (RFC 8446 §5.1).
RECORD = 16_384
#: Largest piece put into a memory BIO at once, after the handshake: ciphertext
#: into the incoming BIO, plaintext into ``SSL_write`` (one record out).  A
#: memory BIO keeps its largest size until it is freed (OpenSSL's ``BUF_MEM``
#: grows and never shrinks), so pieces bound what an idle session keeps after
#: a burst to about a record per BIO, instead of the largest socket read.
PIECE = RECORD
#: The same during the handshake, whose flights are a few KiB: what the
#: BIOs keep after it is most of what an idle session's TLS costs beyond
#: OpenSSL's own state (docs/architecture.md, "Proxy TLS path").
HANDSHAKE_PIECE = 512


class TlsEndpoint:
    """One side of a TLS session; every method may raise ``ssl.SSLError``."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming, self._outgoing,
            server_side=server_side, server_hostname=server_hostname,
        )
        self.handshake_done = False
        #: The peer sent close_notify (RFC 8446 §6.1): no more plaintext will come.
        self.peer_closed = False
        #: Records taken out of the outgoing BIO by :meth:`send`, not yet sent
        #: (None, not an empty list, while there are none: one object less per
        #: idle endpoint).
        self._sent: list[bytes] | None = None

    def start(self) -> bytes:
        """Begin the handshake; returns the bytes to send (a client's ClientHello)."""
        self._step_handshake()
        return self.outgoing()

    def _step_handshake(self) -> None:
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            return
        self.handshake_done = True

    def receive(self, data: bytes) -> bytes:
        """Take bytes from the peer; returns the plaintext they complete (maybe b"").

        After a call, :meth:`outgoing` may have handshake or alert bytes to send.
        """
        chunks: list[bytes] = []
        view = memoryview(data)
        start, end = 0, len(data)
        while True:
            # OpenSSL keeps a partial record in its own buffer, so each piece
            # leaves the incoming BIO empty.
            piece = PIECE if self.handshake_done else HANDSHAKE_PIECE
            if start < end:
                self._incoming.write(view[start:start + piece])
                start += piece
            if not self.handshake_done:
                self._step_handshake()
            if self.handshake_done:
                self._read_into(chunks)
            if start >= end or self.peer_closed:
                break
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _read_into(self, chunks: list[bytes]) -> None:
        while not self.peer_closed:
            try:
                chunk = self._object.read(RECORD)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                return
            if not chunk:  # CPython's read says close_notify this way too
                self.peer_closed = True
                return
            chunks.append(chunk)

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` (after the handshake); the records wait in :meth:`outgoing`."""
        if len(data) <= PIECE:
            # With memory BIOs a write never blocks: OpenSSL takes it all.
            self._object.write(data)
            return
        view = memoryview(data)
        outgoing = self._outgoing
        if self._sent is None:
            self._sent = []
        sent = self._sent
        for start in range(0, len(data), PIECE):
            self._object.write(view[start:start + PIECE])
            sent.append(outgoing.read())

    def outgoing(self) -> bytes:
        """The bytes waiting for the peer (handshake, records, alerts)."""
        pieces = self.outgoing_pieces()
        if not pieces:
            return b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def outgoing_pieces(self) -> list[bytes]:
        """:meth:`outgoing` as the records were taken out, not joined (maybe [])."""
        sent, self._sent = self._sent, None
        if self._outgoing.pending:
            if sent is None:
                return [self._outgoing.read()]
            sent.append(self._outgoing.read())
        return sent if sent is not None else []

    def close(self) -> bytes:
        """Say close_notify (RFC 8446 §6.1); returns the bytes to send last."""
        if self.handshake_done:
            # The peer's close_notify is not waited for (SSLWantReadError).
            with contextlib.suppress(ssl.SSLError):
                self._object.unwrap()
        return self.outgoing()

    def info(self, name: str) -> object:
        """``peercert``, ``cipher``, ``version``, ``ssl_object`` like a transport's extra info."""
        if name == "peercert":
            return self._object.getpeercert()
        if name == "cipher":
            return self._object.cipher()
        if name == "version":
            return self._object.version()
        if name == "ssl_object":
            return self._object
        return None
