"""A scripted IMAP store that holds thousands of idle sessions: greet, say OK to LOGIN, stay.

Dovecot would fork a process per login, so a test that keeps thousands of
sessions open through a front end (tests/integration/test_sessions_sizing.py)
logs them in here instead; nginx and ``authsvc proxy`` cannot tell.  It runs
as its own process, so the test's clients and the store do not share one
event loop, and raises its own soft ``RLIMIT_NOFILE`` to the hard limit.

What it answers:

* the greeting ``* OK [CAPABILITY IMAP4rev1 ID] idle store ready``;
* ``LOGIN`` with any name and password, as atoms, quoted strings or literals
  (nginx sends ``{N}`` literals and waits for the ``+`` continuation): ``OK``,
  and the session counts as logged in until its connection closes;
* ``XSESSIONS`` (this store's own command): ``* XSESSIONS N``, the sessions
  logged in and still open right now, then ``OK``; a test asks it through a
  session that went through the front end;
* ``LOGOUT``: ``* BYE`` and ``OK``, then close; anything else: ``OK``.

Use :func:`running_idle_store` (a free port on ``host``, waits until it
accepts, ends it by its pid), or by hand::

    python -m tests.services.idlestore 127.0.0.1 10143
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from tests.services.nginx import wait_for_ports
from tests.services.ports import free_port

GREETING = b"* OK [CAPABILITY IMAP4rev1 ID] idle store ready\r\n"
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r?\n$")
#: Longest literal accepted (a login name or password).
_MAX_LITERAL = 8192


class IdleStore:
    """The sessions of one store process and what it answers them."""

    def __init__(self) -> None:
        self.logged_in = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection, from the greeting to the close."""
        logged_in = False
        try:
            writer.write(GREETING)
            while line := await reader.readline():
                line = await self._literals(line, reader, writer)
                tag, _, rest = line.partition(b" ")
                verb = rest.split(b" ", 1)[0].strip().upper()
                if verb == b"LOGIN" and not logged_in:
                    logged_in = True
                    self.logged_in += 1
                elif verb == b"CAPABILITY":
                    writer.write(b"* CAPABILITY IMAP4rev1 ID\r\n")
                elif verb == b"XSESSIONS":
                    writer.write(b"* XSESSIONS %d\r\n" % self.logged_in)
                elif verb == b"LOGOUT":
                    writer.write(b"* BYE logging out\r\n" + tag + b" OK LOGOUT done\r\n")
                    break
                writer.write(tag + b" OK done\r\n")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass  # the peer went away, or sent a line past the reader's limit
        finally:
            if logged_in:
                self.logged_in -= 1
            writer.close()

    @staticmethod
    async def _literals(line: bytes, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bytes:
        """``line`` with every ``{N}`` literal read in (RFC 3501 §4.3, RFC 7888 for ``{N+}``)."""
        while (match := _LITERAL.search(line)) is not None:
            size = int(match.group(1))
            if size > _MAX_LITERAL:
                raise ValueError("literal too long")
            if not match.group(2):
                writer.write(b"+ go ahead\r\n")
                await writer.drain()
            literal = await reader.readexactly(size)
            line = line[:match.start()] + literal + await reader.readline()
        return line


async def serve(host: str, port: int) -> None:
    """Run the store on ``host:port`` until the process is ended."""
    store = IdleStore()
    server = await asyncio.start_server(store.session, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def raise_nofile() -> None:
    """The soft descriptor limit up to the hard one: one descriptor per session."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class IdleStoreProcess:
    """A running store: where it listens, and its process."""

    host: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def running_idle_store(host: str = "127.0.0.1") -> Iterator[IdleStoreProcess]:
    """The store on a free port of ``host``, listening when the block starts."""
    port = free_port(host)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.services.idlestore", host, str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    store = IdleStoreProcess(host, port, process)
    try:
        wait_for_ports([(host, port)], process, timeout=20.0)
        yield store
    finally:
        store.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
