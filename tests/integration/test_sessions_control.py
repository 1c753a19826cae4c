"""``authsvc sessions list|kick`` and ``--pool``: real proxies with two workers, real Dovecot.

Two Dovecot stores (a: bob and carol, b: alice) behind ``authsvc proxy
--workers 2`` with a ``[control] listen`` port.  Logged-in IMAP clients sit
on both workers.  The tests show that the list has every session with the
right fields, from both workers; that a kick by ``--user`` or by ``--store``
closes exactly the matching sessions (the client reads end of stream, the
session line says ``end=kicked``) and leaves the others relaying; that
``--dry-run`` closes nothing; that ``--rate`` spaces the kicks; that bad
input is one line and exit 2 and changes nothing; and that ``--pool`` reaches
two proxy nodes, reports a node that is down or has no control address, and
exits non-zero then.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.helpers.eventually import eventually
from tests.services.dovecot import DovecotStore, dovecot_stores
from tests.services.mailclient import CLIENT_ADDRESS, RawLines
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.require import require_binary
from tests.services.stack import STORE_ADDRESSES

pytestmark = pytest.mark.integration

CONTROL_SECRET = "operator-only-5e1b"
USERS = {"a": {"bob": "bob-pw", "carol": "carol-pw"}, "b": {"alice": "alice-pw"}}
PASSWORDS = {user: pw for users in USERS.values() for user, pw in users.items()}


def proxy_config(root: Path, name: str, stores: dict[str, DovecotStore],
                 secret_file: Path) -> tuple[Path, int, int]:
    """A proxy node's config: (path, IMAP port, control port)."""
    port, control = free_port(), free_port()
    lines = [f"{user}: {STORE_ADDRESSES[store]}:{stores[store].ports.imap}"
             for store, users in USERS.items() for user in users]
    (root / f"{name}.map").write_text("\n".join(lines) + "\n")
    config = root / f"{name}.toml"
    config.write_text(f"""
[proxy]
backend_timeout = 5
drain_timeout = 1

[control]
listen = "127.0.0.1:{control}"
secret_file = "{secret_file}"

[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
bind = ["127.0.0.1:{port}"]
[listener.map]
type = "file"
path = "{root / (name + '.map')}"
""")
    return config, port, control


def cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authsvc", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=timeout, check=False)


def open_session(port: int, user: str) -> RawLines:
    """A logged-in IMAP client, relayed by the proxy."""
    client = RawLines("127.0.0.1", port)
    assert client.line().startswith(b"* OK")
    reply = client.command(f"a LOGIN {user} {PASSWORDS[user]}".encode(), b"a")
    assert reply[-1].startswith(b"a OK"), reply
    return client


def alive(client: RawLines) -> bool:
    """The session still relays: the store answers a NOOP through it."""
    try:
        return client.command(b"n NOOP", b"n")[-1].startswith(b"n OK")
    except OSError:
        return False


def listed(config: Path, *selectors: str) -> list[dict[str, object]]:
    done = cli(config, "sessions", "list", "--json", *selectors)
    assert done.returncode == 0, done.stderr
    sessions = json.loads(done.stdout)["sessions"]
    assert isinstance(sessions, list)
    return sessions


@contextmanager
def two_stores() -> Iterator[dict[str, DovecotStore]]:
    require_binary("dovecot")
    with dovecot_stores(USERS, STORE_ADDRESSES) as stores:
        yield stores


@contextmanager
def clients() -> Iterator[list[RawLines]]:
    opened: list[RawLines] = []
    try:
        yield opened
    finally:
        for client in opened:
            client.close()


def spread(config: Path, port: int, opened: list[RawLines], user: str, count: int) -> None:
    """Open ``count`` sessions of ``user``, more until both workers relay one of them."""
    for _ in range(count):
        opened.append(open_session(port, user))

    def both_workers() -> bool:
        if len({s["worker"] for s in listed(config, "--user", user)}) == 2:
            return True
        opened.append(open_session(port, user))
        return False

    eventually(both_workers, 30, interval=0)


