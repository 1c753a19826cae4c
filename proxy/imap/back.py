"""ImapBack: log in at an IMAP store on the client's behalf, sans-IO.

The steps (Perdition's ``imap4_out.c``, Dovecot's ``imap-proxy.c``): with
``forward_client = proxy_v1/v2``, a PROXY header first; read the greeting,
which must be ``* OK``; with backend STARTTLS, ask CAPABILITY when the greeting
did not list it, then STARTTLS; over plaintext, ask CAPABILITY when still
unknown, and never send a password to a store that advertises LOGINDISABLED
(Perdition: "Login Disabled"); with ``forward_client = id``, ``ID`` with the
client's address (Dovecot's proxy forwarding; docs/proxy.md), whatever the
store answers; send ``LOGIN`` with each argument as atom, quoted string or
literal (``{n+}`` only when the
store offers LITERAL+); on OK, take the store's capabilities from its
``[CAPABILITY]`` code or ask for them.
The store's refusal text is returned for the log only; the client hears a
generic reply (Dovecot's comment: store text can reveal which users exist).
"""

from __future__ import annotations

import enum

from authsvc.proxy.events import (
    BackendFailed,
    BackendReady,
    Command,
    ConnectionClosed,
    DataReceived,
    Endpoints,
    Event,
    LoginSucceeded,
    Send,
    StartTls,
    TlsEstablished,
    to_wire,
)
from authsvc.proxy.failures import clip_for_log as _clip
from authsvc.proxy.forward import imap_id_arguments, proxy_header
from authsvc.proxy.imap.serialise import login_command
from authsvc.proxy.linebuffer import LineBuffer, TooLong

from authsvc.redact import Secret
from authsvc.routing import FailureKind
from authsvc.settings import BackendTls, ForwardClient

#: Store replies before login are short; this only bounds memory.
MAX_BACKEND_LINE = 65_536
#: Untagged lines relayed from the login exchange (``* OK [ALERT] ...``).
MAX_RELAYED = 16
#: RFC 5530 codes that say "not now" rather than "wrong password".
TEMPORARY_CODES = frozenset({"UNAVAILABLE", "SERVERBUG", "INUSE", "LIMIT", "PRIVACYREQUIRED"})
#: The reason of the failure no password may cross (the session logs it as
#: Perdition's "Login Disabled", perdition/perdition.c).
LOGINDISABLED_REASON = "store advertises LOGINDISABLED"


class BackState(enum.Enum):
    GREETING = "greeting"
    CAPABILITY = "capability"  # asked before STARTTLS
    STARTTLS = "starttls"
    STARTING_TLS = "starting_tls"
    CAPABILITY_PLAIN = "capability_plain"  # asked before a plaintext LOGIN
    ID = "id"  # forward_client = id
    LOGIN = "login"
    CAPABILITY_AFTER = "capability_after"  # asked after LOGIN's OK had no code
    DONE = "done"


def response_code(text: bytes) -> tuple[str, bytes]:
    """``[CODE args]`` at the start of resp-text: (upper-cased code word, args)."""
    if not text.startswith(b"[") or b"]" not in text:
        return "", b""
    inner = text[1 : text.index(b"]")]
    word, _, args = inner.partition(b" ")
    return word.decode("ascii", "replace").upper(), args


