"""``authsvc proxy`` behind a real HAProxy and in front of real Dovecot stores.

* HAProxy with ``send-proxy-v2`` (and ``check-send-proxy`` LOCAL health checks,
  TLS checks included) in front of the proxy's IMAPS and POP3S ports: logins
  work, the proxy logs the client's own address; a PROXY header from an
  untrusted peer is refused.
* Forwarding: Dovecot logs the client's address (``rip=127.0.0.77``), not the
  proxy's, with IMAP ``ID``, POP3 ``XCLIENT`` and a PROXY v2 header to a
  ``haproxy = yes`` listener; without forwarding it logs the proxy's.
* TLS to the stores: the right CA works, a wrong one is refused, and
  ``backend_verify = false`` works; STARTTLS to the store too.
* ``connection_limit 3``: the fourth client hears BYE, the fifth, after one
  left, is served.
* ``--workers 2``: sessions land on both workers and ``/metrics`` shows totals.
* Perdition's ``Auth:`` line, as syslog would file it, matches the ``failregex``
  of Debian's fail2ban ``perdition`` filter (tests/helpers/fail2ban.py says how
  the filter is expanded), and ``fail2ban-regex`` itself agrees.

Clients connect from 127.0.0.77 (``tests/services/mailclient.py``); the proxy
and HAProxy's outgoing connections come from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from authsvc.proxy.proxy_protocol import encode_v2

from tests.helpers.eventually import eventually
from tests.helpers.fail2ban import FILTER_DIR, failregexes, logfile_line, match
from tests.helpers.prometheus import Scrape
from tests.services.certs import ServerCert, make_ca, make_test_pki
from tests.services.dovecot import DovecotStore, dovecot_stores
from tests.services.haproxy import running_haproxy, wait_for_status
from tests.services.mailclient import (
    CLIENT_ADDRESS,
    imap_first_subject,
    open_imap,
    open_pop3,
    pop3_first_subject,
)
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.require import require_binary, require_file
from tests.services.stack import STORE_ADDRESSES

pytestmark = pytest.mark.integration

PROXY_ADDRESS = "127.0.0.1"
HAPROXY_ADDRESS = "127.0.0.20"
USERS = {"a": {"alice": "alice-secret"}, "b": {"bob": "bob-secret"}}
LOGIN_RULES = """
[login]
lower_case = ["all"]
explicit_domain = "riseup.net"
add_domain = ["lookup"]
"""


@dataclass
class World:
    root: Path
    pki: ServerCert
    stores: dict[str, DovecotStore]

    @property
    def bob_store(self) -> DovecotStore:
        return self.stores["b"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_binary("dovecot")
    require_binary("openssl")
    root = tmp_path_factory.mktemp("proxy-front-back")
    pki = make_test_pki(root / "pki")
    with dovecot_stores(USERS, STORE_ADDRESSES, pki=pki, haproxy=True) as stores:
        yield World(root, pki, stores)


@dataclass(frozen=True)
class Listener:
    """One ``[[listener]]`` of a test config, routing bob (store b) to ``store_port``."""

    name: str
    protocol: str
    tls: str
    store_port: int
    extra: str = ""
    port: int = 0

    def toml(self, world: World, directory: Path) -> str:
        path = directory / f"{self.name}.map"
        path.write_text(f"bob@riseup.net: {STORE_ADDRESSES['b']}:{self.store_port}\n"
                        f"alice@riseup.net: {STORE_ADDRESSES['a']}:{self.store_port}\n")
        return (f'[[listener]]\nname = "{self.name}"\nprotocol = "{self.protocol}"\n'
                f'tls = "{self.tls}"\nbind = ["{PROXY_ADDRESS}:{self.port}"]\n'
                f'cert = "{world.pki.cert}"\nkey = "{world.pki.key}"\n'
                f"login_timeout = 10\ntimeout = 60\n{self.extra}\n"
                f'[listener.map]\ntype = "file"\npath = "{path}"\n')


@contextlib.contextmanager
def running_proxy(world: World, name: str, listeners: list[Listener], proxy: str = "",
                  workers: int = 1) -> Iterator[tuple[ProxyProcess, dict[str, int]]]:
    """Write the config (free ports), run ``authsvc proxy``, stop it at the end."""
    directory = world.root / name
    directory.mkdir()
    placed = [Listener(**{**ls.__dict__, "port": free_port(PROXY_ADDRESS)}) for ls in listeners]
    text = (f"[proxy]\nauth_failure_delay = 0.2\nbackend_timeout = 5\ndrain_timeout = 1\n"
            f"{proxy}\n{LOGIN_RULES}\n" + "\n".join(ls.toml(world, directory) for ls in placed))
    config = directory / "authsvc.toml"
    config.write_text(text)
    process = ProxyProcess(config, directory / "proxy.log", workers=workers)
    process.start(listening=len(placed) * workers)
    try:
        yield process, {ls.name: ls.port for ls in placed}
    finally:
        process.stop()


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def from_client(port: int, host: str = PROXY_ADDRESS) -> socket.socket:
    return socket.create_connection((host, port), timeout=10,
                                    source_address=(CLIENT_ADDRESS, 0))


# --- HAProxy in front -----------------------------------------------------------------


def haproxy_config(admin: Path, fronts: dict[str, int], nodes: dict[str, int]) -> str:
    """Two TLS frontends, ``send-proxy-v2`` to the proxy; checks force the PROXY
    header (``check-send-proxy``: the LOCAL command) and TLS (``check-ssl``)."""
    checks = {
        "imaps": ['tcp-check expect string "* OK"', 'tcp-check send "a1 LOGOUT\\r\\n"',
                  'tcp-check expect string "* BYE"'],
        "pop3s": ['tcp-check expect string "+OK"', 'tcp-check send "QUIT\\r\\n"',
                  'tcp-check expect string "+OK"'],
    }
    parts = [
        "global",
        f"    stats socket {admin} mode 600 level admin",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout check 2s",
    ]
    for name, front_port in fronts.items():
        parts += [
            f"frontend {name}_in",
            f"    bind {HAPROXY_ADDRESS}:{front_port}",
            f"    default_backend {name}_nodes",
            f"backend {name}_nodes",
            "    option tcp-check",
            *(f"    {line}" for line in checks[name]),
            f"    server px1 {PROXY_ADDRESS}:{nodes[name]} check check-ssl verify none "
            "send-proxy-v2 check-send-proxy inter 300ms fall 2 rise 1",
        ]
    return "\n".join(parts) + "\n"


def test_behind_haproxy_send_proxy_v2_imaps_and_pop3s(world: World) -> None:
    require_binary("haproxy")
    listeners = [
        Listener("imaps", "imap", "implicit", world.bob_store.ports.imap,
                 extra="proxy_protocol = true"),
        Listener("pop3s", "pop3", "implicit", world.bob_store.ports.pop3,
                 extra="proxy_protocol = true"),
    ]
    trusted = f'proxy_protocol_from = ["{PROXY_ADDRESS}/32"]'
    with running_proxy(world, "haproxy", listeners, trusted) as (proxy, ports):
        admin = world.root / "haproxy" / "admin.sock"
        fronts = {name: free_port(HAPROXY_ADDRESS) for name in ports}
        config = haproxy_config(admin, fronts, ports)
        with running_haproxy(config, world.root / "haproxy", admin):
            # HAProxy's LOCAL checks (PROXY header, then TLS, then the banner) pass.
            for name in ports:
                wait_for_status(admin, f"{name}_nodes", "px1", "UP")
            checks = proxy.wait_for("session", listener="imaps", client=PROXY_ADDRESS)
            assert checks and checks[0]["result"] == "no_login"  # LOGOUT, no refusal

            context = world.pki.client_context()
            imap = open_imap(HAPROXY_ADDRESS, fronts["imaps"], tls="implicit", context=context)
            assert imap.login("Bob", "bob-secret")[0] == "OK"
            assert imap_first_subject(imap) == "store-b"
            imap.logout()
            pop = open_pop3(HAPROXY_ADDRESS, fronts["pop3s"], tls="implicit", context=context)
            pop.user("bob")
            assert pop.pass_("bob-secret") == b"+OK Logged in."
            assert pop3_first_subject(pop) == "store-b"
            pop.quit()

        for name in ("imaps", "pop3s"):
            [line] = proxy.wait_for("session", listener=name, client=f"{CLIENT_ADDRESS}:")
            assert line["result"] == "ok"
            assert line["login"].lower() == "bob"
            assert line["via"].startswith(f"{PROXY_ADDRESS}:")  # HAProxy's connection
            assert line["local"].startswith(f"{HAPROXY_ADDRESS}:")  # what the client dialled
            assert line["tls"] == "implicit"


def test_proxy_header_from_an_untrusted_peer_is_refused(world: World) -> None:
    listeners = [Listener("imap4", "imap", "none", world.bob_store.ports.imap,
                          extra="proxy_protocol = true")]
    trusted = f'proxy_protocol_from = ["{PROXY_ADDRESS}/32"]'
    with running_proxy(world, "untrusted", listeners, trusted) as (proxy, ports):
        sock = from_client(ports["imap4"])  # 127.0.0.77 claims to be 192.0.2.7
        sock.sendall(encode_v2(("192.0.2.7", 1234), ("127.0.0.1", 143)) + b"a LOGIN bob x\r\n")
        heard = b""
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
            heard = read_until(sock, b"\r\n")
        assert heard == b""  # no greeting
        sock.close()
        [refused] = proxy.wait_for("refused", reason="proxy_untrusted")
        assert refused["peer"].startswith(f"{CLIENT_ADDRESS}:")
        assert not proxy.lines("session")


# --- the client's address to Dovecot -------------------------------------------------


def dovecot_logins(store: DovecotStore, after: int) -> list[str]:
    """Dovecot's ``Login:`` lines (imap-login / pop3-login) written after offset ``after``."""
    return [line for line in store.log_text()[after:].splitlines()
            if "-login: Info: Login: " in line]


