"""End to end through nginx: client -> nginx (rendered) -> authsvc serve -> MariaDB map -> Dovecot.

One stack for the module (``tests/services/stack.py``): the seed deployment's
four listeners on 127.0.0.10, two stores told apart by the Subject of INBOX
message 1 (``store-a`` on 127.0.0.2, ``store-b`` on 127.0.0.3).  Bob lives on
store b.  Clients connect from 127.0.0.77 (``mailclient.py``).
"""

from __future__ import annotations

import hashlib
import imaplib
import os
import poplib
import time
from collections.abc import Callable, Iterator

import pytest

from tests.services.mailclient import (
    CLIENT_ADDRESS,
    RawLines,
    curl,
    imap_first_subject,
    open_imap,
    open_pop3,
    pop3_first_subject,
)
from tests.services.mariadb import PrivateMariaDb
from tests.services.require import require_binary
from tests.services.stack import SEED_IMAP_CAPABILITY, Stack, StackOptions, running_stack

pytestmark = pytest.mark.integration

AUTH_WAIT = 1
TEMPORARY = "Temporary server problem, try again later"
INVALID = "Invalid login or password"


@pytest.fixture(scope="module")
def stack(private_mariadb_server: PrivateMariaDb) -> Iterator[Stack]:
    for binary in ("nginx", "dovecot", "openssl", "curl"):
        require_binary(binary)
    with running_stack(StackOptions(nodes=1, auth_wait=AUTH_WAIT),
                       mariadb=private_mariadb_server) as started:
        yield started


def _imap_login(stack: Stack, tls: str, login: str, password: str) -> str:
    port = stack.port("imaps" if tls == "implicit" else "imap4")
    imap = open_imap(stack.front_address, port, tls=tls, context=stack.pki.client_context())
    try:
        imap.login(login, password)
        return imap_first_subject(imap)
    finally:
        imap.logout()


def _pop3_login(stack: Stack, tls: str, login: str, password: str) -> str:
    port = stack.port("pop3s" if tls == "implicit" else "pop3")
    pop = open_pop3(stack.front_address, port, tls=tls, context=stack.pki.client_context())
    try:
        pop.user(login)
        pop.pass_(password)
        return pop3_first_subject(pop)
    finally:
        pop.quit()


TRANSPORTS: dict[str, tuple[Callable[[Stack, str, str, str], str], str, str]] = {
    # name: (client, tls, listener that must appear in authsvc's decision)
    "imap+starttls": (_imap_login, "starttls", "imap4"),
    "imaps": (_imap_login, "implicit", "imaps"),
    "pop3+stls": (_pop3_login, "starttls", "pop3"),
    "pop3s": (_pop3_login, "implicit", "pop3s"),
}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("login", ["Bob", "bob", "BOB@riseup.net"])
def test_every_spelling_reaches_the_mapped_store(
    stack: Stack, transport: str, login: str
) -> None:
    client, tls, listener = TRANSPORTS[transport]
    serve = stack.nodes[0].serve
    before = len(serve.decisions(settle=True))
    assert client(stack, tls, login, "bob-secret") == "store-b"
    decision = serve.wait_for_decision(since=before, login=login, listener=listener)
    assert decision["key"] == "bob@riseup.net"
    port = stack.store_ports.imap if listener.startswith("imap") else stack.store_ports.pop3
    assert decision["backend"] == f"127.0.0.3:{port}"
    assert decision["client"] == CLIENT_ADDRESS
    assert decision["ssl"] == "on"


def test_a_user_of_the_other_store_reaches_it(stack: Stack) -> None:
    alice = stack.user("alice@riseup.net")
    assert _imap_login(stack, "starttls", "Alice", alice.password) == "store-a"
    user = stack.users_on("b")[5]
    assert _pop3_login(stack, "implicit", user.local, user.password) == "store-b"


@pytest.mark.parametrize(
    ("scheme", "listener", "starttls"),
    [("imap", "imap4", True), ("imaps", "imaps", False), ("pop3", "pop3", True),
     ("pop3s", "pop3s", False)],
)
def test_curl_fetches_from_the_mapped_store(
    stack: Stack, scheme: str, listener: str, starttls: bool
) -> None:
    path = "INBOX;MAILINDEX=1" if scheme.startswith("imap") else "1"
    url = f"{scheme}://{stack.front_address}:{stack.port(listener)}/{path}"
    result = curl(url, "BOB@riseup.net", "bob-secret", cafile=str(stack.pki.ca),
                  starttls=starttls)
    assert result.returncode == 0, result.stderr
    assert b"\r\nSubject: store-b\r\n" in result.stdout


