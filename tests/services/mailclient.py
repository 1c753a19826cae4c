"""Mail clients for the e2e tests: stdlib imaplib/poplib and curl, bound to a source address.

Every client connects *from* :data:`CLIENT_ADDRESS` (127.0.0.77), not the
default 127.0.0.1: nginx, HAProxy and the stores also live on 127.0.0.x, and a
test that checks the client address reaching authsvc (``Client-IP``) must be
able to tell the client from the daemons in between.  If forwarding broke,
authsvc would log a front end's address instead, and the test would see it.

The stdlib classes call ``socket.create_connection`` themselves, so each one
here overrides ``_create_socket`` to add ``source_address``; that is their
documented extension point for where the socket comes from.
"""

from __future__ import annotations

import imaplib
import poplib
import socket
import ssl
import subprocess
from dataclasses import dataclass

CLIENT_ADDRESS = "127.0.0.77"
TIMEOUT = 10.0


def _connect(host: str, port: int, timeout: float | None, source: str) -> socket.socket:
    return socket.create_connection(
        (host, port), timeout if timeout is not None else TIMEOUT, source_address=(source, 0)
    )


class IMAP4(imaplib.IMAP4):
    """``imaplib.IMAP4`` from :data:`CLIENT_ADDRESS`."""

    source = CLIENT_ADDRESS

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return _connect(self.host, self.port, timeout, self.source)


class IMAP4_SSL(imaplib.IMAP4_SSL):
    """``imaplib.IMAP4_SSL`` (implicit TLS, port 993 style) from :data:`CLIENT_ADDRESS`."""

    source = CLIENT_ADDRESS

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = _connect(self.host, self.port, timeout, self.source)
        wrapped: ssl.SSLSocket = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        return wrapped


class POP3(poplib.POP3):
    """``poplib.POP3`` from :data:`CLIENT_ADDRESS`."""

    source = CLIENT_ADDRESS

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return _connect(self.host, self.port, timeout, self.source)


class POP3_SSL(poplib.POP3_SSL):
    """``poplib.POP3_SSL`` (implicit TLS, port 995 style) from :data:`CLIENT_ADDRESS`."""

    source = CLIENT_ADDRESS
    context: ssl.SSLContext  # set by poplib.POP3_SSL.__init__; typeshed omits it

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = _connect(self.host, self.port, timeout, self.source)
        return self.context.wrap_socket(sock, server_hostname=self.host)


def open_imap(
    host: str, port: int, *, tls: str, context: ssl.SSLContext | None = None
) -> imaplib.IMAP4:
    """An IMAP session before login; ``tls`` is ``none``, ``starttls`` or ``implicit``."""
    if tls == "implicit":
        return IMAP4_SSL(host, port, ssl_context=context, timeout=TIMEOUT)
    imap = IMAP4(host, port, timeout=TIMEOUT)
    if tls == "starttls":
        imap.starttls(context)
    return imap


def open_pop3(
    host: str, port: int, *, tls: str, context: ssl.SSLContext | None = None
) -> poplib.POP3:
    """A POP3 session before login; ``tls`` is ``none``, ``starttls`` or ``implicit``."""
    if tls == "implicit":
        return POP3_SSL(host, port, context=context, timeout=TIMEOUT)
    pop = POP3(host, port, timeout=TIMEOUT)
    if tls == "starttls":
        pop.stls(context)
    return pop


def imap_first_subject(imap: imaplib.IMAP4) -> str:
    """The Subject of INBOX message 1 (the store's marker), read without setting \\Seen."""
    typ, _ = imap.select("INBOX", readonly=True)
    if typ != "OK":
        raise AssertionError(f"SELECT INBOX: {typ}")
    typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    first = data[0]
    if typ != "OK" or not isinstance(first, tuple):
        raise AssertionError(f"FETCH 1: {typ} {data!r}")
    return first[1].decode().strip().removeprefix("Subject: ")


def pop3_first_subject(pop: poplib.POP3) -> str:
    """The Subject of message 1 by ``TOP 1 0``."""
    _, lines, _ = pop.top(1, 0)
    for line in lines:
        if line.startswith(b"Subject: "):
            return line.decode().removeprefix("Subject: ")
    raise AssertionError(f"no Subject in {lines!r}")


class RawLines:
    """A line-at-a-time client for asserting exact bytes (greetings, capabilities)."""

    def __init__(
        self, host: str, port: int, *, context: ssl.SSLContext | None = None,
        source: str = CLIENT_ADDRESS,
    ) -> None:
        sock = _connect(host, port, TIMEOUT, source)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=host)
        self.host = host
        self.sock = sock
        self._file = sock.makefile("rb")

    def line(self) -> bytes:
        """One line including CRLF; b'' at end of stream."""
        return self._file.readline()

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def command(self, line: bytes, tag: bytes | None = None) -> list[bytes]:
        """Send ``line`` + CRLF; read until the line starting with ``tag`` (IMAP) or one line."""
        self.send(line + b"\r\n")
        lines = []
        while True:
            got = self.line()
            lines.append(got)
            if not got or tag is None or got.startswith(tag + b" "):
                return lines

    def starttls(self, context: ssl.SSLContext) -> None:
        """Switch the connection to TLS (after the server said OK to STARTTLS/STLS)."""
        self._file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        self._file = self.sock.makefile("rb")

    def closed_by_peer(self) -> bool:
        """True when the server has closed (read returns end of stream)."""
        try:
            return self._file.read(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self) -> None:
        """Close our side."""
        self._file.close()
        self.sock.close()

    def __enter__(self) -> RawLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class CurlResult:
    """What curl printed and how it exited (0 = success; 67 = login denied)."""

    returncode: int
    stdout: bytes
    stderr: str


def curl(url: str, user: str, password: str, *, cafile: str | None = None,
         starttls: bool = False, extra: tuple[str, ...] = ()) -> CurlResult:
    """Run ``curl`` against ``imap://``, ``imaps://`` or ``pop3://`` from :data:`CLIENT_ADDRESS`.

    ``starttls`` adds ``--ssl-reqd`` (curl then upgrades with STARTTLS/STLS
    and refuses to go on in clear).
    """
    argv = ["curl", "--silent", "--show-error", "--max-time", "20",
            "--interface", CLIENT_ADDRESS, "--user", f"{user}:{password}"]
    if cafile is not None:
        argv += ["--cacert", cafile]
    if starttls:
        argv.append("--ssl-reqd")
    argv += [*extra, url]
    result = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    return CurlResult(result.returncode, result.stdout, result.stderr.decode(errors="replace"))
