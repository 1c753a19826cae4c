"""Private Redis for tests: one ``redis-server``, or a Sentinel set; free ports, ended by pid.

Never the machine's 6379: ``--port`` is a free one, ``--save ""`` and
``--appendonly no`` keep it from writing anything, and it runs in the
foreground in its own temporary directory.

:class:`SentinelSet` is what a site runs for a highly available Redis
(redis.io, "High availability with Redis Sentinel"): a primary, a replica of
it and three sentinels (``redis-server <file> --sentinel``, each with a
generated config file it may rewrite, as Sentinel does), all on 127.0.0.1.
``down-after-milliseconds`` is 1000 so that a failover takes seconds.
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
                 sentinel_config: str | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
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
                         if self.password else ()), *self._args]
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
        auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
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

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=5)

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


class SentinelSet:
    """A primary, its replica and three sentinels watching them as :data:`SERVICE`.

    ``password`` is the primary's and replica's ``requirepass`` (and
    ``masterauth``, so either can follow the other); ``sentinel_password`` the
    sentinels' own ``requirepass`` (and ``sentinel-pass``, which they use with
    each other).
    """

    def __init__(self, workdir: Path, *, password: str | None = None,
                 sentinel_password: str | None = None) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self.primary = RedisServer(workdir / "primary", password=password)
        self.replica = RedisServer(workdir / "replica", password=password, args=(
            "--replicaof", "127.0.0.1", str(self.primary.port)))
        config = _SENTINEL_CONFIG.format(service=SERVICE, primary=self.primary.port)
        if password:
            config += f"sentinel auth-pass {SERVICE} {password}\n"
        if sentinel_password:
            config += f"requirepass {sentinel_password}\nsentinel sentinel-pass " \
                      f"{sentinel_password}\n"
        self.sentinels = [RedisServer(workdir / f"sentinel{n}", password=sentinel_password,
                                      sentinel_config=config) for n in range(3)]

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
