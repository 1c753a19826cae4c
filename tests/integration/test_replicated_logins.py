"""Logins through ``authsvc serve`` and ``authsvc proxy`` while the map's primary fails.

The map lists a primary and its replica (two private ``mariadbd`` with GTID
replication, tests/services/mariadb.py).  The cache is off, so every login
asks the database.  A login loop runs over a set of users while the test
kills the primary (SIGKILL) or hangs it (SIGSTOP), then brings it back (a
restart, or SIGCONT).  What must hold (docs/maps.md, "Failover and failback"):

* after a kill, every later login is answered from the replica; at most the
  logins in flight at the kill get a temporary failure; nothing crashes,
  ``/readyz`` stays 200 and ``/metrics`` shows which host answered;
* after a hang, logins continue from the replica, and none waits longer than
  ``connect_timeout + query_timeout`` (a behaviour: asserted with a tolerance);
* once the primary is back, the map fails back within ``failback_interval``
  (plus one connect), with no restart of authsvc.

The serve face is asked as nginx asks (``GET /auth``); the proxy face by
imaplib, in front of a scripted IMAP store (tests/component/fakestore.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from authsvc.http.auth_http import TEXT_TEMPORARY
from tests.component.fakestore import FakeStore
from tests.helpers.eventually import eventually
from tests.helpers.prometheus import Scrape
from tests.services.mariadb import (
    ReplicatedMariaDb,
    TestDatabase,
    replicated_test_database,
)
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.serve import ServeProcess

pytestmark = pytest.mark.integration

USERS = [f"user{n}" for n in range(40)]
PASSWORD = "pw"
SECRET = "replicated-secret"
MAP_NAME = "routes"
CONNECT_TIMEOUT = 1.0
QUERY_TIMEOUT = 1.0
FAILBACK = 2.0
#: Slack for a busy 2-core machine on top of the timeouts under test.
TOLERANCE = 1.5
HOST = "127.0.0.1"


# -- the faces ------------------------------------------------------------------------


@dataclass
class Attempt:
    user: str
    started: float
    ended: float
    outcome: str  # "ok", "temporary", or what else came back

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class Face:
    """One front end under test: how to log in, and its health port."""

    name = ""
    #: The map's ``map`` label in /metrics.
    map_name = MAP_NAME

    def login(self, user: str) -> str:
        raise NotImplementedError

    def get(self, path: str) -> tuple[int, str]:
        raise NotImplementedError

    def running(self) -> bool:
        raise NotImplementedError


class ServeFace(Face):
    name = "serve"

    def __init__(self, serve: ServeProcess) -> None:
        self.serve = serve

    def login(self, user: str) -> str:
        request = (
            f"GET /auth HTTP/1.0\r\nHost: {HOST}\r\nAuth-Method: plain\r\n"
            f"Auth-User: {user}\r\nAuth-Pass: {PASSWORD}\r\nAuth-Protocol: imap\r\n"
            f"Auth-Login-Attempt: 1\r\nClient-IP: 192.0.2.9\r\nX-Authsvc-Listener: imap4\r\n"
            f"X-Authsvc-Key: {SECRET}\r\n\r\n"
        ).encode()
        with socket.create_connection((HOST, self.serve.port), timeout=20) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode()
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
        status = headers.get("Auth-Status")
        if status == "OK" and headers.get("Auth-Server") == HOST:
            return "ok"
        return "temporary" if status == TEXT_TEMPORARY else f"other: {head!r}"

    def get(self, path: str) -> tuple[int, str]:
        return self.serve.get(path, timeout=10)

    def running(self) -> bool:
        return self.serve.running()


class ProxyFace(Face):
    name = "proxy"

    def __init__(self, proxy: ProxyProcess, port: int, health: int) -> None:
        self.proxy, self.port, self.health = proxy, port, health

    def login(self, user: str) -> str:
        imap = imaplib.IMAP4(HOST, self.port, timeout=20)
        try:
            imap.login(user, PASSWORD)
        except imaplib.IMAP4.error as exc:
            text = exc.args[0] if exc.args else b""
            text = text if isinstance(text, bytes) else str(text).encode()
            return "temporary" if text.startswith(b"[UNAVAILABLE]") else f"other: {text!r}"
        finally:
            with contextlib.suppress(Exception):
                imap.logout()
        return "ok"

    def get(self, path: str) -> tuple[int, str]:
        try:
            url = f"http://{HOST}:{self.health}{path}"
            with urllib.request.urlopen(url, timeout=10) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def running(self) -> bool:
        return self.proxy.process is not None and self.proxy.process.poll() is None


# -- the login loop ---------------------------------------------------------------------


@dataclass
class LoginLoop:
    """Threads logging in over USERS without pause; /readyz asked alongside."""

    face: Face
    threads: int = 2
    #: Who logs in; a test may switch to users nobody asked for yet.
    users: list[str] = field(default_factory=lambda: USERS)
    attempts: list[Attempt] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self, offset: int) -> None:
        n = offset
        while not self._stop.is_set():
            users = self.users
            user = users[n % len(users)]
            n += self.threads
            started = time.monotonic()
            try:
                outcome = self.face.login(user)
            except Exception as exc:  # a dropped connection is an outcome too
                outcome = f"error: {type(exc).__name__}: {exc}"
            self.attempts.append(Attempt(user, started, time.monotonic(), outcome))

    def _readyz(self) -> None:
        while not self._stop.is_set():
            self.ready.append(self.face.get("/readyz")[0])
            self._stop.wait(0.2)

    @contextlib.contextmanager
    def running(self) -> Iterator[LoginLoop]:
        workers = [threading.Thread(target=self._run, args=(i,), daemon=True)
                   for i in range(self.threads)]
        workers.append(threading.Thread(target=self._readyz, daemon=True))
        for worker in workers:
            worker.start()
        try:
            yield self
        finally:
            self._stop.set()
            for worker in workers:
                worker.join(30)

    def since(self, moment: float) -> list[Attempt]:
        return [a for a in list(self.attempts) if a.started >= moment]

    def wait_for_ok(self, count: int, after: float, timeout: float = 30.0) -> None:
        def enough() -> bool:
            ok = [a for a in self.since(after) if a.outcome == "ok"]
            assert len(ok) >= count, self.summary()
            return True

        eventually(enough, timeout)

    def summary(self) -> str:
        outcomes: dict[str, int] = {}
        for attempt in list(self.attempts):
            outcomes[attempt.outcome] = outcomes.get(attempt.outcome, 0) + 1
        return f"{len(self.attempts)} attempts: {outcomes}"


# -- the world ---------------------------------------------------------------------------


def map_toml(pair: ReplicatedMariaDb, db: TestDatabase, root: Path, port_constant: int) -> str:
    password = db.write_password_file(root / "db-password")
    hosts = ", ".join(f'"{h}"' for h in pair.hosts)
    return f"""
