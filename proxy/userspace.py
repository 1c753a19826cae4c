"""The user-space relay: each chunk a Channel receives is written to the other Channel.

One of the few modules that touch the event loop.  Each Channel hands its
chunks to a direction (:class:`~proxy.transport.Relayed`) from its
``data_received``: no task and no future per direction, and no copy.  A
source stops being read while its sink's transport holds more than the
Channels' high-water mark (``pause_writing``) and reads again on
``resume_writing``.  Every session relays here first; one that may go zero
copy (``relay.py``) hands over once a direction has moved ``splice_after``
bytes.  The contract (EOF, idle timeout, byte counts, a kick) is
``relay.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable

from authsvc.proxy.idleclock import IdleClock
from authsvc.proxy.transport import Channel


class _Way:
    """One direction in user space: each chunk the source hands over is written to the sink.

    The source Channel's :class:`~proxy.transport.Relayed`: its data and EOF
    are this direction's, its ``writable`` lets the opposite direction read.
    """

    __slots__ = ("ended", "moved", "name", "other", "relay", "sink", "source")

    def __init__(self, relay: InUserSpace, name: str, source: Channel, sink: Channel) -> None:
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
        if last:
            # The relay's end (``on_end``) closes both, once no callback is
            # left to tell: the sockets close at once (transport.py).
            self.relay.ended(self.name)
            sink.close()
            return
        if sink.can_write_eof():
            sink.write_eof()
        else:
            sink.close()
        self.relay.ended(self.name)


class InUserSpace(IdleClock):
    """Both directions by callbacks from the Channels: no task, no future, no frame.

    Ends by calling ``ended`` once with the reason (for the session line),
    as the spliced relay does; or, with ``splice_after`` set, with ``None``
    once a direction has moved that many bytes, for ``relay.py`` to splice
    from there.  Either way it has stopped by then: no more callbacks.
    """

    __slots__ = ("_ended", "_over", "_ways", "backend", "client", "on_end", "splice_after")

    def __init__(self, client: Channel, backend: Channel, idle_timeout: float,
                 splice_after: int | None, on_end: Callable[[str | None], None]) -> None:
        super().__init__(idle_timeout, client.loop)
        self.client, self.backend = client, backend
        self.splice_after = splice_after
        self.on_end = on_end
        self._over = False
        self._ended: list[str] = []
        self._ways: tuple[_Way, _Way] | None = None

    def start(self) -> None:
        """Relay from now on, until ``on_end``."""
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
            if way.source.eof and not self._over:
                way.eof()
        if not self._over:
            self._start_idle_clock()

    def stop(self) -> None:
        """No more callbacks from the Channels or the idle clock, and no ``on_end``."""
        self._over = True
        self._stop_idle_clock()
        for channel in (self.client, self.backend):
            channel.relay_to(None)
            channel.on_lost(None)

    def ended(self, name: str) -> None:
        self._ended.append(name)
        assert self._ways is not None
        if all(way.ended for way in self._ways):
            self._end(self._ended[0])

    def lost(self) -> None:
        which = "client_closed" if self.client.lost else "backend_closed"
        self._end(self._ended[0] if self._ended else which)

    def switch(self) -> None:
        """Bulk traffic: stop reading both sides and let ``relay.py`` splice from here on."""
        if self._over:
            return
        self.client.hold()
        self.backend.hold()
        self._finish(None)

    def _end(self, reason: str) -> None:
        self._finish(reason)

    def _finish(self, reason: str | None) -> None:
        if self._over:
            return
        self.stop()
        self.on_end(reason)
