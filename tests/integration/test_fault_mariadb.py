"""Fault: the MySQL map's mariadbd killed (SIGKILL) under load, then started again.

``python -m authsvc serve`` (two workers) routes through a PRIVATE mariadbd
(the shared one is never touched).  While threads send nginx requests, the
database is killed.  What nginx must read: routes already cached keep coming
(``Auth-Status: OK``); logins nobody asked for yet get the temporary failure,
never "Invalid login or password"; serve stays up; and once mariadbd is back,
the uncached logins work without anyone restarting or flushing anything.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from authsvc.http.auth_http import TEXT_INVALID, TEXT_TEMPORARY
from tests.helpers.eventually import eventually
from tests.helpers.prometheus import Scrape
from tests.services.mariadb import PrivateMariaDb, TestDatabase
from tests.services.serve import ServeProcess

pytestmark = pytest.mark.integration

SECRET = "fault-secret"
CACHED = ("alice", "bob")
WORKERS = 2
UNCACHED = "carol"


def ask(port: int, user: str) -> dict[str, str]:
    request = (
        f"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
        f"Auth-User: {user}\r\nAuth-Pass: pw\r\nAuth-Protocol: imap\r\n"
        f"Auth-Login-Attempt: 1\r\nClient-IP: 192.0.2.9\r\nX-Authsvc-Listener: imap4\r\n"
        f"X-Authsvc-Key: {SECRET}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert " 200 " in head.split("\r\n")[0], head
    return dict(line.split(": ", 1) for line in head.split("\r\n")[1:])


def write_config(tmp: Path, db: TestDatabase) -> Path:
    (tmp / "secret").write_text(SECRET + "\n")
    password = db.write_password_file(tmp / "db-password")
    config = tmp / "authsvc.toml"
    config.write_text(f"""
[login]
lower_case = ["all"]
explicit_domain = "riseup.net"
add_domain = ["lookup"]

[cache]
ttl = 300
negative_ttl = 1
stale_if_error = 600

[map]
type = "mysql"
hosts = ["{db.host}:{db.port}"]
database = "{db.name}"
table = "mailboxes"
user = "{db.reader_user}"
password_file = "{password}"
server_column = "storage_ip"
user_column = "address"
port_constant = 143
connect_timeout = 1
query_timeout = 1

[http]
secret_file = "{tmp / 'secret'}"

[log]
level = "info"

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = 1143
""")
    return config


def test_mariadb_killed_under_load(
    private_mariadb: PrivateMariaDb, private_mariadb_db: TestDatabase, tmp_path: Path
) -> None:
    db = private_mariadb_db
    db.add_mailboxes([("alice@riseup.net", "127.0.0.2"), ("bob@riseup.net", "127.0.0.3"),
                      ("carol@riseup.net", "127.0.0.4")])
    serve = ServeProcess([write_config(tmp_path, db)], tmp_path, workers=WORKERS)
    serve.start()
    try:
        # Warm every worker's cache: SO_REUSEPORT spreads connections by a
        # hash, so a fixed number of requests may leave one worker without a
        # user. Ask until each worker has missed (and so cached) each user once.
        def warmed() -> bool:
            for user in CACHED:
                assert ask(serve.port, user)["Auth-Status"] == "OK"
            misses = Scrape(serve.get("/metrics")[1]).sum("authsvc_cache_misses_total")
            return misses == WORKERS * len(CACHED)

        eventually(warmed, what="both workers caching both users")
        stop = threading.Event()
        seen: Counter[tuple[str, str]] = Counter()
        errors: list[str] = []

        def load(user: str) -> None:
            while not stop.is_set():
                try:
                    seen[user, ask(serve.port, user)["Auth-Status"]] += 1
                except Exception as exc:  # a dropped or failed request
                    errors.append(f"{user}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=load, args=(user,), daemon=True)
                   for user in (*CACHED, *CACHED)]
        for thread in threads:
            thread.start()
        try:
            eventually(lambda: sum(seen.values()) >= len(threads), what="load before the crash")
            private_mariadb.stop(crash=True)
            outage = [ask(serve.port, UNCACHED)["Auth-Status"] for _ in range(6)]
            time.sleep(0.5)
            private_mariadb.start()
            deadline = time.monotonic() + 20
            while (status := ask(serve.port, UNCACHED)["Auth-Status"]) != "OK":
                assert status == TEXT_TEMPORARY, status
                assert time.monotonic() < deadline, "no recovery"
                time.sleep(0.2)
            # Every worker recovers (each has its own pool).
            assert {ask(serve.port, UNCACHED)["Auth-Status"] for _ in range(8)} == {"OK"}
        finally:
            stop.set()
            for thread in threads:
                thread.join(15)
        assert errors == []
        assert set(outage) == {TEXT_TEMPORARY}, outage
        assert TEXT_INVALID not in outage
        assert {status for (_, status) in seen} == {"OK"}, seen
        assert sum(seen.values()) > 20
        assert serve.running()
        assert ask(serve.port, "nobody")["Auth-Status"] == TEXT_INVALID  # the map is back
    finally:
        serve.stop()
        private_mariadb.ensure_running()
