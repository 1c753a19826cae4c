"""Relay bytes both ways between a logged-in client and its store.

One of the few modules that touch the event loop.  Two ways, one contract;
every session starts on the first:

* **User space**: each chunk a Channel receives is written to the other
  Channel from its ``data_received`` (:meth:`Channel.relay_to`; no task and
  no future per direction); a source stops being read while its sink's
  transport holds more than the Channels' high-water mark
  (``pause_writing``) and reads again on ``resume_writing``.  A session
  stays here when TLS is on either side, without ``os.splice``, or with
  ``[proxy] zero_copy = false``.
* **Zero copy** (``os.splice``, Linux), when both connections are plain TCP
  with nothing left for the proxy to see: no TLS on either side (a PROXY
  header to the store was sent before the login), **once one direction has
  moved** :data:`SPLICE_AFTER` **bytes** in user space.  The hand-over (a
  ``dup`` and a transport closed per socket, the sockets watched anew, a
  pipe per direction) costs more than a short session's few hundred bytes
  in user space (docs/benchmarks.md, "What was cut"), while a download
  crosses the mark in its first reads.  :func:`relay` stops both Channels
  reading, passes on what they still
  hold, waits until their transports have written everything, then takes the
  sockets over (:meth:`Channel.detach`: a duplicate descriptor, the asyncio
  transport closed) and watches them with ``loop.add_reader`` /
  ``add_writer``.  Each direction moves bytes socket → pipe → socket with
  ``splice(2)`` (``SPLICE_F_MOVE | SPLICE_F_NONBLOCK``, both sockets
  non-blocking), so they never enter user space.  A direction reads only
  while its pipe has room and waits for writability only while its pipe
  holds bytes, so neither a slow reader nor a full pipe spins the CPU, and
  the pipe (pipe(7)) bounds what a direction holds besides the sockets' own
  buffers: ``[proxy] splice_buffer`` bytes when the kernel allows that size
  (``F_SETPIPE_SZ``), else its default 64 KiB.  Pipes are made when a
  direction first has bytes and closed after ``PIPE_LINGER`` seconds empty,
  so an idle session holds its two sockets and nothing else (docs/proxy.md,
  "Limits": two descriptors per logged-in session).  Where ``splice``
  refuses the descriptors (``EINVAL``) or no pipe can be had (``EMFILE``),
  that direction copies through a user-space buffer over the same sockets
  instead.
Either way: EOF on one side is passed on as a half-close when the other side
can take one (plain TCP), else as a close (TLS cannot half-close).  The relay
ends when both directions have ended, when either connection is gone, or
after ``idle_timeout`` seconds with no byte either way (Perdition's
``timeout``, perdition(8) IDLE TIMEOUTS); it returns why, for the session
line.  The client Channel's ``bytes_in`` / ``bytes_out`` count what was read
from and written to the client on both paths (the session line and
``authsvc_proxy_bytes_total``), and ``Channel.abort`` (a kick) ends a spliced
relay at once.  Bytes are never parsed or logged here.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from collections.abc import Callable

from authsvc.proxy.transport import Channel

#: ``os.splice`` and its flags exist on Linux with Python 3.10 and later.
_SPLICE: Callable[..., int] | None = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_SET_PIPE_SIZE: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)
_GET_PIPE_SIZE: int | None = getattr(fcntl, "F_GETPIPE_SZ", None)
#: What a pipe holds unless resized: 16 pages (pipe(7), "Pipe capacity"); also
#: the copying fallback's buffer.
PIPE_CAPACITY = 65_536
#: Seconds an empty pipe is kept for the next burst before it is closed.
PIPE_LINGER = 1.0
#: Splices into a pipe per readiness callback before the loop serves others.
_ROUNDS = 8
#: Bytes one direction moves in user space before a plain session goes zero copy;
#: 0 splices from the first byte after login.
SPLICE_AFTER = 65_536


def splice_available() -> bool:
    """Whether this platform has ``os.splice`` (Linux, Python 3.10+)."""
    return _SPLICE is not None


async def relay(client: Channel, backend: Channel, idle_timeout: float, *,
                zero_copy: bool = True, buffer: int = PIPE_CAPACITY) -> str:
    """Relay until done; returns why it ended (for the session log).

    ``buffer``: the size of each zero-copy pipe (``[proxy] splice_buffer``);
    the user-space relay's Channels were made with it as their high-water mark.
    """
    splice = zero_copy and _SPLICE is not None and not client.tls and not backend.tls
    try:
        if not splice or SPLICE_AFTER > 0:
            in_user_space = _InUserSpace(client, backend, idle_timeout,
                                         SPLICE_AFTER if splice else None)
            # Awaited here rather than in a coroutine of its own: one frame
            # less that an idle session keeps (docs/benchmarks.md, "Proxy").
            try:
                in_user_space.start()
                end = await in_user_space.result
            finally:
                in_user_space.stop()
            if end is not None:
                return end
        gone = await _hand_over(client, backend)
        if gone is not None:
            return gone
        spliced = _Spliced(client, backend, idle_timeout, buffer)
        return await spliced.run()
    finally:
        client.close()
        backend.close()


# --- zero copy -----------------------------------------------------------------------


async def _hand_over(client: Channel, backend: Channel) -> str | None:
    """Flush what user space holds, in order; None when both sides are ready to splice.

    Reading stops first on both sides, so nothing more arrives in user space;
    the bytes the Channels had already read go to the other side behind what
    the session wrote, and the transports write everything before the sockets
    change hands.  A connection lost meanwhile ends the relay (the reason).
    """
    client.hold()
    backend.hold()
    backend_bytes = backend.take_buffered()
    client_bytes = client.take_buffered()
    client.write(backend_bytes)
    backend.write(client_bytes)
    await client.flushed()
    await backend.flushed()
    if client.lost or backend.lost:
        client.close()
        backend.close()
        return "client_closed" if client.lost else "backend_closed"
    return None


class _Direction:
    """One way through a pipe: ``source`` socket → pipe → ``sink`` socket."""

    __slots__ = ("capacity", "copied", "copying", "done", "eof", "in_pipe", "last_moved",
                 "linger", "name", "pipe", "reading", "relay", "sink", "sink_channel",
                 "sink_fd", "source", "source_channel", "source_fd", "writing")

    def __init__(self, relay: _Spliced, name: str, source: socket.socket, sink: socket.socket,
                 source_channel: Channel, sink_channel: Channel) -> None:
        self.relay = relay
        self.name = name
        self.source, self.sink = source, sink
        self.source_fd, self.sink_fd = source.fileno(), sink.fileno()
        self.source_channel, self.sink_channel = source_channel, sink_channel
        self.pipe: tuple[int, int] | None = None
        self.capacity = PIPE_CAPACITY
        self.in_pipe = 0
        #: splice refused these descriptors, or no pipe could be had: copy in user space.
        self.copying = False
        self.copied = b""
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False
        self.last_moved = 0.0
        self.linger: asyncio.TimerHandle | None = None

    # --- watching the sockets -------------------------------------------------------

    def read_when_ready(self, on: bool) -> None:
        if on == self.reading:
            return
        self.reading = on
        loop = self.relay.loop
        if on:
            loop.add_reader(self.source_fd, self.readable)
        else:
            loop.remove_reader(self.source_fd)

    def write_when_ready(self, on: bool) -> None:
        if on == self.writing:
            return
        self.writing = on
        loop = self.relay.loop
        if on:
            loop.add_writer(self.sink_fd, self.writable)
        else:
            loop.remove_writer(self.sink_fd)

    def stop(self) -> None:
        """Unwatch both sockets and close the pipe (the relay is over)."""
        self.read_when_ready(False)
        self.write_when_ready(False)
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        self.close_pipe()

    def close_pipe(self) -> None:
        if self.pipe is not None:
            os.close(self.pipe[0])
            os.close(self.pipe[1])
            self.pipe = None
            self.in_pipe = 0

    def open_pipe(self) -> bool:
        try:
            self.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            # Out of descriptors (EMFILE/ENFILE): the bytes still go, by copy.
            self.copying = True
            return False
        self.capacity = self.relay.pipe_size(self.pipe[1])
        return True

    # --- moving bytes -----------------------------------------------------------------

    def readable(self) -> None:
        try:
            self.move()
        except Exception as exc:
            # A bug must end this session (its line says so), not leave it hanging.
            self.relay.failed(exc)

    def writable(self) -> None:
        try:
            self.flush()
        except Exception as exc:
            self.relay.failed(exc)

    def move(self) -> None:
        """Read what the source has (while the pipe has room) and pass it on."""
        assert _SPLICE is not None
        for _ in range(_ROUNDS):
            if self.copying:
                want = PIPE_CAPACITY
                try:
                    data = self.source.recv(want)
                except BlockingIOError:
                    return
                except OSError:
                    self.relay.lost(self.source_channel)
                    return
                count = len(data)
                self.copied = data
            else:
                if self.pipe is None and not self.open_pipe():
                    continue
                assert self.pipe is not None
                want = self.capacity - self.in_pipe
                try:
                    count = _SPLICE(self.source_fd, self.pipe[1], want, flags=_FLAGS)
                except BlockingIOError:
                    return
                except OSError as exc:
                    if exc.errno == errno.EINVAL and self.in_pipe == 0:
                        # These descriptors cannot be spliced (splice(2), EINVAL).
                        self.close_pipe()
                        self.copying = True
                        continue
                    self.relay.lost(self.source_channel)
                    return
                self.in_pipe += count
            if count == 0:
                self.eof = True
                self.read_when_ready(False)
                self.flush()
                return
            self.source_channel.bytes_in += count
            self.last_moved = self.relay.last_moved = self.relay.loop.time()
            if not self.flush() or count < want:
                # Bytes wait for the sink, or the socket had no more for now.
                return

    def flush(self) -> bool:
        """Write what waits; True when nothing is left (and reading goes on)."""
        if self.copying:
            while self.copied:
                try:
                    sent = self.sink.send(self.copied)
                except BlockingIOError:
                    break
                except OSError:
                    self.relay.lost(self.sink_channel)
                    return False
                self.copied = self.copied[sent:]
                self.sink_channel.bytes_out += sent
            left = len(self.copied)
        else:
            assert _SPLICE is not None
            while self.in_pipe:
                assert self.pipe is not None
                try:
                    sent = _SPLICE(self.pipe[0], self.sink_fd, self.in_pipe, flags=_FLAGS)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        # The sink cannot take a splice: read the pipe back, copy from now on.
                        self.copied = os.read(self.pipe[0], self.in_pipe)
                        self.close_pipe()
                        self.copying = True
                        return self.flush()
                    self.relay.lost(self.sink_channel)
                    return False
                self.in_pipe -= sent
                self.sink_channel.bytes_out += sent
            left = self.in_pipe
        if left:
            self.read_when_ready(False)
            self.write_when_ready(True)
            return False
        self.write_when_ready(False)
        if self.eof:
            self.finish()
            return False
        if self.pipe is not None and self.linger is None:
            self.linger = self.relay.loop.call_later(PIPE_LINGER, self.release)
        self.read_when_ready(True)
        return True

    def release(self) -> None:
        """Close the pipe once it has been empty ``PIPE_LINGER`` seconds."""
        self.linger = None
        if self.pipe is None or self.done:
            return
        if self.in_pipe:
            return  # flush() rearms the timer once the pipe is empty again
        quiet = self.relay.loop.time() - self.last_moved
        if quiet >= PIPE_LINGER:
            self.close_pipe()
        else:
            self.linger = self.relay.loop.call_later(PIPE_LINGER - quiet, self.release)

    def finish(self) -> None:
        """The source said EOF and every byte is through: half-close the sink."""
        self.done = True
        self.stop()
        try:
            self.sink.shutdown(socket.SHUT_WR)
        except OSError:
            self.relay.lost(self.sink_channel)
            return
        self.relay.ended(self.name)


class _IdleClock:
    """The idle timeout both relays keep: ``idle_timeout`` seconds with no
    byte moved either way (``last_moved``) ends the relay with ``idle_timeout``."""

    def __init__(self, idle_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.last_moved = self.loop.time()
        self._idle: asyncio.TimerHandle | None = None

    def _start_idle_clock(self) -> None:
        if self.idle_timeout > 0:
            self._idle = self.loop.call_later(self.idle_timeout, self._check_idle)

    def _stop_idle_clock(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _check_idle(self) -> None:
        quiet = self.loop.time() - self.last_moved
        if quiet >= self.idle_timeout:
            self._idle = None
            self._end("idle_timeout")
        else:
            self._idle = self.loop.call_later(self.idle_timeout - quiet, self._check_idle)

    def _end(self, reason: str) -> None:
        raise NotImplementedError


class _Spliced(_IdleClock):
    """Both directions over the sockets taken from two Channels, until the relay ends."""

    def __init__(self, client: Channel, backend: Channel, idle_timeout: float,
                 pipe_size: int) -> None:
        super().__init__(idle_timeout)
        self._pipe_size = pipe_size
        self.client, self.backend = client, backend
        self._result: asyncio.Future[str] = self.loop.create_future()
        self._ended: list[str] = []
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._directions: tuple[_Direction, ...] = ()

    async def run(self) -> str:
        client, backend = self.client, self.backend
        try:
            client_sock = client.detach(self.close)
            self._sockets.append(client_sock)
            backend_sock = backend.detach(self.close)
            self._sockets.append(backend_sock)
        except OSError as exc:
            # No descriptor left for a duplicate (EMFILE): the session ends.
            self.close()
            backend.abort()
            return f"error:{type(exc).__name__}"
        up = _Direction(self, "client_eof", client_sock, backend_sock, client, backend)
        down = _Direction(self, "backend_eof", backend_sock, client_sock, backend, client)
        self._directions = (up, down)
        try:
            self._start_idle_clock()
            up.read_when_ready(True)
            down.read_when_ready(True)
            return await self._result
        finally:
            self.close()

    def pipe_size(self, pipe: int) -> int:
        """Make a new pipe hold ``pipe_size`` bytes if the kernel lets us; what it holds.

        Fewer, larger splices cost less CPU per byte.  An unprivileged process
        gets at most ``/proc/sys/fs/pipe-max-size`` (1 MiB by default) and,
        past ``pipe-user-pages-soft`` for its user, keeps what the kernel gave
        (pipe(7), "/proc files"); EPERM then, and the pipe still works.
        """
        if self._pipe_size == PIPE_CAPACITY or _SET_PIPE_SIZE is None:
            return PIPE_CAPACITY
        try:
            return fcntl.fcntl(pipe, _SET_PIPE_SIZE, self._pipe_size)
        except OSError:
            if _GET_PIPE_SIZE is None:
                return PIPE_CAPACITY
            return fcntl.fcntl(pipe, _GET_PIPE_SIZE)

    def ended(self, name: str) -> None:
        self._ended.append(name)
        if all(direction.done for direction in self._directions):
            self._end(self._ended[0])

    def lost(self, channel: Channel) -> None:
        """A socket failed (reset, EPIPE): the relay is over."""
        which = "client_closed" if channel is self.client else "backend_closed"
        self._end(self._ended[0] if self._ended else which)

    def failed(self, exc: Exception) -> None:
        self._end(f"error:{type(exc).__name__}")

    def _end(self, reason: str) -> None:
        if not self._result.done():
            self._result.set_result(reason)
        self.close()

    def close(self) -> None:
        """Stop watching, close both pipes and both sockets, now (also a kick's abort)."""
        if self._closed:
            return
        self._closed = True
        self._stop_idle_clock()
        for direction in self._directions:
            direction.stop()
        for sock in self._sockets:
            sock.close()
        if not self._result.done():
            self._result.set_result("closed")



# --- user space ----------------------------------------------------------------------


class _Way:
    """One direction in user space: each chunk the source hands over is written to the sink.

    The source Channel's :class:`~proxy.transport.Relayed`: its data and EOF
    are this direction's, its ``writable`` lets the opposite direction read.
    """

    __slots__ = ("ended", "moved", "name", "other", "relay", "sink", "source")

    def __init__(self, relay: _InUserSpace, name: str, source: Channel, sink: Channel) -> None:
        self.relay = relay
        self.name = name
        self.source, self.sink = source, sink
        self.moved = 0
        self.ended = False
        #: The opposite direction (set once both exist).
        self.other: _Way | None = None

    def data(self, data: bytes) -> None:
        sink, relay = self.sink, self.relay
        sink.write(data)
        relay.last_moved = relay.loop.time()
        if sink.writing_paused:
            # The sink holds more than its high-water mark: stop reading the
            # source until it drains (``writable``).
            self.source.pause_reading()
        if relay.splice_after is not None:
            self.moved += len(data)
            if self.moved >= relay.splice_after:
                relay.switch()

    def writable(self) -> None:
        """The source's own write buffer drained: the way into it may read again."""
        other = self.other
        if other is not None and not other.ended:
            other.source.resume_reading()

    def eof(self) -> None:
        """Pass the EOF on: a half-close when possible, else a close (after what is queued).

        When the other direction has ended already, the relay ends here and
        closes both sockets, so the close is the EOF: no half-close first.
        """
        if self.ended:
            return
        self.ended = True
        sink = self.sink
        last = self.other is not None and self.other.ended
        if sink.can_write_eof() and not last:
            sink.write_eof()
        else:
            sink.close()
        self.relay.ended(self.name)


class _InUserSpace(_IdleClock):
    """Both directions by callbacks from the Channels: no task, no future per chunk.

    Ends (the future's result, for the session line) as the spliced relay
    does; or, with ``splice_after`` set, hands over to it once a direction
    has moved that many bytes (result ``None``).
    """

    def __init__(self, client: Channel, backend: Channel, idle_timeout: float,
                 splice_after: int | None) -> None:
        super().__init__(idle_timeout)
        self.client, self.backend = client, backend
        self.splice_after = splice_after
        self.result: asyncio.Future[str | None] = self.loop.create_future()
        self._ended: list[str] = []
        self._ways: tuple[_Way, _Way] | None = None

    def start(self) -> None:
        """Relay from now on; :attr:`result` says when and why it ended."""
        client, backend = self.client, self.backend
        up = _Way(self, "client_eof", client, backend)
        down = _Way(self, "backend_eof", backend, client)
        up.other, down.other = down, up
        self._ways = (up, down)
        # What the Channels still hold goes first (the session passed the
        # client's on already; the store's may have arrived since).
        for way in (down, up):
            left = way.source.take_buffered()
            if left:
                way.sink.write(left)
        for channel in (client, backend):
            channel.set_write_limit(channel.high_water)
            channel.on_lost(self.lost)
        client.relay_to(up)
        backend.relay_to(down)
        for way in (up, down):
            if way.source.eof and not self.result.done():
                way.eof()
        if not self.result.done():
            self._start_idle_clock()

    def stop(self) -> None:
        """No more callbacks from the Channels or the idle clock."""
        self._stop_idle_clock()
        self.client.relay_to(None)
        self.backend.relay_to(None)

    def ended(self, name: str) -> None:
        self._ended.append(name)
        assert self._ways is not None
        if all(way.ended for way in self._ways):
            self._end(self._ended[0])

    def lost(self) -> None:
        which = "client_closed" if self.client.lost else "backend_closed"
        self._end(self._ended[0] if self._ended else which)

    def switch(self) -> None:
        """Bulk traffic: stop reading both sides and let ``relay`` splice from here on."""
        if self.result.done():
            return
        self.client.hold()
        self.backend.hold()
        self.result.set_result(None)

    def _end(self, reason: str) -> None:
        if not self.result.done():
            self.result.set_result(reason)
