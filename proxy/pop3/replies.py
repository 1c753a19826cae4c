"""POP3 bytes we write: replies to clients and the commands we send to stores.

Every POP3 wire literal lives here.  Response
codes in brackets are RFC 2449 §8 (``[IN-USE]``, ``[LOGIN-DELAY]``) and
RFC 3206 (``[AUTH]``, ``[SYS/TEMP]``, ``[SYS/PERM]``); we advertise
RESP-CODES and AUTH-RESP-CODE so clients know to read them.
"""

from __future__ import annotations

CRLF = b"\r\n"

GREETING = "+OK POP3 authsvc ready."
OK_USER = "+OK"
OK_QUIT = "+OK Logging out."
OK_CAPA = "+OK Capability list follows."
OK_STLS = "+OK Begin TLS negotiation now."
OK_LOGGED_IN = "+OK Logged in."
OK_MECHANISMS = "+OK Mechanisms follow."
ERR_UNKNOWN = "-ERR Unknown command."
ERR_ARGUMENTS = "-ERR Wrong number of arguments."
ERR_NO_USER = "-ERR No USER given."
ERR_LINE_TOO_LONG = "-ERR Command line too long."
ERR_TLS_ACTIVE = "-ERR TLS is already active."
ERR_TLS_UNAVAILABLE = "-ERR STLS is not available here."
ERR_MECHANISM = "-ERR Unsupported authentication mechanism."
ERR_CANCELLED = "-ERR Authentication cancelled."
ERR_SASL = "-ERR Invalid SASL response."
ERR_CREDENTIALS_SYNTAX = "-ERR Login or password contains NUL, CR or LF."
ERR_AUTH_FAILED = "-ERR [AUTH] Authentication failed."
ERR_AUTHZ_FAILED = "-ERR [AUTH] Authorization identity not allowed."
ERR_UNAVAILABLE = "-ERR [SYS/TEMP] Account is temporarily unavailable, try again later."
ERR_PRIVACY = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections."
ERR_TOO_MANY_FAILURES = "-ERR [AUTH] Authentication failed. Too many failures, closing."
ERR_TOO_MANY_ERRORS = "-ERR Too many invalid commands, closing."
ERR_TIMEOUT = "-ERR Disconnected for inactivity."
END = "."

#: CAPA lines we manage ourselves; the operator's list supplies the rest.
MANAGED_CAPABILITIES = frozenset({"STLS", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE"})
#: RFC 3206 / RFC 2449 codes that say "not now" rather than "wrong password".
TEMPORARY_CODES = frozenset({"SYS/TEMP", "IN-USE", "LOGIN-DELAY"})


def line(text: str) -> bytes:
    """One reply line with CRLF."""
    return text.encode("ascii") + CRLF


def multiline(first: str, items: list[str]) -> bytes:
    """A multi-line reply (RFC 1939 §3), dot-stuffed though our items never start with '.'."""
    body = b"".join(line("." + item if item.startswith(".") else item) for item in items)
    return line(first) + body + line(END)


def continuation() -> bytes:
    """RFC 5034 §4: the empty PLAIN challenge."""
    return b"+ " + CRLF


def response_code(text: bytes) -> str:
    """The code of ``-ERR [CODE] text``, upper-cased, or ''."""
    if not text.startswith(b"[") or b"]" not in text:
        return ""
    return text[1 : text.index(b"]")].decode("ascii", "replace").upper()
