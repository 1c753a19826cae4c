"""Channel: one TCP connection, client or store side, on a socket it reads and writes itself.

One of the few modules that touch the event loop.  There is no asyncio
transport and no StreamReader: the Channel watches its non-blocking socket
with ``loop.add_reader``/``add_writer`` (stdlib asyncio and uvloop alike) and
bytes wait in the Channel until the session or the relay reads them.  That
lets the session (a) leave client bytes unread while it logs in at the
store, so pipelined commands reach the store in order, and (b) drop exactly
what was buffered when STARTTLS begins (RFC 2595 §3.1, RFC 3207 §4.2).  It
also keeps an idle relayed connection to the socket, its registration with
the loop and this object: no transport with its buffer, address table and
protocol behind it (docs/benchmarks.md, "Proxy").

What it keeps of asyncio's ``selector_events`` transport, deliberately the
same: a read of up to :data:`MAX_READ` bytes per wake-up; TCP_NODELAY; a
write sent at once while nothing waits, the rest queued until the socket is
writable; the write-buffer marks (64 KiB high, a quarter of it low) behind
``writing_paused``/:meth:`drain`; EOF kept open for writing on plain TCP (a
half-closed client may still be waiting for the store's answer) and ending
a TLS connection, which cannot half-close; ``close`` after what is queued
has been written; and the connection's end reported on the next loop pass
(``on_lost``, a waiting read), never from inside the call that caused it.
With nobody to tell, the socket is closed at once.

Flow control: reading pauses while more than ``high_water`` bytes wait, so
neither direction of a relay can grow memory without bound.  A plain Channel
can hand its socket over (:meth:`Channel.detach`) to the zero-copy relay in
``zerocopy.py``.

TLS, by the decision in docs/architecture.md ("Proxy TLS path"): OpenSSL
reads and writes the socket itself (``ssl.SSLSocket``, non-blocking, driven
from the same callbacks), on both sides, as nginx's TLS does: no memory BIOs
holding a handshake's flight for the connection's life, and no TLS object
of asyncio's.  Implicit TLS passes ``tls_context`` so the handshake starts
before a byte is read: from a client (the server read any PROXY header
first; the ClientHello behind it is still in the kernel), and to a store
(``server_side=False`` with the name its certificate must carry);
STARTTLS/STLS, either side, is :meth:`Channel.start_tls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

DEFAULT_HIGH_WATER = 262_144
#: Bytes asked of the socket per wake-up (asyncio's transports use the same).
MAX_READ = 262_144
#: The write buffer's high-water mark until :meth:`Channel.set_write_limit`
#: (asyncio's default, with the low mark a quarter of it).
WRITE_HIGH = 65_536
#: Buffers passed to one ``writev`` at most (``IOV_MAX`` on Linux).
_IOV_MAX = 1024
#: Largest plaintext one TLS record carries (RFC 8446 §5.1): what one
#: ``SSLSocket.recv`` returns at most.
RECORD = 16_384
#: TLS records read per wake-up at most, about :data:`MAX_READ` bytes.
_RECORDS = MAX_READ // RECORD


class Relayed(Protocol):
    """Where a relayed Channel's events go (``userspace.py``'s direction objects)."""

    def data(self, data: bytes) -> None:
        """A chunk received, as it arrived."""

    def eof(self) -> None:
        """The peer's EOF: a TCP FIN, or a TLS close_notify."""

    def writable(self) -> None:
        """The write buffer drained below its low-water mark."""


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _no_delay(sock: socket.socket) -> None:
    """TCP_NODELAY, as asyncio sets it on every TCP transport: a command goes out at once.

    Tried on any socket (a UNIX one refuses it): ``sock.family`` would build
    an enum member per connection to ask first.
    """
    try:  # noqa: SIM105 - per connection: no context manager object for it
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _fail_waiter(waiter: asyncio.Future[None], exc: BaseException) -> None:
    """Fail ``waiter``, unless done, and mark the failure seen.

    Whoever awaits it still gets the exception; one nobody awaits (the peer
    left first) is not logged as "never retrieved".  Cheaper than a done
    callback, which costs a loop handle on every success too.
    """
    if not waiter.done():
        waiter.set_exception(exc)
        waiter.exception()


