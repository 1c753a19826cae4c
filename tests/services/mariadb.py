"""MariaDB for tests: a database of our own on the shared server, or a private ``mariadbd``.

Two kinds of server, one API:

* **The shared server** (127.0.0.1:3306, the machine's MariaDB).  Tests never
  stop or reconfigure it; they only add a database and a user of their own and
  drop both afterwards.  Admin access tries the Unix socket
  ``/run/mysqld/mysqld.sock`` as root first (a fresh Debian allows root only
  there), then TCP 127.0.0.1:3306 as root with an empty password.
* **A private server** (:class:`PrivateMariaDb`): ``mariadb-install-db`` into a
  temp datadir and ``mariadbd --no-defaults`` in the foreground on a free
  loopback port, ended by its own pid.  Only tests on a private server may
  :meth:`~PrivateMariaDb.stop`, :meth:`~PrivateMariaDb.start` it again (same
  datadir, port and data), :meth:`~PrivateMariaDb.pause` it (SIGSTOP) or
  :meth:`~PrivateMariaDb.kill_connections` of a user.  ``extra`` options
  reach its command line (TLS: ``--ssl-cert``, ``--require-secure-transport``).
* **A primary and a replica** (:class:`ReplicatedMariaDb`): two private
  servers, 127.0.0.1 and 127.0.0.2 on one port (Perdition's ``dbhost`` list
  takes one ``dbport``), with MariaDB's GTID replication set up by the
  fixture; :func:`replicated_test_database` makes a test database on the
  primary and waits until the replica has it.

On either, :func:`create_test_database` makes ``authsvc_test_<random>`` with
the seed's schema (``mailboxes``: ``address`` varchar, ``utf8mb4_bin``, primary
key; ``storage_ip``), and a read-only user like the seed's ``nest_mail``
(``authsvc_ro_<random>``, random hex password, SELECT only).  The returned
:class:`TestDatabase` inserts rows and builds map settings.

Using it from another test module (plain functions, so any scope works)::

    from tests.services.mariadb import create_test_database, shared_admin

    @pytest.fixture(scope="module")
    def db() -> Iterator[TestDatabase]:
        with create_test_database(shared_admin()) as db:
            db.add_mailboxes(generate_mailboxes(5000, "riseup.net", ["127.0.0.2", "127.0.0.3"]))
            yield db

    settings = db.map_settings()                 # MySqlMapSettings, port 143 like the seed
    opt = db.map_library_opt(port=143)           # for a Perdition file's map_library_opt

and a private server::

    with running_private_mariadb() as server:            # started, and killed at the end
        with create_test_database(server.admin) as db:
            ...
            server.stop(); server.start(); server.kill_connections(db.reader_user)

The pytest fixtures at the end wrap these and are registered for every test by
``pytest_plugins`` in tests/conftest.py, so a test just names them:
``mariadb_db`` (session: a database on the shared server), ``private_mariadb``
(the session's private server, running when the test starts and restarted
after it), ``private_mariadb_db`` (a fresh database on it, per test),
``replicated_mariadb`` (the session's primary and replica, replicating when
the test starts and again after it).
``shared_admin()`` skips the test (fails under CI=true) when no MariaDB answers.

Run by hand: ``python -m tests.services.mariadb`` starts a private server,
prints how to reach it and waits for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from authsvc.redact import Secret
from authsvc.settings import HostPort, MySqlMapSettings
from tests.services.ports import free_port
from tests.services.require import require, require_binary

SHARED_SOCKET = "/run/mysqld/mysqld.sock"
SHARED_HOST = "127.0.0.1"
SHARED_PORT = 3306

#: The seed's table (``nest.mailboxes``), as deploy/schema.sql creates it.
MAILBOXES_DDL = """
CREATE TABLE `{table}` (
  `address` varchar(255) CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL,
  `storage_ip` varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL,
  PRIMARY KEY (`address`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """How to reach one server as an administrator (pymysql connection arguments)."""

    host: str = SHARED_HOST
    port: int = SHARED_PORT
    unix_socket: str | None = None
    user: str = "root"
    password: str = ""

    def connect(self, database: str | None = None, *, timeout: float = 5.0) -> Any:
        """A new autocommit pymysql connection; the caller closes it."""
        import pymysql

        where: dict[str, Any] = (
            {"unix_socket": self.unix_socket}
            if self.unix_socket
            else {"host": self.host, "port": self.port}
        )
        return pymysql.connect(
            user=self.user,
            password=self.password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=timeout,
            **where,
        )

    def execute(self, sql: str, args: Sequence[object] | None = None, *,
                database: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement; returns its rows (empty for statements without any)."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def answers(self) -> bool:
        """True when this server takes admin connections now."""
        try:
            self.connect(timeout=1.0).close()
        except Exception:
            return False
        return True


def shared_admin() -> AdminAccess:
    """Admin access to the machine's MariaDB: root over the socket, else over TCP."""
    tried = []
    for access in (AdminAccess(unix_socket=SHARED_SOCKET), AdminAccess()):
        if access.answers():
            return access
        tried.append(access.unix_socket or f"{access.host}:{access.port}")
    require(False,
            f"no MariaDB answers as root on {' or '.join(tried)} (bash tests/run.sh starts it)")
    raise AssertionError("unreachable")


@dataclass(slots=True)
class TestDatabase:
    """A database of our own with the seed's ``mailboxes`` table and a read-only user."""

    __test__ = False  # not a pytest test class

    admin: AdminAccess
    name: str
    reader_user: str
    reader_password: str
    #: Where the map connects (TCP, as the seed's Perdition does).
    host: str
    port: int
    tables: list[str] = field(default_factory=lambda: ["mailboxes"])

    def execute(self, sql: str, args: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as admin in this database."""
        return self.admin.execute(sql, args, database=self.name)

    def create_mailbox_table(self, table: str, collation: str = "utf8mb4_bin") -> None:
        """Another table shaped like ``mailboxes``, with the address column's collation."""
        self.execute(MAILBOXES_DDL.format(table=table, collation=collation))
        self.tables.append(table)

    def add_mailboxes(self, rows: Iterable[tuple[str, str | None]],
                      table: str = "mailboxes") -> int:
        """Insert ``(address, storage_ip)`` rows (thousands at once are fine)."""
        batch = list(rows)
        if not batch:
            return 0
        conn = self.admin.connect(self.name)
        try:
            with conn.cursor() as cursor:
                for start in range(0, len(batch), 1000):
                    cursor.executemany(
                        f"INSERT INTO `{table}` (address, storage_ip) VALUES (%s, %s)",  # noqa: S608
                        batch[start : start + 1000],
                    )
        finally:
            conn.close()
        return len(batch)

    def set_storage(self, address: str, storage_ip: str | None, table: str = "mailboxes") -> None:
        """Move one mailbox (insert or update its row)."""
        self.execute(
            f"INSERT INTO `{table}` (address, storage_ip) VALUES (%s, %s) "  # noqa: S608
            "ON DUPLICATE KEY UPDATE storage_ip = VALUES(storage_ip)",
            (address, storage_ip),
        )

    def clear(self, table: str = "mailboxes") -> None:
        self.execute(f"DELETE FROM `{table}`")  # noqa: S608

    def map_settings(self, **overrides: Any) -> MySqlMapSettings:
        """The seed's map (``storage_ip``, ``address``, constant port 143) as our reader."""
        settings = MySqlMapSettings(
            hosts=(HostPort(self.host, self.port),),
            database=self.name,
            table="mailboxes",
            user=self.reader_user,
            password=Secret(self.reader_password),
            server_column="storage_ip",
            user_column="address",
            port_column=None,
            port_constant=143,
            connect_timeout=2.0,
            query_timeout=2.0,
            pool_size=4,
        )
        return replace(settings, **overrides)

    def map_library_opt(self, port: int = 143, table: str = "mailboxes",
                        hosts: Sequence[str] = ()) -> str:
        """Perdition's 9-field ``map_library_opt`` for this database (perditiondb(5)).

        ``hosts``: Perdition's comma-separated ``dbhost`` failover list, every
        host on this database's port; else this database's host alone.
        """
        dbhost = ",".join(hosts) if hosts else self.host
        return (
            f"{dbhost}:{self.port}:{self.name}:{table}:{self.reader_user}:"
            f"{self.reader_password}:storage_ip:address:{port}"
        )

    def write_password_file(self, path: Path) -> Path:
        path.write_text(self.reader_password + "\n")
        path.chmod(0o600)
        return path

    def drop(self) -> None:
        """Drop the database and the reader; safe to call twice."""
        for host in ("127.0.0.1", "localhost"):
            self.admin.execute(f"DROP USER IF EXISTS '{self.reader_user}'@'{host}'")
        self.admin.execute(f"DROP DATABASE IF EXISTS `{self.name}`")


def generate_mailboxes(count: int, domain: str, stores: Sequence[str],
                       prefix: str = "user") -> list[tuple[str, str]]:
    """``count`` rows ``user<n>@domain``, spread over ``stores`` round-robin."""
    return [(f"{prefix}{n}@{domain}", stores[n % len(stores)]) for n in range(count)]


@contextlib.contextmanager
def create_test_database(admin: AdminAccess, *, host: str = "127.0.0.1",
                         port: int | None = None) -> Iterator[TestDatabase]:
    """A fresh database and read-only user on ``admin``'s server; both dropped after."""
    suffix = secrets.token_hex(4)
    db = TestDatabase(
        admin=admin,
        name=f"authsvc_test_{suffix}",
        reader_user=f"authsvc_ro_{suffix}",
        reader_password=secrets.token_hex(12),
        host=host,
        port=port if port is not None else admin.port,
    )
    try:
        admin.execute(
            f"CREATE DATABASE `{db.name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
        )
        db.execute(MAILBOXES_DDL.format(table="mailboxes", collation="utf8mb4_bin"))
        # Like deploy/grant-readonly.sql: SELECT on the one database, nothing else.
        for user_host in ("127.0.0.1", "localhost"):
            admin.execute(
                f"CREATE USER '{db.reader_user}'@'{user_host}' IDENTIFIED BY %s",
                (db.reader_password,),
            )
            admin.execute(f"GRANT SELECT ON `{db.name}`.* TO '{db.reader_user}'@'{user_host}'")
        yield db
    finally:
        with contextlib.suppress(Exception):
            db.drop()


# -- a private mariadbd ------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # PR_SET_PDEATHSIG: if pytest itself is killed, the server does not linger.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class PrivateMariaDb:
    """One ``mariadbd`` of our own: temp datadir, free port, foreground, our pid.

    ``address`` and ``port`` place it (a primary and a replica may share a port
    on two loopback addresses, as Perdition's ``dbhost`` list with one ``dbport``
    needs); ``server_id`` turns the binary log on for replication; ``extra``
    options go last (TLS: ``--ssl-cert=...``).
    """

    def __init__(self, root: Path | None = None, *, start_timeout: float = 60.0,
                 address: str = "127.0.0.1", port: int | None = None,
                 server_id: int | None = None, extra: Sequence[str] = ()) -> None:
        self._own_root = root is None
        # A short path: the socket path must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="authsvc-mdb-")) if root is None else root
        self.datadir = self.root / "data"
        self.socket = str(self.root / "mysqld.sock")
        self.address = address
        self.port = port if port is not None else free_port(address)
        self.server_id = server_id
        self.extra = list(extra)
        self.log_path = self.root / "mariadbd.log"
        self.start_timeout = start_timeout
        self.admin = AdminAccess(host=address, port=self.port, unix_socket=self.socket)
        self._process: subprocess.Popen[bytes] | None = None
        self._mariadbd = require_binary("mariadbd")
        self._install()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _user_args(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install(self) -> None:
        install = require_binary("mariadb-install-db")
        result = subprocess.run(
            [install, "--no-defaults", f"--datadir={self.datadir}",
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--skip-name-resolve", *self._user_args()],
            capture_output=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"mariadb-install-db failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')[-2000:]}"
            )

    def command(self) -> list[str]:
        """The server's command line: small, fast to start, loopback only."""
        if self.server_id is None:
            binlog = ["--skip-log-bin"]
        else:
            # GTID replication (MariaDB's "Global Transaction ID" docs): a binary
            # log and a server id on both sides; the replica logs what it applies
            # too, so either server could become the primary.
            binlog = [f"--server-id={self.server_id}", f"--log-bin={self.root / 'binlog'}",
                      "--log-slave-updates", "--binlog-format=ROW"]
        return [
            self._mariadbd, "--no-defaults",
            f"--datadir={self.datadir}", f"--socket={self.socket}",
            f"--port={self.port}", f"--bind-address={self.address}",
            f"--pid-file={self.root / 'mariadbd.pid'}", f"--log-error={self.log_path}",
            *self._user_args(), *binlog,
            "--skip-name-resolve", "--performance-schema=OFF",
            "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
            "--innodb-doublewrite=0",
            # 2: written to the OS at commit, so data survives stop(crash=True).
            "--innodb-flush-log-at-trx-commit=2",
            "--skip-innodb-adaptive-hash-index", "--max-connections=500",
            *self.extra,
        ]

    def start(self) -> None:
        """Start (again) on the same datadir and port; returns when it answers."""
        if self.running:
            return
        self._process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited ({self._process.returncode}): {self.log_tail()}"
                )
            if self.admin.answers():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"mariadbd did not answer within {self.start_timeout}s: {self.log_tail()}"
        )

    def move_to(self, port: int) -> None:
        """Listen on another port from the next start (the chosen one was taken meanwhile)."""
        self.port = port
        self.admin = replace(self.admin, port=port)

    def pause(self) -> None:
        """SIGSTOP: the server hangs, its sockets stay open (a wedged host)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self, *, crash: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``crash``) our own pid, and wait for it to end."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        process.send_signal(signal.SIGCONT)  # a paused server acts on SIGTERM only then
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def kill_connections(self, user: str) -> int:
        """KILL every connection of ``user`` (cut from the server side); returns how many."""
        conn = self.admin.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT id FROM information_schema.processlist WHERE user = %s", (user,)
                )
                ids = [row[0] for row in cursor.fetchall()]
                for ident in ids:
                    with contextlib.suppress(Exception):  # it may have ended meanwhile
                        cursor.execute(f"KILL CONNECTION {int(ident)}")
        finally:
            conn.close()
        return len(ids)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_private_mariadb(*, extra: Sequence[str] = ()) -> Iterator[PrivateMariaDb]:
    """A started private server, stopped and removed when the block ends."""
    server = PrivateMariaDb(extra=extra)
    try:
        server.start()
        yield server
    finally:
        server.close()


# -- a primary and a replica ----------------------------------------------------------

#: The replica's address; the primary's is 127.0.0.1.  Same port on both.
REPLICA_ADDRESS = "127.0.0.2"


def _shared_free_port(addresses: Sequence[str]) -> int:
    """A port free on every one of ``addresses`` a moment ago."""
    import socket

    for _ in range(50):
        port = free_port(addresses[0])
        try:
            for address in addresses[1:]:
                with socket.socket() as sock:
                    sock.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {addresses}")


class ReplicatedMariaDb:
    """A primary (127.0.0.1) and a replica (127.0.0.2) on one port, GTID replication.

    MariaDB's own replication, set up as its docs say ("Setting Up Replication",
    "Global Transaction ID"): a binary log and server id on each, a replication
    user on the primary, and on the replica ``CHANGE MASTER TO ...
    MASTER_USE_GTID=slave_pos; START SLAVE``.  Everything made on the primary
    afterwards (a test database, its reader) reaches the replica;
    :meth:`sync` waits until it has.  Either server can be killed, paused
    (SIGSTOP) and started again by its own pid.
    """

    REPL_USER = "authsvc_repl"

    def __init__(self, *, extra: Sequence[str] = ()) -> None:
        port = _shared_free_port(["127.0.0.1", REPLICA_ADDRESS])
        self.port = port
        self.primary = PrivateMariaDb(address="127.0.0.1", port=port, server_id=1, extra=extra)
        self.replica = PrivateMariaDb(address=REPLICA_ADDRESS, port=port, server_id=2,
                                      extra=[*extra, "--read-only"])
        self._repl_password = secrets.token_hex(12)

    @property
    def hosts(self) -> tuple[HostPort, HostPort]:
        """The map's failover list: the primary first."""
        return (HostPort("127.0.0.1", self.port), HostPort(REPLICA_ADDRESS, self.port))

    def start(self) -> None:
        for attempt in range(3):
            try:
                self.primary.start()
                self.replica.start()
                break
            except RuntimeError as exc:
                # Another program may bind the free port before mariadbd does.
                if "already in use" not in str(exc) or attempt == 2:
                    raise
                self.primary.stop()
                self.replica.stop()
                self.port = _shared_free_port(["127.0.0.1", REPLICA_ADDRESS])
                self.primary.move_to(self.port)
                self.replica.move_to(self.port)
        for host in ("127.0.0.1", REPLICA_ADDRESS):
            self.primary.admin.execute(
                f"CREATE USER '{self.REPL_USER}'@'{host}' IDENTIFIED BY %s",
                (self._repl_password,))
            self.primary.admin.execute(
                f"GRANT REPLICATION SLAVE ON *.* TO '{self.REPL_USER}'@'{host}'")
        # slave_pos: the replica starts from the GTIDs it applied (none yet), so
        # it replays the primary's whole binary log, users included.
        self.replica.admin.execute(
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = %s, "
            "MASTER_USER = %s, MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos, "
            "MASTER_CONNECT_RETRY = 1",
            (self.port, self.REPL_USER, self._repl_password))
        self.replica.admin.execute("START SLAVE")
        self.sync()

    def ensure_replicating(self) -> None:
        """Both running and the replica applying again (after a test killed or paused one)."""
        for server in (self.primary, self.replica):
            if server.running:
                server.resume()  # harmless when it was not paused
        self.primary.ensure_running()
        self.replica.ensure_running()
        self.replica.admin.execute("START SLAVE")  # a no-op (a note) when running
        self.sync()

    def sync(self, timeout: float = 30.0) -> None:
        """Wait until the replica has applied everything the primary logged so far."""
        [(position,)] = self.primary.admin.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        [(result,)] = self.replica.admin.execute(
            "SELECT MASTER_GTID_WAIT(%s, %s)", (position, timeout))
        if result != 0:
            status = self.replica.admin.execute("SHOW SLAVE STATUS")
            raise RuntimeError(f"replica did not reach {position} in {timeout}s: {status}")

    def grant_replica_monitor(self, user: str) -> None:
        """Let the map's user read replication status (the lag check), on both."""
        for host in ("127.0.0.1", "localhost"):
            self.primary.admin.execute(f"GRANT REPLICA MONITOR ON *.* TO '{user}'@'{host}'")
        self.sync()

    def close(self) -> None:
        self.replica.close()
        self.primary.close()


@contextlib.contextmanager
def running_replicated_mariadb(*, extra: Sequence[str] = ()) -> Iterator[ReplicatedMariaDb]:
    """A started primary and replica, both stopped and removed when the block ends."""
    pair = ReplicatedMariaDb(extra=extra)
    try:
        pair.start()
        yield pair
    finally:
        pair.close()


@contextlib.contextmanager
def replicated_test_database(pair: ReplicatedMariaDb) -> Iterator[TestDatabase]:
    """A test database made on the primary and waited for on the replica."""
    with create_test_database(pair.primary.admin, host="127.0.0.1", port=pair.port) as db:
        try:
            pair.sync()
            yield db
        finally:
            with contextlib.suppress(Exception):
                pair.primary.ensure_running()  # so that the drop can run


# -- pytest fixtures ---------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb_db() -> Iterator[TestDatabase]:
    """A database of our own on the shared server, for the whole session."""
    with create_test_database(shared_admin()) as db:
        yield db


@pytest.fixture(scope="session")
def private_mariadb_server() -> Iterator[PrivateMariaDb]:
    """The session's private server (started once)."""
    require_binary("mariadb-install-db")
    with running_private_mariadb() as server:
        yield server


@pytest.fixture
def private_mariadb(private_mariadb_server: PrivateMariaDb) -> Iterator[PrivateMariaDb]:
    """The private server, running at the start and again at the end of the test."""
    private_mariadb_server.ensure_running()
    yield private_mariadb_server
    private_mariadb_server.ensure_running()


@pytest.fixture(scope="session")
def replicated_mariadb_pair() -> Iterator[ReplicatedMariaDb]:
    """The session's primary and replica (started once)."""
    require_binary("mariadb-install-db")
    with running_replicated_mariadb() as pair:
        yield pair


@pytest.fixture
def replicated_mariadb(replicated_mariadb_pair: ReplicatedMariaDb) -> Iterator[ReplicatedMariaDb]:
    """The pair, replicating at the start and again at the end (a test may kill either)."""
    replicated_mariadb_pair.ensure_replicating()
    yield replicated_mariadb_pair
    replicated_mariadb_pair.ensure_replicating()


@pytest.fixture
def private_mariadb_db(private_mariadb: PrivateMariaDb) -> Iterator[TestDatabase]:
    """A fresh database on the private server for one test."""
    with create_test_database(private_mariadb.admin) as db:
        yield db
        private_mariadb.ensure_running()  # so that the drop can run


def main() -> int:  # pragma: no cover - manual use
    with running_private_mariadb() as server, create_test_database(server.admin) as db:
        db.add_mailboxes([("bob@riseup.net", "127.0.0.2"), ("alice@riseup.net", "127.0.0.3")])
        print(f"mariadbd pid {server.pid} on 127.0.0.1:{server.port}, socket {server.socket}")
        print(f"map_library_opt {db.map_library_opt()}")
        print("Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