def wait_login_lines(store: DovecotStore, after: int, count: int) -> list[str]:
    def enough() -> list[str]:
        found = dovecot_logins(store, after)
        assert len(found) >= count, store.log_tail()
        return found

    return eventually(enough, timeout=5)


@pytest.mark.parametrize("mode", ["id", "proxy_v2", "none"])
def test_dovecot_sees_the_client_address(world: World, mode: str) -> None:
    store = world.bob_store
    ports = store.ports
    imap_port = ports.imap_haproxy if mode == "proxy_v2" else ports.imap
    pop3_port = ports.pop3_haproxy if mode == "proxy_v2" else ports.pop3
    assert imap_port is not None and pop3_port is not None
    listeners = [Listener("imap4", "imap", "none", imap_port),
                 Listener("pop3", "pop3", "none", pop3_port)]
    if mode == "proxy_v2":  # only the haproxy = yes listeners get a header
        proxy = "".join(f'[[proxy.backends]]\nserver = "{STORE_ADDRESSES["b"]}:{port}"\n'
                        'forward_client = "proxy_v2"\n' for port in (imap_port, pop3_port))
    else:
        proxy = f'forward_client = "{mode}"\n'
    with running_proxy(world, f"forward-{mode}", listeners, proxy) as (_, proxy_ports):
        before = len(store.log_text())
        imap = open_imap(PROXY_ADDRESS, proxy_ports["imap4"], tls="none")
        assert imap.login("bob", "bob-secret")[0] == "OK"
        imap.logout()
        pop = open_pop3(PROXY_ADDRESS, proxy_ports["pop3"], tls="none")
        pop.user("bob")
        assert pop.pass_("bob-secret") == b"+OK Logged in."
        pop.quit()
        lines = wait_login_lines(store, before, 2)
    assert len(lines) == 2, store.log_tail()
    expected = PROXY_ADDRESS if mode == "none" else CLIENT_ADDRESS
    for line in lines:
        assert f"rip={expected}," in line, line