def test_curl_wrong_password_is_denied(stack: Stack) -> None:
    url = f"imap://{stack.front_address}:{stack.port('imap4')}/INBOX;MAILINDEX=1"
    result = curl(url, "bob", "not-bobs", cafile=str(stack.pki.ca), starttls=True)
    assert result.returncode == 67, result.stderr  # CURLE_LOGIN_DENIED


# -- what a client sees before login ------------------------------------------------

#: nginx's own additions to imap_capabilities: AUTH=PLAIN (imap_auth plain) and,
#: on a STARTTLS listener before TLS, STARTTLS (nginx mail_imap module).
SEED_CAPS = b" ".join(word.encode() for word in SEED_IMAP_CAPABILITY)


def test_imap_capabilities_before_and_after_starttls(stack: Stack) -> None:
    context = stack.pki.client_context()
    with RawLines(stack.front_address, stack.port("imap4")) as conn:
        assert conn.line() == b"* OK IMAP4 ready\r\n"
        assert conn.command(b"a CAPABILITY", b"a") == [
            b"* CAPABILITY " + SEED_CAPS + b" AUTH=PLAIN STARTTLS\r\n",
            b"a OK completed\r\n",
        ]
        assert conn.command(b"b STARTTLS", b"b") == [b"b OK completed\r\n"]
        conn.starttls(context)
        assert conn.command(b"c CAPABILITY", b"c") == [
            b"* CAPABILITY " + SEED_CAPS + b" AUTH=PLAIN\r\n",
            b"c OK completed\r\n",
        ]


def test_imaps_capabilities(stack: Stack) -> None:
    with RawLines(stack.front_address, stack.port("imaps"),
                  context=stack.pki.client_context()) as conn:
        assert conn.line() == b"* OK IMAP4 ready\r\n"
        assert conn.command(b"a CAPABILITY", b"a") == [
            b"* CAPABILITY " + SEED_CAPS + b" AUTH=PLAIN\r\n",
            b"a OK completed\r\n",
        ]


def _capa(conn: RawLines) -> list[bytes]:
    conn.send(b"CAPA\r\n")
    lines = [conn.line()]
    while lines[-1] not in (b".\r\n", b""):
        lines.append(conn.line())
    return lines


def test_pop3_capabilities_before_and_after_stls(stack: Stack) -> None:
    # The seed has no POP3 capability option: nginx's default pop3_capabilities
    # (TOP USER UIDL), its SASL line for pop3_auth plain, and STLS before TLS.
    with RawLines(stack.front_address, stack.port("pop3")) as conn:
        assert conn.line() == b"+OK POP3 ready\r\n"
        assert _capa(conn) == [b"+OK Capability list follows\r\n", b"TOP\r\n", b"USER\r\n",
                               b"UIDL\r\n", b"SASL PLAIN LOGIN\r\n", b"STLS\r\n", b".\r\n"]
        assert conn.command(b"STLS") == [b"+OK\r\n"]
        conn.starttls(stack.pki.client_context())
        assert _capa(conn) == [b"+OK Capability list follows\r\n", b"TOP\r\n", b"USER\r\n",
                               b"UIDL\r\n", b"SASL PLAIN LOGIN\r\n", b".\r\n"]


# -- refusals ------------------------------------------------------------------------


def test_wrong_password_is_refused_by_the_store_and_nginx_closes(stack: Stack) -> None:
    serve = stack.nodes[0].serve
    before = len(serve.decisions(settle=True))
    with RawLines(stack.front_address, stack.port("imap4")) as conn:
        conn.line()
        # The store's own refusal, passed through (proxy_pass_error_message on).
        assert conn.command(b"a LOGIN bob wrong-password", b"a") == [
            b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        ]
        assert conn.closed_by_peer()
    # authsvc routed it (it checks no passwords); the store said no.
    serve.wait_for_decision(since=before, login="bob", listener="imap4", result="ok")


def test_wrong_password_pop3(stack: Stack) -> None:
    with RawLines(stack.front_address, stack.port("pop3")) as conn:
        conn.line()
        assert conn.command(b"USER bob") == [b"+OK\r\n"]
        assert conn.command(b"PASS wrong-password") == [b"-ERR [AUTH] Authentication failed.\r\n"]
        assert conn.closed_by_peer()


