"""Private Redis for tests: one ``redis-server``, or a Sentinel set; free ports, ended by pid.

Never the machine's 6379: ``--port`` is a free one, ``--save ""`` and
``--appendonly no`` keep it from writing anything, and it runs in the
foreground in its own temporary directory.

:class:`SentinelSet` is what a site runs for a highly available Redis
(redis.io, "High availability with Redis Sentinel"): a primary, a replica of
it and three sentinels (``redis-server <file> --sentinel``, each with a
generated config file it may rewrite, as Sentinel does), all on 127.0.0.1.
``down-after-milliseconds`` is 1000 so that a failover takes seconds.  It
runs with passwords, or with Redis 6 ACL users (redis.io, "ACL") on the data
servers, the sentinels or both, each user with the rules docs/operations.md
gives it ("Redis ACL users").
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.helpers.eventually import eventually
from tests.services.ports import free_port
from tests.services.require import require_binary

#: The name the sentinels monitor the primary under.
SERVICE = "authsvc"


class RedisServer:
    """One redis-server on 127.0.0.1 and a free port (a sentinel with ``sentinel_config``)."""

    def __init__(self, workdir: Path, port: int | None = None, *,
                 password: str | None = None, args: tuple[str, ...] = (),
                 sentinel_config: str | None = None, username: str | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        #: The test's own login: ``requirepass``'s, or with ``username`` an ACL
        #: user's (whose ``user`` lines are in ``args`` or ``sentinel_config``).
        self.password = password
        self.username = username
        self.log_path = workdir / "redis.log"
        self._args = args
        self._sentinel_config = sentinel_config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 10.0) -> None:
        binary = require_binary("redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._sentinel_config is not None:
            # Sentinel rewrites its file (the set it discovered), so each has its own.
            config = self.workdir / "sentinel.conf"
            config.write_text(self._sentinel_config.format(port=self.port, dir=self.workdir))
            command = [binary, str(config), "--sentinel"]
        else:
            command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no",
                       *(("--requirepass", self.password, "--masterauth", self.password)
                         if self.password and not self.username else ()), *self._args]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {self.log_path.read_text()}")
            time.sleep(0.05)

    def ping(self) -> bool:
        who = f"{self.username} " if self.username else ""
        auth = f"AUTH {who}{self.password}\r\n".encode() if self.password else b""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(auth + b"PING\r\n")
                data = b""
                while b"PONG" not in data and not data.startswith(b"-"):
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    data += chunk
                return b"+PONG" in data
        except OSError:
            return False

    def client(self) -> Any:
        """A redis-py client of this server (the ``redis`` test dependency)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, username=self.username,
                           password=self.password, decode_responses=True, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL by pid: an outage, not a shutdown."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(5)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


_SENTINEL_CONFIG = """\
port {{port}}
bind 127.0.0.1
daemonize no
dir {{dir}}
sentinel resolve-hostnames no
sentinel monitor {service} 127.0.0.1 {primary} 2
sentinel down-after-milliseconds {service} 1000
sentinel failover-timeout {service} 10000
sentinel parallel-syncs {service} 1
"""


#: With ACL users (redis.io, "ACL"), the test's own user on every server of the
#: set, which the sentinels also use with each other; ``default`` is off.
ADMIN, ADMIN_PASSWORD = "harness", "harness-pw-5e0a"
#: The replica's user on the primary (``masteruser``), with the rules redis.io
#: gives it ("ACL", "ACL rules for Sentinel and Replicas").
REPLICA, REPLICA_PASSWORD = "replica", "replica-pw-2b8d"
REPLICA_RULES = ("+psync", "+replconf", "+ping")
#: The sentinels' user on the primary and replica (``sentinel auth-user``),
#: with the rules redis.io gives it ("High availability with Redis Sentinel",
#: "Redis Access Control List authentication").
WATCHER, WATCHER_PASSWORD = "sentinels", "sentinels-pw-1f7c"
WATCHER_RULES = ("allchannels", "+multi", "+slaveof", "+ping", "+exec", "+subscribe",
                 "+config|rewrite", "+role", "+publish", "+info", "+client|setname",
                 "+client|kill", "+script|kill")
#: authsvc's user on the primary and replica: its keys and what the throttle
#: and the holds send, WAIT included (docs/operations.md, "Redis ACL users").
AUTHSVC_RULES = ("~authsvc:*", "resetchannels", "-@all", "+@read", "+@write",
                 "+@transaction", "+eval", "+wait", "+ping")
#: authsvc's user on the sentinels: asking for the primary (redis-py's
#: Sentinel client sends ``SENTINEL MASTERS``).
ASKER_RULES = ("-@all", "+sentinel|masters", "+ping")


