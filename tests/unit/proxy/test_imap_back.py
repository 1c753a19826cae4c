"""ImapBack: the login at an IMAP store, identical at every split of the store's bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from authsvc.proxy.events import (
    BackendFailed,
    BackendReady,
    Command,
    ConnectionClosed,
    DataReceived,
    Endpoints,
    LoginSucceeded,
    Send,
    StartTls,
    TlsEstablished,
)
from authsvc.proxy.imap.back import LOGINDISABLED_REASON, ImapBack
from authsvc.proxy.imap.serialise import astring, login_command
from authsvc.proxy.proxy_protocol import encode_v2

from authsvc.redact import Secret
from authsvc.routing import FailureKind
from authsvc.settings import BackendTls, ForwardClient
from tests.helpers.feed import same_for_all_splits
from tests.unit.proxy.machines import feed, merge

DOVECOT_GREETING = (
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ "
    b"AUTH=PLAIN] Dovecot ready.\r\n"
)
#: A greeting with capabilities: over plaintext the machine logs in at once.
HI = b"* OK [CAPABILITY IMAP4rev1] hi\r\n"

PASSWORD = "s3cr3t"


def back(login: str = "bob", password: str = PASSWORD,
         tls: BackendTls = BackendTls.NONE) -> ImapBack:
    return ImapBack(login, Secret(password), tls, tls_active=False)


def drive(machine: ImapBack, chunks: Sequence[bytes]) -> list[Command]:
    """As the session does: stop feeding once the machine is done; later bytes are leftover."""
    out: list[Command] = []
    rest = b""
    for chunk in chunks:
        if out and isinstance(out[-1], BackendReady | BackendFailed):
            rest += chunk
        else:
            out += machine.handle(DataReceived(chunk))
    if out and isinstance(out[-1], BackendReady):
        result = out[-1].result
        out[-1] = BackendReady(replace(result, leftover=result.leftover + rest))
    return merge(out)


def run(data: bytes, **kw: object) -> list[Command]:
    def once(chunks: Sequence[bytes]) -> list[Command]:
        return drive(back(**kw), chunks)  # type: ignore[arg-type]

    return same_for_all_splits(data, once)


def test_plain_login_with_capabilities_on_the_ok() -> None:
    data = DOVECOT_GREETING + b"A1 OK [CAPABILITY IMAP4rev1 IDLE SORT] Logged in\r\n"
    assert run(data) == [
        Send(b"A1 LOGIN bob s3cr3t\r\n", secret=True),
        BackendReady(LoginSucceeded("IMAP4rev1 IDLE SORT")),
    ]


def test_untagged_capability_and_alerts_are_collected_and_leftover_kept() -> None:
    data = (
        b"* OK [CAPABILITY IMAP4rev1] ready\r\n* CAPABILITY IMAP4rev1 X-OLD\r\n"
        b"* OK [ALERT] Maintenance at noon\r\n* CAPABILITY IMAP4rev1 MOVE\r\n"
        b"A1 OK Logged in\r\n* 4 EXISTS\r\n"
    )
    assert run(data)[-1] == BackendReady(
        LoginSucceeded("IMAP4rev1 MOVE", (b"* OK [ALERT] Maintenance at noon",), b"* 4 EXISTS\r\n")
    )


def test_asks_for_capabilities_when_the_ok_has_none() -> None:
    data = HI + b"A1 OK Logged in\r\n* CAPABILITY IMAP4rev1 IDLE\r\nA2 OK done\r\n"
    assert run(data) == [
        Send(b"A1 LOGIN bob s3cr3t\r\nA2 CAPABILITY\r\n", secret=True),
        BackendReady(LoginSucceeded("IMAP4rev1 IDLE")),
    ]


def test_synchronising_literals_without_literal_plus() -> None:
    data = HI + b"+ go\r\n+ go\r\nA1 OK [CAPABILITY IMAP4rev1] in\r\n"
    commands = run(data, login="bob smith\xe9", password="p\xe4ss")
    login = "bob smith\xe9".encode()
    assert commands == [
        Send(b"A1 LOGIN {%d}\r\n" % len(login) + login + b" {5}\r\np\xc3\xa4ss\r\n", secret=True),
        BackendReady(LoginSucceeded("IMAP4rev1")),
    ]
    # Each literal waits for the store's "+": nothing is sent before it.
    machine = back(login="bob smith\xe9", password="p\xe4ss")
    assert feed(machine, [HI]) == [Send(b"A1 LOGIN {11}\r\n", secret=True)]
    assert feed(machine, [b"+ go\r\n"]) == [Send(login + b" {5}\r\n", secret=True)]


def test_literal_plus_when_the_store_offers_it() -> None:
    commands = run(DOVECOT_GREETING, password="p\xe4ss")
    assert commands == [Send(b"A1 LOGIN bob {5+}\r\np\xc3\xa4ss\r\n", secret=True)]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"* BYE go away\r\n", FailureKind.BACKEND_PROTOCOL),
        (b"* PREAUTH hi\r\n", FailureKind.BACKEND_PROTOCOL),
        (b"HTTP/1.1 400 Bad\r\n", FailureKind.BACKEND_PROTOCOL),
        (b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\n", FailureKind.BACKEND_PROTOCOL),
        (HI + b"A1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
         FailureKind.BACKEND_AUTH),
        (HI + b"A1 BAD no\r\n", FailureKind.BACKEND_AUTH),
        (HI + b"A1 NO [UNAVAILABLE] later\r\n", FailureKind.BACKEND_PROTOCOL),
        (HI + b"* BYE shutting down\r\n", FailureKind.BACKEND_PROTOCOL),
        (HI + b"+ unexpected\r\n", FailureKind.BACKEND_PROTOCOL),
    ],
)
def test_failures(data: bytes, kind: FailureKind) -> None:
    failed = [c for c in run(data) if isinstance(c, BackendFailed)]
    assert [f.kind for f in failed] == [kind]
    assert "s3cr3t" not in failed[0].reason


def test_store_closing_mid_login() -> None:
    machine = back()
    feed(machine, [HI])
    [failed] = machine.handle(ConnectionClosed())
    assert isinstance(failed, BackendFailed)
    assert failed.kind is FailureKind.BACKEND_PROTOCOL


def test_starttls_to_the_store() -> None:
    machine = back(tls=BackendTls.STARTTLS)
    assert feed(machine, [b"* OK hi\r\n"]) == [Send(b"A1 CAPABILITY\r\n")]
    assert feed(machine, [b"* CAPABILITY IMAP4rev1 STARTTLS\r\nA1 OK\r\n"]) == [
        Send(b"A2 STARTTLS\r\n")]
    assert feed(machine, [b"A2 OK go\r\n"]) == [StartTls()]
    assert merge(machine.handle(TlsEstablished())) == [
        Send(b"A3 LOGIN bob s3cr3t\r\n", secret=True)]


def test_store_bytes_behind_starttls_ok_are_injection() -> None:
    data = b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\nA1 OK go\r\n* OK fake\r\n"
    # Whether the fake line comes with the OK or after it, the login fails.
    last = same_for_all_splits(
        data, lambda chunks: drive(back(tls=BackendTls.STARTTLS), chunks)[-1]
    )
    assert last == BackendFailed(FailureKind.BACKEND_PROTOCOL, "data after STARTTLS OK")


def test_required_starttls_missing_fails_optional_goes_plain() -> None:
    greeting = HI
    assert isinstance(run(greeting, tls=BackendTls.STARTTLS_REQUIRED)[-1], BackendFailed)
    assert run(greeting, tls=BackendTls.STARTTLS) == [
        Send(b"A1 LOGIN bob s3cr3t\r\n", secret=True)]


@pytest.mark.parametrize(
    ("value", "literal_plus", "expected"),
    [
        (b"bob", False, [b"bob"]),
        (b"bob@riseup.net", False, [b"bob@riseup.net"]),
        (b"a b", False, [b'"a b"']),
        (b'q"\\', False, [b'"q\\"\\\\"']),
        (b"", False, [b'""']),
        (b"p\xc3\xa4ss", False, [b"{5}\r\n", b"p\xc3\xa4ss"]),
        (b"p\xc3\xa4ss", True, [b"{5+}\r\np\xc3\xa4ss"]),
        (b"a\rb", False, [b"{3}\r\n", b"a\rb"]),
    ],
)
def test_astring(value: bytes, literal_plus: bool, expected: list[bytes]) -> None:
    assert astring(value, literal_plus) == expected


def test_login_command_segments() -> None:
    assert login_command("A1", b"bob", b"x y", False) == [b'A1 LOGIN bob "x y"\r\n']
    assert login_command("A1", b"\xff", b"\xfe", False) == [
        b"A1 LOGIN {1}\r\n", b"\xff {1}\r\n", b"\xfe\r\n"]


def test_nothing_after_done() -> None:
    machine = back()
    feed(machine, [HI + b"A1 OK [CAPABILITY IMAP4rev1] in\r\n"])
    assert machine.handle(DataReceived(b"* 1 EXISTS\r\n")) == []


# --- no password where LOGINDISABLED is advertised; client address forwarding -----------

ENDPOINTS = Endpoints(client=("127.0.0.77", 40001), local=("127.0.0.1", 10143))


def test_plaintext_greeting_without_capabilities_asks_before_the_password() -> None:
    data = b"* OK hi\r\n* CAPABILITY IMAP4rev1 ID\r\nA1 OK done\r\nA2 OK [CAPABILITY X] in\r\n"
    assert run(data) == [
        Send(b"A1 CAPABILITY\r\nA2 LOGIN bob s3cr3t\r\n", secret=True),
        BackendReady(LoginSucceeded("X")),
    ]
    machine = back()
    assert feed(machine, [b"* OK hi\r\n"]) == [Send(b"A1 CAPABILITY\r\n")]


@pytest.mark.parametrize("data", [
    b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\n",
    b"* OK hi\r\n* CAPABILITY IMAP4rev1 LOGINDISABLED STARTTLS\r\nA1 OK done\r\n",
])
def test_logindisabled_over_plaintext_never_gets_a_password(data: bytes) -> None:
    commands = run(data)
    assert not any(isinstance(c, Send) and c.secret for c in commands)
    assert commands[-1] == BackendFailed(FailureKind.BACKEND_PROTOCOL, LOGINDISABLED_REASON)


def test_capability_reply_without_a_list_still_logs_in() -> None:
    assert run(b"* OK hi\r\nA1 OK nothing to say\r\n") == [
        Send(b"A1 CAPABILITY\r\nA2 LOGIN bob s3cr3t\r\n", secret=True)]


def test_no_capability_question_over_implicit_tls() -> None:
    machine = ImapBack("bob", Secret(PASSWORD), BackendTls.IMPLICIT, tls_active=True)
    assert feed(machine, [b"* OK hi\r\n"]) == [Send(b"A1 LOGIN bob s3cr3t\r\n", secret=True)]


def forwarding(mode: ForwardClient) -> ImapBack:
    return ImapBack("bob", Secret(PASSWORD), BackendTls.NONE, tls_active=False, forward=mode,
                    endpoints=ENDPOINTS)


@pytest.mark.parametrize("reply", [b"* ID (\"name\" \"Dovecot\")\r\nA1 OK done\r\n",
                                   b"A1 BAD unknown command\r\n"])
def test_id_forwarding_before_login_whatever_the_answer(reply: bytes) -> None:
    data = DOVECOT_GREETING + reply + b"A2 OK [CAPABILITY IMAP4rev1] in\r\n"
    commands = same_for_all_splits(
        data, lambda chunks: drive(forwarding(ForwardClient.ID), chunks))
    assert commands == [
        Send(b'A1 ID ("x-originating-ip" "127.0.0.77" "x-originating-port" "40001" '
             b'"x-connected-ip" "127.0.0.1" "x-connected-port" "10143")\r\n'
             b"A2 LOGIN bob s3cr3t\r\n", secret=True),
        BackendReady(LoginSucceeded("IMAP4rev1")),
    ]
    machine = forwarding(ForwardClient.ID)
    [id_command] = feed(machine, [DOVECOT_GREETING])
    assert isinstance(id_command, Send)
    assert not id_command.secret


def test_id_goes_after_starttls() -> None:
    machine = ImapBack("bob", Secret(PASSWORD), BackendTls.STARTTLS, tls_active=False,
                       forward=ForwardClient.ID, endpoints=ENDPOINTS)
    assert feed(machine, [b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n"]) == [
        Send(b"A1 STARTTLS\r\n")]
    assert feed(machine, [b"A1 OK go\r\n"]) == [StartTls()]
    [sent] = machine.handle(TlsEstablished())
    assert isinstance(sent, Send)
    assert sent.data.startswith(b'A2 ID ("x-originating-ip" "127.0.0.77"')


@pytest.mark.parametrize(("mode", "header"), [
    (ForwardClient.PROXY_V1, b"PROXY TCP4 127.0.0.77 127.0.0.1 40001 10143\r\n"),
    (ForwardClient.PROXY_V2, encode_v2(ENDPOINTS.client, ENDPOINTS.local)),
    (ForwardClient.NONE, None),
])
def test_proxy_header_goes_first(mode: ForwardClient, header: bytes | None) -> None:
    machine = forwarding(mode)
    assert machine.start() == ([Send(header)] if header else [])
    assert feed(machine, [DOVECOT_GREETING]) == [Send(b"A1 LOGIN bob s3cr3t\r\n", secret=True)]