def test_list_and_kick_by_user_and_store(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(CONTROL_SECRET + "\n")
    with two_stores() as stores, clients() as opened:
        config, port, _ = proxy_config(tmp_path, "node", stores, tmp_path / "secret")
        with ProxyProcess(config, tmp_path / "proxy.log", workers=2) as proxy:
            proxy.start(listening=4)  # each worker: the IMAP listener, the control port
            started = time.time()
            spread(config, port, opened, "bob", 4)
            bobs = len(opened)
            opened.append(open_session(port, "carol"))
            spread(config, port, opened, "alice", 2)
            alices = opened[bobs + 1:]

            sessions = listed(config)
            assert len(sessions) == len(opened)
            assert len({s["worker"] for s in sessions}) == 2
            store_a = f"{STORE_ADDRESSES['a']}:{stores['a'].ports.imap}"
            store_b = f"{STORE_ADDRESSES['b']}:{stores['b'].ports.imap}"
            for s in sessions:
                assert s["listener"] == "imap4" and s["protocol"] == "imap"
                assert s["user"] == s["login"]
                assert s["store"] == (store_b if s["user"] == "alice" else store_a)
                assert s["store_host"] == s["store"]
                assert str(s["client"]).startswith(f"{CLIENT_ADDRESS}:")
                assert (s["client_tls"], s["store_tls"]) == ("none", "plaintext")
                assert started - 1 <= float(str(s["started"])) <= time.time() + 1
                assert int(str(s["bytes_in"])) > 0 and int(str(s["bytes_out"])) > 0
            ids = {(s["worker"], s["session"]) for s in sessions}
            assert len(ids) == len(sessions)

            # The table for people: a heading, then one line a session.
            done = cli(config, "sessions", "list")
            assert done.returncode == 0, done.stderr
            table = done.stdout.splitlines()
            assert table[0].split() == ["WORKER", "ID", "LISTENER", "USER", "LOGIN", "CLIENT",
                                        "STORE", "TLS", "STARTED", "IN", "OUT"]
            assert len(table) == 1 + len(opened)
            assert any(" carol " in line and store_a in line and " none/plaintext " in line
                       for line in table)

            # The selectors.
            assert len(listed(config, "--user", "b?b")) == bobs
            assert len(listed(config, "--user", "*o*")) == bobs + 1  # bob, carol
            assert len(listed(config, "--user", "BOB")) == 0  # the map key's case
            assert len(listed(config, "--client", f"{CLIENT_ADDRESS}/32")) == len(opened)
            assert listed(config, "--client", "192.0.2.0/24") == []
            assert len(listed(config, "--store", STORE_ADDRESSES["b"])) == len(alices)
            assert len(listed(config, "--store", store_a)) == bobs + 1
            assert listed(config, "--store", f"{STORE_ADDRESSES['a']}:1") == []
            # A name is resolved by the command: localhost is no store's address.
            assert listed(config, "--store", "localhost") == []

            # Bad input: one line on stderr, exit 2, nothing sent, nothing closed.
            for args in (("list", "--user", ""), ("kick", "--user", "bob smith"),
                         ("kick", "--client", "10.0.0.300/8"),
                         ("kick", "--store", "no_such host"),
                         ("kick", "--store", "127.0.0.2:99999"),
                         ("kick", "--store", "nonexistent.invalid"),
                         ("kick",), ("kick", "--user", "bob", "--rate", "0")):
                done = cli(config, "sessions", *args)
                assert (done.returncode, done.stdout) == (2, ""), (args, done)
                assert done.stderr.startswith("authsvc sessions: ") and \
                    done.stderr.count("\n") == 1, (args, done.stderr)

            # A dry run names what a kick would close, and closes nothing.
            done = cli(config, "sessions", "kick", "--user", "bob", "--dry-run")
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"would close {bobs} session(s) in 2 worker(s)")
            assert len(listed(config)) == len(opened)
            assert all(alive(client) for client in opened)

            # Kick by user: exactly bob's sessions end; the clients read end of stream.
            done = cli(config, "sessions", "kick", "--user", "bob")
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"closed {bobs} session(s) in 2 worker(s) "
                                          "(by worker pid: ")
            assert all(client.closed_by_peer() for client in opened[:bobs])
            assert all(alive(client) for client in opened[bobs:])
            kicked = proxy.wait_for("session", bobs, end="kicked")
            assert {line["login"] for line in kicked} == {"bob"}

            # Kick by store: exactly the sessions to store b end.
            done = cli(config, "sessions", "kick", "--store", STORE_ADDRESSES["b"])
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"closed {len(alices)} session(s)")
            assert all(client.closed_by_peer() for client in alices)
            assert alive(opened[bobs])  # carol, on store a
            assert [s["user"] for s in listed(config)] == ["carol"]
            proxy.wait_for("session", bobs + len(alices), end="kicked")
        log = proxy.log_text()
    assert CONTROL_SECRET not in log
    assert " event=kick " in log
    assert "event=session_error" not in log


