"""One address cannot hold every connection of ``authsvc proxy`` (docs/security.md).

The proxy runs as the operator runs it (``python -m authsvc proxy -c
authsvc.toml``) with its default limits, a popmap and real Dovecot stores.
One address floods it with connections that never log in: silent IMAP
clients, clients of the implicit-TLS port that never start TLS, and POP3
clients that send ``USER bo`` without a line end.  Meanwhile another address
logs in through the real store, within a second; the flood address is held at
``client_preauth_limit`` (20) and each extra connection hears the documented
refusal (docs/proxy.md, "Refusals").

Also here: with its descriptor limit lowered (``RLIMIT_NOFILE`` in the child)
and the count limits off, the proxy refuses with its temporary-failure
greeting near the limit instead of failing ``accept``; and a client that
keeps sending NOOPs is cut at ``login_deadline``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.request import urlopen

import pytest

from tests.helpers.eventually import eventually
from tests.helpers.prometheus import Scrape
from tests.integration.test_reload_proxy import PASSWORDS, World, make_world
from tests.services.mailclient import IMAP4, imap_first_subject
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
FLOOD = "127.0.0.2"
CLIENT = "127.0.0.3"
#: The defaults under test (docs/configuration.md, ``[proxy]``).
CLIENT_PREAUTH_LIMIT = 20
SILENT, NEVER_TLS, HALF_LINE = 500, 100, 100

IMAP_CLIENT_BUSY = (b"* BYE [UNAVAILABLE] Too many connections from your address, "
                    b"try again later.\r\n")
POP3_CLIENT_BUSY = (b"-ERR [SYS/TEMP] Too many connections from your address, "
                    b"try again later.\r\n")
IMAP_BUSY = b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
AUTOLOGOUT = b"* BYE Autologout; idle for too long.\r\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with make_world(tmp_path_factory.mktemp("flood")) as w:
        w.ports["pop3"] = free_port(HOST)
        w.write_popmap("a")
        yield w


def write_config(world: World, proxy: str = "") -> None:
    """Three listeners (IMAP, IMAPS, POP3); ``proxy``: more ``[proxy]`` lines."""
    world.config.write_text(f"""
[login]
lower_case = ["all"]
explicit_domain = "riseup.net"
add_domain = ["lookup"]

[map]
type = "file"
path = "{world.popmap}"

[proxy]
drain_timeout = 1
health_listen = "{HOST}:{world.ports['health']}"
{proxy}

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["{HOST}"]
port = {world.ports['imap4']}

[[listener]]
name = "imaps"
protocol = "imap"
tls = "implicit"
bind = ["{HOST}"]
port = {world.ports['imaps']}
cert = "{world.cert}"
key = "{world.key}"

[[listener]]
name = "pop3"
protocol = "pop3"
bind = ["{HOST}"]
port = {world.ports['pop3']}
""")


@contextlib.contextmanager
def running(world: World, tmp_path: Path, proxy: str = "",
            nofile: int | None = None) -> Iterator[ProxyProcess]:
    world.install_cert(world.pki)
    write_config(world, proxy)
    process = ProxyProcess(world.config, tmp_path / "proxy.log", nofile=nofile)
    process.start(listening=3)
    try:
        yield process
    finally:
        process.stop()


def connect(port: int, source: str) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=10, source_address=(source, 0))


def first_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def closed(sock: socket.socket) -> bool:
    """Whether the proxy has closed ``sock`` (end of stream, nothing else, waiting)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def metrics(world: World) -> Scrape:
    with urlopen(f"http://{HOST}:{world.ports['health']}/metrics", timeout=5) as reply:
        return Scrape(reply.read().decode())


def timed_login(world: World, user: str = "alice") -> float:
    """Seconds from connect to the store's OK for ``user`` from :data:`CLIENT`."""
    class FromClient(IMAP4):
        source = CLIENT

    started = time.monotonic()
    imap = FromClient(HOST, world.ports["imap4"], timeout=10)
    try:
        imap.login(user, PASSWORDS[user])
        took = time.monotonic() - started
        assert imap_first_subject(imap) == "store-a"  # the real store answered
        return took
    finally:
        with contextlib.suppress(Exception):
            imap.logout()


