"""TlsEndpoint: one side of a TLS connection over memory buffers (sans-IO).

The proxy's client-side TLS (implicit TLS and STARTTLS/STLS) runs here rather
than in asyncio's ``SSLProtocol``, for memory (docs/architecture.md, "Proxy
TLS path"): ``SSLProtocol`` allocates a 256 KiB receive buffer per
connection up front, about 276 KiB per idle TLS session on CPython 3.11.
Here the only buffers are OpenSSL's own (released while idle) and two
``ssl.MemoryBIO`` objects that hold bytes only while they are in flight.

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
        if data:
            self._incoming.write(data)
        if not self.handshake_done:
            self._step_handshake()
            if not self.handshake_done:
                return b""
        chunks: list[bytes] = []
        while not self.peer_closed:
            try:
                chunk = self._object.read(RECORD)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            if not chunk:  # CPython's read says close_notify this way too
                self.peer_closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` (after the handshake); the records wait in :meth:`outgoing`."""
        view = memoryview(data)
        while view:
            # With memory BIOs a write never blocks: OpenSSL takes it all.
            written = self._object.write(view)
            view = view[written:]

    def outgoing(self) -> bytes:
        """The bytes waiting for the peer (handshake, records, alerts)."""
        return self._outgoing.read() if self._outgoing.pending else b""

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