def closing_times(opened: list[RawLines]) -> tuple[list[float], list[threading.Thread]]:
    """A thread per client that notes when the proxy closed it."""
    times: list[float] = []
    lock = threading.Lock()

    def wait(client: RawLines) -> None:
        if client.closed_by_peer():
            with lock:
                times.append(time.monotonic())

    threads = [threading.Thread(target=wait, args=(c,), daemon=True) for c in opened]
    for thread in threads:
        thread.start()
    return times, threads


def test_kick_rate_spaces_the_kicks(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(CONTROL_SECRET + "\n")
    rate = 5.0
    with two_stores() as stores, clients() as opened:
        config, port, _ = proxy_config(tmp_path, "node", stores, tmp_path / "secret")
        with ProxyProcess(config, tmp_path / "proxy.log", workers=2) as proxy:
            proxy.start(listening=4)
            spread(config, port, opened, "bob", 10)
            times, threads = closing_times(opened)
            done = cli(config, "sessions", "kick", "--user", "bob", "--rate", str(rate))
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"closed {len(opened)} session(s) in 2 worker(s)")
            for thread in threads:
                thread.join(10)
            assert len(times) == len(opened)
            times.sort()
            # The pool's rate, shared by the two workers: never more than `rate`
            # closings in any second (two more for late wake-ups on a loaded machine)...
            for i, t in enumerate(times):
                assert sum(1 for u in times[i:] if u - t < 1.0) <= rate + 2, times
            # ...so the kicks of at least five sessions in one worker, at 2.5 a
            # second, span well over a second (at once they take milliseconds).
            assert times[-1] - times[0] >= 1.2, times
            proxy.wait_for("session", len(opened), end="kicked")
        assert "event=session_error" not in proxy.log_text()


def pool_config(root: Path, nodes: list[tuple[str, int | None]], secret_file: Path,
                name: str = "pool") -> Path:
    """The operator's config: the [control] secret and the node list."""
    entries = "".join(
        f'\n[[haproxy.nodes]]\nname = "{node}"\nhost = "127.0.0.1"\n'
        + (f'control = "127.0.0.1:{control}"\n' if control is not None else "")
        for node, control in nodes)
    config = root / f"{name}.toml"
    config.write_text(f"""
[control]
secret_file = "{secret_file}"

[[listener]]
name = "imap4"
protocol = "imap"
outgoing_server = ["127.0.0.9"]
{entries}""")
    return config