# --- TLS to the stores ----------------------------------------------------------------


@pytest.mark.parametrize(("case", "works"), [
    ("right-ca", True), ("wrong-ca", False), ("no-verify", True), ("starttls", True),
    ("wrong-name", False),
])
def test_tls_to_the_store(world: World, case: str, works: bool) -> None:
    store = world.bob_store
    assert store.ports.imaps is not None
    ca = world.pki.ca
    if case.startswith("wrong-ca") or case == "no-verify":
        ca, _ = make_ca(world.root / f"other-ca-{case}", "not the stores' CA")
    proxy = f'backend_ca_file = "{ca}"\n'
    if case == "no-verify":
        proxy += "backend_verify = false\n"
    if case == "wrong-name":
        proxy += 'backend_tls_name = "not-the-store.example"\n'
    if case == "starttls":
        listener = Listener("imap4", "imap", "none", store.ports.imap,
                            extra='backend_tls = "starttls_required"')
    else:
        listener = Listener("imap4", "imap", "none", store.ports.imaps,
                            extra='backend_tls = "implicit"')
    with running_proxy(world, f"tls-{case}", [listener], proxy) as (proxy_process, ports):
        imap = open_imap(PROXY_ADDRESS, ports["imap4"], tls="none")
        if works:
            assert imap.login("bob", "bob-secret")[0] == "OK"
            assert imap_first_subject(imap) == "store-b"
        else:
            with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
                imap.login("bob", "bob-secret")
        imap.logout()
        if not works:
            [failed] = proxy_process.wait_for("login_failed")
            assert failed["kind"] == "backend_protocol"
            assert "store TLS" in failed["reason"]