def test_unknown_user_is_refused_after_auth_wait_and_may_retry(stack: Stack) -> None:
    serve = stack.nodes[0].serve
    before = len(serve.decisions(settle=True))
    with RawLines(stack.front_address, stack.port("imap4")) as conn:
        conn.line()
        started = time.monotonic()
        assert conn.command(b"a LOGIN nosuchuser whatever", b"a") == [
            b"a NO " + INVALID.encode() + b"\r\n"
        ]
        # nginx held the answer for Auth-Wait seconds (a delay, not a speed check).
        assert time.monotonic() - started >= AUTH_WAIT - 0.05
        # The session stays open: the client may try again, and succeed.
        reply = conn.command(b"b LOGIN Bob bob-secret", b"b")
        assert reply[-1].startswith(b"b OK ")
        assert conn.command(b"c SELECT INBOX", b"c")[-1].startswith(b"c OK ")
        fetched = conn.command(b"d FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])", b"d")
        assert b"Subject: store-b\r\n" in fetched
    refused = serve.wait_for_decision(since=before, login="nosuchuser", result="no_route")
    assert refused["key"] == "nosuchuser@riseup.net"
    assert refused["attempt"] == "1"
    assert serve.wait_for_decision(since=before, login="Bob", attempt="2", result="ok")


# -- sessions after login --------------------------------------------------------------


def test_20mb_message_is_fetched_byte_exact(stack: Stack) -> None:
    user = stack.users_on("a")[7]
    body = os.urandom(15 * 1024 * 1024).hex()  # 30 MB of hex: cut to 20 MB below
    lines = [body[i:i + 998] for i in range(0, 20 * 1024 * 1024, 998)]
    message = (b"Subject: big\r\nMessage-ID: <big@mail.test>\r\n\r\n"
               + "\r\n".join(lines).encode() + b"\r\n")
    assert len(message) > 20 * 1024 * 1024
    stack.stores["a"].deliver(user.local, message)
    imap = open_imap(stack.front_address, stack.port("imaps"), tls="implicit",
                     context=stack.pki.client_context())
    try:
        imap.login(user.local, user.password)
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK"
        last = (data[0] or b"").decode()
        typ, fetched = imap.fetch(last, "(BODY.PEEK[])")
        assert typ == "OK"
        first = fetched[0]
        assert isinstance(first, tuple)
        assert hashlib.sha256(first[1]).hexdigest() == hashlib.sha256(message).hexdigest()
        assert len(first[1]) == len(message)
    finally:
        imap.logout()


def test_idle_sees_a_new_message(stack: Stack) -> None:
    user = stack.users_on("b")[11]
    with RawLines(stack.front_address, stack.port("imap4")) as conn:
        conn.line()
        assert conn.command(f"a LOGIN {user.local} {user.password}".encode(),
                            b"a")[-1].startswith(b"a OK ")
        selected = conn.command(b"b SELECT INBOX", b"b")
        assert b"* 1 EXISTS\r\n" in selected
        conn.send(b"c IDLE\r\n")
        assert conn.line().startswith(b"+ ")
        stack.stores["b"].deliver(user.local, b"Subject: while idle\r\n\r\nhello\r\n")
        conn.sock.settimeout(10)  # Dovecot notices the new file (inotify) at once
        assert conn.line() == b"* 2 EXISTS\r\n"
        got = conn.command(b"DONE", b"c")
        assert got[-1].startswith(b"c OK ")


# -- the map's database down -------------------------------------------------------------


def test_database_down_cached_user_logs_in_uncached_gets_temporary_failure(
    stack: Stack,
) -> None:
    cached, uncached = stack.users_on("a")[20], stack.users_on("a")[21]
    assert _imap_login(stack, "starttls", cached.local, cached.password) == "store-a"
    stack.mariadb.stop()
    try:
        assert _imap_login(stack, "starttls", cached.local, cached.password) == "store-a"
        with RawLines(stack.front_address, stack.port("imap4")) as conn:
            conn.line()
            assert conn.command(
                f"a LOGIN {uncached.local} {uncached.password}".encode(), b"a"
            ) == [b"a NO " + TEMPORARY.encode() + b"\r\n"]
        with pytest.raises(poplib.error_proto, match=TEMPORARY):
            _pop3_login(stack, "implicit", uncached.local, uncached.password)
    finally:
        stack.mariadb.start()
    # Back up: the uncached user now logs in.
    assert _imap_login(stack, "starttls", uncached.local, uncached.password) == "store-a"


def test_imaplib_reports_refusal_text(stack: Stack) -> None:
    with pytest.raises(imaplib.IMAP4.error, match=INVALID):
        _imap_login(stack, "implicit", "nobody-here", "x")
