"""Pop3Front and Pop3Back, identical at every split of their input."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest
from authsvc.proxy.events import (
    Authenticate,
    BackendFailed,
    BackendReady,
    Close,
    Command,
    DataReceived,
    Endpoints,
    LoginFailed,
    LoginSucceeded,
    Send,
    Splice,
    StartTls,
    TimedOut,
    TlsEstablished,
    Trace,
)
from authsvc.proxy.pop3.back import MAX_CAPA_LINES, Pop3Back
from authsvc.proxy.pop3.front import Pop3Front, State
from authsvc.proxy.proxy_protocol import encode_v1, encode_v2

from authsvc.redact import Secret
from authsvc.routing import FailureKind
from authsvc.settings import (
    BackendTls,
    ForwardClient,
    ListenerSettings,
    ListenTls,
    ProxySettings,
)
from tests.helpers.feed import same_for_all_splits
from tests.unit.proxy.machines import PROXY, feed, merge, pop3_listener, sent

PASSWORD = "good pass  word"
NUL_REFUSED = b"-ERR Login or password contains NUL, CR or LF.\r\n"


def run(
    data: bytes,
    listener: ListenerSettings | None = None,
    *,
    tls_active: bool = False,
) -> list[Command]:
    def once(chunks: Sequence[bytes]) -> list[Command]:
        front = Pop3Front(listener or pop3_listener(), PROXY, tls_active=tls_active)
        return merge([c for c in feed(front, chunks) if not isinstance(c, Trace)])

    return same_for_all_splits(data, once)


def creds(commands: Sequence[Command]) -> tuple[str, str, str]:
    [auth] = [c for c in commands if isinstance(c, Authenticate)]
    c = auth.credentials
    return c.login, c.password.reveal(), c.mechanism


def test_greeting_and_capa() -> None:
    front = Pop3Front(pop3_listener(), PROXY)
    assert front.start() == [Send(b"+OK POP3 authsvc ready.\r\n")]
    assert run(b"CAPA\r\n") == [Send(
        b"+OK Capability list follows.\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        b"STLS\r\nUSER\r\nSASL PLAIN\r\n.\r\n")]


def test_pop3s_never_offers_stls() -> None:
    listener = pop3_listener(ListenTls.IMPLICIT, capability=("TOP", "STLS", "PIPELINING"))
    assert Pop3Front(listener, PROXY, tls_active=True).capabilities() == [
        "TOP", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE", "USER", "SASL PLAIN"]
    assert run(b"STLS\r\n", listener, tls_active=True) == [
        Send(b"-ERR TLS is already active.\r\n")]


def test_tls_required_refuses_plaintext_login() -> None:
    listener = pop3_listener(tls_required=True)
    assert "USER" not in Pop3Front(listener, PROXY).capabilities()
    privacy = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n"
    assert run(b"USER bob\r\nPASS x\r\nAUTH PLAIN\r\n", listener) == [Send(privacy * 3)]


def test_user_pass_keeps_spaces_in_the_password() -> None:
    commands = run(b"user Bob@riseup.net\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert sent(commands) == b"+OK\r\n"
    assert creds(commands) == ("Bob@riseup.net", PASSWORD, "USER/PASS")
    assert PASSWORD not in repr(commands)


def test_auth_plain_initial_and_continuation() -> None:
    response = base64.b64encode(b"\0bob\0" + PASSWORD.encode())
    assert creds(run(b"AUTH PLAIN " + response + b"\r\n")) == ("bob", PASSWORD, "AUTH PLAIN")
    commands = run(b"AUTH PLAIN\r\n" + response + b"\r\n")
    assert sent(commands) == b"+ \r\n"
    assert creds(commands)[0] == "bob"


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"PASS x\r\n", b"-ERR No USER given.\r\n"),
        (b"USER\r\n", b"-ERR Wrong number of arguments.\r\n"),
        (b"USER a b\r\n", b"-ERR Wrong number of arguments.\r\n"),
        (b"STAT\r\n", b"-ERR Unknown command.\r\n"),
        (b"\x00\xff\xfe garbage\r\n", b"-ERR Unknown command.\r\n"),
        (b"USER bob\x00evil\r\nPASS x\r\n", b"+OK\r\n" + NUL_REFUSED),
        (b"USER bob\r\nPASS a\x00b\r\n", b"+OK\r\n" + NUL_REFUSED),
        (b"AUTH PLAIN\r\n*\r\n", b"+ \r\n-ERR Authentication cancelled.\r\n"),
        (b"AUTH PLAIN !!\r\n", b"-ERR Invalid SASL response.\r\n"),
        (b"AUTH CRAM-MD5\r\n", b"-ERR Unsupported authentication mechanism.\r\n"),
        (b"AUTH\r\n", b"+OK Mechanisms follow.\r\nPLAIN\r\n.\r\n"),
        (b"USER " + b"x" * 300 + b"\r\nQUIT\r\n",
         b"-ERR Command line too long.\r\n+OK Logging out.\r\n"),
    ],
)
def test_refusals(data: bytes, reply: bytes) -> None:
    commands = run(data)
    assert sent(commands) == reply
    assert not any(isinstance(c, Authenticate) for c in commands)


def test_quit_and_too_many_bad_commands() -> None:
    assert run(b"QUIT\r\n") == [Send(b"+OK Logging out.\r\n"), Close("quit")]
    assert run(b"NOOP\r\n" * 7) == [
        Send(b"-ERR Unknown command.\r\n" * 4 + b"-ERR Too many invalid commands, closing.\r\n"),
        Close("too many bad commands"),
    ]


def test_stls_drops_pipelined_commands_and_forgets_user() -> None:
    data = b"USER bob\r\nSTLS\r\nPASS injected\r\n"
    assert run(data) == [Send(b"+OK\r\n+OK Begin TLS negotiation now.\r\n"), StartTls()]
    front = Pop3Front(pop3_listener(), PROXY)
    feed(front, [data])
    front.handle(TlsEstablished())
    assert sent(feed(front, [b"PASS x\r\n"])) == b"-ERR No USER given.\r\n"


def logging_in(data: bytes = b"USER bob\r\nPASS x\r\n", attempts: int = 3) -> Pop3Front:
    front = Pop3Front(pop3_listener(), ProxySettings(max_login_attempts=attempts))
    creds(feed(front, [data]))
    assert front.state is State.LOGGING_IN
    return front


def test_success_keeps_pipelined_commands() -> None:
    front = logging_in(b"USER bob\r\nPASS x\r\nSTAT\r\n")
    front.handle(DataReceived(b"LIST\r\n"))
    assert merge(front.handle(LoginSucceeded(leftover=b""))) == [
        Send(b"+OK Logged in.\r\n"), Splice(b"STAT\r\nLIST\r\n", b"")]


@pytest.mark.parametrize(
    ("kind", "reply"),
    [
        (FailureKind.NO_ROUTE, b"-ERR [AUTH] Authentication failed.\r\n"),
        (FailureKind.BACKEND_AUTH, b"-ERR [AUTH] Authentication failed.\r\n"),
        (FailureKind.MAP_UNAVAILABLE,
         b"-ERR [SYS/TEMP] Account is temporarily unavailable, try again later.\r\n"),
        (FailureKind.BACKEND_CONNECT,
         b"-ERR [SYS/TEMP] Account is temporarily unavailable, try again later.\r\n"),
    ],
)
def test_failure_replies_and_user_is_forgotten(kind: FailureKind, reply: bytes) -> None:
    front = logging_in()
    assert front.handle(LoginFailed(kind)) == [Send(reply)]
    assert sent(feed(front, [b"PASS x\r\n"])) == b"-ERR No USER given.\r\n"


def test_too_many_failures_closes() -> None:
    front = logging_in(attempts=1)
    assert front.handle(LoginFailed(FailureKind.BACKEND_AUTH)) == [
        Send(b"-ERR [AUTH] Authentication failed. Too many failures, closing.\r\n"),
        Close("too many login failures"),
    ]


def test_the_last_allowed_failure_closes_and_not_one_before() -> None:
    front = logging_in(attempts=3)
    for _ in range(2):
        assert front.handle(LoginFailed(FailureKind.BACKEND_AUTH)) == [
            Send(b"-ERR [AUTH] Authentication failed.\r\n")]
        creds(feed(front, [b"USER bob\r\nPASS x\r\n"]))
    assert front.handle(LoginFailed(FailureKind.BACKEND_AUTH))[-1] == Close(
        "too many login failures")


def test_timeout_and_client_hello() -> None:
    front = Pop3Front(pop3_listener(), PROXY)
    assert front.handle(TimedOut()) == [
        Send(b"-ERR Disconnected for inactivity.\r\n"), Close("login timeout")]
    assert run(bytes.fromhex("1603010200") + b"\x01\x00") == [
        Close("TLS handshake on a plaintext port")]


# --- Pop3Back -----------------------------------------------------------------------


def back(tls: BackendTls = BackendTls.NONE) -> Pop3Back:
    return Pop3Back("bob", Secret(PASSWORD), tls, tls_active=False)


def drive(machine: Pop3Back, chunks: Sequence[bytes]) -> list[Command]:
    out: list[Command] = []
    for chunk in chunks:
        if not (out and isinstance(out[-1], BackendReady | BackendFailed | StartTls)):
            out += machine.handle(DataReceived(chunk))
    return merge(out)


def run_back(data: bytes, tls: BackendTls = BackendTls.NONE) -> list[Command]:
    return same_for_all_splits(data, lambda chunks: drive(back(tls), chunks))


def test_back_user_pass() -> None:
    commands = run_back(b"+OK Dovecot ready.\r\n+OK\r\n+OK Logged in.\r\n")
    assert commands == [
        Send(b"USER bob\r\nPASS good pass  word\r\n", secret=True),
        BackendReady(LoginSucceeded()),
    ]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"-ERR busy\r\n", FailureKind.BACKEND_PROTOCOL),
        (b"* OK imap?\r\n", FailureKind.BACKEND_PROTOCOL),
        (b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n", FailureKind.BACKEND_AUTH),
        (b"+OK\r\n+OK\r\n-ERR [AUTH] Authentication failed.\r\n", FailureKind.BACKEND_AUTH),
        (b"+OK\r\n+OK\r\n-ERR\r\n", FailureKind.BACKEND_AUTH),  # a bare -ERR refuses too
        (b"+OK\r\n+OK\r\n-ERR [IN-USE] Mailbox locked\r\n", FailureKind.BACKEND_PROTOCOL),
        (b"+OK\r\n+OK\r\n-ERR [SYS/TEMP] later\r\n", FailureKind.BACKEND_PROTOCOL),
    ],
)
def test_back_failures(data: bytes, kind: FailureKind) -> None:
    last = run_back(data)[-1]
    assert isinstance(last, BackendFailed)
    assert last.kind is kind
    assert PASSWORD not in last.reason


def test_back_reads_a_capa_list_up_to_its_limit() -> None:
    def capa(lines: int) -> bytes:
        return b"+OK hi\r\n+OK\r\n" + b"".join(b"X%d\r\n" % i for i in range(lines)) + b".\r\n"

    # STARTTLS offered by no line: the login goes on in plaintext.
    assert run_back(capa(MAX_CAPA_LINES), BackendTls.STARTTLS)[-1] == Send(
        b"CAPA\r\nUSER bob\r\n")
    assert run_back(capa(MAX_CAPA_LINES + 1), BackendTls.STARTTLS)[-1] == BackendFailed(
        FailureKind.BACKEND_PROTOCOL, "CAPA list too long")


def test_back_stls() -> None:
    machine = back(BackendTls.STARTTLS)
    assert feed(machine, [b"+OK hi\r\n"]) == [Send(b"CAPA\r\n")]
    assert feed(machine, [b"+OK\r\nUSER\r\nSTLS\r\n.\r\n"]) == [Send(b"STLS\r\n")]
    assert feed(machine, [b"+OK go\r\n"]) == [StartTls()]
    assert machine.handle(TlsEstablished()) == [Send(b"USER bob\r\n")]
    required = run_back(b"+OK hi\r\n+OK\r\nUSER\r\n.\r\n", BackendTls.STARTTLS_REQUIRED)
    assert required[-1] == BackendFailed(FailureKind.BACKEND_PROTOCOL, "store offers no STLS")


ENDPOINTS = Endpoints(client=("127.0.0.77", 40001), local=("127.0.0.1", 10110))


@pytest.mark.parametrize("answer", [b"+OK\r\n", b"-ERR not trusted\r\n"])
def test_back_xclient_before_user_whatever_the_answer(answer: bytes) -> None:
    def once(chunks: Sequence[bytes]) -> list[Command]:
        machine = Pop3Back("bob", Secret(PASSWORD), BackendTls.NONE, tls_active=False,
                           forward=ForwardClient.ID, endpoints=ENDPOINTS)
        return drive(machine, chunks)

    data = b"+OK [XCLIENT] Dovecot ready.\r\n" + answer + b"+OK\r\n+OK Logged in.\r\n"
    assert same_for_all_splits(data, once) == [
        Send(b"XCLIENT ADDR=127.0.0.77 PORT=40001\r\nUSER bob\r\nPASS good pass  word\r\n",
             secret=True),
        BackendReady(LoginSucceeded()),
    ]


def test_back_plaintext_refused_user_never_gets_the_password() -> None:
    data = (b"+OK hi\r\n"
            b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n")
    commands = run_back(data)
    assert not any(isinstance(c, Send) and c.secret for c in commands)
    assert isinstance(commands[-1], BackendFailed)


@pytest.mark.parametrize("mode", [ForwardClient.PROXY_V1, ForwardClient.PROXY_V2])
def test_back_proxy_header_first(mode: ForwardClient) -> None:
    machine = Pop3Back("bob", Secret(PASSWORD), BackendTls.NONE, tls_active=False,
                       forward=mode, endpoints=ENDPOINTS)
    [header] = machine.start()
    assert isinstance(header, Send)
    assert header.data == (encode_v1 if mode is ForwardClient.PROXY_V1 else encode_v2)(
        ENDPOINTS.client, ENDPOINTS.local)
    assert feed(machine, [b"+OK hi\r\n"]) == [Send(b"USER bob\r\n")]
