"""Malformed auth_http requests that carry a password, and the check that none of it leaks.

Each case puts its own password (:func:`password`) into a head that
aiohttp's parser would refuse, the ways an adversarial probe found serve's
error path quoting a password (docs/security.md, "Secrets in logs"): a folded
line after ``Auth-Pass:``, a control byte after a space, a password cut across
two writes on a keep-alive connection, mangled header names, and a bare-LF
head.  :func:`send` plays a case on a fresh connection with blocking sockets
(call it from a thread when the server runs in the test's own loop) and
returns every byte the server sent back; :func:`leaks` says which 4-byte
pieces of a password a text holds.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Upper-case consonants without H, T and P: no 4-byte piece of a password is
# likely to spell a word a log line or a reply holds ("HTTP", "GET", ...).
_ALPHABET = "BCDFGJKLMNQRSVWXZ"
#: The pieces of a password that must not be found anywhere.
PIECE = 4


def password() -> bytes:
    """A fresh 24-character password."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(24)).encode()


def pieces(secret: bytes) -> set[bytes]:
    """Every PIECE-byte substring of ``secret``."""
    return {secret[i:i + PIECE] for i in range(len(secret) - PIECE + 1)}


def leaks(text: bytes, secret: bytes) -> list[bytes]:
    """The pieces of ``secret`` found in ``text`` (empty: nothing leaked)."""
    return sorted(piece for piece in pieces(secret) if piece in text)


_HEAD = (b"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
         b"Auth-User: bob\r\n%s\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\n"
         b"Client-IP: 192.0.2.7\r\nX-Authsvc-Listener: imap4\r\n\r\n")
_KEEP_ALIVE = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass(frozen=True)
class Case:
    """A name, and the writes (each a function of the password) sent one after another."""

    name: str
    writes: Callable[[bytes], Sequence[bytes]]
    #: The client half-closes after its writes (a head that never ends).
    half_close: bool = False


def _nginx(line: Callable[[bytes], bytes]) -> Callable[[bytes], Sequence[bytes]]:
    return lambda pw: [_HEAD % line(pw)]


CASES = [
    Case("folded line", _nginx(lambda pw: b"Auth-Pass: " + pw[:12] + b"\r\n " + pw[12:])),
    Case("control byte after a space",
         _nginx(lambda pw: b"Auth-Pass: " + pw[:8] + b" " + pw[8:16] + b"\x01" + pw[16:])),
    Case("name without a colon", _nginx(lambda pw: b"Auth-Pa " + pw)),
    Case("tab in the name", _nginx(lambda pw: b"Au\tth-Pass: " + pw)),
    Case("split over two writes",
         lambda pw: [b"GET /auth HTTP/1.1\r\nHost: x\r\nAuth-Pass: " + pw[:12],
                     pw[12:] + b"\x01\r\n\r\n"]),
    Case("split over two writes after a keep-alive request",
         lambda pw: [_KEEP_ALIVE + b"GET /auth HTTP/1.1\r\nHost: x\r\nAuth-Pass: " + pw[:12],
                     pw[12:] + b"\x01\r\n\r\n"]),
    Case("pipelined after a keep-alive request",
         lambda pw: [_KEEP_ALIVE + b"GET /auth HTTP/1.1\r\nHost: x\r\nAuth-Pa " + pw
                     + b"\r\n\r\n"]),
    Case("bare LF head", lambda pw: [(_HEAD % (b"Auth-Pass: " + pw)).replace(b"\r\n", b"\n")],
         half_close=True),
    Case("bare LF head, then CRLF CRLF",
         lambda pw: [(_HEAD % (b"Auth-Pass: " + pw)).replace(b"\r\n", b"\n") + b"\r\n\r\n"]),
]


def send(port: int, case: Case, secret: bytes, host: str = "127.0.0.1") -> bytes:
    """Play ``case`` with ``secret``; every byte the server sent until it closed."""
    received = b""
    with socket.create_connection((host, port), timeout=10) as sock:
        for i, data in enumerate(case.writes(secret)):
            if i:
                time.sleep(0.05)  # a separate segment, as the probe sent it
            try:
                sock.sendall(data)
            except OSError:
                break  # the server answered and closed already
        if case.half_close:
            sock.shutdown(socket.SHUT_WR)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received
