"""A scripted IMAP store for the soak: greets, accepts LOGIN, answers a few commands, idles cheaply.

It stands in for Dovecot in ``bench/soak.py``: 10,000 Dovecot mail processes
would measure Dovecot, not the proxy.  One asyncio process, one small
:class:`asyncio.Protocol` per connection (no StreamReader, no task), so an
idle session costs a socket and a few hundred bytes of Python.

Every password is accepted except ``wrong``, which is refused with
``NO [AUTHENTICATIONFAILED]`` after ``--refuse-delay`` seconds (a store that
takes a while to say no).  Arguments are atoms or quoted strings; a literal
is answered ``+`` and its bytes are skipped, which is all the proxy's own
``LOGIN`` needs (it never sends ``{n+}`` here: no ``LITERAL+`` is offered).

Run: ``python -m bench.soak_backend --listen 127.0.0.2 --listen 127.0.0.3 --port 1143``
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import signal

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE] soak store ready.\r\n"
CAPS = b"IMAP4rev1 IDLE"
_LITERAL = re.compile(rb"\{(\d+)\}$")


class StoreSession(asyncio.Protocol):
    """One client of the scripted store; state is a buffer and a literal count."""

    def __init__(self, refuse_delay: float) -> None:
        self.refuse_delay = refuse_delay
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.skip = 0  # literal bytes still to swallow
        self.pending = b""  # the command line a literal belongs to

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.skip:
                take = min(self.skip, len(self.buffer))
                self.pending += self.buffer[:take]
                self.buffer = self.buffer[take:]
                self.skip -= take
                if self.skip:
                    return
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.pending + self.buffer[:end], self.buffer[end + 2:]
            self.pending = b""
            literal = _LITERAL.search(line)
            if literal:
                self.skip = int(literal.group(1))
                self.pending = line[:literal.start()] + b'"'
                self._write(b"+ Ready.\r\n")
                continue
            self.command(line)

    def command(self, line: bytes) -> None:
        tag, _, rest = line.partition(b" ")
        verb = rest.split(b" ", 1)[0].upper()
        if verb == b"LOGIN":
            if b"wrong" in rest:
                loop = asyncio.get_running_loop()
                loop.call_later(self.refuse_delay, self._write,
                                tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
            else:
                self._write(tag + b" OK [CAPABILITY " + CAPS + b"] Logged in\r\n")
        elif verb == b"CAPABILITY":
            self._write(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")
        elif verb in (b"SELECT", b"EXAMINE"):
            self._write(b"* FLAGS (\\Seen)\r\n* 0 EXISTS\r\n* 0 RECENT\r\n"
                        + tag + b" OK [READ-WRITE] Select completed.\r\n")
        elif verb == b"NOOP" or verb == b"ID":
            self._write(tag + b" OK done\r\n")
        elif verb == b"LOGOUT":
            self._write(b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")
            if self.transport is not None:
                self.transport.close()
        else:
            self._write(tag + b" BAD unknown command\r\n")

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(listen: list[str], port: int, refuse_delay: float) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: StoreSession(refuse_delay), host, port,
                                        backlog=4096, reuse_address=True)
               for host in listen]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"soak store listening on {','.join(listen)} port {port}", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--refuse-delay", type=float, default=0.0)
    args = parser.parse_args()
    # 10,000 sessions need more than the default 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(args.listen, args.port, args.refuse_delay))


if __name__ == "__main__":
    main()
