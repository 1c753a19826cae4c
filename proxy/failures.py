"""Which refusals a client may hear as "wrong password" and which as "try later".

One place decides, for both fronts (docs/architecture.md).  An unknown
user, a name the rules reject and a password the store refuses all read the
same, so a client cannot probe which users exist; a map or store that is down
reads as a temporary failure, so clients keep the password and retry.
"""

from __future__ import annotations

from typing import assert_never

from authsvc.redact import Secret
from authsvc.routing import FailureKind

#: Bytes that can never be part of a login or password on the wire to a store:
#: NUL truncates in C stores (Debian's Perdition logged "bob\0evil" in as bob),
#: CR and LF would end a POP3 or IMAP command early.
FORBIDDEN_CREDENTIAL_BYTES = frozenset(b"\0\r\n")


def is_auth_failure(kind: FailureKind) -> bool:
    """True when the client hears "authentication failed", False for "try later"."""
    match kind:
        case FailureKind.NO_ROUTE | FailureKind.BAD_LOGIN | FailureKind.BACKEND_AUTH:
            return True
        case (
            FailureKind.MAP_UNAVAILABLE
            | FailureKind.UNKNOWN_LISTENER
            | FailureKind.BACKEND_CONNECT
            | FailureKind.BACKEND_PROTOCOL
        ):
            return False
        case _:
            assert_never(kind)


def credentials_ok(login: bytes, password: bytes) -> bool:
    """No NUL, CR or LF anywhere: such credentials are refused, never truncated.

    Empty parts are fine here: an empty password is a wrong password, and goes
    the failed-login way (same reply, same delay), as Perdition sends it to the
    store; an empty login is refused by the routing core as a bad login.
    """
    return not any(byte in FORBIDDEN_CREDENTIAL_BYTES for byte in login + password)


def secret_from_wire(password: bytes) -> Secret:
    """A password as a :class:`Secret`, keeping 8-bit bytes (surrogateescape)."""
    return Secret(password.decode("utf-8", "surrogateescape"))


def clip_for_log(line: bytes) -> str:
    """A store's line for a log field: the first 200 bytes, never raising.

    Only store replies pass through here (never a client's password): the
    store's refusal text is logged, never sent to the client.
    """
    return line[:200].decode("utf-8", "backslashreplace")
