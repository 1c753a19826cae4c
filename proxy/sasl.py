"""SASL PLAIN (RFC 4616) for the IMAP and POP3 fronts: decode one client response.

Pure functions, no I/O.  Only PLAIN is offered: authsvc never checks a
password itself, it hands the pair to the store, so it needs the password in
clear.  An authorisation identity different from the login would ask the
store for a proxy login (a master user); we refuse it rather than pass it on.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

#: RFC 9051 §6.2.2 / RFC 5034 §4: a client response of "*" cancels the exchange.
CANCEL = b"*"
#: RFC 4959 §3 / RFC 5034 §4: "=" is an empty initial response.
EMPTY_RESPONSE = b"="


class SaslError(ValueError):
    """The response is not valid PLAIN; the text is for logs."""


@dataclass(frozen=True, slots=True)
class PlainResponse:
    """The three PLAIN fields, as bytes (they may be any UTF-8, or worse)."""

    authzid: bytes
    authcid: bytes
    password: bytes


def decode_base64(line: bytes) -> bytes:
    """Strict base64 (RFC 4648 §4), with ``=`` alone meaning empty."""
    if line == EMPTY_RESPONSE:
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SaslError("invalid base64") from exc


def parse_plain(message: bytes) -> PlainResponse:
    """Split ``[authzid] NUL authcid NUL passwd`` (RFC 4616 §2)."""
    parts = message.split(b"\0")
    # A NUL inside a field would add a fourth part: refused, never truncated
    # (Debian's Perdition logged "bob\0evil" in as bob).
    if len(parts) != 3:
        raise SaslError("PLAIN needs exactly three NUL-separated fields")
    authzid, authcid, password = parts
    if not authcid or not password:
        raise SaslError("empty login or password")
    return PlainResponse(authzid, authcid, password)


def encode_plain(authcid: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    """The base64 PLAIN response for a login (used by tests and back machines)."""
    return base64.b64encode(authzid + b"\0" + authcid + b"\0" + password)
