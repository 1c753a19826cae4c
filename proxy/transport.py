"""Channel: an asyncio.Protocol that owns every byte it receives.

One of the few modules that touch the event loop.  There is no StreamReader
hiding a buffer: bytes wait in ``Channel`` until the session or the relay
reads them, which lets the session (a) leave client bytes unread while it logs
in at the store, so pipelined commands reach the store in order, and (b) drop
exactly what was buffered when STARTTLS begins (RFC 2595 §3.1, RFC 3207 §4.2).

Flow control: reading pauses while more than ``high_water`` bytes wait, and
``drain()`` waits while the transport's own write buffer is above its mark
(``pause_writing``/``resume_writing``), so neither direction of a relay can
grow memory without bound.  A plain Channel can hand its socket over
(:meth:`Channel.detach`) to the zero-copy relay in ``zerocopy.py``.

TLS, by the decision in docs/architecture.md ("Proxy TLS path"): TLS
runs inside this Channel over :class:`~proxy.tls.TlsEndpoint` (``ssl.SSLObject``
on memory BIOs) on asyncio's plain transport, not in asyncio's ``SSLProtocol``
with its 256 KiB buffer per connection, on both sides.  Implicit TLS passes
``tls_context`` so the handshake starts in ``connection_made``, before the
transport reads a byte: from a client (the server read any PROXY header first;
the ClientHello behind it is still in the kernel), and to a store
(``server_side=False`` with the name its certificate must carry); STARTTLS/STLS,
either side, is :meth:`Channel.start_tls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from authsvc.proxy.tls import TlsEndpoint

DEFAULT_HIGH_WATER = 262_144


class Relayed(Protocol):
    """Where a relayed Channel's events go (``userspace.py``'s direction objects)."""

    def data(self, data: bytes) -> None:
        """A chunk received, as it arrived."""

    def eof(self) -> None:
        """The peer's EOF: a TCP FIN, or a TLS close_notify."""

    def writable(self) -> None:
        """The transport's write buffer drained below its low-water mark."""


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Channel(asyncio.Protocol):
    """One TCP connection, client or store side."""

    def __init__(
        self,
        *,
        high_water: int = DEFAULT_HIGH_WATER,
        on_connected: Callable[[Channel], None] | None = None,
        tls_context: ssl.SSLContext | None = None,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        self._transport: asyncio.Transport | None = None
        # What was received and not yet read, as the transport delivered it:
        # one chunk is handed on as it is (no copy), several are joined once.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._high_water = high_water
        self._on_connected = on_connected
        self._eof = False
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost_callbacks: list[Callable[[], None]] = []
        self.tls = tls_context is not None
        self._tls_context = tls_context
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._tls: TlsEndpoint | None = None
        self._handshake: asyncio.Future[None] | None = None
        #: Reading stopped for good: the socket is about to change hands.
        self._held = False
        #: After :meth:`detach`: ends whoever took the socket over; and the addresses.
        self._on_detached_close: Callable[[], None] | None = None
        self._addresses: tuple[object, object] | None = None
        #: While relayed in user space (userspace.py, :meth:`relay_to`): each chunk
        #: received goes on at once, EOF is passed on, and the sink's
        #: ``resume_writing`` lets its source read again.  One object, not
        #: three bound methods, for an idle session's sake.
        self._relayed: Relayed | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's TCPTransport has the Transport
        # methods without being a subclass of asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        if self._tls_context is not None:
            # Implicit TLS: the endpoint exists before the first byte is read
            # (a client's ClientHello is written here).
            self._begin_tls(self._tls_context, server_side=self._server_side,
                            server_hostname=self._server_hostname)
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: bytes) -> None:
        if self._tls is not None:
            was_eof = self._eof
            data = self._tls_received(data)
            relayed = self._relayed
            if relayed is not None:
                if data:
                    self.bytes_in += len(data)
                    relayed.data(data)
                if self._eof and not was_eof and self._relayed is not None:
                    self._relayed.eof()  # close_notify
                return
            if not data:
                return
        elif self._relayed is not None:
            self.bytes_in += len(data)
            self._relayed.data(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self.bytes_in += len(data)
        self._wake_reader()
        if self._buffered >= self._high_water and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._fail_handshake(ConnectionResetError("EOF during the TLS handshake"))
        self._eof = True
        self._wake_reader()
        if self._relayed is not None:
            self._relayed.eof()
        # Keep the socket open for writing: a half-closed client may still be
        # waiting for the store's answer.  TLS transports cannot half-close.
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_handshake(exc or ConnectionResetError("closed during the TLS handshake"))
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
        if self._relayed is not None:
            self._relayed.writable()

    # --- reading -------------------------------------------------------------------

    def _wake_reader(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _wake_drainer(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def read(self, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        """Everything buffered, waiting for at least one byte; b"" at EOF.

        Raises TimeoutError when nothing came within ``timeout`` seconds (one
        timer on the waiter, not an ``asyncio.timeout`` scope per read).
        """
        while not self._chunks and not self._eof:
            loop = asyncio.get_running_loop()
            waiter = self._data_waiter = loop.create_future()
            timer = (loop.call_later(timeout, _time_out, waiter)
                     if timeout is not None else None)
            try:
                await waiter
            finally:
                self._data_waiter = None
                if timer is not None:
                    timer.cancel()
        return self.take_buffered()

    def take_buffered(self) -> bytes:
        """The bytes received but not yet read, and resume reading if it was paused."""
        chunks = self._chunks
        if not chunks:
            data = b""
        else:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._chunks = []
            self._buffered = 0
        if (self._reading_paused and not self._held and not self._lost
                and self._transport is not None):
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    def relay_to(self, relayed: Relayed | None) -> None:
        """Hand each received chunk to ``relayed.data`` as it arrives, not to :meth:`read`.

        ``relayed.eof`` is told of the peer's EOF (a TCP FIN or TLS
        close_notify), ``relayed.writable`` when the transport's write buffer
        has drained below its low-water mark (``resume_writing``).  ``None``
        ends it.  Call with nothing buffered (:meth:`take_buffered` first).
        """
        self._relayed = relayed

    def pause_reading(self) -> None:
        """Stop reading the socket until :meth:`resume_reading` (the sink is full)."""
        if not self._reading_paused and self._transport is not None and not self._lost:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and not self._held and not self._lost:
            assert self._transport is not None
            self._reading_paused = False
            self._transport.resume_reading()

    @property
    def writing_paused(self) -> bool:
        """True while the transport holds more than its high-water mark unwritten."""
        return self._writing_paused

    def set_write_limit(self, high: int) -> None:
        """Pause the writer (``pause_writing``) past ``high`` bytes queued, resume at a quarter."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.set_write_buffer_limits(high=high)

    @property
    def high_water(self) -> int:
        return self._high_water

    @property
    def eof(self) -> bool:
        """The peer has sent EOF (buffered bytes may still wait)."""
        return self._eof

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

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
        if self._tls is not None:
            try:
                self._tls.send(data)
            except ssl.SSLError:
                self._transport.abort()
                return
            pieces = self._tls.outgoing_pieces()
            if len(pieces) == 1:
                self._transport.write(pieces[0])
            else:
                self._write_pieces(pieces)
        else:
            self._transport.write(data)
        self.bytes_out += len(data)

    def _write_pieces(self, pieces: list[bytes]) -> None:
        """Write a burst of TLS records without joining them into one copy first.

        While the transport holds nothing, its socket is ours to write: one
        ``writev`` for the whole burst (what asyncio's own write would try
        first, with ``send``); the rest, or everything once bytes wait, goes
        to the transport record by record, in order.
        """
        transport = self._transport
        assert transport is not None
        sent = 0
        if not transport.get_write_buffer_size():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Errors other than a full socket are left to the transport's
                # own write, which closes the connection the usual way.
                with contextlib.suppress(OSError):
                    sent = os.writev(sock.fileno(), pieces)
        for piece in pieces:
            if sent >= len(piece):
                sent -= len(piece)
                continue
            transport.write(piece[sent:] if sent else piece)
            sent = 0

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
        return (self._tls is None and transport is not None and not transport.is_closing()
                and transport.can_write_eof())

    def write_eof(self) -> None:
        if self.can_write_eof():
            assert self._transport is not None
            self._transport.write_eof()

    def close(self) -> None:
        """Close after what is queued has been written (a detached socket: now)."""
        if self._on_detached_close is not None:
            self._on_detached_close()
            return
        if self._transport is not None and not self._transport.is_closing():
            if self._tls is not None and self._tls.handshake_done:
                with contextlib.suppress(ssl.SSLError):
                    self._transport.write(self._tls.close())
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping anything queued (a detached socket: its new owner's too)."""
        if self._on_detached_close is not None:
            self._on_detached_close()
            return
        if self._transport is not None:
            self._transport.abort()

    # --- addresses and TLS -------------------------------------------------------

    def peer(self) -> object:
        if self._addresses is not None:
            return self._addresses[0]
        return None if self._transport is None else self._transport.get_extra_info("peername")

    def local(self) -> object:
        if self._addresses is not None:
            return self._addresses[1]
        return None if self._transport is None else self._transport.get_extra_info("sockname")

    # --- handing the socket over (the zero-copy relay) -----------------------------

    @property
    def detached(self) -> bool:
        """True once :meth:`detach` handed the socket to someone else."""
        return self._on_detached_close is not None

    def hold(self) -> None:
        """Stop reading for good: what is buffered is all user space will see."""
        self._held = True
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    async def flushed(self) -> None:
        """Wait until the transport has written every queued byte (or the connection is gone)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        # Marks of 0: pause_writing while anything is queued, resume_writing
        # once the buffer is empty (asyncio's WriteTransport.set_write_buffer_limits).
        transport.set_write_buffer_limits(high=0, low=0)
        await self.drain()

    def detach(self, on_close: Callable[[], None]) -> socket.socket:
        """The plain TCP socket, for the caller to own; this Channel's transport is closed.

        Call after :meth:`hold` and :meth:`flushed`, on a Channel without TLS.
        The caller gets a duplicate of the descriptor (the transport has no
        public way to let go of its own) and the transport closes the
        original, which ends no connection while the duplicate is open
        (close(2)).  The byte counters stay here for the new owner to keep;
        ``close``/``abort`` from now on call ``on_close`` (a kick ends the relay).
        Raises OSError, with the Channel unchanged, when no descriptor is free.
        """
        transport = self._transport
        assert transport is not None, "not connected"
        assert not self.tls, "TLS bytes must pass through the Channel"
        original = transport.get_extra_info("socket")
        sock = socket.socket(fileno=os.dup(original.fileno()))  # OSError: nothing changed
        sock.setblocking(False)
        self._addresses = (self.peer(), self.local())
        self._on_detached_close = on_close
        self._lost_callbacks.clear()
        transport.abort()
        return sock

    def _begin_tls(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        assert self._transport is not None
        self._tls = TlsEndpoint(context, server_side=server_side,
                                server_hostname=server_hostname)
        self.tls = True
        self._handshake = asyncio.get_running_loop().create_future()
        # A failure nobody awaits (the peer left first) must not be logged as
        # "exception never retrieved".
        self._handshake.add_done_callback(
            lambda f: None if f.cancelled() else f.exception())
        try:
            hello = self._tls.start()
        except ssl.SSLError as exc:
            self._fail_handshake(exc)
            return
        if hello:
            self._transport.write(hello)

    def _tls_received(self, data: bytes) -> bytes:
        """Decrypt ``data``; send what TLS has to say back; the plaintext, maybe b""."""
        tls, transport = self._tls, self._transport
        assert tls is not None
        assert transport is not None
        try:
            plain = tls.receive(data)
        except ssl.SSLError as exc:
            # Closed without the alert OpenSSL queued, as asyncio's SSLProtocol
            # does: a plaintext client on a TLS port gets no bytes back.
            self._fail_handshake(exc)
            transport.abort()
            return b""
        pending = tls.outgoing()
        if pending:
            transport.write(pending)
        if tls.handshake_done and self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(None)
        if tls.peer_closed and not self._eof:
            # close_notify: no more data from the peer, like a TCP EOF.
            self._eof = True
            self._wake_reader()
        return plain

    def _fail_handshake(self, exc: BaseException) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(exc)

    async def handshake(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait for the TLS handshake; raises OSError, ssl.SSLError or TimeoutError."""
        assert self._handshake is not None, "no TLS on this channel"
        try:
            async with asyncio.timeout(timeout):
                await self._handshake
        finally:
            # Not kept for the session's life: nobody waits on it again.
            self._handshake = None

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
        self._chunks = []
        self._buffered = 0
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()
        # In this same loop step as the OK the caller just wrote: every byte
        # that arrives from now on goes through TLS, none is read as plaintext.
        self._begin_tls(context, server_side=server_side, server_hostname=server_hostname)
        await self.handshake(handshake_timeout)
