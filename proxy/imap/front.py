"""ImapFront: the client-facing IMAP machine, from greeting to the start of splicing.

Sans-IO (no asyncio, no sockets): ``start()`` and ``handle(event)`` return
commands for ``proxy/session.py``.  Before login it answers CAPABILITY, NOOP,
LOGOUT, STARTTLS, ID, LOGIN and AUTHENTICATE PLAIN (RFC 9051 §6.1-§6.2, SASL-IR
RFC 4959, ID RFC 2971); anything else is ``BAD``.  Commands are dispatched from
a fixed table, never by looking up a client-supplied name.

Where we differ from Perdition (docs/perdition-compatibility.md): AUTHENTICATE PLAIN works;
STARTTLS is never offered on an implicit-TLS port; commands pipelined behind
LOGIN are kept and forwarded to the store, not dropped; the client's OK carries
the store's ``[CAPABILITY]``; errors get no sleep, failed logins a fixed delay
(applied by the session); and the connection closes after too many failures.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import ClassVar

from authsvc.proxy import sasl
from authsvc.proxy.events import (
    Authenticate,
    Close,
    Command,
    ConnectionClosed,
    Credentials,
    DataReceived,
    Event,
    LoginFailed,
    LoginSucceeded,
    Send,
    Splice,
    StartTls,
    TimedOut,
    TlsEstablished,
    Trace,
    from_wire,
)
from authsvc.proxy.failures import credentials_ok, secret_from_wire
from authsvc.proxy.imap import serialise as wire
from authsvc.proxy.imap.fragmentizer import Fragment, Fragmentizer, LineFragment, LiteralFragment
from authsvc.proxy.imap.grammar import (
    Atom,
    CommandError,
    ParenList,
    astring,
    parse_command,
    parse_tag,
)
from authsvc.proxy.imap.grammar import Command as ImapCommand
from authsvc.proxy.linebuffer import TooLong

from authsvc.failures import FailureKind, Reply
from authsvc.settings import ListenerSettings, ListenTls, ProxySettings

#: Words we add or remove ourselves; the operator's list supplies the rest.
_MANAGED = frozenset({"STARTTLS", "LOGINDISABLED", "SASL-IR"})
#: A TLS record starts 0x16 0x03 (RFC 8446 §5.1); no IMAP tag starts with 0x16.
_TLS_HANDSHAKE = 0x16


class State(enum.Enum):
    """Where the client-facing conversation is."""

    NOT_AUTHENTICATED = "not_authenticated"
    AUTHENTICATE = "authenticate"  # waiting for the SASL PLAIN response line
    STARTING_TLS = "starting_tls"
    LOGGING_IN = "logging_in"  # the session is routing and logging in at the store
    SPLICING = "splicing"
    CLOSED = "closed"


_Handler = Callable[["ImapFront", ImapCommand], list[Command]]


class ImapFront:
    """One client connection's pre-auth IMAP conversation."""

    #: The command table: the only commands a client may give before login.
    HANDLERS: ClassVar[dict[str, _Handler]] = {}

    def __init__(
        self, listener: ListenerSettings, proxy: ProxySettings, *, tls_active: bool = False,
        trace: bool = True, words: tuple[str, ...] | None = None,
    ) -> None:
        """``trace``: emit a :class:`Trace` per command (the session's connection
        logging); off, no trace text is made at all.  ``words``: the listener's
        :meth:`operator_words`, when worked out already."""
        self._listener = listener
        self._words = words
        self._proxy = proxy
        self._tls_active = tls_active
        self._tracing = trace
        self._frag = Fragmentizer(proxy.max_line_length)
        self.state = State.NOT_AUTHENTICATED
        self._parts: list[bytes | LiteralFragment] = []
        self._size = 0
        self._discarding = False
        self._fresh = True  # nothing received yet on this (plain) connection
        self._tag = ""  # tag of the LOGIN/AUTHENTICATE in progress
        #: capabilities() while TLS stays as it is (None: to be worked out).
        self._capabilities: str | None = None
        self.bad_commands = 0
        self.failures = 0

    # --- capability ------------------------------------------------------------

    @property
    def tls_possible(self) -> bool:
        """STARTTLS is offered: the listener allows it and TLS is not on yet."""
        return self._listener.tls is ListenTls.STARTTLS and not self._tls_active

    @property
    def login_disabled(self) -> bool:
        """tls_required and still in plaintext (RFC 9051 §6.2.3 LOGINDISABLED)."""
        return self._listener.tls_required and not self._tls_active

    @property
    def literal_plus(self) -> bool:
        return "LITERAL+" in self.capabilities().upper().split()

    def capabilities(self) -> str:
        """The operator's list, with STARTTLS, LOGINDISABLED and SASL set by state."""
        if self._capabilities is None:
            self._capabilities = self._work_out_capabilities()
        return self._capabilities

    @staticmethod
    def operator_words(listener: ListenerSettings) -> tuple[str, ...]:
        """The listener's own capability words, less the ones set by state
        (the same for every session: ``ListenerContext`` keeps them)."""
        words = [w for item in listener.capability for w in item.split()] or ["IMAP4rev1"]
        return tuple(w for w in words
                     if w.upper() not in _MANAGED and not w.upper().startswith("AUTH="))

    def _work_out_capabilities(self) -> str:
        kept = list(self._words if self._words is not None
                    else self.operator_words(self._listener))
        if self.tls_possible:
            kept.append("STARTTLS")
        if self.login_disabled:
            # RFC 9051 §6.2.3 / RFC 2595 §3.2: no plaintext mechanism before TLS.
            kept.append("LOGINDISABLED")
        else:
            kept += ["AUTH=PLAIN", "SASL-IR"]
        return " ".join(kept)

    # --- events ----------------------------------------------------------------

    def start(self) -> list[Command]:
        """The greeting (RFC 9051 §7.1.1), with capabilities so clients skip a round trip."""
        return [Send(wire.greeting(self.capabilities()))]

    def handle(self, event: Event) -> list[Command]:
        """Feed one event; returns what to do."""
        match event:
            case DataReceived(data=data):
                return self._on_data(data)
            case TlsEstablished():
                self._tls_active = True
                self._capabilities = None  # STARTTLS and LOGINDISABLED go
                self.state = State.NOT_AUTHENTICATED
                self._frag.clear()
                return []
            case LoginSucceeded():
                return self._on_success(event)
            case LoginFailed(kind=kind):
                return self._on_failure(kind)
            case TimedOut():
                return self._close(wire.untagged(f"BYE {wire.BYE_TIMEOUT}"), "login timeout")
            case ConnectionClosed():
                self.state = State.CLOSED
                return [Close("client closed")]

    def _on_data(self, data: bytes) -> list[Command]:
        if self.state in (State.STARTING_TLS, State.SPLICING, State.CLOSED) or not data:
            # RFC 2595 §3.1: bytes behind STARTTLS, before the handshake, are dropped.
            return []
        if self._fresh and not self._tls_active and data[0] == _TLS_HANDSHAKE:
            self.state = State.CLOSED
            return [Close("TLS handshake on a plaintext port")]
        self._fresh = False
        self._frag.feed(data)
        if self.state is State.LOGGING_IN:
            return []  # kept: forwarded to the store once logged in
        return self._drain()

    def _drain(self) -> list[Command]:
        out: list[Command] = []
        while self.state in (State.NOT_AUTHENTICATED, State.AUTHENTICATE):
            fragment = self._frag.next()
            if fragment is None:
                break
            out += self._on_fragment(fragment)
        return out

    # --- framing -----------------------------------------------------------------

    def _reset_message(self) -> None:
        self._parts = []
        self._size = 0

    def _on_fragment(self, fragment: Fragment) -> list[Command]:
        if isinstance(fragment, TooLong):
            self._reset_message()
            self._discarding = False
            if self.state is State.AUTHENTICATE:
                self.state = State.NOT_AUTHENTICATED
                return self._bad(self._tag, wire.BAD_SASL)
            return self._bad(None, wire.BAD_LINE_TOO_LONG)
        if self.state is State.AUTHENTICATE:
            if isinstance(fragment, LineFragment) and fragment.literal is None:
                return self._on_sasl_response(fragment.text)
            self.state = State.NOT_AUTHENTICATED
            return self._bad(self._tag, wire.BAD_SASL)
        if isinstance(fragment, LiteralFragment):
            if not self._discarding:
                self._parts.append(fragment)
            return []
        if self._discarding:
            return self._discard_line(fragment)
        self._parts.append(fragment.text)
        self._size += len(fragment.text)
        if fragment.literal is not None:
            return self._on_announcement(fragment.literal.length, fragment.literal.synchronising)
        parts = self._parts
        self._reset_message()
        return self._on_command(parts)

    def _on_announcement(self, length: int, synchronising: bool) -> list[Command]:
        first = self._parts[0]
        tag = parse_tag(first) if isinstance(first, bytes) else None
        limit = self._proxy.max_line_length + 2 * self._proxy.max_literal_length
        too_big = length > self._proxy.max_literal_length or self._size + length > limit
        if synchronising:
            if too_big:
                # The client waits for "+" and will not send it: the command ends here.
                self._reset_message()
                return self._bad(tag, wire.BAD_LITERAL_TOO_LONG)
            self._size += length
            self._frag.expect_literal(length)
            return [Send(wire.continuation(wire.CONTINUE_LITERAL))]
        if too_big:
            # RFC 7888 §4: the bytes are coming anyway and we will not read
            # gigabytes to skip them, so the connection ends.
            return self._close(wire.untagged(f"BYE {wire.BYE_LITERAL_TOO_LONG}"), "literal")
        self._frag.expect_literal(length)
        if self.literal_plus:
            self._size += length
            return []
        # {n+} without LITERAL+ advertised: skip the literal and the rest of the command.
        self._reset_message()
        self._discarding = True
        return self._bad(tag, wire.BAD_LITERAL_PLUS)

    def _discard_line(self, fragment: LineFragment) -> list[Command]:
        announced = fragment.literal
        if announced is not None and not announced.synchronising:
            if announced.length > self._proxy.max_literal_length:
                return self._close(wire.untagged(f"BYE {wire.BYE_LITERAL_TOO_LONG}"), "literal")
            self._frag.expect_literal(announced.length)
            return []
        self._discarding = False
        return []

    # --- commands ----------------------------------------------------------------

    def _on_command(self, parts: list[bytes | LiteralFragment]) -> list[Command]:
        try:
            command = parse_command(parts)
        except CommandError as exc:
            return self._bad(exc.tag, exc.text)
        handler = self.HANDLERS.get(command.name)
        if handler is None:
            if not self._tracing:
                return self._bad(command.tag, wire.BAD_UNKNOWN)
            trace = Trace(f"C: {command.tag} {command.name}")
            return [trace, *self._bad(command.tag, wire.BAD_UNKNOWN)]
        if not self._tracing:
            return handler(self, command)
        return [Trace(_redacted(command)), *handler(self, command)]

    def _bad(self, tag: str | None, text: str) -> list[Command]:
        self.bad_commands += 1
        reply = wire.tagged(tag, "BAD", text) if tag else wire.untagged(f"BAD {text}")
        if self.bad_commands >= self._proxy.max_bad_commands:
            return [Send(reply), *self._close(wire.untagged(f"BYE {wire.BYE_TOO_MANY_ERRORS}"),
                                              "too many bad commands")]
        return [Send(reply)]

    def _close(self, reply: bytes, reason: str) -> list[Command]:
        self.state = State.CLOSED
        return [Send(reply), Close(reason)]

    def _capability(self, command: ImapCommand) -> list[Command]:
        if command.args:
            return self._bad(command.tag, wire.BAD_ARGUMENTS)
        reply = wire.capability_response(self.capabilities())
        return [Send(reply + wire.tagged(command.tag, "OK", wire.OK_CAPABILITY))]

    def _noop(self, command: ImapCommand) -> list[Command]:
        if command.args:
            return self._bad(command.tag, wire.BAD_ARGUMENTS)
        return [Send(wire.tagged(command.tag, "OK", wire.OK_NOOP))]

    def _logout(self, command: ImapCommand) -> list[Command]:
        if command.args:
            return self._bad(command.tag, wire.BAD_ARGUMENTS)
        self.state = State.CLOSED
        bye = wire.untagged(f"BYE {wire.BYE_LOGOUT}")
        return [Send(bye + wire.tagged(command.tag, "OK", wire.OK_LOGOUT)), Close("logout")]

    def _starttls(self, command: ImapCommand) -> list[Command]:
        if command.args:
            return self._bad(command.tag, wire.BAD_ARGUMENTS)
        if self._tls_active:
            return self._bad(command.tag, wire.BAD_STARTTLS_ACTIVE)
        if not self.tls_possible:
            return self._bad(command.tag, wire.BAD_STARTTLS_UNAVAILABLE)
        self.state = State.STARTING_TLS
        # RFC 2595 §3.1 / RFC 3207 §4.2: anything pipelined behind STARTTLS is
        # plaintext an attacker may have injected; it is dropped, never run.
        self._frag.clear()
        return [Send(wire.tagged(command.tag, "OK", wire.OK_STARTTLS)), StartTls()]

    def _id(self, command: ImapCommand) -> list[Command]:
        # id = "ID" SP id-params-list; id-params-list = "(" ... ")" / nil (RFC 2971 §4)
        if len(command.args) != 1 or not (
            isinstance(command.args[0], ParenList)
            or (isinstance(command.args[0], Atom) and command.args[0].value.upper() == b"NIL")
        ):
            return self._bad(command.tag, wire.BAD_ARGUMENTS)
        return [Send(wire.untagged("ID NIL") + wire.tagged(command.tag, "OK", wire.OK_ID))]

    def _login(self, command: ImapCommand) -> list[Command]:
        values = [astring(arg) for arg in command.args]
        if len(values) != 2 or values[0] is None or values[1] is None:
            return self._bad(command.tag, wire.BAD_ARGUMENTS)
        if self.login_disabled:
            return [Send(wire.tagged(command.tag, "NO", wire.NO_PRIVACY))]
        return self._authenticate_with(command.tag, values[0], values[1], "LOGIN")

    def _authenticate(self, command: ImapCommand) -> list[Command]:
        values = [astring(arg) for arg in command.args]
        if not 1 <= len(values) <= 2 or any(v is None for v in values):
            return self._bad(command.tag, wire.BAD_ARGUMENTS)
        mechanism = values[0] or b""
        if mechanism.upper() != b"PLAIN":
            return [Send(wire.tagged(command.tag, "NO", wire.NO_MECHANISM))]
        if self.login_disabled:
            return [Send(wire.tagged(command.tag, "NO", wire.NO_PRIVACY))]
        self._tag = command.tag
        if len(values) == 2:  # SASL-IR, RFC 4959 §3
            return self._on_sasl_response(values[1] or b"")
        self.state = State.AUTHENTICATE
        return [Send(wire.continuation())]

    def _on_sasl_response(self, response: bytes) -> list[Command]:
        self.state = State.NOT_AUTHENTICATED
        if response == sasl.CANCEL:
            # RFC 9051 §6.2.2: a cancelled exchange is answered BAD.
            return self._bad(self._tag, wire.BAD_CANCELLED)
        try:
            plain = sasl.parse_plain(sasl.decode_base64(response))
        except sasl.SaslError:
            return self._bad(self._tag, wire.BAD_SASL)
        if plain.authzid and plain.authzid != plain.authcid:
            return [Send(wire.tagged(self._tag, "NO", wire.NO_AUTHZ_FAILED))]
        return self._authenticate_with(self._tag, plain.authcid, plain.password,
                                       "AUTHENTICATE PLAIN")

    def _authenticate_with(
        self, tag: str, login: bytes, password: bytes, mechanism: str
    ) -> list[Command]:
        if not credentials_ok(login, password):
            return self._bad(tag, wire.BAD_CREDENTIALS_SYNTAX)
        self._tag = tag
        self.state = State.LOGGING_IN
        creds = Credentials(from_wire(login), secret_from_wire(password), mechanism)
        return [Authenticate(creds)]

    # --- results -----------------------------------------------------------------

    def _on_success(self, result: LoginSucceeded) -> list[Command]:
        if self.state is not State.LOGGING_IN:
            return []
        self.state = State.SPLICING
        relay = b"".join(line + wire.CRLF for line in result.untagged)
        reply = relay + wire.logged_in(self._tag, result.capabilities)
        return [Send(reply), Splice(self._frag.take_remaining(), result.leftover)]

    def _on_failure(self, kind: FailureKind) -> list[Command]:
        if self.state is not State.LOGGING_IN:
            return []
        self.failures += 1
        # The kind's client-facing class (authsvc/failures.py): RFC 5530 §3's codes.
        text = (wire.NO_AUTH_FAILED if kind.meaning.reply is Reply.AUTHENTICATION
                else wire.NO_UNAVAILABLE)
        reply = wire.tagged(self._tag, "NO", text)
        if self.failures >= self._proxy.max_login_attempts:
            bye = wire.untagged(f"BYE {wire.BYE_TOO_MANY_FAILURES}")
            return self._close(reply + bye, "too many login failures")
        self.state = State.NOT_AUTHENTICATED
        return [Send(reply), *self._drain()]


def _redacted(command: ImapCommand) -> str:
    """A command for connection logging: login names yes, passwords and SASL never."""
    if command.name == "LOGIN" and command.args:
        login = astring(command.args[0]) or b""
        return f"C: {command.tag} LOGIN {from_wire(login)!r} ***"
    if command.name == "AUTHENTICATE" and command.args:
        mechanism = from_wire(astring(command.args[0]) or b"")
        secret = " ***" if len(command.args) > 1 else ""
        return f"C: {command.tag} AUTHENTICATE {mechanism!r}{secret}"
    return f"C: {command.tag} {command.name}"


ImapFront.HANDLERS.update(
    {
        "CAPABILITY": ImapFront._capability,
        "NOOP": ImapFront._noop,
        "LOGOUT": ImapFront._logout,
        "STARTTLS": ImapFront._starttls,
        "ID": ImapFront._id,
        "LOGIN": ImapFront._login,
        "AUTHENTICATE": ImapFront._authenticate,
    }
)