class ImapBack:
    """One login at one store."""

    def __init__(
        self,
        login: str,
        password: Secret,
        backend_tls: BackendTls,
        *,
        tls_active: bool,
        forward: ForwardClient = ForwardClient.NONE,
        endpoints: Endpoints | None = None,
    ) -> None:
        self._forward = forward
        self._endpoints = endpoints
        self._id_sent = False
        self._login = to_wire(login)
        self._password = password
        self._tls = backend_tls
        self._tls_active = tls_active
        self._lines = LineBuffer(MAX_BACKEND_LINE)
        self._serial = 0
        self._tag = ""
        self._caps: list[str] | None = None
        #: ``_caps`` upper-cased, and the list it was made from.
        self._upper_of: list[str] | None = None
        self._upper: frozenset[str] = frozenset()
        self._segments: list[bytes] = []
        self._relay: list[bytes] = []
        self.state = BackState.GREETING

    def start(self) -> list[Command]:
        # The store speaks first; a PROXY header goes before it does.
        header = proxy_header(self._forward, self._endpoints)
        return [Send(header)] if header else []

    def handle(self, event: Event) -> list[Command]:
        match event:
            case DataReceived(data=data):
                if self.state is BackState.DONE:
                    return []
                if self.state is BackState.STARTING_TLS:
                    return self._fail(FailureKind.BACKEND_PROTOCOL, "data after STARTTLS OK")
                self._lines.feed(data)
                return self._drain()
            case TlsEstablished():
                self._tls_active = True
                self._caps = None  # RFC 9051 §6.2.1: forget pre-TLS capabilities
                return self._login_step()
            case ConnectionClosed():
                return self._fail(FailureKind.BACKEND_PROTOCOL, "store closed the connection")
            case _:
                return []

    def _drain(self) -> list[Command]:
        out: list[Command] = []
        while self.state not in (BackState.DONE, BackState.STARTING_TLS):
            line = self._lines.next_line()
            if line is None:
                break
            if isinstance(line, TooLong):
                return self._fail(FailureKind.BACKEND_PROTOCOL, "store line too long")
            out += self._on_line(line)
        return out

    def _send(self, text: str) -> list[Command]:
        self._serial += 1
        self._tag = f"A{self._serial}"
        return [Send(f"{self._tag} {text}\r\n".encode("ascii"))]

    def _has(self, capability: str) -> bool:
        caps = self._caps
        if not caps:
            return False
        if self._upper_of is not caps:
            # Upper-cased once per list the store sent, not per question asked;
            # one upper() and split() of the joined words, not one per word.
            self._upper_of, self._upper = caps, frozenset(" ".join(caps).upper().split())
        return capability in self._upper

    def _fail(self, kind: FailureKind, reason: str) -> list[Command]:
        self.state = BackState.DONE
        return [BackendFailed(kind, reason)]

    def _on_line(self, line: bytes) -> list[Command]:
        word, _, rest = line.partition(b" ")
        if word == b"*":
            return self._on_untagged(rest)
        if word == b"+":
            return self._on_continuation()
        if self._tag and word == self._tag.encode("ascii"):
            status, _, text = rest.partition(b" ")
            return self._on_tagged(status.upper(), text)
        return self._fail(FailureKind.BACKEND_PROTOCOL, f"unexpected line: {_clip(line)}")

    def _on_untagged(self, rest: bytes) -> list[Command]:
        status, _, text = rest.partition(b" ")
        status = status.upper()
        if self.state is BackState.GREETING:
            if status != b"OK":
                # * BYE or * PREAUTH (Perdition's imap4_out.c refuses them too).
                return self._fail(FailureKind.BACKEND_PROTOCOL, f"greeting: * {_clip(rest)}")
            code, args = response_code(text)
            if code == "CAPABILITY":
                self._caps = args.decode("ascii", "replace").split()
            return self._after_greeting()
        if status == b"BYE":
            return self._fail(FailureKind.BACKEND_PROTOCOL, f"store said * {_clip(rest)}")
        if status == b"CAPABILITY":
            self._caps = text.decode("ascii", "replace").split()
            return []
        relaying = self.state in (BackState.LOGIN, BackState.CAPABILITY_AFTER)
        if relaying and len(self._relay) < MAX_RELAYED and not line_has_literal(rest):
            self._relay.append(b"* " + rest)
        return []

    def _on_continuation(self) -> list[Command]:
        if self.state is not BackState.LOGIN or not self._segments:
            return self._fail(FailureKind.BACKEND_PROTOCOL, "unexpected continuation")
        return [Send(self._segments.pop(0), secret=True)]

    def _on_tagged(self, status: bytes, text: bytes) -> list[Command]:
        ok = status == b"OK"
        match self.state:
            case BackState.CAPABILITY:
                return self._after_greeting() if ok else self._no_starttls()
            case BackState.STARTTLS:
                if not ok:
                    return self._no_starttls()
                if self._lines.buffered():
                    # Bytes behind the OK, before the handshake, would be
                    # response injection (RFC 2595 §3.1; libetpan #386).
                    return self._fail(FailureKind.BACKEND_PROTOCOL, "data after STARTTLS OK")
                self.state = BackState.STARTING_TLS
                return [StartTls()]
            case BackState.CAPABILITY_PLAIN:
                if self._caps is None:
                    self._caps = []  # no list came: nothing is advertised
                return self._login_step()
            case BackState.ID:
                return self._login_step()  # OK, NO or BAD: ID is a courtesy
            case BackState.LOGIN:
                return self._after_login(ok, text)
            case BackState.CAPABILITY_AFTER:
                return self._ready()
            case _:
                return self._fail(FailureKind.BACKEND_PROTOCOL, "unexpected tagged reply")

    def _after_greeting(self) -> list[Command]:
        wants_tls = self._tls in (BackendTls.STARTTLS, BackendTls.STARTTLS_REQUIRED)
        if wants_tls and not self._tls_active:
            if self._caps is None:
                self.state = BackState.CAPABILITY
                return self._send("CAPABILITY")
            if self._has("STARTTLS"):
                self.state = BackState.STARTTLS
                return self._send("STARTTLS")
            return self._no_starttls()
        return self._login_step()

    def _no_starttls(self) -> list[Command]:
        if self._tls is BackendTls.STARTTLS_REQUIRED:
            return self._fail(FailureKind.BACKEND_PROTOCOL, "store offers no STARTTLS")
        return self._login_step()

    def _login_step(self) -> list[Command]:
        if self._caps is None and not self._tls_active:
            # Over plaintext we must know whether LOGINDISABLED is advertised
            # before a password leaves (RFC 9051 §6.2.3).
            self.state = BackState.CAPABILITY_PLAIN
            return self._send("CAPABILITY")
        if self._has("LOGINDISABLED"):
            # Dovecot with disable_plaintext_auth says this to
            # an untrusted proxy; no login can work, so it is a setup problem.
            return self._fail(FailureKind.BACKEND_PROTOCOL, LOGINDISABLED_REASON)
        if self._forward is ForwardClient.ID and self._endpoints and not self._id_sent:
            self._id_sent = True
            self.state = BackState.ID
            return self._send("ID " + imap_id_arguments(self._endpoints))
        self.state = BackState.LOGIN
        self._serial += 1
        self._tag = f"A{self._serial}"
        password = to_wire(self._password.reveal())
        segments = login_command(self._tag, self._login, password, self._has("LITERAL+"))
        self._segments = segments[1:]
        self._caps = None  # capabilities change at login (RFC 9051 §7.2.2)
        return [Send(segments[0], secret=True)]

    def _after_login(self, ok: bool, text: bytes) -> list[Command]:
        code, args = response_code(text)
        if not ok:
            kind = FailureKind.BACKEND_PROTOCOL if code in TEMPORARY_CODES else (
                FailureKind.BACKEND_AUTH
            )
            return self._fail(kind, f"store refused the login: {_clip(text)}")
        if code == "CAPABILITY":
            self._caps = args.decode("ascii", "replace").split()
        if self._caps is None:
            self.state = BackState.CAPABILITY_AFTER
            return self._send("CAPABILITY")
        return self._ready()

    def _ready(self) -> list[Command]:
        self.state = BackState.DONE
        caps = " ".join(self._caps) if self._caps else None
        result = LoginSucceeded(caps, tuple(self._relay), self._lines.take_remaining())
        return [BackendReady(result)]


def line_has_literal(text: bytes) -> bool:
    """An untagged line ending in ``{n}`` has a literal behind it; we do not relay those."""
    return text.endswith(b"}")
