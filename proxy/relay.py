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

from authsvc.proxy.transport import Channel
from authsvc.proxy.userspace import InUserSpace
from authsvc.proxy.zerocopy import PIPE_CAPACITY, Spliced, hand_over, splice_available

#: Bytes one direction moves in user space before a plain session goes zero copy;
#: 0 splices from the first byte after login.
SPLICE_AFTER = 65_536


async def relay(client: Channel, backend: Channel, idle_timeout: float, *,
                zero_copy: bool = True, buffer: int = PIPE_CAPACITY) -> str:
    """Relay until done; returns why it ended (for the session log).

    ``buffer``: the size of each zero-copy pipe (``[proxy] splice_buffer``);
    the user-space relay's Channels were made with it as their high-water mark.
    """
    splice = zero_copy and splice_available() and not client.tls and not backend.tls
    try:
        if not splice or SPLICE_AFTER > 0:
            in_user_space = InUserSpace(client, backend, idle_timeout,
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
        gone = await hand_over(client, backend)
        if gone is not None:
            return gone
        spliced = Spliced(client, backend, idle_timeout, buffer)
        return await spliced.run()
    finally:
        client.close()
        backend.close()