@dataclass
class Flood:
    """The flood address's connections and what each heard first."""

    world: World
    held: list[socket.socket] = field(default_factory=list)
    tls: list[socket.socket] = field(default_factory=list)
    outcomes: Counter[tuple[str, bytes]] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, heard: bytes, sock: socket.socket | None) -> None:
        with self.lock:
            self.outcomes[kind, heard] += 1
            if sock is not None:
                self.held.append(sock)

    @property
    def refused(self) -> int:
        with self.lock:
            return sum(n for (_, heard), n in self.outcomes.items() if heard != b"greeting")

    def silent(self) -> None:
        sock = connect(self.world.ports["imap4"], FLOOD)
        line = first_line(sock)
        if line.startswith(b"* OK"):
            self.note("imap", b"greeting", sock)
        else:
            self.note("imap", line + (b"" if closed_soon(sock) else b" (still open)"), None)
            sock.close()

    def never_tls(self) -> None:
        sock = connect(self.world.ports["imaps"], FLOOD)
        with self.lock:
            self.tls.append(sock)  # sorted out later: refused ones end with no byte

    def half_line(self) -> None:
        sock = connect(self.world.ports["pop3"], FLOOD)
        line = first_line(sock)
        if line.startswith(b"+OK"):
            sock.sendall(b"USER bo")  # no line end, ever
            self.note("pop3", b"greeting", sock)
        else:
            self.note("pop3", line + (b"" if closed_soon(sock) else b" (still open)"), None)
            sock.close()

    def start(self) -> threading.Thread:
        """All three kinds, interleaved, so that each kind gets some of the 20 places."""
        def flood() -> None:
            try:
                for i in range(SILENT):
                    self.silent()
                    if i % (SILENT // NEVER_TLS) == 0:
                        self.never_tls()
                    if i % (SILENT // HALF_LINE) == 0:
                        self.half_line()
            except Exception as exc:  # reported by the test, never swallowed
                self.errors.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        for sock in [*self.held, *self.tls]:
            sock.close()


def closed_soon(sock: socket.socket) -> bool:
    """After a refusal line the proxy closes: end of stream within a few seconds."""
    sock.settimeout(5)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_one_address_flooding_is_held_at_its_limit_while_another_logs_in(
    world: World, tmp_path: Path
) -> None:
    with running(world, tmp_path) as proxy:
        [limits] = proxy.wait_for("limits")
        assert (limits["client_preauth_limit"], limits["login_deadline"]) == ("20", "60.0")
        assert timed_login(world) < 1.0
        flood = Flood(world)
        thread = flood.start()
        try:
            eventually(lambda: flood.refused >= 100 or flood.errors, 60,
                       what="the flood is being refused")
            during = timed_login(world)  # the flood goes on meanwhile
            thread.join(120)
            assert not flood.errors
            after = timed_login(world)  # and its connections are still held
            held_tls = CLIENT_PREAUTH_LIMIT - len(flood.held)

            def tls_settled() -> bool:
                return sum(not closed(s) for s in flood.tls) == held_tls
            eventually(tls_settled, 20, what=f"{held_tls} TLS connections held, the rest closed")
            assert during < 1.0, during
            assert after < 1.0, after
            assert set(flood.outcomes) == {("imap", b"greeting"), ("pop3", b"greeting"),
                                           ("imap", IMAP_CLIENT_BUSY), ("pop3", POP3_CLIENT_BUSY)}
            assert 0 < held_tls < CLIENT_PREAUTH_LIMIT
            refused = SILENT + NEVER_TLS + HALF_LINE - CLIENT_PREAUTH_LIMIT
            assert flood.refused + (NEVER_TLS - held_tls) == refused

            def counted() -> Scrape:
                scrape = metrics(world)
                assert scrape.sum("authsvc_proxy_preauth_sessions") == CLIENT_PREAUTH_LIMIT
                return scrape
            scrape = eventually(counted, 10)
            assert scrape.sum("authsvc_proxy_refused_total",
                              reason="client_preauth_limit") == refused
            assert scrape.sum("authsvc_proxy_refused_total") == refused
            lines = proxy.lines("refused")
            assert {(line["reason"], line["peer"].split(":")[0]) for line in lines} == {
                ("client_preauth_limit", FLOOD)}
            # Once a second per listener at most, the rest counted as suppressed.
            assert len(lines) < refused / 5
            assert sum(1 + int(line.get("suppressed", "0")) for line in lines) <= refused
            assert "event=accept_failed" not in proxy.log_text()
        finally:
            flood.close()


def test_near_the_descriptor_limit_new_clients_hear_a_temporary_failure(
    world: World, tmp_path: Path
) -> None:
    """RLIMIT_NOFILE 128, the count limits off: the headroom (32) is refused, not failed."""
    nofile, connections = 128, 150
    limits_off = "preauth_limit = 0\nclient_preauth_limit = 0"
    with running(world, tmp_path, limits_off, nofile=nofile) as proxy:
        [limits] = proxy.wait_for("limits")
        assert (limits["descriptors"], limits["headroom"], limits["preauth_limit"]) == (
            str(nofile), "32", "0")
        held: list[socket.socket] = []
        heard: Counter[bytes] = Counter()
        try:
            for _ in range(connections):
                sock = connect(world.ports["imap4"], FLOOD)
                line = first_line(sock)
                if line.startswith(b"* OK"):
                    held.append(sock)
                else:
                    heard[line + (b"" if closed_soon(sock) else b" (still open)")] += 1
                    sock.close()
            # The descriptors below the headroom went to clients, the rest heard why.
            assert 40 < len(held) < nofile - 32
            assert heard == {IMAP_BUSY: connections - len(held)}
            assert proxy.process is not None and proxy.process.poll() is None
            log = proxy.log_text()
            assert "event=accept_failed" not in log
            lines = proxy.lines("refused")
            assert {line["reason"] for line in lines} == {"descriptors"}
            assert len(lines) < len(heard) or len(heard) <= 2
            assert metrics(world).sum("authsvc_proxy_refused_total",
                                      reason="descriptors") == connections - len(held)
        finally:
            for sock in held:
                sock.close()
        # The table drains as the held clients leave (the proxy sees each close
        # when its loop gets to it); a real login works again.

        def logs_in() -> bool:
            try:
                return timed_login(world) < 1.0
            except IMAP4.error as exc:  # still in the headroom: the temporary BYE
                refused = str(exc)
            assert "[UNAVAILABLE]" in refused, refused
            return False

        eventually(logs_in, 20, interval=0.2)


def test_a_busy_client_is_cut_at_the_login_deadline(world: World, tmp_path: Path) -> None:
    """A NOOP every 0.1 s never lets the idle timeout (1800 s) fire; the deadline (2 s) does."""
    deadline = 2.0
    with running(world, tmp_path, f"login_deadline = {deadline}") as proxy:
        sock = connect(world.ports["imap4"], CLIENT)
        started = time.monotonic()
        assert first_line(sock).startswith(b"* OK")
        replies = b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() - started < 10 and AUTOLOGOUT not in replies:
                sock.sendall(b"n NOOP\r\n")
                time.sleep(0.1)
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    replies += chunk
        took = time.monotonic() - started
        assert closed_soon(sock) or AUTOLOGOUT in replies
        sock.close()
        assert replies.count(b"n OK") >= 5  # busy all along
        assert replies.endswith(AUTOLOGOUT)
        assert deadline - 0.1 < took < deadline + 2.0  # a loaded 2-core machine
        [session] = proxy.wait_for("session", client=CLIENT)
        assert session["end"] == "login_deadline"
