"""Hot reload of ``authsvc proxy`` against real Dovecot stores.

The proxy runs as the operator runs it (``python -m authsvc proxy -c
authsvc.toml``), with a popmap and two listeners: plaintext IMAP and
implicit-TLS IMAP with a certificate file we can rotate.  ``carol`` has a
mailbox on both stores, told apart by the Subject of INBOX message 1, so a
route change in the popmap shows in what a real imaplib client reads.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.eventually import eventually
from tests.services.certs import ServerCert, make_ca, make_server_cert
from tests.services.dovecot import DovecotStore, dovecot_stores
from tests.services.mailclient import imap_first_subject, open_imap
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.require import require_binary
from tests.services.stack import STORE_ADDRESSES

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
USERS = {"a": {"alice": "pw-alice", "carol": "pw-carol"},
         "b": {"bob": "pw-bob", "carol": "pw-carol"}}
PASSWORDS = {"alice": "pw-alice", "bob": "pw-bob", "carol": "pw-carol"}


@dataclass
class World:
    root: Path
    stores: dict[str, DovecotStore]
    pki: ServerCert
    rotated: ServerCert
    config: Path
    popmap: Path
    cert: Path
    key: Path
    ports: dict[str, int] = field(default_factory=dict)

    def write_popmap(self, carol_on: str) -> None:
        """Replace the popmap atomically (``mv``), as docs/maps.md asks."""
        port = self.stores["a"].ports.imap
        lines = [f"alice@riseup.net: {STORE_ADDRESSES['a']}:{port}",
                 f"bob@riseup.net: {STORE_ADDRESSES['b']}:{port}",
                 f"carol@riseup.net: {STORE_ADDRESSES[carol_on]}:{port}"]
        tmp = self.popmap.with_suffix(".new")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(self.popmap)

    def write_config(self, *, extra: str = "") -> None:
        self.config.write_text(f"""
[log]
level = "info"

[login]
lower_case = ["all"]
explicit_domain = "riseup.net"
add_domain = ["lookup"]

[cache]
ttl = 300

[map]
type = "file"
path = "{self.popmap}"

[proxy]
drain_timeout = 2
health_listen = "{HOST}:{self.ports['health']}"

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["{HOST}"]
port = {self.ports['imap4']}
login_timeout = 10