[cache]
enabled = false

[map]
type = "mysql"
name = "{MAP_NAME}"
hosts = [{hosts}]
database = "{db.name}"
table = "mailboxes"
user = "{db.reader_user}"
password_file = "{password}"
server_column = "storage_ip"
user_column = "address"
port_constant = {port_constant}
connect_timeout = {CONNECT_TIMEOUT}
query_timeout = {QUERY_TIMEOUT}
failback_interval = {FAILBACK}
"""


LOGIN_RULES = """
[login]
lower_case = ["all"]
explicit_domain = "riseup.net"
add_domain = ["lookup"]
"""


@contextlib.contextmanager
def serve_face(pair: ReplicatedMariaDb, db: TestDatabase, root: Path) -> Iterator[Face]:
    (root / "secret").write_text(SECRET + "\n")
    config = root / "authsvc.toml"
    config.write_text(LOGIN_RULES + map_toml(pair, db, root, 143) + f"""
[http]
secret_file = "{root / 'secret'}"

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["{HOST}"]
port = 1143
""")
    with ServeProcess([config], root) as serve:
        yield ServeFace(serve)


@contextlib.contextmanager
def proxy_face(pair: ReplicatedMariaDb, db: TestDatabase, root: Path) -> Iterator[Face]:
    loop = asyncio.new_event_loop()
    store = FakeStore("imap", users={user: PASSWORD for user in USERS}, host=HOST)
    loop.run_until_complete(store.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port, health = free_port(HOST), free_port(HOST)
    config = root / "authsvc.toml"
    config.write_text(LOGIN_RULES + map_toml(pair, db, root, store.port) + f"""
