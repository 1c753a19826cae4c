"""Scripted IMAP and POP3 stores for component tests, well-behaved or not.

A real Dovecot is used by the integration tests; here the store is a small
asyncio server whose every reply we choose, so a test can make it greet with
``* BYE``, never greet, hang or hang up in the middle of a login, or send a
multi-megabyte message.  It records what it was sent, so a test can assert
what reached the store (the backend login name, commands kept behind LOGIN).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass, field

from authsvc.proxy.proxy_protocol import ProxyHeader, ProxyHeaderReader

#: Text of the store's own refusal: tests check the client never sees it.
STORE_REFUSAL = "Authentication failed (store-internal detail)."
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}$")
_ARG = re.compile(
    rb'\x00LIT(?P<lit>.*?)\x00|"(?P<q>(?:[^"\\]|\\.)*)"|(?P<atom>[^\s\x00]+)', re.S
)


@dataclass
class FakeStore:
    """One fake store; ``behaviour`` is normal, silent, bye, close_mid_login or stall."""

    protocol: str = "imap"
    users: dict[str, str] = field(default_factory=lambda: {"bob": "good", "alice": "alice-pw"})
    behaviour: str = "normal"
    #: Size of message 1 (FETCH 1 BODY[] / RETR 1).
    message: bytes = b"Subject: hi\r\n\r\nhello\r\n"
    logins: list[tuple[str, str]] = field(default_factory=list)
    commands: list[bytes] = field(default_factory=list)
    port: int = 0
    host: str = "127.0.0.1"
    #: Bytes the store pushed with :meth:`flood`, for backpressure tests.
    flooded: int = 0
    #: Implicit TLS for the store's port (the proxy's backend_tls = implicit).
    tls: ssl.SSLContext | None = None
    #: Commands before login other than LOGIN/USER/PASS (ID, XCLIENT, CAPABILITY).
    preauth: list[bytes] = field(default_factory=list)
    #: Expect a PROXY header on every connection (a Dovecot haproxy = yes listener).
    proxy_protocol: bool = False
    proxy_headers: list[ProxyHeader] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        handler = self._imap if self.protocol == "imap" else self._pop3
        self._server = await asyncio.start_server(handler, self.host, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _proxy_header(self, reader: asyncio.StreamReader) -> None:
        header = ProxyHeaderReader()
        while header.header is None:
            byte = await reader.readexactly(1)  # one by one: never past the header
            header.feed(byte)
        self.proxy_headers.append(header.header)

    async def _misbehave(self, writer: asyncio.StreamWriter) -> bool:
        self._writers.append(writer)
        if self.behaviour == "silent":
            await asyncio.sleep(3600)
            return True
        if self.behaviour == "bye":
            greeting = b"* BYE too busy\r\n" if self.protocol == "imap" else b"-ERR too busy\r\n"
            writer.write(greeting)
            await writer.drain()
            writer.close()
            return True
        return False

    # --- IMAP --------------------------------------------------------------------

    async def _read_command(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> bytes | None:
        """One command with its literals spliced in (literal bytes marked by length)."""
        parts = b""
        while True:
            line = await reader.readline()
            if not line:
                return None
            line = line.rstrip(b"\r\n")
            match = _LITERAL.search(line)
            if match is None:
                return parts + line
            if not match.group(2):
                writer.write(b"+ go ahead\r\n")
            size = int(match.group(1))
            data = await reader.readexactly(size)
            parts += line[: match.start()] + b"\x00LIT" + data + b"\x00"

    @staticmethod
    def _args(text: bytes) -> list[bytes]:
        """Atoms, quoted strings and spliced literals, in order."""
        return [
            m["lit"] if m["lit"] is not None
            else re.sub(rb"\\(.)", rb"\1", m["q"]) if m["q"] is not None
            else m["atom"]
            for m in _ARG.finditer(text)
        ]

    async def _imap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._imap_session(reader, writer)
        finally:
            writer.close()

    async def _imap_session(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            if self.proxy_protocol:
                await self._proxy_header(reader)
            if await self._misbehave(writer):
                return
            writer.write(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE AUTH=PLAIN] fake ready\r\n")
            logged_in = False
            while True:
                command = await self._read_command(reader, writer)
                if command is None:
                    return
                tag, _, rest = command.partition(b" ")
                name, _, args = rest.partition(b" ")
                name = name.upper()
                if logged_in:
                    self.commands.append(command)
                elif name != b"LOGIN":
                    self.preauth.append(command)
                if name == b"LOGIN" and not logged_in:
                    if self.behaviour == "close_mid_login":
                        writer.close()
                        return
                    if self.behaviour == "stall":
                        await asyncio.sleep(3600)
                    user, password = (a.decode("utf-8", "surrogateescape")
                                      for a in self._args(args))
                    self.logins.append((user, password))
                    if self.users.get(user.split("@")[0]) == password:
                        logged_in = True
                        writer.write(tag + b" OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n")
                    else:
                        writer.write(tag + b" NO [AUTHENTICATIONFAILED] " +
                                     STORE_REFUSAL.encode() + b"\r\n")
                elif name == b"SELECT":
                    writer.write(b"* 1 EXISTS\r\n" + tag + b" OK [READ-WRITE] SELECT done\r\n")
                elif name == b"FETCH":
                    body = b"* 1 FETCH (BODY[] {%d}\r\n" % len(self.message) + self.message
                    writer.write(body + b")\r\n" + tag + b" OK FETCH done\r\n")
                elif name == b"IDLE":
                    writer.write(b"+ idling\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(b"* 2 EXISTS\r\n")
                    done = await reader.readline()
                    self.commands.append(done.rstrip())
                    writer.write(tag + b" OK IDLE terminated\r\n")
                elif name == b"LOGOUT":
                    writer.write(b"* BYE bye\r\n" + tag + b" OK LOGOUT done\r\n")
                    await writer.drain()
                    writer.close()
                    return
                elif name == b"FLOOD":
                    await self.flood(writer, int(args))
                    writer.write(tag + b" OK flooded\r\n")
                else:
                    writer.write(tag + b" OK " + name + b" done\r\n")
                await writer.drain()

    async def flood(self, writer: asyncio.StreamWriter, size: int) -> None:
        """Send ``size`` bytes as fast as the proxy takes them (counting in ``flooded``)."""
        chunk = b"x" * 65536 + b"\r\n"
        writer.write(b"* FLOOD {%d}\r\n" % size)
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
            self.flooded = sent

    # --- POP3 ----------------------------------------------------------------------

    async def _pop3(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._pop3_session(reader, writer)
        finally:
            writer.close()

    async def _pop3_session(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            if self.proxy_protocol:
                await self._proxy_header(reader)
            if await self._misbehave(writer):
                return
            writer.write(b"+OK fake POP3 ready\r\n")
            user: str | None = None
            logged_in = False
            while True:
                line = await reader.readline()
                if not line:
                    return
                line = line.rstrip(b"\r\n")
                word, _, arg = line.partition(b" ")
                word = word.upper()
                if logged_in:
                    self.commands.append(line)
                elif word not in (b"USER", b"PASS"):
                    self.preauth.append(line)
                if word == b"USER" and not logged_in:
                    user = arg.decode("utf-8", "surrogateescape")
                    writer.write(b"+OK\r\n")
                elif word == b"PASS" and not logged_in:
                    if self.behaviour == "close_mid_login":
                        writer.close()
                        return
                    password = arg.decode("utf-8", "surrogateescape")
                    self.logins.append((user or "", password))
                    if user is not None and self.users.get(user.split("@")[0]) == password:
                        logged_in = True
                        writer.write(b"+OK Logged in.\r\n")
                    else:
                        writer.write(b"-ERR [AUTH] " + STORE_REFUSAL.encode() + b"\r\n")
                elif word == b"STAT":
                    writer.write(b"+OK 1 %d\r\n" % len(self.message))
                elif word == b"RETR":
                    stuffed = re.sub(rb"(?m)^\.", b"..", self.message)
                    writer.write(b"+OK\r\n" + stuffed + b".\r\n")
                elif word == b"QUIT":
                    writer.write(b"+OK bye\r\n")
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(b"+OK\r\n")
                await writer.drain()