def test_pool_reaches_every_node(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(CONTROL_SECRET + "\n")
    (tmp_path / "wrong").write_text("not-the-secret\n")
    with two_stores() as stores, clients() as opened, ExitStack() as stack:
        ports, controls = [], []
        for name in ("n1", "n2"):
            config, port, control = proxy_config(tmp_path, name, stores, tmp_path / "secret")
            proxy = stack.enter_context(ProxyProcess(config, tmp_path / f"{name}.log",
                                                     workers=2))
            proxy.start(listening=4)
            ports.append(port)
            controls.append(control)
        nodes: list[tuple[str, int | None]] = [("n1", controls[0]), ("n2", controls[1])]
        pool = pool_config(tmp_path, nodes, tmp_path / "secret")
        for port in ports:
            opened.append(open_session(port, "bob"))
            opened.append(open_session(port, "carol"))

        done = cli(pool, "flush", "--all", "--pool")
        assert (done.returncode, done.stderr) == (0, "")
        assert [re.sub(r"\d+ cached", "N cached", line) for line in done.stdout.splitlines()] \
            == [f"{n}: ok: dropped N cached route(s) in 2 worker(s)" for n in ("n1", "n2")]
        done = cli(pool, "throttle", "list", "--pool")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0].startswith("n1: ok: 0 counter(s)")

        done = cli(pool, "sessions", "list", "--pool")
        assert done.returncode == 0, done.stderr
        heads = [line for line in done.stdout.splitlines() if not line.startswith("  ")]
        assert heads == ["n1: ok: 2 session(s) in 2 worker(s)",
                         "n2: ok: 2 session(s) in 2 worker(s)"]
        done = cli(pool, "sessions", "list", "--pool", "--json", "--node", "n2")
        assert done.returncode == 0, done.stderr
        assert list(json.loads(done.stdout)) == ["n2"]

        done = cli(pool, "sessions", "kick", "--pool", "--user", "bob")
        assert done.returncode == 0, done.stderr
        assert [line.split(" (")[0] for line in done.stdout.splitlines()] == [
            "n1: ok: closed 1 session(s) in 2 worker(s)",
            "n2: ok: closed 1 session(s) in 2 worker(s)"]
        assert all(opened[i].closed_by_peer() for i in (0, 2))
        assert all(alive(opened[i]) for i in (1, 3))

        # A node that is down and one with no control address: reported, exit 1;
        # the nodes that answer still do the work.
        down = pool_config(tmp_path, [*nodes, ("n3", free_port()), ("n4", None)],
                           tmp_path / "secret", "down")
        done = cli(down, "flush", "--all", "--pool")
        assert done.returncode == 1
        lines = done.stdout.splitlines()
        assert [line.split(":")[0] for line in lines] == ["n1", "n2", "n3", "n4"]
        assert lines[0].startswith("n1: ok: ") and lines[1].startswith("n2: ok: ")
        assert lines[2].startswith("n3: error: cannot reach authsvc: ")
        assert lines[3].startswith("n4: error: no control address")
        assert done.stderr == "authsvc flush: 2 of 4 node(s) failed\n"

        # A wrong secret: every node refuses, one line each, exit 1, nothing closed.
        wrong = pool_config(tmp_path, nodes, tmp_path / "wrong", "wrong")
        done = cli(wrong, "sessions", "kick", "--pool", "--user", "*")
        assert done.returncode == 1
        assert done.stdout.splitlines() == [
            f"{n}: error: HTTP 401: unauthorized: send the control secret in "
            "X-Authsvc-Control" for n in ("n1", "n2")]
        assert all(alive(opened[i]) for i in (1, 3))

        # An unknown node, and --url with --pool: bad input, exit 2, nothing sent.
        for args in (("--node", "n9"), ("--pool", "--url", "http://127.0.0.1:1")):
            done = cli(pool, "sessions", "kick", "--user", "*", *args)
            assert (done.returncode, done.stdout) == (2, ""), done
            assert done.stderr.count("\n") == 1, done.stderr
        assert "no node named 'n9'" in cli(pool, "flush", "--all", "--node", "n9").stderr
        assert all(alive(opened[i]) for i in (1, 3))
