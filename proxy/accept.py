"""Raw accepted sockets before they become Channels: the PROXY header, and refusals.

One of the few modules that touch the event loop.  The header is read from the
socket itself, before asyncio's transport (and, on implicit-TLS listeners,
its TLS layer) ever sees the connection: we ``MSG_PEEK`` at what has arrived,
let :class:`~proxy.proxy_protocol.ProxyHeaderReader` say how many of those
bytes are header, and ``recv`` exactly that many.  Whatever the sender put
behind the header in the same packet (HAProxy's TLS ClientHello for a 993
listener, a client's pipelined command) stays in the kernel for the TLS layer
or the session: nothing is over-read (the sample code in section 9 of
HAProxy's ``doc/proxy-protocol.txt`` does the same).  Bytes taken before the
end of the header are always header bytes, so the socket never stays
readable with nothing new to read.

A refusal (a limit) writes the one-line ``* BYE`` / ``-ERR`` the caller gives,
half-closes, and drains the client's bytes for a moment before closing, so the
kernel sends a FIN rather than a reset that could destroy the line in flight
(:func:`refuse`).  When descriptors are short, or too many refusals are
already lingering, :func:`refuse_now` drains only what has arrived and closes
at once: the descriptor is worth more than the last word.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from authsvc.proxy.proxy_protocol import DEFAULT_MAX_LENGTH, ProxyHeader, ProxyHeaderReader

#: How long a refused client may keep sending before the socket is closed anyway.
LINGER = 2.0


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def read_proxy_header(
    sock: socket.socket, max_length: int = DEFAULT_MAX_LENGTH
) -> ProxyHeader:
    """The header in front of ``sock``'s data; the socket is left right behind it.

    Raises ProxyProtocolError for bad bytes, ConnectionError when the peer
    leaves first.  The caller bounds the time (``proxy_protocol_timeout``).
    """
    reader = ProxyHeaderReader(max_length)
    while True:
        await _readable(sock)
        try:
            peeked = sock.recv(max_length, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peeked:
            raise ConnectionResetError("closed before the PROXY header was complete")
        take = reader.feed(peeked)
        while take:  # the bytes are in the kernel already: these recvs do not block
            chunk = sock.recv(take)
            if not chunk:
                raise ConnectionResetError("closed inside the PROXY header")
            take -= len(chunk)
        if reader.header is not None:
            return reader.header


async def refuse(sock: socket.socket, line: bytes) -> None:
    """Say ``line`` (may be empty), then close gently; never raises."""
    try:
        with contextlib.suppress(OSError):
            if line:
                sock.send(line)  # one short line into an empty send buffer
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(LINGER):
                while True:
                    await _readable(sock)
                    try:
                        if not sock.recv(65536):
                            break
                    except (BlockingIOError, InterruptedError):
                        continue
    finally:
        sock.close()


def refuse_now(sock: socket.socket, line: bytes) -> None:
    """Say ``line`` (may be empty) and close in the same step; never raises.

    Bytes the client has sent are read first: closing a socket with unread
    data makes the kernel send a reset instead of the line and a FIN
    (RFC 2525 §2.17).
    """
    try:
        with contextlib.suppress(OSError):
            if line:
                sock.send(line)
            sock.shutdown(socket.SHUT_WR)
            for _ in range(4):  # a client that keeps sending gets its reset
                if not sock.recv(65536):
                    break
    finally:
        sock.close()