# --- limits --------------------------------------------------------------------------


def test_connection_limit_three(world: World) -> None:
    listeners = [Listener("imap4", "imap", "none", world.bob_store.ports.imap,
                          extra="connection_limit = 3")]
    with running_proxy(world, "limit", listeners) as (proxy, ports):
        first = [from_client(ports["imap4"]) for _ in range(3)]
        assert all(read_until(s, b"\r\n").startswith(b"* OK") for s in first)
        fourth = from_client(ports["imap4"])
        assert read_until(fourth, b"\r\n") == (
            b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n")
        assert read_until(fourth, b"never") == b""
        fourth.close()
        first[0].sendall(b"z LOGOUT\r\n")
        assert b"z OK" in read_until(first[0], b"z OK")
        first[0].close()
        proxy.wait_for("session", result="no_login")
        fifth = open_imap(PROXY_ADDRESS, ports["imap4"], tls="none")
        assert fifth.login("bob", "bob-secret")[0] == "OK"
        assert imap_first_subject(fifth) == "store-b"
        fifth.logout()
        for sock in first[1:]:
            sock.close()
        [refused] = proxy.wait_for("refused", reason="connection_limit")
        assert refused["peer"].startswith(f"{CLIENT_ADDRESS}:")


# --- workers ---------------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{PROXY_ADDRESS}:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
        return text


def metric(text: str, series: str) -> float:
    """One series, read with prometheus_client's parser."""
    return Scrape(text).series(series)


def test_two_workers_share_the_sessions_and_metrics_show_totals(world: World) -> None:
    health = free_port(PROXY_ADDRESS)
    listeners = [Listener("imap4", "imap", "none", world.bob_store.ports.imap)]
    proxy = f'health_listen = "{PROXY_ADDRESS}:{health}"\n'
    with running_proxy(world, "workers", listeners, proxy, workers=2) as (process, ports):
        sessions: list[imaplib.IMAP4] = []
        for _ in range(12):
            imap = open_imap(PROXY_ADDRESS, ports["imap4"], tls="none")
            assert imap.login("bob", "bob-secret")[0] == "OK"
            sessions.append(imap)

        def totals() -> bool:
            # Each worker copies its live counts once a second: wait until
            # every scrape, whichever worker answers it, shows both workers'.
            for _ in range(4):
                text = scrape(health)
                assert "authsvc_workers 2" in text
                assert metric(text, 'authsvc_proxy_sessions{listener="imap4"}') == 12
                assert metric(text,
                              'authsvc_proxy_logins_total{listener="imap4",result="ok"}') == 12
            return True

        eventually(totals, timeout=10)
        for imap in sessions:
            imap.logout()
        lines = process.wait_for("session", count=12, result="ok")
        assert len({line["pid"] for line in lines}) == 2, [line["pid"] for line in lines]
        status = urllib.request.urlopen(f"http://{PROXY_ADDRESS}:{health}/readyz", timeout=5)
        assert status.status == 200


# --- Perdition's Auth: line for fail2ban ------------------------------------------------


@pytest.mark.parametrize("log_format", ["kv", "json"])
def test_auth_line_matches_debian_fail2ban_perdition_filter(world: World,
                                                            log_format: str) -> None:
    """The Auth: line is the same whatever ``[log] format`` the process log uses."""
    require_file(FILTER_DIR / "perdition.conf", "fail2ban")
    regexes = failregexes("perdition")
    directory = world.root / f"syslog-{log_format}"
    directory.mkdir()
    target = directory / "log.sock"
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(str(target))
    syslog.settimeout(10)
    listeners = [Listener("imaps", "imap", "implicit", world.bob_store.ports.imap),
                 Listener("pop3", "pop3", "none", world.bob_store.ports.pop3)]
    proxy = f'auth_log = true\nauth_log_target = "{target}"\n[log]\nformat = "{log_format}"\n'
    try:
        with running_proxy(world, f"fail2ban-{log_format}", listeners, proxy) as (process, ports):
            imap = open_imap(PROXY_ADDRESS, ports["imaps"], tls="implicit",
                             context=world.pki.client_context())
            with pytest.raises(imaplib.IMAP4.error):
                imap.login("Bob", "wrong-password")
            assert imap.login("Bob", "bob-secret")[0] == "OK"
            imap.logout()
            pop = open_pop3(PROXY_ADDRESS, ports["pop3"], tls="none")
            pop.user("bob")
            with pytest.raises(poplib.error_proto):
                pop.pass_("wrong-password")
            pop.quit()
            datagrams = [syslog.recv(9000) for _ in range(3)]
            # The process log itself is in the format asked for.
            assert process.wait_for("session", count=2)  # one IMAP session, one POP3
            if log_format == "json":
                assert all(line.startswith("{") for line in process.log_text().splitlines()
                           if "event" in line)
    finally:
        syslog.close()
    lines = [logfile_line(d) for d in datagrams]
    failed_imap, ok_imap, failed_pop = lines
    found = match(regexes, failed_imap)
    assert found is not None, failed_imap
    assert found.group("ip4") == CLIENT_ADDRESS
    assert re.search(r" perdition\.imaps\[\d+\]: Auth: 127\.0\.0\.77:\d+->127\.0\.0\.1:\d+ "
                     r"client-secure=ssl authorisation_id=NONE authentication_id=\"Bob\" "
                     r"server=\"127\.0\.0\.3:\d+\" protocol=IMAP4S server-secure=plaintext "
                     r"status=\"failed: Re-Authentication Failure\"$", failed_imap), failed_imap
    assert match(regexes, ok_imap) is None
    found = match(regexes, failed_pop)
    assert found is not None and found.group("ip4") == CLIENT_ADDRESS
    # fail2ban's own tool, on the same lines as a log file, agrees.
    fail2ban_regex = require_binary("fail2ban-regex")
    logfile = directory / "mail.log"
    logfile.write_text("\n".join(lines) + "\n")
    result = subprocess.run([fail2ban_regex, str(logfile), str(FILTER_DIR / "perdition.conf")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert re.search(r"Failregex: 2 total", result.stdout), result.stdout