class Channel:
    """One TCP connection, client or store side, on a connected non-blocking socket."""

    __slots__ = (
        "_addresses", "_buffered", "_chunks", "_closing", "_connecting", "_data_waiter",
        "_drain_waiter",
        "_dying", "_eof", "_fd", "_handshake", "_handshaking", "_held", "_high_water", "_loop",
        "_lost", "_lost_callback", "_notify", "_on_detached_close", "_pending",
        "_pending_size", "_read_done", "_read_wants_write", "_reading", "_reading_paused",
        "_relayed", "_shut", "_sock", "_tls", "_write_high", "_write_low", "_writing",
        "_writing_paused", "bytes_in", "bytes_out", "tls",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        high_water: int = DEFAULT_HIGH_WATER,
        tls_context: ssl.SSLContext | None = None,
        server_side: bool = True,
        server_hostname: str | None = None,
        connecting: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """``connecting``: ``sock`` is a TCP connect in progress (a store's);
        :meth:`connected` waits for it, and implicit TLS begins once it is
        done.  ``loop``: the running loop, when the caller has it at hand."""
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        # What was received and not yet read, as it arrived: one chunk is
        # handed on as it is (no copy), several are joined once.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._high_water = high_water
        self._eof = False
        #: The socket itself said EOF (recv gave b""): it is no longer watched.
        self._read_done = False
        self._lost = False
        #: The end is decided and reported on the next loop pass (on_lost).
        self._dying = False
        #: Closing once what is queued has been written.
        self._closing = False
        #: Say TLS close_notify (RFC 8446 §6.1) before closing: a close, not an abort.
        self._notify = False
        #: write_eof was asked: SHUT_WR once what is queued has been written.
        self._shut = False
        self._reading = False
        self._writing = False
        self._reading_paused = False
        self._writing_paused = False
        #: Bytes the socket did not take yet (None, not [], while there are none).
        self._pending: list[bytes | memoryview] | None = None
        self._pending_size = 0
        self._write_high = WRITE_HIGH
        self._write_low = WRITE_HIGH // 4
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost_callback: Callable[[], None] | None = None
        self.tls = False
        #: The socket again, once TLS runs on it (``self._sock`` is then the same object).
        self._tls: ssl.SSLSocket | None = None
        self._handshake: asyncio.Future[None] | None = None
        self._handshaking = False
        #: A TLS read needs the socket writable first (SSL_ERROR_WANT_WRITE).
        self._read_wants_write = False
        #: Reading stopped for good: the socket is about to change hands.
        self._held = False
        #: After :meth:`detach`: ends whoever took the socket over; and the addresses.
        self._on_detached_close: Callable[[], None] | None = None
        self._addresses: tuple[object, object] | None = None
        #: While relayed in user space (userspace.py, :meth:`relay_to`): each chunk
        #: received goes on at once, EOF is passed on, and the write buffer's
        #: draining lets the source read again.  One object, not three bound
        #: methods, for an idle session's sake.
        self._relayed: Relayed | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        #: While a connect is in progress: its waiter, and the TLS to begin after it.
        self._connecting: tuple[asyncio.Future[None], ssl.SSLContext | None, str | None] | None
        self._connecting = None
        _no_delay(sock)
        if connecting:
            # Writable once the connect is done, either way (connect(2), EINPROGRESS).
            waiter = self._loop.create_future()
            self._connecting = (waiter, tls_context, server_hostname)
            self._write_on()
            return
        self._read_on()
        if tls_context is not None:
            # Implicit TLS: the endpoint exists before the first byte is read
            # (a client's ClientHello is written here).
            self._begin_tls(tls_context, server_side=server_side,
                            server_hostname=server_hostname)

    # --- watching the socket ---------------------------------------------------------

    def _read_on(self) -> None:
        if not self._reading and not self._read_done and not self._closing and not self._dying:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _read_off(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _write_on(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _write_off(self) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        if self._tls is not None:
            self._tls_readable()
            return
        try:
            data = self._sock.recv(MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        try:
            if data:
                self._received(data)
            else:
                self._eof_received()
        except Exception as exc:
            # A bug behind this Channel ends its connection, as a transport's
            # protocol error does, and is reported with its traceback.
            self._loop.call_exception_handler({
                "message": "the proxy failed on bytes it received", "exception": exc})
            self._fatal(exc)

    # --- receiving -------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        if self._relayed is not None:
            self.bytes_in += len(data)
            self._relayed.data(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self.bytes_in += len(data)
        self._wake_reader()
        if self._buffered >= self._high_water and not self._reading_paused:
            self._reading_paused = True
            self._read_off()

    def _eof_received(self) -> None:
        # A socket at EOF stays readable: watching it any longer would spin.
        self._read_done = True
        self._read_off()
        self._fail_handshake(ConnectionResetError("EOF during the TLS handshake"))
        self._eof = True
        self._wake_reader()
        if self._relayed is not None:
            self._relayed.eof()
        if self.tls:
            # TLS cannot half-close: what is queued goes, then the socket closes
            # (no close_notify: the peer has gone without one).
            self._close_after_flush()
        # Plain TCP stays open for writing: a half-closed client may still be
        # waiting for the store's answer.

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
            waiter = self._data_waiter = self._loop.create_future()
            timer = (self._loop.call_later(timeout, _time_out, waiter)
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
        if self._reading_paused and not self._held and not self._lost:
            self._reading_paused = False
            self._read_on()
        return data

    def relay_to(self, relayed: Relayed | None) -> None:
        """Hand each received chunk to ``relayed.data`` as it arrives, not to :meth:`read`.

        ``relayed.eof`` is told of the peer's EOF (a TCP FIN or TLS
        close_notify), ``relayed.writable`` when the write buffer has drained
        below its low-water mark.  ``None`` ends it.  Call with nothing
        buffered (:meth:`take_buffered` first).
        """
        self._relayed = relayed

    def pause_reading(self) -> None:
        """Stop reading the socket until :meth:`resume_reading` (the sink is full)."""
        if not self._reading_paused and not self._lost:
            self._reading_paused = True
            self._read_off()

    def resume_reading(self) -> None:
        if self._reading_paused and not self._held and not self._lost:
            self._reading_paused = False
            self._read_on()

    @property
    def writing_paused(self) -> bool:
        """True while more than the high-water mark waits unwritten."""
        return self._writing_paused

    def set_write_limit(self, high: int) -> None:
        """Pause the writer past ``high`` bytes queued, resume at a quarter of it."""
        self._write_high = high
        self._write_low = high // 4
        self._maybe_pause_writing()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this Channel's socket is watched by."""
        return self._loop

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

    @property
    def closing(self) -> bool:
        """The connection is ending or gone: closed, aborted, or failed."""
        return self._closing or self._dying or self._lost

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once the connection is gone (now, if it already is).

        One callback (the relay's), which a later call replaces; None forgets it.
        """
        if self._lost and callback is not None:
            callback()
        else:
            self._lost_callback = callback

    # --- writing -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer; silently dropped once the connection is closing."""
        if self._closing or self._dying or self._shut or not data:
            return
        self._send(data)
        self.bytes_out += len(data)

    def _send(self, data: bytes | memoryview) -> None:
        """Write now what the socket takes; queue the rest, in order."""
        if self._pending is not None:
            self._pending.append(data)
            self._pending_size += len(data)
            self._maybe_pause_writing()
            return
        if self._tls is not None:
            if not self._tls_send(data):
                self._queue([data])
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fatal(exc)
            return
        if sent < len(data):
            self._queue([memoryview(data)[sent:] if sent else data])

    def _tls_send(self, data: bytes | memoryview) -> bool:
        """One ``SSL_write`` of all of ``data``; False when it must be retried, as it is.

        OpenSSL writes whole records to the socket and, when the socket is
        full, keeps the record it could not finish and wants the same
        plaintext again (SSL_write(3), "WARNINGS"): no partial result.
        """
        assert self._tls is not None
        try:
            self._tls.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return False
        except (ssl.SSLError, OSError) as exc:
            self._fatal(exc)
        return True

    def _queue(self, left: list[bytes | memoryview]) -> None:
        self._pending = left
        self._pending_size = sum(len(piece) for piece in left)
        self._write_on()
        self._maybe_pause_writing()

    def _on_writable(self) -> None:
        if self._connecting is not None:
            self._connect_done()
            return
        if self._tls is not None and (self._handshaking or self._read_wants_write):
            self._write_off()
            if self._handshaking:
                self._step_handshake()
            else:
                self._read_wants_write = False
                if not self._reading_paused:
                    self._read_on()
                    self._tls_readable()
            if self._pending is not None and not self._dying:
                self._write_on()
            return
        pending = self._pending
        if pending is None:
            self._write_off()
            return
        if self._tls is not None:
            while pending:
                if not self._tls_send(pending[0]):
                    self._maybe_resume_writing()
                    return
                if self._dying:
                    return
                self._pending_size -= len(pending[0])
                del pending[0]
        else:
            try:
                if len(pending) == 1:
                    sent = self._sock.send(pending[0])
                else:
                    sent = os.writev(self._fd, pending[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fatal(exc)
                return
            self._pending_size -= sent
            while sent:
                first = pending[0]
                if sent >= len(first):
                    sent -= len(first)
                    del pending[0]
                else:
                    pending[0] = memoryview(first)[sent:]
                    sent = 0
            if pending:
                self._maybe_resume_writing()
                return
        self._pending = None
        self._write_off()
        self._maybe_resume_writing()
        if self._closing:
            self._close_now()
        elif self._shut:
            self._shut_down()

    def _connect_done(self) -> None:
        """The connect ended: read from now on (after the TLS handshake, if any), or fail."""
        assert self._connecting is not None
        (waiter, tls_context, server_hostname), self._connecting = self._connecting, None
        self._write_off()
        error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            exc = OSError(error, os.strerror(error))
            _fail_waiter(waiter, exc)
            self._fatal(exc)
            return
        if not waiter.done():
            waiter.set_result(None)
        self._read_on()
        if tls_context is not None:
            self._begin_tls(tls_context, server_side=False, server_hostname=server_hostname)

    async def connected(self) -> None:
        """Wait for the connect begun before the Channel was made; raises OSError."""
        if self._connecting is not None:
            await self._connecting[0]

    def _maybe_pause_writing(self) -> None:
        if not self._writing_paused and self._pending_size > self._write_high:
            self._writing_paused = True

    def _maybe_resume_writing(self) -> None:
        if self._writing_paused and self._pending_size <= self._write_low:
            self._writing_paused = False
            self._wake_drainer()
            if self._relayed is not None:
                self._relayed.writable()

    async def drain(self) -> None:
        """Wait while the write buffer is above its high-water mark."""
        while self._writing_paused and not self._lost:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def can_write_eof(self) -> bool:
        return (self._tls is None and not self._closing and not self._dying
                and not self._shut and self._on_detached_close is None)

    def write_eof(self) -> None:
        """Half-close (SHUT_WR) once what is queued has been written; plain TCP only."""
        if self.can_write_eof():
            self._shut = True
            if self._pending is None:
                self._shut_down()

    def _shut_down(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc)

    # --- ending --------------------------------------------------------------------

    def close(self) -> None:
        """Close after what is queued has been written (a detached socket: now)."""
        if self._on_detached_close is not None:
            self._on_detached_close()
            return
        if self._closing or self._dying:
            return
        self._close_after_flush(notify=True)

    def abort(self) -> None:
        """Close now, dropping anything queued (a detached socket: its new owner's too)."""
        if self._on_detached_close is not None:
            self._on_detached_close()
            return
        self._notify = False
        self._close_now()

    def _close_after_flush(self, *, notify: bool = False) -> None:
        """Close once what is queued is written; ``notify``: with TLS, say close_notify then."""
        self._closing = True
        self._notify = notify
        self._read_off()
        if self._pending is None:
            self._close_now()

    def _fatal(self, exc: BaseException) -> None:
        """The socket failed (reset, broken pipe, a TLS error): the connection ends."""
        self._fail_handshake(exc)
        self._notify = False
        self._close_now()

    def _close_now(self) -> None:
        """Stop watching, drop what is queued; the end is reported on the next loop pass."""
        if self._dying or self._lost:
            return
        if self._notify and self._tls is not None and not self._handshaking:
            # Written straight to the socket; the peer's own close_notify is
            # not waited for (SSL_shutdown(3)): a full socket only loses it.
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self._tls.unwrap()
        self._dying = True
        self._closing = True
        self._read_off()
        self._write_off()
        self._pending = None
        self._pending_size = 0
        if (self._lost_callback is None and self._data_waiter is None
                and self._drain_waiter is None and self._handshake is None
                and self._connecting is None):
            # Nobody to tell (a relayed session's end): the socket closes now,
            # not one loop pass and one handle later.
            self._connection_lost()
        else:
            self._loop.call_soon(self._connection_lost)

    def _connection_lost(self) -> None:
        self._sock.close()
        if self._connecting is not None:
            waiter, self._connecting = self._connecting[0], None
            _fail_waiter(waiter, ConnectionAbortedError("closed while connecting"))
        self._fail_handshake(ConnectionResetError("closed during the TLS handshake"))
        self._eof = True
        self._lost = True
        self._wake_reader()
        self._wake_drainer()
        callback, self._lost_callback = self._lost_callback, None
        if callback is not None:
            callback()

    # --- addresses -------------------------------------------------------------------

    def peer(self) -> object:
        if self._addresses is not None:
            return self._addresses[0]
        try:
            return self._sock.getpeername()
        except OSError:
            return None

    def local(self) -> object:
        if self._addresses is not None:
            return self._addresses[1]
        try:
            return self._sock.getsockname()
        except OSError:
            return None

    # --- handing the socket over (the zero-copy relay) -----------------------------

    @property
    def detached(self) -> bool:
        """True once :meth:`detach` handed the socket to someone else."""
        return self._on_detached_close is not None

    def hold(self) -> None:
        """Stop reading for good: what is buffered is all user space will see."""
        self._held = True
        self._reading_paused = True
        self._read_off()

    async def flushed(self) -> None:
        """Wait until every queued byte has been written (or the connection is gone)."""
        if self._closing or self._dying or self._pending is None:
            return
        # Marks of 0: paused while anything is queued, resumed once nothing is.
        self._write_high = self._write_low = 0
        self._writing_paused = True
        await self.drain()

    def detach(self, on_close: Callable[[], None]) -> socket.socket:
        """The plain TCP socket, for the caller to own from now on.

        Call after :meth:`hold` and :meth:`flushed`, on a Channel without TLS.
        The Channel stops watching the socket and never closes it; the byte
        counters stay here for the new owner to keep; ``close``/``abort`` from
        now on call ``on_close`` (a kick ends the relay).
        """
        assert not self.tls, "TLS bytes must pass through the Channel"
        assert not self.closing, "the connection is ending (hand_over checks first)"
        self._addresses = (self.peer(), self.local())
        self._on_detached_close = on_close
        self._lost_callback = None
        self._read_off()
        self._write_off()
        return self._sock

    # --- TLS -------------------------------------------------------------------------

    def _begin_tls(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        # The same descriptor, watched as before; the plain socket object is
        # detached by wrap_socket and never used again.
        self._tls = self._sock = context.wrap_socket(
            self._sock, server_side=server_side, server_hostname=server_hostname,
            do_handshake_on_connect=False,
            # An EOF without close_notify is an error to tell from a close_notify.
            suppress_ragged_eofs=False)
        self.tls = True
        self._handshaking = True
        self._handshake = self._loop.create_future()
        self._step_handshake()  # a client's ClientHello goes out here

    def _step_handshake(self) -> bool:
        """One step of the handshake; True once it is done."""
        tls = self._tls
        assert tls is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLWantWriteError:
            self._write_on()
            return False
        except (ssl.SSLError, OSError) as exc:
            # OpenSSL has sent its alert, if the socket took it (RFC 8446 §6.2).
            # What it did not read (a plaintext command on a TLS port) is
            # read and dropped, so that the close is a FIN, not a reset that
            # could destroy the alert before the peer reads it (RFC 1122
            # §4.2.2.13: a close with data unread sends RST).
            with contextlib.suppress(OSError):
                os.read(self._fd, MAX_READ)
            self._fatal(exc)
            return False
        self._handshaking = False
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(None)
        return True

    def _tls_readable(self) -> None:
        """Finish the handshake, or read the records that came, up to :data:`_RECORDS`."""
        if self._handshaking and not self._step_handshake():
            return
        tls = self._tls
        assert tls is not None
        chunks: list[bytes] = []
        end: BaseException | None = None
        closed = eof = False
        try:
            for _ in range(_RECORDS):
                chunk = tls.recv(RECORD)
                if not chunk:
                    closed = True  # close_notify (RFC 8446 §6.1)
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            # OpenSSL must write before it reads on (a TLS 1.3 KeyUpdate's
            # answer into a full socket): read again once it is writable.
            self._read_wants_write = True
            self._read_off()
            self._write_on()
        except ssl.SSLEOFError:
            eof = True  # the TCP connection ended without close_notify
        except (ssl.SSLError, OSError) as exc:
            end = exc
        try:
            if chunks:
                self._received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            if closed:
                self._tls_closed()
            elif eof:
                self._eof_received()
            elif end is not None:
                self._fatal(end)
        except Exception as exc:
            self._loop.call_exception_handler({
                "message": "the proxy failed on bytes it received", "exception": exc})
            self._fatal(exc)

    def _tls_closed(self) -> None:
        """The peer's close_notify: no more data from it, like a TCP EOF; writing goes on."""
        self._read_done = True
        self._read_off()
        if not self._eof:
            self._eof = True
            self._wake_reader()
            if self._relayed is not None:
                self._relayed.eof()

    def _fail_handshake(self, exc: BaseException) -> None:
        if self._handshake is not None:
            _fail_waiter(self._handshake, exc)

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
        self._chunks = []
        self._buffered = 0
        if self._reading_paused:
            self._reading_paused = False
            self._read_on()
        # In this same loop step as the OK the caller just wrote: every byte
        # that arrives from now on goes through TLS, none is read as plaintext.
        self._begin_tls(context, server_side=server_side, server_hostname=server_hostname)
        await self.handshake(handshake_timeout)
