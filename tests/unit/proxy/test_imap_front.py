"""ImapFront: what a client sees before login, identical at every split of its input."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest
from authsvc.proxy.events import (
    Authenticate,
    Close,
    Command,
    ConnectionClosed,
    DataReceived,
    LoginFailed,
    LoginSucceeded,
    Send,
    Splice,
    StartTls,
    TimedOut,
    TlsEstablished,
    Trace,
)
from authsvc.proxy.imap.front import ImapFront, State

from authsvc.routing import FailureKind
from authsvc.settings import ListenerSettings, ListenTls, ProxySettings
from tests.helpers.feed import same_for_all_splits
from tests.unit.proxy.machines import PROXY, feed, imap_listener, merge, sent

GREETING_STARTTLS = (
    b"* OK [CAPABILITY IMAP4rev1 IDLE STARTTLS AUTH=PLAIN SASL-IR] authsvc ready.\r\n"
)


def wire_only(commands: Sequence[Command]) -> list[Command]:
    return merge([c for c in commands if not isinstance(c, Trace)])


def run(
    data: bytes,
    listener: ListenerSettings | None = None,
    proxy: ProxySettings = PROXY,
    *,
    tls_active: bool = False,
) -> list[Command]:
    """Feed ``data`` at every split; all must agree; returns the commands (no traces)."""

    def once(chunks: Sequence[bytes]) -> list[Command]:
        front = ImapFront(listener or imap_listener(), proxy, tls_active=tls_active)
        return wire_only(feed(front, chunks))

    return same_for_all_splits(data, once)


def test_greeting_advertises_starttls_and_plain() -> None:
    front = ImapFront(imap_listener(), PROXY)
    assert front.start() == [Send(GREETING_STARTTLS)]


def test_imaps_never_advertises_starttls_even_when_listed() -> None:
    # The seed's imaps file lists STARTTLS; port 993 must not offer it.
    listener = imap_listener(ListenTls.IMPLICIT, capability=("IMAP4rev1 IDLE STARTTLS",))
    front = ImapFront(listener, PROXY, tls_active=True)
    assert front.capabilities() == "IMAP4rev1 IDLE AUTH=PLAIN SASL-IR"
    assert run(b"a STARTTLS\r\n", listener, tls_active=True) == [
        Send(b"a BAD TLS is already active.\r\n")
    ]


def test_plain_listener_without_tls_offers_no_starttls() -> None:
    listener = imap_listener(ListenTls.NONE)
    assert ImapFront(listener, PROXY).capabilities() == "IMAP4rev1 IDLE AUTH=PLAIN SASL-IR"
    assert run(b"a STARTTLS\r\n", listener) == [Send(b"a BAD STARTTLS is not available here.\r\n")]


def test_default_capability_when_none_configured() -> None:
    front = ImapFront(imap_listener(ListenTls.NONE, capability=()), PROXY)
    assert front.capabilities() == "IMAP4rev1 AUTH=PLAIN SASL-IR"


def test_operator_auth_mechanisms_are_replaced_by_ours() -> None:
    listener = imap_listener(ListenTls.NONE, capability=("IMAP4rev1 AUTH=CRAM-MD5 auth=plain",))
    assert ImapFront(listener, PROXY).capabilities() == "IMAP4rev1 AUTH=PLAIN SASL-IR"


def test_tls_required_disables_login_until_tls() -> None:
    listener = imap_listener(tls_required=True)
    front = ImapFront(listener, PROXY)
    assert front.capabilities() == "IMAP4rev1 IDLE STARTTLS LOGINDISABLED"
    assert run(b"a LOGIN bob secret\r\nb AUTHENTICATE PLAIN\r\n", listener) == [
        Send(
            b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure "
            b"connections.\r\n"
            b"b NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure "
            b"connections.\r\n"
        )
    ]
    front.handle(TlsEstablished())
    assert front.capabilities() == "IMAP4rev1 IDLE AUTH=PLAIN SASL-IR"


def test_capability_noop_id_logout() -> None:
    data = b"a CAPABILITY\r\nb NOOP\r\nc ID NIL\r\nd ID (\"name\" \"x\")\r\ne LOGOUT\r\nf NOOP\r\n"
    assert run(data) == [
        Send(
            b"* CAPABILITY IMAP4rev1 IDLE STARTTLS AUTH=PLAIN SASL-IR\r\n"
            b"a OK CAPABILITY completed.\r\n"
            b"b OK NOOP completed.\r\n"
            b"* ID NIL\r\nc OK ID completed.\r\n"
            b"* ID NIL\r\nd OK ID completed.\r\n"
            b"* BYE Logging out.\r\ne OK LOGOUT completed.\r\n"
        ),
        Close("logout"),
    ]


def test_starttls_drops_pipelined_commands() -> None:
    # RFC 2595 §3.1: "b LOGIN" was sent in plaintext behind STARTTLS: never run.
    data = b"a STARTTLS\r\nb LOGIN bob secret\r\n"
    assert run(data) == [Send(b"a OK Begin TLS negotiation now.\r\n"), StartTls()]
    front = ImapFront(imap_listener(), PROXY)
    feed(front, [data])
    assert front.state is State.STARTING_TLS
    assert front.handle(TlsEstablished()) == []
    assert wire_only(feed(front, [b"c STARTTLS\r\nd CAPABILITY\r\n"])) == [
        Send(
            b"c BAD TLS is already active.\r\n"
            b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN SASL-IR\r\nd OK CAPABILITY completed.\r\n"
        )
    ]


def authenticate(commands: Sequence[Command]) -> Authenticate:
    found = [c for c in commands if isinstance(c, Authenticate)]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize(
    ("data", "login", "password", "continuations"),
    [
        (b"a LOGIN bob s3cr3t\r\n", "bob", "s3cr3t", 0),
        (b'a LOGIN "Bob@riseup.net" "pa ss\\"word"\r\n', "Bob@riseup.net", 'pa ss"word', 0),
        (b"a LOGIN {3}\r\nbob {6}\r\ns3cr3t\r\n", "bob", "s3cr3t", 2),
        (b"a LOGIN bob {6}\r\nsp\xe4ter\r\n", "bob", "sp\udce4ter", 1),  # 8-bit kept
        (b"a login BOB x\n", "BOB", "x", 0),
    ],
)
def test_login(data: bytes, login: str, password: str, continuations: int) -> None:
    commands = run(data)
    auth = authenticate(commands)
    assert auth.credentials.login == login
    assert auth.credentials.password.reveal() == password
    assert auth.credentials.mechanism == "LOGIN"
    assert sent(commands) == b"+ Ready for literal data.\r\n" * continuations
    assert password not in repr(commands)


def test_literal_plus_needs_the_capability() -> None:
    data = b"a LOGIN bob {6+}\r\nsecret\r\nb NOOP\r\n"
    assert run(data) == [
        Send(b"a BAD Non-synchronising literals need LITERAL+.\r\nb OK NOOP completed.\r\n")
    ]
    listener = imap_listener(capability=("IMAP4rev1 LITERAL+",))
    commands = run(data, listener)
    assert authenticate(commands).credentials.password.reveal() == "secret"
    assert sent(commands) == b""


def test_huge_synchronising_literal_is_refused_and_the_connection_goes_on() -> None:
    assert run(b"a LOGIN {4294967295}\r\nb NOOP\r\n") == [
        Send(b"a BAD Literal too large.\r\nb OK NOOP completed.\r\n")
    ]


CONTINUE = b"+ Ready for literal data.\r\n"


def test_a_literal_may_be_max_literal_length_long() -> None:
    # PROXY: max_literal_length 64.  A refused literal is never sent: the
    # client waits for the "+" first.
    accepted = run(b"a LOGIN {64}\r\n" + b"b" * 64 + b" x\r\n")
    assert sent(accepted) == CONTINUE
    assert authenticate(accepted).credentials.login == "b" * 64
    assert sent(run(b"a LOGIN {65}\r\nb NOOP\r\n")) == (
        b"a BAD Literal too large.\r\nb OK NOOP completed.\r\n")


def test_a_command_with_its_literals_may_be_as_long_as_a_line_and_two_literals() -> None:
    # PROXY: 256 + 2 * 64 = 384 bytes.  "a X ", five literals of 64 and a
    # space before each after the first come to 329: a sixth of 55 fits.
    five = b"a X {64}\r\n" + b"x" * 64 + (b" {64}\r\n" + b"x" * 64) * 4
    assert sent(run(five + b" {55}\r\n" + b"y" * 55 + b"\r\n")) == (
        CONTINUE * 6 + b"a BAD Unknown command.\r\n")
    assert sent(run(five + b" {56}\r\nb NOOP\r\n")) == (
        CONTINUE * 5 + b"a BAD Literal too large.\r\nb OK NOOP completed.\r\n")


def test_huge_non_synchronising_literal_closes() -> None:
    listener = imap_listener(capability=("IMAP4rev1 LITERAL+",))
    assert run(b"a LOGIN bob {4294967295+}\r\nxxxx", listener) == [
        Send(b"* BYE Literal too large.\r\n"), Close("literal")
    ]


def test_overlong_line_then_next_command() -> None:
    data = b"a LOGIN " + b"x" * 600 + b"\r\nb NOOP\r\n"
    assert run(data) == [Send(b"* BAD Command line too long.\r\nb OK NOOP completed.\r\n")]


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"\x00\xff\xfe\x80garbage\r\n", b"* BAD Invalid tag.\r\n"),
        (b"a SELECT INBOX\r\n", b"a BAD Unknown command.\r\n"),
        (b"a LOGIN bob\r\n", b"a BAD Wrong number of arguments.\r\n"),
        (b"a LOGIN (bob) x\r\n", b"a BAD Wrong number of arguments.\r\n"),
        (b"a NOOP now\r\n", b"a BAD Wrong number of arguments.\r\n"),
        (b'a LOGIN "bob\x00evil" x\r\n', b"a BAD NUL is not allowed in a quoted string.\r\n"),
        (b"a LOGIN {8}\r\nbob\x00evil x\r\n", b"a BAD NUL is not allowed in a literal.\r\n"),
        (b"a LOGIN bob {3}\r\na\rb\r\n", b"a BAD Login or password contains NUL, CR or LF.\r\n"),
        (b"a ID\r\n", b"a BAD Wrong number of arguments.\r\n"),
    ],
)
def test_bad_commands(data: bytes, reply: bytes) -> None:
    commands = run(data)
    assert sent(commands).endswith(reply)
    assert not any(isinstance(c, Authenticate) for c in commands)


def test_too_many_bad_commands_closes() -> None:
    commands = run(b"a X\r\n" * 6)
    assert commands == [
        Send(b"a BAD Unknown command.\r\n" * 5 + b"* BYE Too many invalid commands.\r\n"),
        Close("too many bad commands"),
    ]


def plain(authzid: bytes, authcid: bytes, password: bytes) -> bytes:
    return base64.b64encode(authzid + b"\0" + authcid + b"\0" + password)


def test_authenticate_plain_with_initial_response() -> None:
    commands = run(b"a AUTHENTICATE PLAIN " + plain(b"", b"bob", b"secret") + b"\r\n")
    creds = authenticate(commands).credentials
    assert (creds.login, creds.password.reveal(), creds.mechanism) == (
        "bob", "secret", "AUTHENTICATE PLAIN")


def test_authenticate_plain_with_continuation_and_same_authzid() -> None:
    data = b"a AUTHENTICATE plain\r\n" + plain(b"bob", b"bob", b"secret") + b"\r\n"
    commands = run(data)
    assert sent(commands) == b"+ \r\n"
    assert authenticate(commands).credentials.login == "bob"


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"a AUTHENTICATE PLAIN\r\n*\r\n", b"+ \r\na BAD AUTHENTICATE cancelled.\r\n"),
        (b"a AUTHENTICATE PLAIN !!!\r\n", b"a BAD Invalid SASL response.\r\n"),
        (b"a AUTHENTICATE PLAIN =\r\n", b"a BAD Invalid SASL response.\r\n"),
        (
            b"a AUTHENTICATE PLAIN " + plain(b"admin", b"bob", b"pw") + b"\r\n",
            b"a NO [AUTHORIZATIONFAILED] Authorization identity not allowed.\r\n",
        ),
        (
            b"a AUTHENTICATE PLAIN " + plain(b"", b"bob\0evil", b"pw") + b"\r\n",
            b"a BAD Invalid SASL response.\r\n",
        ),
        (b"a AUTHENTICATE CRAM-MD5\r\n", b"a NO Unsupported authentication mechanism.\r\n"),
        (b"a AUTHENTICATE PLAIN\r\nabc{5}\r\n", b"+ \r\na BAD Invalid SASL response.\r\n"),
    ],
)
def test_authenticate_refusals(data: bytes, reply: bytes) -> None:
    commands = run(data)
    assert sent(commands) == reply
    assert not any(isinstance(c, Authenticate) for c in commands)


def logging_in(data: bytes = b"a1 LOGIN bob secret\r\n", attempts: int = 3) -> ImapFront:
    front = ImapFront(imap_listener(), ProxySettings(max_login_attempts=attempts))
    authenticate(feed(front, [data]))
    assert front.state is State.LOGGING_IN
    return front


def test_success_relays_capabilities_under_the_client_tag_and_keeps_pipelined_commands() -> None:
    front = logging_in(b"a1 LOGIN bob secret\r\na2 SELECT INBOX\r\n")
    assert front.handle(DataReceived(b"a3 NOOP\r\n")) == []
    result = LoginSucceeded("IMAP4rev1 IDLE", (b"* OK [ALERT] hi",), b"* 3 EXISTS\r\n")
    assert merge(front.handle(result)) == [
        Send(b"* OK [ALERT] hi\r\na1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in.\r\n"),
        Splice(b"a2 SELECT INBOX\r\na3 NOOP\r\n", b"* 3 EXISTS\r\n"),
    ]
    assert front.state is State.SPLICING


@pytest.mark.parametrize(
    ("kind", "reply"),
    [
        (FailureKind.NO_ROUTE, b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
        (FailureKind.BACKEND_AUTH, b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
        (FailureKind.BAD_LOGIN, b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
        (FailureKind.MAP_UNAVAILABLE,
         b"a1 NO [UNAVAILABLE] Account is temporarily unavailable, try again later.\r\n"),
        (FailureKind.BACKEND_CONNECT,
         b"a1 NO [UNAVAILABLE] Account is temporarily unavailable, try again later.\r\n"),
        (FailureKind.BACKEND_PROTOCOL,
         b"a1 NO [UNAVAILABLE] Account is temporarily unavailable, try again later.\r\n"),
    ],
)
def test_failure_replies(kind: FailureKind, reply: bytes) -> None:
    front = logging_in()
    assert front.handle(LoginFailed(kind)) == [Send(reply)]
    assert front.state is State.NOT_AUTHENTICATED


def test_failure_then_buffered_retry_runs() -> None:
    front = logging_in(b"a1 LOGIN bob wrong\r\na2 LOGIN bob right\r\n")
    commands = front.handle(LoginFailed(FailureKind.BACKEND_AUTH))
    assert authenticate(commands).credentials.password.reveal() == "right"


def test_too_many_failures_says_bye_and_closes() -> None:
    front = logging_in(attempts=2)
    front.handle(LoginFailed(FailureKind.BACKEND_AUTH))
    authenticate(feed(front, [b"a2 LOGIN bob again\r\n"]))
    assert merge(front.handle(LoginFailed(FailureKind.BACKEND_AUTH))) == [
        Send(b"a2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
             b"* BYE Too many authentication failures.\r\n"),
        Close("too many login failures"),
    ]


def test_tls_client_hello_on_plain_port_closes() -> None:
    hello = bytes.fromhex("160301020001") + b"\x00" * 20
    assert run(hello) == [Close("TLS handshake on a plaintext port")]


def test_timeout_and_close() -> None:
    front = ImapFront(imap_listener(), PROXY)
    assert front.handle(TimedOut()) == [
        Send(b"* BYE Autologout; idle for too long.\r\n"), Close("login timeout")]
    front = ImapFront(imap_listener(), PROXY)
    assert front.handle(ConnectionClosed()) == [Close("client closed")]


def test_traces_never_hold_the_password() -> None:
    front = ImapFront(imap_listener(), PROXY)
    commands = feed(front, [b"a LOGIN bob s3cret\r\n"])
    traces = [c.text for c in commands if isinstance(c, Trace)]
    assert traces == ["C: a LOGIN 'bob' ***"]
    front = ImapFront(imap_listener(), PROXY)
    ir = plain(b"", b"bob", b"s3cret")
    commands = feed(front, [b"a AUTHENTICATE PLAIN " + ir + b"\r\n"])
    assert [c.text for c in commands if isinstance(c, Trace)] == ["C: a AUTHENTICATE 'PLAIN' ***"]
    assert "s3cret" not in repr(commands)
    assert ir.decode() not in repr(commands)
