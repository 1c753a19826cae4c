"""IMAP bytes we write: reply lines to clients and the LOGIN we send to stores.

Every wire literal of the IMAP side lives here, not in the machines
(one place for the wire text).  ``login_command`` picks atom, quoted string or
literal per argument as Dovecot's ``imap_append_string`` does, so an 8-bit or
oddly punctuated password reaches the store byte for byte.
"""

from __future__ import annotations

from authsvc.proxy.imap.grammar import ASTRING_CHARS

CRLF = b"\r\n"

# Replies a client can see before login.  Codes: RFC 5530 §3.
GREETING_TEXT = "authsvc ready."
BYE_LOGOUT = "Logging out."
OK_LOGOUT = "LOGOUT completed."
OK_CAPABILITY = "CAPABILITY completed."
OK_NOOP = "NOOP completed."
OK_ID = "ID completed."
OK_STARTTLS = "Begin TLS negotiation now."
OK_LOGGED_IN = "Logged in."
BAD_STARTTLS_ACTIVE = "TLS is already active."
BAD_STARTTLS_UNAVAILABLE = "STARTTLS is not available here."
BAD_UNKNOWN = "Unknown command."
BAD_ARGUMENTS = "Wrong number of arguments."
BAD_LINE_TOO_LONG = "Command line too long."
BAD_LITERAL_TOO_LONG = "Literal too large."
BAD_LITERAL_PLUS = "Non-synchronising literals need LITERAL+."
BAD_CREDENTIALS_SYNTAX = "Login or password contains NUL, CR or LF."
BAD_CANCELLED = "AUTHENTICATE cancelled."
BAD_SASL = "Invalid SASL response."
NO_MECHANISM = "Unsupported authentication mechanism."
NO_AUTH_FAILED = "[AUTHENTICATIONFAILED] Authentication failed."
NO_AUTHZ_FAILED = "[AUTHORIZATIONFAILED] Authorization identity not allowed."
NO_UNAVAILABLE = "[UNAVAILABLE] Account is temporarily unavailable, try again later."
NO_PRIVACY = "[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections."
BYE_TOO_MANY_FAILURES = "Too many authentication failures."
BYE_TOO_MANY_ERRORS = "Too many invalid commands."
BYE_TIMEOUT = "Autologout; idle for too long."
BYE_LITERAL_TOO_LONG = "Literal too large."
CONTINUE_LITERAL = "Ready for literal data."


def line(text: str) -> bytes:
    """One reply line with CRLF; our own texts are ASCII."""
    return text.encode("ascii") + CRLF


def tagged(tag: str, status: str, text: str) -> bytes:
    """``tag SP resp-cond-state`` (RFC 9051 §7.1)."""
    return line(f"{tag} {status} {text}")


def untagged(text: str) -> bytes:
    """``"*" SP ...``."""
    return line(f"* {text}")


def continuation(text: str = "") -> bytes:
    """``"+" SP text`` (RFC 9051 §7.5); SASL challenges are empty for PLAIN."""
    return line(f"+ {text}")


def greeting(capabilities: str) -> bytes:
    """``* OK [CAPABILITY ...] text`` (RFC 9051 §7.1.1; the code, RFC 9051 §7.1)."""
    return untagged(f"OK [CAPABILITY {capabilities}] {GREETING_TEXT}")


def capability_response(capabilities: str) -> bytes:
    """``* CAPABILITY ...`` (RFC 9051 §7.2.2)."""
    return untagged(f"CAPABILITY {capabilities}")


def logged_in(tag: str, capabilities: str | None) -> bytes:
    """The client's OK after the store accepted the login, with its capabilities."""
    if capabilities:
        return tagged(tag, "OK", f"[CAPABILITY {capabilities}] {OK_LOGGED_IN}")
    return tagged(tag, "OK", OK_LOGGED_IN)


#: The byte sets as ``bytes``, for ``bytes.translate(None, ...)``: deleting the
#: allowed bytes leaves nothing exactly when every byte is allowed (one C pass,
#: not a Python test per byte of every login name).
_ASTRING_BYTES = bytes(sorted(ASTRING_CHARS))
_QUOTABLE_BYTES = bytes(range(0x20, 0x7F))


def _is_atom(value: bytes) -> bool:
    return bool(value) and not value.translate(None, _ASTRING_BYTES)


def _is_quotable(value: bytes) -> bool:
    # TEXT-CHAR without CR/LF, 7-bit only: 8-bit goes as a literal, which every
    # IMAP4rev1 server takes (RFC 3501 has no 8-bit quoted strings).
    return not value.translate(None, _QUOTABLE_BYTES)


def astring(value: bytes, literal_plus: bool) -> list[bytes]:
    """One astring as segments: a sync literal splits it where the store must say ``+``.

    Returns ``[text]`` for an atom, quoted string or ``{n+}`` literal, and
    ``[b"{n}\\r\\n", value]`` for a synchronising literal.
    """
    if _is_atom(value):
        return [value]
    if _is_quotable(value):
        escaped = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return [b'"' + escaped + b'"']
    if literal_plus:
        return [b"{%d+}\r\n" % len(value) + value]
    return [b"{%d}\r\n" % len(value), value]


def login_command(tag: str, login: bytes, password: bytes, literal_plus: bool) -> list[bytes]:
    """``tag LOGIN user pass CRLF`` as segments; after each but the last, wait for ``+``."""
    segments = [tag.encode("ascii") + b" LOGIN "]
    for index, value in enumerate((login, password)):
        pieces = astring(value, literal_plus)
        segments[-1] += pieces[0]
        segments.extend(pieces[1:])
        segments[-1] += b" " if index == 0 else CRLF
    return segments
