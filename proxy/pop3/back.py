"""Pop3Back: log in at a POP3 store on the client's behalf, sans-IO.

The steps (Perdition's ``pop3_out.c``): with ``forward_client =
proxy_v1/v2``, a PROXY header first; the greeting must be ``+OK``; with backend
STARTTLS, ``CAPA`` and ``STLS`` when offered (RFC 2595 §4); with
``forward_client = id``, Dovecot's ``XCLIENT ADDR= PORT=`` (Dovecot's proxy
forwarding, docs/proxy.md), whatever the store answers; then ``USER`` and ``PASS``.  POP3 has no
LOGINDISABLED: a store that refuses plaintext logins refuses ``USER``, so
``PASS`` (the password) is never sent to it.  A ``-ERR`` with ``[SYS/TEMP]``, ``[IN-USE]`` or
``[LOGIN-DELAY]`` is a temporary failure; any other ``-ERR`` is a refused
login.  The store's text goes to the log only.
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
from authsvc.proxy.forward import pop3_xclient, proxy_header
from authsvc.proxy.linebuffer import LineBuffer, TooLong
from authsvc.proxy.pop3 import replies as wire

from authsvc.redact import Secret
from authsvc.routing import FailureKind
from authsvc.settings import BackendTls, ForwardClient

MAX_BACKEND_LINE = 65_536
#: A CAPA list longer than this is not a store we want to talk to.
MAX_CAPA_LINES = 256


class BackState(enum.Enum):
    GREETING = "greeting"
    CAPA = "capa"  # waiting for +OK to CAPA
    CAPA_LIST = "capa_list"  # reading CAPA lines up to "."
    STLS = "stls"
    STARTING_TLS = "starting_tls"
    XCLIENT = "xclient"  # forward_client = id
    USER = "user"
    LOGIN_SENT = "login_sent"  # PASS sent, waiting for +OK
    DONE = "done"


class Pop3Back:
    """One login at one POP3 store."""

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
        self._login = to_wire(login)
        self._password = password
        self._tls = backend_tls
        self._tls_active = tls_active
        self._lines = LineBuffer(MAX_BACKEND_LINE)
        self._capa: list[bytes] = []
        self.state = BackState.GREETING

    def start(self) -> list[Command]:
        header = proxy_header(self._forward, self._endpoints)
        return [Send(header)] if header else []

    def handle(self, event: Event) -> list[Command]:
        match event:
            case DataReceived(data=data):
                if self.state is BackState.DONE:
                    return []
                if self.state is BackState.STARTING_TLS:
                    return self._fail(FailureKind.BACKEND_PROTOCOL, "data after STLS +OK")
                self._lines.feed(data)
                return self._drain()
            case TlsEstablished():
                self._tls_active = True
                return self._user()
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

    def _fail(self, kind: FailureKind, reason: str) -> list[Command]:
        self.state = BackState.DONE
        return [BackendFailed(kind, reason)]

    def _on_line(self, line: bytes) -> list[Command]:
        if self.state is BackState.CAPA_LIST:
            return self._on_capa_line(line)
        ok = line == b"+OK" or line.startswith(b"+OK ")
        if not ok and not (line == b"-ERR" or line.startswith(b"-ERR ")):
            return self._fail(FailureKind.BACKEND_PROTOCOL, f"unexpected line: {_clip(line)}")
        match self.state:
            case BackState.GREETING:
                if not ok:
                    return self._fail(FailureKind.BACKEND_PROTOCOL, f"greeting: {_clip(line)}")
                wants_tls = self._tls in (BackendTls.STARTTLS, BackendTls.STARTTLS_REQUIRED)
                if wants_tls and not self._tls_active:
                    self.state = BackState.CAPA
                    return [Send(b"CAPA\r\n")]
                return self._user()
            case BackState.CAPA:
                if not ok:
                    return self._no_stls()
                self.state = BackState.CAPA_LIST
                return []
            case BackState.STLS:
                if not ok:
                    return self._no_stls()
                if self._lines.buffered():
                    # Response injection before the handshake (RFC 2595 §3.1).
                    return self._fail(FailureKind.BACKEND_PROTOCOL, "data after STLS +OK")
                self.state = BackState.STARTING_TLS
                return [StartTls()]
            case BackState.XCLIENT:
                self.state = BackState.USER  # +OK or -ERR: XCLIENT is a courtesy
                return [Send(b"USER " + self._login + wire.CRLF)]
            case BackState.USER | BackState.LOGIN_SENT:
                if not ok:
                    code = wire.response_code(line[5:])
                    kind = (FailureKind.BACKEND_PROTOCOL if code in wire.TEMPORARY_CODES
                            else FailureKind.BACKEND_AUTH)
                    return self._fail(kind, f"store refused the login: {_clip(line)}")
                if self.state is BackState.USER:
                    self.state = BackState.LOGIN_SENT
                    password = to_wire(self._password.reveal())
                    return [Send(b"PASS " + password + wire.CRLF, secret=True)]
                self.state = BackState.DONE
                result = LoginSucceeded(leftover=self._lines.take_remaining())
                return [BackendReady(result)]
            case _:
                return self._fail(FailureKind.BACKEND_PROTOCOL, "unexpected reply")

    def _on_capa_line(self, line: bytes) -> list[Command]:
        if line != b".":
            if len(self._capa) >= MAX_CAPA_LINES:
                return self._fail(FailureKind.BACKEND_PROTOCOL, "CAPA list too long")
            self._capa.append(line)
            return []
        if any(item.split(b" ")[0].upper() == b"STLS" for item in self._capa):
            self.state = BackState.STLS
            return [Send(b"STLS\r\n")]
        return self._no_stls()

    def _no_stls(self) -> list[Command]:
        if self._tls is BackendTls.STARTTLS_REQUIRED:
            return self._fail(FailureKind.BACKEND_PROTOCOL, "store offers no STLS")
        return self._user()

    def _user(self) -> list[Command]:
        if self._forward is ForwardClient.ID and self._endpoints is not None:
            self.state = BackState.XCLIENT
            return [Send(pop3_xclient(self._endpoints))]
        self.state = BackState.USER
        return [Send(b"USER " + self._login + wire.CRLF)]