def _users(*users: tuple[str, str, tuple[str, ...]]) -> list[str]:
    """``user`` directives: ``default`` off, the harness's, then ``users``."""
    return ["user default off", f"user {ADMIN} on >{ADMIN_PASSWORD} ~* &* +@all",
            *(f"user {name} on >{password} {' '.join(rules)}" for name, password, rules in users)]


class SentinelSet:
    """A primary, its replica and three sentinels watching them as :data:`SERVICE`.

    ``password`` is the primary's and replica's ``requirepass`` (and
    ``masterauth``, so either can follow the other); ``sentinel_password`` the
    sentinels' own ``requirepass`` (and ``sentinel-pass``, which they use with
    each other).  With ``username`` the primary and replica run ACL users
    instead: ``username``/``password`` with :data:`AUTHSVC_RULES`, the
    sentinels' :data:`WATCHER`, the replica's :data:`REPLICA` and the test's
    :data:`ADMIN`; with ``sentinel_username`` the sentinels do:
    ``sentinel_username``/``sentinel_password`` with :data:`ASKER_RULES`, and
    :data:`ADMIN`.
    """

    def __init__(self, workdir: Path, *, password: str | None = None,
                 sentinel_password: str | None = None, username: str | None = None,
                 sentinel_username: str | None = None) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        data: list[str] = []
        login: dict[str, Any] = {"password": password}
        if username and password:
            for line in _users((username, password, AUTHSVC_RULES),
                               (WATCHER, WATCHER_PASSWORD, WATCHER_RULES),
                               (REPLICA, REPLICA_PASSWORD, REPLICA_RULES)):
                data += ["--" + line.split(" ", 1)[0], *line.split(" ")[1:]]
            data += ["--masteruser", REPLICA, "--masterauth", REPLICA_PASSWORD]
            login = {"username": ADMIN, "password": ADMIN_PASSWORD}
        self.primary = RedisServer(workdir / "primary", args=tuple(data), **login)
        self.replica = RedisServer(workdir / "replica", args=(
            *data, "--replicaof", "127.0.0.1", str(self.primary.port)), **login)
        config = _SENTINEL_CONFIG.format(service=SERVICE, primary=self.primary.port)
        if username:
            config += f"sentinel auth-user {SERVICE} {WATCHER}\n" \
                      f"sentinel auth-pass {SERVICE} {WATCHER_PASSWORD}\n"
        elif password:
            config += f"sentinel auth-pass {SERVICE} {password}\n"
        watch: dict[str, Any] = {"password": sentinel_password}
        if sentinel_username and sentinel_password:
            config += "".join(line + "\n" for line in _users(
                (sentinel_username, sentinel_password, ASKER_RULES)))
            config += f"sentinel sentinel-user {ADMIN}\nsentinel sentinel-pass {ADMIN_PASSWORD}\n"
            watch = {"username": ADMIN, "password": ADMIN_PASSWORD}
        elif sentinel_password:
            config += f"requirepass {sentinel_password}\nsentinel sentinel-pass " \
                      f"{sentinel_password}\n"
        self.sentinels = [RedisServer(workdir / f"sentinel{n}", sentinel_config=config, **watch)
                          for n in range(3)]

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def start(self) -> None:
        try:
            self.primary.start()
            self.replica.start()
            eventually(lambda: self.replica.client().info("replication")
                       .get("master_link_status") == "up", 20, what="the replica in sync")
            for sentinel in self.sentinels:
                sentinel.start()
            eventually(self._watching, 30, what="three sentinels watching a primary and replica")
        except BaseException:
            self.stop()
            raise

    def _watching(self) -> bool:
        """Whether every sentinel knows the others and the replica (hello messages, every 2 s)."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                others = client.sentinel_sentinels(SERVICE)
                replicas = client.sentinel_slaves(SERVICE)
            finally:
                client.close()
            if len(others) != 2 or len(replicas) != 1:
                return False
            if any("down" in str(r.get("flags", "")) or "disconnected" in str(r.get("flags", ""))
                   for r in replicas):
                return False
        return True

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the sentinels name it now."""
        named: list[int] = []
        for sentinel in self.sentinels:
            if sentinel.pid is None:
                continue
            client = sentinel.client()
            try:
                found = client.sentinel_get_master_addr_by_name(SERVICE)
            finally:
                client.close()
            if found:
                named.append(int(found[1]))
        best = max(set(named), key=named.count, default=None)
        return best if best is not None and named.count(best) >= 2 else None

    def replicated(self) -> bool:
        """Whether the replica has every write the primary has (equal replication offsets)."""
        primary, replica = self.primary.client(), self.replica.client()
        try:
            wrote = primary.info("replication")["master_repl_offset"]
            has = replica.info("replication")
            return bool(has.get("master_link_status") == "up"
                        and has["slave_repl_offset"] >= wrote)
        finally:
            primary.close()
            replica.close()

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()

    def __enter__(self) -> SentinelSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
