"""Pop3Front: the client-facing POP3 machine, from greeting to the start of splicing.

Sans-IO.  In the AUTHORIZATION state (RFC 1939 §4) it answers CAPA (RFC 2449),
USER, PASS, AUTH PLAIN (RFC 5034, initial response and ``*`` cancel), STLS
(RFC 2595 §4) and QUIT; anything else is ``-ERR``.  Dispatch is a fixed table.

Where we differ from Perdition (docs/perdition-compatibility.md): AUTH PLAIN works; STLS is
never offered on POP3S; commands pipelined behind PASS are forwarded, not
dropped; no 3 s sleep on errors, a fixed delay on failed logins (applied by
the session); and the connection closes after too many failures.
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
from authsvc.proxy.linebuffer import LineBuffer, TooLong
from authsvc.proxy.pop3 import replies as wire

from authsvc.failures import FailureKind, Reply
from authsvc.settings import ListenerSettings, ListenTls, ProxySettings

#: A TLS record starts 0x16 (RFC 8446 §5.1); no POP3 command does.
_TLS_HANDSHAKE = 0x16
_DEFAULT_CAPABILITIES = ("TOP", "UIDL")


class State(enum.Enum):
    """Where the client-facing conversation is."""

    AUTHORIZATION = "authorization"
    AUTH_CONTINUE = "auth_continue"  # waiting for the SASL PLAIN response line
    STARTING_TLS = "starting_tls"
    LOGGING_IN = "logging_in"
    SPLICING = "splicing"
    CLOSED = "closed"


_Handler = Callable[["Pop3Front", bytes], list[Command]]


class Pop3Front:
    """One client connection's POP3 AUTHORIZATION state."""

    #: The command table: the only commands a client may give before login.
    HANDLERS: ClassVar[dict[str, _Handler]] = {}

    def __init__(
        self, listener: ListenerSettings, proxy: ProxySettings, *, tls_active: bool = False,
        trace: bool = True,
    ) -> None:
        """``trace``: emit a :class:`Trace` per command (the session's connection
        logging); off, no trace text is made at all."""
        self._listener = listener
        self._proxy = proxy
        self._tls_active = tls_active
        self._tracing = trace
        self._lines = LineBuffer(proxy.max_line_length)
        self.state = State.AUTHORIZATION
        self._user: bytes | None = None
        self._fresh = True
        self.bad_commands = 0
        self.failures = 0

    @property
    def tls_possible(self) -> bool:
        return self._listener.tls is ListenTls.STARTTLS and not self._tls_active

    @property
    def login_disabled(self) -> bool:
        return self._listener.tls_required and not self._tls_active

    def capabilities(self) -> list[str]:
        """CAPA lines: the operator's, plus what this connection's state allows."""
        items = [c.strip() for c in self._listener.capability if c.strip()]
        kept = [c for c in items or _DEFAULT_CAPABILITIES
                if c.split()[0].upper() not in wire.MANAGED_CAPABILITIES]
        kept += ["RESP-CODES", "AUTH-RESP-CODE"]
        if self.tls_possible:
            kept.append("STLS")
        if not self.login_disabled:
            # RFC 2595 §4 / RFC 5034 §6: no plaintext login offered before TLS.
            kept += ["USER", "SASL PLAIN"]
        return kept

    def start(self) -> list[Command]:
        return [Send(wire.line(wire.GREETING))]

    def handle(self, event: Event) -> list[Command]:
        match event:
            case DataReceived(data=data):
                return self._on_data(data)
            case TlsEstablished():
                self._tls_active = True
                self.state = State.AUTHORIZATION
                self._lines.clear()
                self._user = None  # RFC 2595 §4: forget everything from before TLS
                return []
            case LoginSucceeded(leftover=leftover):
                if self.state is not State.LOGGING_IN:
                    return []
                self.state = State.SPLICING
                reply = Send(wire.line(wire.OK_LOGGED_IN))
                return [reply, Splice(self._lines.take_remaining(), leftover)]
            case LoginFailed(kind=kind):
                return self._on_failure(kind)
            case TimedOut():
                return self._close(wire.ERR_TIMEOUT, "login timeout")
            case ConnectionClosed():
                self.state = State.CLOSED
                return [Close("client closed")]

    def _on_data(self, data: bytes) -> list[Command]:
        if self.state in (State.STARTING_TLS, State.SPLICING, State.CLOSED) or not data:
            return []  # RFC 2595 §4: bytes behind STLS, before the handshake, are dropped
        if self._fresh and not self._tls_active and data[0] == _TLS_HANDSHAKE:
            self.state = State.CLOSED
            return [Close("TLS handshake on a plaintext port")]
        self._fresh = False
        self._lines.feed(data)
        if self.state is State.LOGGING_IN:
            return []
        return self._drain()

    def _drain(self) -> list[Command]:
        out: list[Command] = []
        while self.state in (State.AUTHORIZATION, State.AUTH_CONTINUE):
            line = self._lines.next_line()
            if line is None:
                break
            if isinstance(line, TooLong):
                self.state = State.AUTHORIZATION
                out += self._bad(wire.ERR_LINE_TOO_LONG)
            elif self.state is State.AUTH_CONTINUE:
                out += self._on_sasl_response(line)
            else:
                out += self._on_command(line)
        return out

    def _on_command(self, line: bytes) -> list[Command]:
        keyword, _, argument = line.partition(b" ")
        name = keyword.decode("ascii", "replace").upper()
        handler = self.HANDLERS.get(name)
        if handler is None:
            if not self._tracing:
                return self._bad(wire.ERR_UNKNOWN)
            return [Trace("C: (unknown command)"), *self._bad(wire.ERR_UNKNOWN)]
        if not self._tracing:
            return handler(self, argument)
        trace = f"C: {name}"
        if name == "USER":
            trace += f" {from_wire(argument)!r}"
        elif name in ("PASS", "AUTH") and argument:
            trace += " ***"
        return [Trace(trace), *handler(self, argument)]

    def _bad(self, reply: str) -> list[Command]:
        self.bad_commands += 1
        if self.bad_commands >= self._proxy.max_bad_commands:
            return self._close(wire.ERR_TOO_MANY_ERRORS, "too many bad commands")
        return [Send(wire.line(reply))]

    def _close(self, reply: str, reason: str) -> list[Command]:
        self.state = State.CLOSED
        return [Send(wire.line(reply)), Close(reason)]

    # --- commands ----------------------------------------------------------------

    def _capa(self, argument: bytes) -> list[Command]:
        if argument:
            return self._bad(wire.ERR_ARGUMENTS)
        return [Send(wire.multiline(wire.OK_CAPA, self.capabilities()))]

    def _quit(self, argument: bytes) -> list[Command]:
        if argument:
            return self._bad(wire.ERR_ARGUMENTS)
        return self._close(wire.OK_QUIT, "quit")

    def _stls(self, argument: bytes) -> list[Command]:
        if argument:
            return self._bad(wire.ERR_ARGUMENTS)
        if self._tls_active:
            return self._bad(wire.ERR_TLS_ACTIVE)
        if not self.tls_possible:
            return self._bad(wire.ERR_TLS_UNAVAILABLE)
        self.state = State.STARTING_TLS
        self._lines.clear()  # RFC 2595 §4: nothing pipelined behind STLS is run
        return [Send(wire.line(wire.OK_STLS)), StartTls()]

    def _user_command(self, argument: bytes) -> list[Command]:
        # RFC 1939 §7: USER name.  A name with a space is not one argument.
        if not argument or b" " in argument:
            return self._bad(wire.ERR_ARGUMENTS)
        if self.login_disabled:
            return [Send(wire.line(wire.ERR_PRIVACY))]
        self._user = argument
        return [Send(wire.line(wire.OK_USER))]

    def _pass(self, argument: bytes) -> list[Command]:
        # RFC 1939 §7: the password is the rest of the line, spaces included.
        if self.login_disabled:
            return [Send(wire.line(wire.ERR_PRIVACY))]
        if self._user is None:
            return self._bad(wire.ERR_NO_USER)
        return self._authenticate_with(self._user, argument, "USER/PASS")

    def _auth(self, argument: bytes) -> list[Command]:
        if not argument:
            return [Send(wire.multiline(wire.OK_MECHANISMS, ["PLAIN"]))]
        mechanism, _, initial = argument.partition(b" ")
        if mechanism.upper() != b"PLAIN" or b" " in initial:
            return [Send(wire.line(wire.ERR_MECHANISM))]
        if self.login_disabled:
            return [Send(wire.line(wire.ERR_PRIVACY))]
        if initial:
            return self._on_sasl_response(initial)
        self.state = State.AUTH_CONTINUE
        return [Send(wire.continuation())]

    def _on_sasl_response(self, response: bytes) -> list[Command]:
        self.state = State.AUTHORIZATION
        if response == sasl.CANCEL:
            return self._bad(wire.ERR_CANCELLED)
        try:
            plain = sasl.parse_plain(sasl.decode_base64(response))
        except sasl.SaslError:
            return self._bad(wire.ERR_SASL)
        if plain.authzid and plain.authzid != plain.authcid:
            return [Send(wire.line(wire.ERR_AUTHZ_FAILED))]
        return self._authenticate_with(plain.authcid, plain.password, "AUTH PLAIN")

    def _authenticate_with(self, login: bytes, password: bytes, mechanism: str) -> list[Command]:
        if not credentials_ok(login, password):
            return self._bad(wire.ERR_CREDENTIALS_SYNTAX)
        self.state = State.LOGGING_IN
        return [Authenticate(Credentials(from_wire(login), secret_from_wire(password), mechanism))]

    def _on_failure(self, kind: FailureKind) -> list[Command]:
        if self.state is not State.LOGGING_IN:
            return []
        self.failures += 1
        self._user = None  # as Perdition's pop3_in.c: a failed PASS forgets USER
        # The kind's client-facing class (authsvc/failures.py): RFC 3206 §4's codes.
        authentication = kind.meaning.reply is Reply.AUTHENTICATION
        if self.failures >= self._proxy.max_login_attempts:
            reply = wire.ERR_TOO_MANY_FAILURES if authentication else wire.ERR_UNAVAILABLE
            return self._close(reply, "too many login failures")
        self.state = State.AUTHORIZATION
        reply = wire.ERR_AUTH_FAILED if authentication else wire.ERR_UNAVAILABLE
        return [Send(wire.line(reply)), *self._drain()]


Pop3Front.HANDLERS.update(
    {
        "CAPA": Pop3Front._capa,
        "QUIT": Pop3Front._quit,
        "STLS": Pop3Front._stls,
        "USER": Pop3Front._user_command,
        "PASS": Pop3Front._pass,
        "AUTH": Pop3Front._auth,
    }
)
