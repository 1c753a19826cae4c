"""The zero-copy relay: a plain-to-plain session's bytes moved with ``splice(2)``.

One of the few modules that touch the event loop.  :func:`hand_over` stops
both Channels reading, passes on what they still hold and waits until they
have written everything; :class:`Spliced` then takes the sockets over
(:meth:`Channel.detach`: the Channels stop watching them) and watches them
with ``loop.add_reader`` / ``add_writer``.  Each
direction moves bytes socket → pipe → socket with ``splice(2)``
(``SPLICE_F_MOVE | SPLICE_F_NONBLOCK``, both sockets non-blocking), so they
never enter user space.  A direction reads only while its pipe has room and
waits for writability only while its pipe holds bytes, so neither a slow
reader nor a full pipe spins the CPU, and the pipe (pipe(7)) bounds what a
direction holds besides the sockets' own buffers: ``[proxy] splice_buffer``
bytes when the kernel allows that size (``F_SETPIPE_SZ``), else its default
64 KiB.  Pipes are made when a direction first has bytes and closed after
``PIPE_LINGER`` seconds empty, so an idle session holds its two sockets and
nothing else (docs/proxy.md, "Limits": two descriptors per logged-in
session).  Where ``splice`` refuses the descriptors (``EINVAL``) or no pipe
can be had (``EMFILE``), that direction copies through a user-space buffer
over the same sockets instead.  The contract (EOF, idle timeout, byte
counts, a kick) is ``relay.py``'s.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from collections.abc import Callable

from authsvc.proxy.idleclock import IdleClock
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

def splice_available() -> bool:
    """Whether this platform has ``os.splice`` (Linux, Python 3.10+)."""
    return _SPLICE is not None



async def hand_over(client: Channel, backend: Channel) -> str | None:
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
    if client.closing or backend.closing:
        client.close()
        backend.close()
        return "client_closed" if client.closing else "backend_closed"
    return None


class _Direction:
    """One way through a pipe: ``source`` socket → pipe → ``sink`` socket."""

    __slots__ = ("capacity", "copied", "copying", "done", "eof", "in_pipe", "last_moved",
                 "linger", "name", "pipe", "reading", "relay", "sink", "sink_channel",
                 "sink_fd", "source", "source_channel", "source_fd", "writing")

    def __init__(self, relay: Spliced, name: str, source: socket.socket, sink: socket.socket,
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


class Spliced(IdleClock):
    """Both directions over the sockets taken from two Channels, until the relay ends."""

    def __init__(self, client: Channel, backend: Channel, idle_timeout: float,
                 pipe_size: int) -> None:
        super().__init__(idle_timeout, client.loop)
        self._pipe_size = pipe_size
        self.client, self.backend = client, backend
        self._result: asyncio.Future[str] = self.loop.create_future()
        self._ended: list[str] = []
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._directions: tuple[_Direction, ...] = ()

    async def run(self) -> str:
        client, backend = self.client, self.backend
        client_sock = client.detach(self.close)
        backend_sock = backend.detach(self.close)
        self._sockets = [client_sock, backend_sock]
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