[[listener]]
name = "imaps"
protocol = "imap"
tls = "implicit"
bind = ["{HOST}"]
port = {self.ports['imaps']}
cert = "{self.cert}"
key = "{self.key}"
login_timeout = 10
{extra}""")

    def install_cert(self, cert: ServerCert) -> None:
        shutil.copyfile(cert.cert, self.cert)
        shutil.copyfile(cert.key, self.key)


@contextlib.contextmanager
def make_world(root: Path) -> Iterator[World]:
    """Two Dovecot stores, a PKI with two server certificates, ports; no proxy yet."""
    require_binary("dovecot")
    require_binary("openssl")
    ca_cert, ca_key = make_ca(root / "pki")
    pki = make_server_cert(root / "pki", ca_cert, ca_key, stem="first")
    rotated = make_server_cert(root / "pki", ca_cert, ca_key, stem="second")
    with dovecot_stores(USERS, STORE_ADDRESSES) as stores:
        w = World(root, stores, pki, rotated, root / "authsvc.toml", root / "popmap",
                  root / "cert.pem", root / "key.pem",
                  ports={"imap4": free_port(HOST), "imaps": free_port(HOST),
                         "health": free_port(HOST)})
        w.install_cert(pki)
        yield w


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with make_world(tmp_path_factory.mktemp("reload")) as w:
        yield w


@pytest.fixture
def proxy(world: World, tmp_path: Path) -> Iterator[ProxyProcess]:
    world.write_popmap("a")
    world.write_config()
    world.install_cert(world.pki)
    process = ProxyProcess(world.config, tmp_path / "proxy.log")
    process.start(listening=2)
    yield process
    process.stop()


def sighup(proxy: ProxyProcess) -> None:
    assert proxy.process is not None
    os.kill(proxy.process.pid, signal.SIGHUP)


def login_subject(world: World, user: str, *, tls: str = "none") -> str:
    port = world.ports["imaps" if tls == "implicit" else "imap4"]
    context = world.pki.client_context() if tls == "implicit" else None
    imap = open_imap(HOST, port, tls=tls, context=context)
    try:
        imap.login(user, PASSWORDS[user])
        return imap_first_subject(imap)
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


class Load:
    """Threads of real logins (LOGIN, SELECT, FETCH, LOGOUT) until stopped."""

    def __init__(self, world: World, threads: int = 4) -> None:
        self.world = world
        self.stop = threading.Event()
        self.done = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def _run(self, index: int) -> None:
        user, expected = ("alice", "store-a") if index % 2 else ("bob", "store-b")
        tls = "implicit" if index % 3 == 2 else "none"
        while not self.stop.is_set():
            try:
                subject = login_subject(self.world, user, tls=tls)
                error = None if subject == expected else f"{user} read {subject!r}"
            except Exception as exc:  # every failure is a dropped session or a failed login
                error = f"{user}/{tls}: {type(exc).__name__}: {exc}"
            with self._lock:
                if error is None:
                    self.done += 1
                else:
                    self.failures.append(error)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)


def test_sighup_under_load_drops_nothing_and_moves_a_route(
    world: World, proxy: ProxyProcess
) -> None:
    assert login_subject(world, "carol") == "store-a"
    # A session logged in before the reloads stays up and usable through them.
    held = open_imap(HOST, world.ports["imap4"], tls="none")
    held.login("carol", PASSWORDS["carol"])
    with Load(world) as load:
        eventually(lambda: load.done >= 8, what="8 logins under load")
        for _ in range(3):
            sighup(proxy)
            time.sleep(0.3)
            assert held.noop()[0] == "OK"
        world.write_popmap("b")
        sighup(proxy)
        moved_at = time.monotonic()
        subjects = []
        while time.monotonic() - moved_at < 1.0:
            subjects.append(login_subject(world, "carol"))
            if subjects[-1] == "store-b":
                break
        before = load.done
        eventually(lambda: load.done >= before + 8, what="8 more logins after the move")
    assert load.failures == []
    assert subjects[-1] == "store-b", subjects
    assert imap_first_subject(held) == "store-a"  # the old session kept its store
    held.logout()
    assert len(proxy.wait_for("reloaded", 4)) == 4
    assert proxy.lines("reload_failed") == []
    ends = {line.get("end") for line in proxy.lines("session")}
    assert "shutdown" not in ends


def test_invalid_config_keeps_the_old_one_and_is_counted(
    world: World, proxy: ProxyProcess
) -> None:
    assert login_subject(world, "carol") == "store-a"  # now in the route cache
    world.write_config(extra="[bogus]\nkey = 1\n")
    world.write_popmap("b")  # not taken: the reload fails as a whole, the cache stays
    sighup(proxy)
    failed = proxy.wait_for("reload_failed")
    assert failed and "bogus" in failed[0].get("error", "")
    assert login_subject(world, "alice") == "store-a"
    assert login_subject(world, "carol") == "store-a"
    metrics = _get(world.ports["health"], "/metrics")
    assert 'authsvc_reloads_total{result="failed"} 1' in metrics
    world.write_config()
    sighup(proxy)
    assert proxy.wait_for("reloaded")
    assert login_subject(world, "carol") == "store-b"
    assert 'authsvc_reloads_total{result="ok"} 1' in _get(world.ports["health"], "/metrics")


def _peer_cert(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def test_rotated_certificate_is_served_to_new_clients(world: World, proxy: ProxyProcess) -> None:
    first = ssl.PEM_cert_to_DER_cert(world.pki.cert.read_text())
    second = ssl.PEM_cert_to_DER_cert(world.rotated.cert.read_text())
    assert _peer_cert(world.ports["imaps"]) == first
    held = open_imap(HOST, world.ports["imaps"], tls="implicit",
                     context=world.pki.client_context())
    held.login("alice", PASSWORDS["alice"])
    world.install_cert(world.rotated)
    sighup(proxy)
    assert proxy.wait_for("reloaded")
    assert _peer_cert(world.ports["imaps"]) == second
    assert login_subject(world, "bob", tls="implicit") == "store-b"
    assert imap_first_subject(held) == "store-a"  # the TLS session from before carries on
    held.logout()


def test_every_worker_reloads(world: World, tmp_path: Path) -> None:
    world.write_popmap("a")
    world.write_config()
    process = ProxyProcess(world.config, tmp_path / "workers.log", workers=2)
    process.start(listening=4)
    try:
        assert login_subject(world, "carol") == "store-a"
        world.write_popmap("b")
        sighup(process)
        assert len(process.wait_for("reloaded", 2)) == 2
        # SO_REUSEPORT spreads these over both workers; every one must see the move.
        assert {login_subject(world, "carol") for _ in range(12)} == {"store-b"}
    finally:
        process.stop()
    assert process.process is None


def _get(port: int, path: str) -> str:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode(errors="replace")
