"""Channel: an asyncio.Protocol that owns every byte it receives.

One of the few modules that touch the event loop.  There is no StreamReader
hiding a buffer: bytes wait in ``Channel`` until the session or the splice
reads them, which lets the session (a) leave client bytes unread while it logs
in at the store, so pipelined commands reach the store in order, and (b) drop
exactly what was buffered when STARTTLS begins (RFC 2595 §3.1, RFC 3207 §4.2).

Flow control: reading pauses while more than ``high_water`` bytes wait, and
``drain()`` waits while the transport's own write buffer is above its mark
(``pause_writing``/``resume_writing``), so neither direction of a splice can
grow memory without bound.

TLS, by the decision in docs/architecture.md ("Proxy TLS path"): STARTTLS goes
through ``loop.start_tls()`` on this same protocol object; implicit TLS from
clients is asyncio's ``connect_accepted_socket(ssl=...)`` (the server read any
PROXY header first), and to stores ``create_connection(ssl=...)``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

DEFAULT_HIGH_WATER = 262_144


class Channel(asyncio.Protocol):
    """One TCP connection, client or store side."""

    def __init__(
        self,
        *,
        high_water: int = DEFAULT_HIGH_WATER,
        on_connected: Callable[[Channel], None] | None = None,
        tls: bool = False,
    ) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._high_water = high_water
        self._on_connected = on_connected
        self._eof = False
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost_callbacks: list[Callable[[], None]] = []
        self.tls = tls
        self.bytes_in = 0
        self.bytes_out = 0
        #: Loop time of the last byte read by :meth:`read`, for idle timeouts.
        self.last_read = 0.0

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self.bytes_in += len(data)
        self._wake_reader()
        if len(self._buffer) >= self._high_water and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        # Keep the socket open for writing: a half-closed client may still be
        # waiting for the store's answer.  TLS transports cannot half-close.
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = True
        self._wake_reader()
        self._wake_drainer()
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        for callback in callbacks:
            callback()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drainer()

    # --- reading -------------------------------------------------------------------

    def _wake_reader(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _wake_drainer(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def read(self) -> bytes:
        """Everything buffered, waiting for at least one byte; b"" at EOF."""
        while not self._buffer and not self._eof:
            self._data_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._data_waiter
            finally:
                self._data_waiter = None
        data = self.take_buffered()
        if data:
            self.last_read = asyncio.get_running_loop().time()
        return data

    def take_buffered(self) -> bytes:
        """The bytes received but not yet read, and resume reading if it was paused."""
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused and not self._lost and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    @property
    def lost(self) -> bool:
        return self._lost

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the connection is gone (now, if it already is)."""
        if self._lost:
            callback()
        else:
            self._lost_callbacks.append(callback)

    # --- writing -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer; silently dropped once the connection is closing."""
        if self._transport is None or self._transport.is_closing() or not data:
            return
        self._transport.write(data)
        self.bytes_out += len(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        while self._writing_paused and not self._lost:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def can_write_eof(self) -> bool:
        transport = self._transport
        return transport is not None and not transport.is_closing() and transport.can_write_eof()

    def write_eof(self) -> None:
        if self.can_write_eof():
            assert self._transport is not None
            self._transport.write_eof()

    def close(self) -> None:
        """Close after what is queued has been written."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping anything queued."""
        if self._transport is not None:
            self._transport.abort()

    # --- addresses and TLS -------------------------------------------------------

    def peer(self) -> object:
        return None if self._transport is None else self._transport.get_extra_info("peername")

    def local(self) -> object:
        return None if self._transport is None else self._transport.get_extra_info("sockname")

    async def start_tls(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        """Upgrade to TLS; raises OSError, ssl.SSLError or TimeoutError on failure.

        Anything already buffered is plaintext from before the handshake and is
        dropped (RFC 2595 §3.1, RFC 3207 §4.2): it is never read as a command.
        """
        assert self._transport is not None
        self._buffer.clear()
        # Pause now, in this same loop step: no plaintext byte may reach
        # data_received between the OK we just wrote and the handshake.
        self._transport.pause_reading()
        self._reading_paused = False
        loop = asyncio.get_running_loop()
        upgraded = await loop.start_tls(
            self._transport,
            self,
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout,
        )
        if upgraded is None:  # pragma: no cover - only on a closing transport
            raise ConnectionResetError("connection closed during the TLS handshake")
        self._transport = upgraded
        self.tls = True
