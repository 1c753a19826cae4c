"""The harness's own mail stores: two Dovecot 2.3 instances, told apart by a marker.

These pin what the nginx and HAProxy tests rely on: every spelling of a login
reaches the same mailbox, the INBOX's first Subject names the store, a wrong
password is refused quickly (no auth penalty for trusted front ends), and the
TLS listeners present the test CA's certificate.
"""

from __future__ import annotations

import imaplib
import poplib
import time
from collections.abc import Iterator

import pytest

from tests.services.certs import ServerCert, make_test_pki
from tests.services.dovecot import DovecotStore, dovecot_stores
from tests.services.require import require_binary

pytestmark = pytest.mark.integration

USERS_A = {"bob": "bob-secret", "carol": "carol-secret"}
USERS_B = {"dave": "dave-secret"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    require_binary("openssl")
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stores(pki: ServerCert) -> Iterator[dict[str, DovecotStore]]:
    require_binary("dovecot")
    with dovecot_stores(
        {"a": USERS_A, "b": USERS_B}, {"a": "127.0.0.2", "b": "127.0.0.3"}, pki=pki
    ) as started:
        yield started


def _subject_of_first(imap: imaplib.IMAP4) -> bytes:
    typ, _ = imap.select("INBOX", readonly=True)
    assert typ == "OK"
    typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    first = data[0]
    assert isinstance(first, tuple)
    return first[1].strip()


@pytest.mark.parametrize("login", ["bob", "Bob", "BOB@riseup.net", "bob@riseup.net"])
def test_every_spelling_reaches_one_mailbox(stores: dict[str, DovecotStore], login: str) -> None:
    store = stores["a"]
    with imaplib.IMAP4(store.address, store.ports.imap) as imap:
        assert imap.login(login, "bob-secret")[0] == "OK"
        assert _subject_of_first(imap) == b"Subject: store-a"


def test_stores_are_told_apart_by_marker_and_id(stores: dict[str, DovecotStore]) -> None:
    # Same port numbers on both addresses: the map's port is a constant.
    assert stores["a"].ports == stores["b"].ports
    store = stores["b"]
    with imaplib.IMAP4(store.address, store.ports.imap) as imap:
        imap.login("dave", "dave-secret")
        assert _subject_of_first(imap) == b"Subject: store-b"
        typ, _ = imap.xatom("ID", "NIL")
        assert typ == "OK"
        assert imap.untagged_responses["ID"] == [
            b'("name" "Dovecot" "x-authsvc-store" "store-b")'
        ]
    # A user of the other store does not exist here.
    with imaplib.IMAP4(store.address, store.ports.imap) as imap, pytest.raises(imaplib.IMAP4.error):
        imap.login("bob", "bob-secret")


def test_wrong_password_is_refused_without_penalty(stores: dict[str, DovecotStore]) -> None:
    store = stores["a"]
    started = time.monotonic()
    for _ in range(3):
        with (
            imaplib.IMAP4(store.address, store.ports.imap) as imap,
            pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"),
        ):
            imap.login("bob", "wrong")
    # With Dovecot's per-IP penalty the 2nd and 3rd attempts wait 4 s each;
    # without it each takes ~0.5 s.  A loose bound, not a speed test.
    assert time.monotonic() - started < 4


def test_pop3_over_tls_sees_the_marker(stores: dict[str, DovecotStore], pki: ServerCert) -> None:
    store = stores["a"]
    assert store.ports.pop3s is not None
    pop = poplib.POP3_SSL(store.address, store.ports.pop3s, context=pki.client_context())
    try:
        pop.user("carol@riseup.net")
        pop.pass_("carol-secret")
        _, lines, _ = pop.top(1, 0)
        assert b"Subject: store-a" in lines
    finally:
        pop.quit()


def test_delivered_message_is_visible(stores: dict[str, DovecotStore]) -> None:
    store = stores["b"]
    body = b"Subject: delivered\r\n\r\nhello\r\n"
    store.deliver("dave", body)
    with imaplib.IMAP4(store.address, store.ports.imap) as imap:
        imap.login("dave", "dave-secret")
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK"
        count = int(data[0] or b"0")
        typ, fetched = imap.fetch(str(count), "(BODY.PEEK[])")
        first = fetched[0]
        assert isinstance(first, tuple)
        assert first[1] == body