[proxy]
# A temporary failure is answered at once: the wait under test is the map's.
auth_failure_delay = 0
backend_timeout = 10
drain_timeout = 1
health_listen = "{HOST}:{health}"

[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
bind = ["{HOST}:{port}"]
login_timeout = 30
""")
    proxy = ProxyProcess(config, root / "proxy.log")
    try:
        proxy.start(listening=1)
        yield ProxyFace(proxy, port, health)
    finally:
        proxy.stop()
        asyncio.run_coroutine_threadsafe(store.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


FACES: dict[str, Callable[[ReplicatedMariaDb, TestDatabase, Path],
                          contextlib.AbstractContextManager[Face]]] = {
    "serve": serve_face, "proxy": proxy_face,
}


@pytest.fixture
def db(replicated_mariadb: ReplicatedMariaDb) -> Iterator[TestDatabase]:
    with replicated_test_database(replicated_mariadb) as db:
        db.add_mailboxes((f"{user}@riseup.net", HOST) for user in USERS)
        replicated_mariadb.sync()
        yield db


def host_metrics(face: Face, host: str) -> tuple[float, float]:
    """(answers, in use) of one map host, from /metrics."""
    status, text = face.get("/metrics")
    assert status == 200
    scrape = Scrape(text)
    return (scrape.value("authsvc_map_host_answers_total", map=face.map_name, host=host),
            scrape.value("authsvc_map_host_in_use", map=face.map_name, host=host))


def assert_failed_back(face: Face, loop: LoginLoop, primary: str, back: float) -> float:
    """Wait until /metrics shows the primary in use again; returns how long it took."""
    answered_before = host_metrics(face, primary)[0]

    def on_primary() -> bool:
        answers, in_use = host_metrics(face, primary)
        assert in_use == 1 and answers > answered_before, (answers, in_use, loop.summary())
        return True

    eventually(on_primary, timeout=FAILBACK + CONNECT_TIMEOUT + 20)
    return time.monotonic() - back


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("face_name", list(FACES))
def test_primary_killed_then_restarted(
    face_name: str, replicated_mariadb: ReplicatedMariaDb, db: TestDatabase, tmp_path: Path
) -> None:
    pair = replicated_mariadb
    primary, replica = (str(h) for h in pair.hosts)
    with FACES[face_name](pair, db, tmp_path) as face, LoginLoop(face).running() as loop:
        loop.wait_for_ok(20, after=0)
        assert host_metrics(face, primary)[1] == 1

        before_kill = time.monotonic()
        pair.primary.stop(crash=True)
        killed = time.monotonic()
        loop.wait_for_ok(3 * len(USERS), after=killed)

        # Logins that started after the kill all succeeded, from the replica.
        later = loop.since(killed)
        assert all(a.outcome == "ok" for a in later), loop.summary()
        # At most those in flight at the kill failed, and only temporarily.
        failed = [a for a in loop.attempts if a.outcome != "ok"]
        assert all(a.outcome == "temporary" and a.started < killed
                   and a.ended >= before_kill for a in failed), failed
        assert len(failed) <= loop.threads, failed
        # Statements, not logins: logins that arrive together share one.
        answers, in_use = host_metrics(face, replica)
        assert in_use == 1 and answers >= len(USERS), (answers, in_use)
        assert host_metrics(face, primary)[1] == 0

        pair.primary.start()
        back = time.monotonic()
        took = assert_failed_back(face, loop, primary, back)
        assert took <= FAILBACK + CONNECT_TIMEOUT + TOLERANCE, took
        loop.wait_for_ok(len(USERS), after=time.monotonic())
        assert face.running()
    assert set(loop.ready) == {200}, loop.ready
    assert all(a.outcome in ("ok", "temporary") for a in loop.attempts), loop.summary()


@pytest.mark.parametrize("face_name", list(FACES))
def test_primary_hangs_then_resumes(
    face_name: str, replicated_mariadb: ReplicatedMariaDb, db: TestDatabase, tmp_path: Path
) -> None:
    pair = replicated_mariadb
    primary, replica = (str(h) for h in pair.hosts)
    bound = CONNECT_TIMEOUT + QUERY_TIMEOUT
    with FACES[face_name](pair, db, tmp_path) as face, LoginLoop(face).running() as loop:
        loop.wait_for_ok(20, after=0)
        pair.primary.pause()
        paused = time.monotonic()
        try:
            # Waited for past the slack too, so that the check below has logins to look at.
            noticed = paused + bound + TOLERANCE
            loop.wait_for_ok(3 * len(USERS), after=noticed)
            # Nobody waited longer than the two timeouts (plus slack).
            slowest = max(loop.since(paused - bound), key=lambda a: a.seconds)
            assert slowest.seconds <= bound + TOLERANCE, (slowest, loop.summary())
            # Logins that began once the hang was noticed all came from the replica.
            assert all(a.outcome == "ok" for a in loop.since(noticed)), loop.summary()
            answers, in_use = host_metrics(face, replica)
            assert in_use == 1 and answers >= len(USERS), (answers, in_use)
        finally:
            pair.primary.resume()
        resumed = time.monotonic()
        took = assert_failed_back(face, loop, primary, resumed)
        assert took <= FAILBACK + CONNECT_TIMEOUT + TOLERANCE, took
        loop.wait_for_ok(len(USERS), after=time.monotonic())
        assert face.running()
    assert set(loop.ready) == {200}, loop.ready
    assert all(a.outcome in ("ok", "temporary") for a in loop.attempts), loop.summary()
    assert all(a.seconds <= bound + TOLERANCE for a in loop.attempts), max(
        loop.attempts, key=lambda a: a.seconds)


def test_perdition_files_fail_over(
    replicated_mariadb: ReplicatedMariaDb, db: TestDatabase, tmp_path: Path
) -> None:
    """The seed's form: Perdition's comma-separated dbhost with one dbport (perditiondb(5)).

    A Perdition file cannot turn the route cache off, so the loop logs in as
    one half of the users before the kill and as the other half after it:
    every login after the kill asks the map.
    """
    pair = replicated_mariadb
    primary, replica = (str(h) for h in pair.hosts)
    config = tmp_path / "perdition.imap4.conf"
    opt = db.map_library_opt(hosts=[h.host for h in pair.hosts])
    config.write_text(
        "map_library /usr/lib/x86_64-linux-gnu/libperditiondb_mysql.so.0\n"
        f"map_library_opt {opt}\n"
        "lower_case all\n"
        "explicit_domain riseup.net\n"
        "add_domain servername_lookup\n"
    )
    with ServeProcess([config], tmp_path) as serve:
        face = ServeFace(serve)
        face.map_name = f"mysql:{primary}/{db.name}.mailboxes"
        half = len(USERS) // 2
        with LoginLoop(face, users=USERS[:half]).running() as loop:
            loop.wait_for_ok(10, after=0)
            assert host_metrics(face, primary)[1] == 1
            pair.primary.stop(crash=True)
            killed = time.monotonic()
            loop.users = USERS[half:]
            loop.wait_for_ok(len(USERS), after=killed)
            assert all(a.outcome == "ok" for a in loop.since(killed)), loop.summary()
            assert host_metrics(face, replica)[1] == 1
            assert face.running()
        assert set(loop.ready) == {200}, loop.ready
        assert all(a.outcome in ("ok", "temporary") for a in loop.attempts), loop.summary()
