"""Credentials as the two front machines take them off the wire, and store lines for logs.

What a failed login means to the client (wrong password or try later) is
``authsvc/failures.py``'s table, not this module's.
"""

from __future__ import annotations

from authsvc.redact import Secret


def credentials_ok(login: bytes, password: bytes) -> bool:
    """No NUL, CR or LF anywhere: such credentials are refused, never truncated.

    Empty parts are fine here: an empty password is a wrong password, and goes
    the failed-login way (same reply, same delay), as Perdition sends it to the
    store; an empty login is refused by the routing core as a bad login.
    """
    # Never part of a login or password on the wire to a store: NUL truncates
    # in C stores (Debian's Perdition logged "bob\0evil" in as bob), CR and LF
    # would end a POP3 or IMAP command early.  Three searches in C.
    both = login + password
    return b"\0" not in both and b"\r" not in both and b"\n" not in both


def secret_from_wire(password: bytes) -> Secret:
    """A password as a :class:`Secret`, keeping 8-bit bytes (surrogateescape)."""
    return Secret(password.decode("utf-8", "surrogateescape"))


def clip_for_log(line: bytes) -> str:
    """A store's line for a log field: the first 200 bytes, never raising.

    Only store replies pass through here (never a client's password): the
    store's refusal text is logged, never sent to the client.
    """
    return line[:200].decode("utf-8", "backslashreplace")
