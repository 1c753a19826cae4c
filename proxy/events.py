"""Events fed to the sans-IO machines and the commands they answer with.

Events are past-tense facts (``DataReceived``); commands are imperatives
(``Send``).  The machines in ``proxy/imap`` and ``proxy/pop3`` take one event
and return a list of commands; ``proxy/session.py`` carries out the front
machines' commands, ``proxy/store.py`` the back machines'.
Nothing here imports asyncio or touches a socket (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from authsvc.redact import Secret
from authsvc.routing import FailureKind

# --- the credentials a client offered -----------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """A login as the client typed it, and its password (never printed)."""

    #: The login name, decoded as UTF-8 with surrogateescape so 8-bit names
    #: survive the round trip to the store byte for byte.
    login: str
    password: Secret
    #: ``LOGIN``, ``AUTHENTICATE PLAIN``, ``USER/PASS`` or ``AUTH PLAIN``: for logs.
    mechanism: str


def to_wire(text: str) -> bytes:
    """The bytes a login or password arrived as (see :attr:`Credentials.login`)."""
    return text.encode("utf-8", "surrogateescape")


def from_wire(data: bytes) -> str:
    """The inverse of :func:`to_wire`."""
    return data.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Who the client is and what it connected to: after a PROXY header, the real ones."""

    client: tuple[str, int]
    local: tuple[str, int]


# --- events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes from the peer (after TLS, when TLS is on)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer sent EOF or the connection broke."""


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The peer said nothing for the pre-auth timeout."""


@dataclass(frozen=True, slots=True)
class TlsEstablished:
    """The handshake that a :class:`StartTls` command asked for completed."""


@dataclass(frozen=True, slots=True)
class LoginSucceeded:
    """The store accepted the login (fed to a front machine)."""

    #: IMAP: the store's capability list, for the client's OK; None if unknown.
    capabilities: str | None = None
    #: Untagged lines the store sent during login, relayed before our OK.
    untagged: tuple[bytes, ...] = ()
    #: Bytes the store sent after its OK, for the client after ours.
    leftover: bytes = b""


@dataclass(frozen=True, slots=True)
class LoginFailed:
    """No session: the throttle or routing refused, the store was down or refused the login."""

    kind: FailureKind


Event = (
    DataReceived | ConnectionClosed | TimedOut | TlsEstablished | LoginSucceeded | LoginFailed
)

# --- commands ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Write bytes to the peer.

    ``secret`` marks bytes that carry a password (the backend LOGIN): the
    session never logs their content, whatever the log level.
    """

    data: bytes
    secret: bool = False


@dataclass(frozen=True, slots=True)
class StartTls:
    """Upgrade the connection to TLS now; feed back :class:`TlsEstablished`."""


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Route this login and log in at the store; feed back the result."""

    credentials: Credentials


@dataclass(frozen=True, slots=True)
class Splice:
    """The login succeeded: relay bytes both ways from now on."""

    #: Client bytes that arrived behind the login command, for the store.
    to_backend: bytes = b""
    #: Store bytes that arrived behind its OK, for the client.
    to_client: bytes = b""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection once everything sent so far is written."""

    reason: str


@dataclass(frozen=True, slots=True)
class Trace:
    """A redacted line for connection logging (never a password)."""

    text: str


@dataclass(frozen=True, slots=True)
class BackendReady:
    """A back machine finished: the store accepted the login."""

    result: LoginSucceeded


@dataclass(frozen=True, slots=True)
class BackendFailed:
    """A back machine gave up; ``reason`` is for logs only (it may hold store text)."""

    kind: FailureKind
    reason: str


Command = (
    Send | StartTls | Authenticate | Splice | Close | Trace | BackendReady | BackendFailed
)
