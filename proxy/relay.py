"""Relay bytes both ways between a logged-in client and its store.

Two ways, one contract; every session starts on the first:

* **User space** (``userspace.py``): each chunk a Channel receives is
  written to the other Channel from its ``data_received``.  A session stays
  here when TLS is on either side, without ``os.splice``, or with
  ``[proxy] zero_copy = false``.
* **Zero copy** (``zerocopy.py``, ``os.splice``, Linux), when both
  connections are plain TCP with nothing left for the proxy to see: no TLS
  on either side (a PROXY header to the store was sent before the login),
  **once one direction has moved** :data:`SPLICE_AFTER` **bytes** in user
  space.  The hand-over (both sockets flushed and watched anew, a pipe
  per direction) costs more than a short
  session's few hundred bytes in user space (docs/benchmarks.md, "What was
  cut"), while a download crosses the mark in its first reads.

Either way: EOF on one side is passed on as a half-close when the other side
can take one (plain TCP), else as a close (TLS cannot half-close).  The relay
ends when both directions have ended, when either connection is gone, or
after ``idle_timeout`` seconds with no byte either way (Perdition's
``timeout``, perdition(8) IDLE TIMEOUTS; ``idleclock.py``); it returns why,
for the session line.  The client Channel's ``bytes_in`` / ``bytes_out``
count what was read from and written to the client on both paths (the
session line and ``authsvc_proxy_bytes_total``), and ``Channel.abort`` (a
kick) ends a spliced relay at once.  Bytes are never parsed or logged here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from authsvc.proxy.transport import Channel
from authsvc.proxy.userspace import InUserSpace
from authsvc.proxy.zerocopy import PIPE_CAPACITY, Spliced, hand_over, splice_available

#: Bytes one direction moves in user space before a plain session goes zero copy;
#: 0 splices from the first byte after login.
SPLICE_AFTER = 65_536


class Relay:
    """One logged-in session's relay, from :meth:`start` to one call of ``on_end``.

    No task while bytes move in user space: the session's coroutine has
    returned and the Channels' callbacks drive everything, so an idle
    relayed session keeps no task and no frame (docs/benchmarks.md,
    "Proxy").  The zero-copy stage, which waits for the Channels to flush
    before the sockets change hands, runs in a task of its own.
    ``on_end(reason, error)`` gets why it ended, for the session line, and
    the exception when a bug ended it; both Channels are closed by then.
    """

    __slots__ = ("_in_user_space", "_over", "_task", "backend", "buffer", "client",
                 "idle_timeout", "on_end", "zero_copy")

    def __init__(self, client: Channel, backend: Channel, idle_timeout: float, *,
                 on_end: Callable[[str, Exception | None], None], zero_copy: bool = True,
                 buffer: int = PIPE_CAPACITY) -> None:
        """``buffer``: the size of each zero-copy pipe (``[proxy] splice_buffer``);
        the user-space relay's Channels were made with it as their high-water mark."""
        self.client, self.backend = client, backend
        self.idle_timeout = idle_timeout
        self.zero_copy = zero_copy
        self.buffer = buffer
        self.on_end = on_end
        self._over = False
        self._in_user_space: InUserSpace | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Relay from now on (``on_end`` may already have been called on return)."""
        client, backend = self.client, self.backend
        splice = (self.zero_copy and splice_available()
                  and not client.tls and not backend.tls)
        if splice and SPLICE_AFTER <= 0:
            self._splice()
            return
        self._in_user_space = InUserSpace(client, backend, self.idle_timeout,
                                          SPLICE_AFTER if splice else None,
                                          self._user_space_ended)
        self._in_user_space.start()

    def stop(self, reason: str) -> asyncio.Task[None] | None:
        """End it now, closing both Channels after what they queued (a server's stop).

        Returns the zero-copy stage's task, cancelled, for the caller to wait
        for, if there was one.
        """
        if self._in_user_space is not None:
            self._in_user_space.stop()
        task = self._task
        if task is not None:
            task.cancel()
        self._finish(reason)
        return task

    def _user_space_ended(self, reason: str | None) -> None:
        self._in_user_space = None
        if reason is None:
            self._splice()
        else:
            self._finish(reason)

    def _splice(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._zero_copy())

    async def _zero_copy(self) -> None:
        client, backend = self.client, self.backend
        try:
            gone = await hand_over(client, backend)
            if gone is not None:
                self._finish(gone)
                return
            self._finish(await Spliced(client, backend, self.idle_timeout, self.buffer).run())
        except asyncio.CancelledError:
            self._finish("shutdown")
        except Exception as exc:
            self._finish(f"error:{type(exc).__name__}", exc)

    def _finish(self, reason: str, error: Exception | None = None) -> None:
        if self._over:
            return
        self._over = True
        self._task = None
        self.client.close()
        self.backend.close()
        self.on_end(reason, error)
