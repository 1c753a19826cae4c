"""``authsvc proxy`` with the seed's four listeners, real Dovecot stores and a MariaDB map.

The proxy runs as the operator runs it: ``python -m authsvc proxy -c
authsvc.toml``, a foreground process ended by its pid.  The config is the one
the stack harness writes for the seed deployment (tests/services/stack.py);
the stores are the harness's two Dovecots (bob on store b, alice on store a),
told apart by the Subject of INBOX message 1; the map is the seed's
``mailboxes`` table in a database of our own on the shared MariaDB.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.certs import ServerCert, make_test_pki
from tests.services.dovecot import DovecotStore, dovecot_stores
from tests.services.mailclient import (
    imap_first_subject,
    open_imap,
    open_pop3,
    pop3_first_subject,
)
from tests.services.mariadb import TestDatabase, create_test_database, shared_admin
from tests.services.require import require_binary
from tests.services.stack import (
    DOMAIN,
    LISTENERS,
    STORE_ADDRESSES,
    StackOptions,
    pick_listener_ports,
    write_config,
)

pytestmark = pytest.mark.integration

PROXY_ADDRESS = "127.0.0.1"
USERS = {"a": {"alice": "alice-secret"}, "b": {"bob": "bob-secret"}}
#: 20 MB with every byte value but NUL, CR and LF in the body, CRLF line ends.
BIG_BODY = b"".join(bytes(range(14, 256)) * 4 + b"\r\n" for _ in range(20 * 1024 * 1024 // 970))
BIG = b"Subject: big one\r\nFrom: harness@mail.test\r\n\r\n" + BIG_BODY


@dataclass
class ProxyProcess:
    """``python -m authsvc proxy -c CONFIG``, logging to a file."""

    config: Path
    log_path: Path
    ports: dict[str, int]
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "authsvc", "proxy", "-c", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        for port in self.ports.values():
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"authsvc proxy exited:\n{self.log_text()[-2000:]}")
                with contextlib.suppress(OSError), socket.create_connection(
                        (PROXY_ADDRESS, port), timeout=1):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"authsvc proxy did not listen:\n{self.log_text()}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class World:
    pki: ServerCert
    stores: dict[str, DovecotStore]
    proxy: ProxyProcess
    db: TestDatabase
    big_uid_user: str = "bob"

    def port(self, listener: str) -> int:
        return self.proxy.ports[listener]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_binary("dovecot")
    require_binary("openssl")
    root = tmp_path_factory.mktemp("proxy-stack")
    pki = make_test_pki(root / "pki")
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(create_test_database(shared_admin()))
        db.add_mailboxes([(f"bob@{DOMAIN}", STORE_ADDRESSES["b"]),
                          (f"alice@{DOMAIN}", STORE_ADDRESSES["a"])])
        stores = stack.enter_context(dovecot_stores(USERS, STORE_ADDRESSES, pki=pki))
        stores["b"].deliver("bob", BIG)
        ports = pick_listener_ports([PROXY_ADDRESS], [], 0)
        config = write_config(
            root / "authsvc.toml", db=db, password_file=db.write_password_file(root / "pw"),
            pki=pki, listener_ports=ports, store_ports=stores["a"].ports,
            options=StackOptions(),
        )
        proxy = ProxyProcess(config, root / "proxy.log", ports)
        stack.callback(proxy.stop)
        proxy.start()
        yield World(pki, stores, proxy, db)


def tls_of(listener: str) -> str:
    return LISTENERS[listener][1]


@pytest.mark.parametrize("listener", list(LISTENERS))
@pytest.mark.parametrize("login", ["Bob", "BOB@riseup.net", "bob"])
def test_seed_spellings_land_on_the_mapped_store(world: World, listener: str, login: str) -> None:
    context = world.pki.client_context()
    if LISTENERS[listener][0] == "imap":
        imap = open_imap(PROXY_ADDRESS, world.port(listener), tls=tls_of(listener),
                         context=context)
        status, data = imap.login(login, "bob-secret")
        assert status == "OK"
        assert data[0].startswith(b"[CAPABILITY IMAP4rev1 ")  # the store's, on our OK
        assert imap_first_subject(imap) == "store-b"
        imap.logout()
    else:
        pop = open_pop3(PROXY_ADDRESS, world.port(listener), tls=tls_of(listener),
                        context=context)
        pop.user(login)
        assert pop.pass_("bob-secret") == b"+OK Logged in."
        assert pop3_first_subject(pop) == "store-b"
        pop.quit()


def test_imaps_does_not_offer_starttls(world: World) -> None:
    imap = open_imap(PROXY_ADDRESS, world.port("imaps"), tls="implicit",
                     context=world.pki.client_context())
    assert b"STARTTLS" not in imap.welcome
    imap.logout()
    imap = open_imap(PROXY_ADDRESS, world.port("imap4"), tls="none")
    assert b" STARTTLS " in imap.welcome
    imap.logout()


def test_wrong_password_then_retry_and_unknown_user_same_reply(world: World) -> None:
    imap = open_imap(PROXY_ADDRESS, world.port("imap4"), tls="starttls",
                     context=world.pki.client_context())
    refusals = []
    for login, password in (("bob", "wrong"), ("nosuchuser", "whatever")):
        with pytest.raises(imaplib.IMAP4.error) as caught:
            imap.login(login, password)
        refusals.append(caught.value.args[0])
    assert refusals == [b"[AUTHENTICATIONFAILED] Authentication failed."] * 2
    assert imap.login("bob", "bob-secret")[0] == "OK"
    imap.logout()

    pop = open_pop3(PROXY_ADDRESS, world.port("pop3s"), tls="implicit",
                    context=world.pki.client_context())
    answers = []
    for login, password in (("bob", "wrong"), ("nosuchuser", "whatever")):
        pop.user(login)
        with pytest.raises(poplib.error_proto) as failed:
            pop.pass_(password)
        answers.append(failed.value.args[0])
    assert answers == [b"-ERR [AUTH] Authentication failed."] * 2
    pop.user("bob")
    assert pop.pass_("bob-secret") == b"+OK Logged in."
    pop.quit()


def _fetch_big(imap: imaplib.IMAP4) -> bytes:
    imap.select("INBOX", readonly=True)
    status, found = imap.search(None, "SUBJECT", '"big one"')
    assert status == "OK"
    [number] = found[0].split()
    status, data = imap.fetch(number.decode(), "(BODY.PEEK[])")
    assert status == "OK"
    part = data[0]
    assert isinstance(part, tuple)
    return part[1]


@pytest.mark.parametrize("listener", ["imaps", "imap4"])
def test_twenty_megabyte_fetch_is_byte_exact(world: World, listener: str) -> None:
    imap = open_imap(PROXY_ADDRESS, world.port(listener), tls=tls_of(listener) if
                     listener == "imaps" else "none", context=world.pki.client_context())
    imap.login("bob", "bob-secret")
    assert _fetch_big(imap) == BIG
    imap.logout()


def _raw(listener: str, world: World) -> socket.socket:
    sock = socket.create_connection((PROXY_ADDRESS, world.port(listener)), timeout=10)
    sock.recv(4096)  # greeting
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_login_and_select_in_one_write_both_answered(world: World) -> None:
    sock = _raw("imap4", world)
    sock.sendall(b"a1 LOGIN bob bob-secret\r\na2 SELECT INBOX\r\n")
    data = _read_until(sock, b"a2 OK")
    assert b"a1 OK [CAPABILITY " in data
    assert b"a2 OK [READ-WRITE] Select completed" in data
    sock.close()


def test_idle_sees_new_mail(world: World) -> None:
    sock = _raw("imap4", world)
    sock.sendall(b"a LOGIN alice alice-secret\r\nb SELECT INBOX\r\n")
    data = _read_until(sock, b"b OK")
    exists = int(data.split(b" EXISTS")[0].rsplit(b"* ", 1)[1])
    sock.sendall(b"c IDLE\r\n")
    assert _read_until(sock, b"\r\n").startswith(b"+ idling")
    world.stores["a"].deliver("alice", b"Subject: while idle\r\n\r\nhello\r\n")
    assert b"* %d EXISTS" % (exists + 1) in _read_until(sock, b"* %d EXISTS" % (exists + 1))
    sock.sendall(b"DONE\r\n")
    assert b"c OK Idle completed" in _read_until(sock, b"c OK")
    sock.close()


def test_log_has_one_line_per_session_and_no_password(world: World) -> None:
    sock = _raw("imap4", world)
    host, port = sock.getsockname()[:2]
    client = f"{host}:{port}"
    sock.sendall(b"a LOGIN Bob bob-wrong\r\nb LOGIN Bob bob-secret\r\nc LOGOUT\r\n")
    _read_until(sock, b"c OK")
    sock.close()
    mine: list[str] = []
    for _ in range(100):
        text = world.proxy.log_text()
        mine = [line for line in text.splitlines()
                if "event=session " in line and f"client={client} " in line]
        if mine:
            break
        time.sleep(0.05)
    [line] = mine
    assert "listener=imap4" in line
    assert "login=Bob" in line
    assert f"backend={STORE_ADDRESSES['b']}:" in line
    assert "result=ok attempts=2" in line
    assert "event=login_failed" in text
    for secret in ("bob-secret", "alice-secret", "bob-wrong"):
        assert secret not in text


def test_killing_one_store_leaves_the_other_sessions_working(world: World) -> None:
    bob = _raw("imap4", world)
    bob.sendall(b"a LOGIN bob bob-secret\r\n")
    assert b"a OK" in _read_until(bob, b"a OK")
    alice = _raw("imap4", world)
    alice.sendall(b"a LOGIN alice alice-secret\r\nb SELECT INBOX\r\n")
    assert b"b OK" in _read_until(alice, b"b OK")
    store_a = world.stores["a"]
    store_a.stop()
    try:
        # alice's session ends with her store (Dovecot says BYE, then closes
        # some seconds later); bob's goes on.
        assert b"* BYE" in _read_until(alice, b"* BYE")
        bob.sendall(b"b SELECT INBOX\r\nc NOOP\r\n")
        assert b"c OK" in _read_until(bob, b"c OK")
        # A new login for alice is a temporary failure, not a wrong password.
        sock = _raw("imap4", world)
        sock.sendall(b"a LOGIN alice alice-secret\r\n")
        assert b"a NO [UNAVAILABLE]" in _read_until(sock, b"a NO")
        sock.close()
    finally:
        alice.close()
        bob.close()
        store_a.start()
