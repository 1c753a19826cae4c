"""Relay bytes both ways between a logged-in client and its store.

One of the few modules that touch the event loop.  Each direction reads what
its source has buffered, writes it and waits for the destination to drain, so
a slow reader pauses the fast writer (the source Channel stops reading at its
high-water mark): memory stays bounded whatever the sizes.  EOF on one side is
passed on as a half-close when the other side can take one (plain TCP), else
as a close (TLS cannot half-close).  The splice ends when both directions have
ended, when either connection is gone, or after ``idle_timeout`` seconds with
no byte either way (Perdition's ``timeout``, perdition(8) IDLE TIMEOUTS).  Bytes are
never parsed or logged here.
"""

from __future__ import annotations

import asyncio

from authsvc.proxy.transport import Channel


async def _pump(source: Channel, sink: Channel) -> None:
    while True:
        data = await source.read()
        if not data:
            break
        sink.write(data)
        await sink.drain()
        if sink.lost:
            return
    # Pass the EOF on: a half-close when possible, else a close (after the
    # queued bytes are written; Transport.close flushes first).
    if sink.can_write_eof():
        sink.write_eof()
    else:
        sink.close()


async def splice(client: Channel, backend: Channel, idle_timeout: float) -> str:
    """Relay until done; returns why it ended (for the session log)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    up = asyncio.ensure_future(_pump(client, backend))
    down = asyncio.ensure_future(_pump(backend, client))
    names: dict[asyncio.Future[None], str] = {up: "client_eof", down: "backend_eof"}
    gone = loop.create_future()

    def lost() -> None:
        if not gone.done():
            gone.set_result(None)

    client.on_lost(lost)
    backend.on_lost(lost)
    pending: set[asyncio.Future[None]] = {up, down, gone}
    ended: list[str] = []
    try:
        while up in pending or down in pending:
            timeout = None
            if idle_timeout > 0:
                last = max(started, client.last_read, backend.last_read)
                timeout = max(0.0, last + idle_timeout - loop.time())
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                last = max(started, client.last_read, backend.last_read)
                if loop.time() - last >= idle_timeout:
                    return "idle_timeout"
                continue
            for finished in done:
                if finished is gone:
                    which = "client_closed" if client.lost else "backend_closed"
                    return ended[0] if ended else which
                exc = finished.exception()
                if exc is not None:
                    return f"error:{type(exc).__name__}"
                ended.append(names[finished])
        return ended[0] if ended else "closed"
    finally:
        for task in (up, down, gone):
            task.cancel()
        client.close()
        backend.close()
