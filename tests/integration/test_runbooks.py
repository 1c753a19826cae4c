"""The runbooks of docs/operations.md, run on a pool under load: real parts, loopback only.

Two ``authsvc proxy --workers 2`` nodes (n1 on 127.0.0.10, n2 on 127.0.0.11)
and one nginx + ``authsvc serve --workers 2`` node (n3 on 127.0.0.12) sit
behind HAProxy (rendered by ``authsvc render-haproxy --admin-socket``, PROXY
v2 to the nodes), share a private MariaDB map (the seed's
``mailboxes`` table, a one-hour route cache, so a missing flush shows) and
two Dovecot stores, and take operator commands with ``--pool`` on their
``[control]`` ports, each keeping its holds in a state file of its own.

* **Move a mailbox**: a client loop logs bob in through HAProxy all the time
  while other clients sit in IDLE; the test runs the runbook (sync while live,
  ``hold --pool``, ``sessions kick --pool`` (serve answers 501) and ``doveadm
  kick`` for nginx's sessions, ``doveadm who`` on the old store,
  the final sync, the map row, ``flush --pool``, ``release --pool``) and shows
  from the stores' own login logs, the proxies' session logs, serve's
  decision log and the clients
  that after the hold no login reached the old store, that every login was
  held or reached the new store after the release, and that right after the
  release each node sends bob to the new store.
* **Service a store**: ``hold store --pool``, ``sessions kick --store --rate``,
  a node restarted while the store is held still holds it, ``release``.
* **Service a front-end node**: drain it on HAProxy's admin socket, list and
  kick what is left on it, stop it, bring it back.
* **Bad input over the pool** for ``hold`` and ``release``: an unknown node, a
  node that is down, a wrong secret, a malformed mask or host, a store no map
  names, releasing what is not held.

Run with ``-s`` to see every command's output (docs/operations.md copies it).
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from authsvc.proxy.proxy_protocol import encode_v2

from tests.helpers.eventually import eventually
from tests.services.certs import make_test_pki
from tests.services.dovecot import DovecotStore, dovecot_stores
from tests.services.haproxy import (
    HaproxyProcess,
    admin_command,
    start_haproxy,
    wait_for_status,
)
from tests.services.mailclient import CLIENT_ADDRESS, IMAP4, RawLines
from tests.services.mariadb import PrivateMariaDb, TestDatabase, create_test_database
from tests.services.nginx import start_nginx
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess, parse_line
from tests.services.require import require_binary
from tests.services.serve import ServeProcess
from tests.services.stack import (
    HAPROXY_ADDRESS,
    NODE_ADDRESSES,
    NODE_PORT_OFFSET,
    STORE_ADDRESSES,
    common_port,
    pick_listener_ports,
    render_node_nginx,
)

pytestmark = pytest.mark.integration

CONTROL_SECRET = "operator-only-7a3e"
DOMAIN = "riseup.net"
#: Who lives where at the start: store a (127.0.0.2) and store b (127.0.0.3).
#: bob also has an account on store b, with no mailbox yet: the move's target.
USERS = {"a": {"bob": "bob-pw", "carol": "carol-pw"}, "b": {"bob": "bob-pw", "alice": "alice-pw"}}
HOME = {"bob": "a", "carol": "a", "alice": "b"}
PASSWORDS = {"bob": "bob-pw", "carol": "carol-pw", "alice": "alice-pw"}
HELD = "[UNAVAILABLE] Account is temporarily unavailable, try again later."
#: What nginx says when serve answers a held login with the temporary Auth-Status.
HELD_NGINX = "Temporary server problem, try again later"
PROXIES = ("n1", "n2")
SERVE = "n3"
NODES = (*PROXIES, SERVE)
#: Where HAProxy's connections to the nodes come from (see tests/services/stack.py).
HAPROXY_SOURCE = "127.0.0.1"
BACKEND = "imap4_nodes"


@dataclass
class PoolNode:
    """One proxy node: its address, config, control port and the running process."""

    name: str
    address: str
    config: Path
    control: int
    log_dir: Path
    proxy: ProxyProcess | None = None
    restarts: int = 0

    def start(self) -> ProxyProcess:
        self.restarts += 1
        self.proxy = ProxyProcess(self.config, self.log_dir / f"proxy{self.restarts}.log",
                                  workers=2)
        # Per worker: the IMAP listener and the control port.
        self.proxy.start(listening=4)
        return self.proxy

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()

    def sessions(self) -> list[dict[str, str]]:
        """``event=session`` lines of every run of this node."""
        lines = []
        for log in sorted(self.log_dir.glob("proxy*.log")):
            lines += [parse_line(line) for line in log.read_text(errors="replace").splitlines()
                      if " event=session " in line]
        return lines


@dataclass
class Pool:
    """Everything the module's fixture started."""

    root: Path
    db: TestDatabase
    stores: dict[str, DovecotStore]
    nodes: dict[str, PoolNode]  # the proxies
    serve: ServeProcess  # behind n3's nginx
    operator: Path
    port: int  # the IMAP listener's port on HAProxy (nodes: + NODE_PORT_OFFSET)
    haproxy: HaproxyProcess
    admin: Path
    transcript: list[str] = field(default_factory=list)

    def store(self, name: str) -> str:
        """``127.0.0.2:PORT``: a store's address as the map and the proxy name it."""
        return f"{STORE_ADDRESSES[name]}:{self.stores[name].ports.imap}"

    def cli(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``authsvc ARGS -c operator.toml``, as the operator runs it; noted in the transcript."""
        done = subprocess.run(
            [sys.executable, "-m", "authsvc", *args, "-c", str(config or self.operator)],
            capture_output=True, text=True, timeout=60, check=False)
        self.transcript.append(f"$ authsvc {' '.join(args)}\n{done.stdout}{done.stderr}"
                               f"[exit {done.returncode}]")
        print(self.transcript[-1])
        return done

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def doveadm(self, store: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``doveadm ARGS`` on a store (its own config)."""
        done = subprocess.run(["doveadm", "-c", str(self.stores[store].config_path), *args],
                              capture_output=True, text=True, timeout=60, check=False)
        print(f"$ doveadm {' '.join(args)}\n{done.stdout}{done.stderr}[exit {done.returncode}]")
        return done


def node_toml(pool_root: Path, node: str, address: str, *, db: TestDatabase, port: int,
              health: int, control: int, imap: int, controls: dict[str, tuple[str, int]],
              serve: bool = False) -> str:
    """A node's config (a proxy's, or with ``serve`` nginx's serve's; with no
    ``address`` the operator's: the secret and the node list, no ports)."""
    entries = "".join(
        f'\n[[haproxy.nodes]]\nname = "{name}"\nhost = "{host}"\n'
        f'port_offset = {NODE_PORT_OFFSET}\nhealth = "{host}:{health}"\n'
        f'control = "{host}:{ctl}"\n'
        for name, (host, ctl) in controls.items())
    proxy_node = bool(address) and not serve
    bind = f'bind = ["{address}:{port + NODE_PORT_OFFSET}"]\nproxy_protocol = true\n' \
        if proxy_node else ""
    proxy = (f'[proxy]\nbackend_timeout = 5\ndrain_timeout = 1\n'
             f'health_listen = "{address}:{health}"\n'
             f'proxy_protocol_from = ["{HAPROXY_SOURCE}/32"]\n') if proxy_node else ""
    if serve:  # nginx's Auth-Wait: short, so held clients come back soon
        proxy = "[http]\nauth_wait = 1\nmax_attempts = 10\n"
    control_section = (f'listen = "{address}:{control}"\nallow = ["127.0.0.0/8"]\n'
                       if address else "")
    holds = f'[holds]\nstate_file = "{pool_root / node / "holds.json"}"\n' if address else ""
    return f"""# Generated by tests/integration/test_runbooks.py ({node}).
{proxy}
[cache]
# An hour: a node that was not flushed would keep the old store for the test's life.
ttl = 3600
negative_ttl = 2

[login]
lower_case = ["all"]
explicit_domain = "{DOMAIN}"
add_domain = ["lookup"]

[map]
type = "mysql"
hosts = ["{db.host}:{db.port}"]
database = "{db.name}"
table = "mailboxes"
user = "{db.reader_user}"
password_file = "{pool_root / 'map-password'}"
server_column = "storage_ip"
user_column = "address"
port_constant = {imap}
connect_timeout = 1
query_timeout = 1

[control]
secret_file = "{pool_root / 'control-secret'}"
{control_section}
{holds}
[haproxy]
check_inter = 0.3
check_fall = 2
check_rise = 1

[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
port = {port}
{bind}{entries}"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    require_binary("dovecot")
    require_binary("haproxy")
    require_binary("mariadb-install-db")
    require_binary("nginx")
    root = tmp_path_factory.mktemp("pool")
    (root / "control-secret").write_text(CONTROL_SECRET + "\n")
    with contextlib.ExitStack() as cleanup:
        mariadb = PrivateMariaDb()
        cleanup.callback(mariadb.close)
        mariadb.start()
        db = cleanup.enter_context(create_test_database(mariadb.admin, port=mariadb.port))
        db.add_mailboxes((f"{user}@{DOMAIN}", STORE_ADDRESSES[store])
                         for user, store in HOME.items())
        db.write_password_file(root / "map-password")
        stores = cleanup.enter_context(dovecot_stores(USERS, STORE_ADDRESSES))
        # bob's account on store b has no mailbox yet: the move makes it.
        shutil.rmtree(stores["b"].home("bob") / "Maildir")

        addresses = dict(zip(NODES, NODE_ADDRESSES, strict=True))
        port = pick_listener_ports([HAPROXY_ADDRESS], list(addresses.values()),
                                   NODE_PORT_OFFSET)["imap4"]
        health = common_port(list(addresses.values()))
        controls = {name: (address, free_port(address)) for name, address in addresses.items()}
        imap = stores["a"].ports.imap
        nodes: dict[str, PoolNode] = {}
        for name, address in addresses.items():
            (root / name).mkdir()
            if name == SERVE:
                continue
            config = root / name / "authsvc.toml"
            config.write_text(node_toml(root, name, address, db=db, port=port, health=health,
                                        control=controls[name][1], imap=imap,
                                        controls=controls))
            nodes[name] = PoolNode(name, address, config, controls[name][1], root / name)
            cleanup.callback(nodes[name].stop)
            nodes[name].start()
        # n3: nginx + authsvc serve, serve's /auth and /readyz on the health port.
        config = root / SERVE / "authsvc.toml"
        config.write_text(node_toml(root, SERVE, addresses[SERVE], db=db, port=port,
                                    health=health, control=controls[SERVE][1], imap=imap,
                                    controls=controls, serve=True))
        serve = ServeProcess([config], root / SERVE, host=addresses[SERVE], port=health,
                             workers=2)
        cleanup.callback(serve.stop)
        serve.start()
        eventually(lambda: serve.log_text().count("what=control") == 2, 20)
        nginx_text = render_node_nginx(
            config, make_test_pki(root / "pki"), address=addresses[SERVE],
            auth_http=f"{addresses[SERVE]}:{health}/auth", prefix=root / SERVE / "nginx",
            offset=NODE_PORT_OFFSET, proxy_from=f"{HAPROXY_SOURCE}/32")
        nginx = start_nginx(nginx_text, root / SERVE / "nginx",
                            [(addresses[SERVE], port + NODE_PORT_OFFSET)])
        cleanup.callback(nginx.stop)
        # The operator's config: the [control] secret and the node list, no listen.
        operator = root / "operator.toml"
        operator.write_text(node_toml(root, "operator", "", db=db, port=port, health=health,
                                      control=0, imap=imap, controls=controls))
        admin = root / "haproxy.sock"
        rendered = subprocess.run(
            [sys.executable, "-m", "authsvc", "render-haproxy", "-c", str(operator),
             "--bind", HAPROXY_ADDRESS, "--admin-socket", str(admin)],
            capture_output=True, text=True, timeout=60, check=True).stdout
        haproxy = start_haproxy(rendered, root / "haproxy", admin, [(HAPROXY_ADDRESS, port)])
        cleanup.callback(haproxy.stop)
        for name in NODES:
            wait_for_status(admin, BACKEND, name, "UP")
        yield Pool(root, db, stores, nodes, serve, operator, port, haproxy, admin)


# --- clients ---------------------------------------------------------------------------


def store_of(lines: list[bytes]) -> str | None:
    """``store-a`` / ``store-b`` from Dovecot's ``* ID`` reply."""
    for line in lines:
        found = re.search(rb'"x-authsvc-store" "(store-\w)"', line)
        if found:
            return found.group(1).decode()
    return None


def is_held(answer: str | bytes) -> bool:
    """A held login's refusal: the proxy's ``NO [UNAVAILABLE]``, or nginx's
    after serve's temporary ``Auth-Status``."""
    text = answer.decode(errors="replace") if isinstance(answer, bytes) else answer
    return HELD in text or HELD_NGINX in text


def refused(answer: tuple[bytes, str | None]) -> bool:
    """``on_node``'s answer is a held login's refusal."""
    return answer[0].startswith(b"a NO ") and is_held(answer[0]) and answer[1] is None


def connect(pool: Pool, node: str | None) -> RawLines:
    """Through HAProxy, or (``node``) straight to a node with the PROXY header
    HAProxy would send; the greeting read."""
    if node is None:
        client = RawLines(HAPROXY_ADDRESS, pool.port)
    else:
        client = RawLines(NODE_ADDRESSES[NODES.index(node)], pool.port + NODE_PORT_OFFSET,
                          source=HAPROXY_SOURCE)
        client.send(encode_v2((CLIENT_ADDRESS, 40000), (HAPROXY_ADDRESS, pool.port)))
    assert client.line().startswith(b"* OK")
    return client


def ended(client: RawLines) -> bool:
    """The server closed the session: end of stream after whatever it still
    sent (an IDLE client hears ``* n EXISTS`` when mail arrives)."""
    try:
        while client.line():
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def idle_session(pool: Pool, user: str, node: str | None = None) -> RawLines:
    """A client logged in (through HAProxy, or straight to ``node``), sitting in IDLE."""
    client = connect(pool, node)
    assert client.command(f"a LOGIN {user} {PASSWORDS[user]}".encode(), b"a")[-1] \
        .startswith(b"a OK")
    assert client.command(b"i IDLE")[-1].startswith(b"+ ")
    return client


def on_node(pool: Pool, node: str, user: str) -> tuple[bytes, str | None]:
    """A login straight to one node, with the PROXY header HAProxy would send.

    Returns the LOGIN's tagged answer and the store the session reached.
    """
    with connect(pool, node) as client:
        answer = client.command(f"a LOGIN {user} {PASSWORDS[user]}".encode(), b"a")[-1]
        store = None
        if answer.startswith(b"a OK"):
            store = store_of(client.command(b"b ID NIL", b"b"))
        client.command(b"c LOGOUT", b"c")
        return answer, store


@dataclass(frozen=True, slots=True)
class Attempt:
    """One login of the client loop."""

    sent: float  # monotonic, just before LOGIN was sent
    done: float  # when its answer came
    outcome: str  # "ok", "held" or "error: ..."
    store: str | None = None


@dataclass
class LoginLoop:
    """A thread logging ``user`` in through HAProxy with imaplib, again and again."""

    pool: Pool
    user: str
    attempts: list[Attempt] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def once(self) -> Attempt:
        imap = IMAP4(HAPROXY_ADDRESS, self.pool.port, timeout=10)
        sent = time.monotonic()
        try:
            imap.login(self.user, PASSWORDS[self.user])
        except imaplib.IMAP4.error as exc:
            outcome = "held" if is_held(str(exc)) else f"error: {exc}"
            return Attempt(sent, time.monotonic(), outcome)
        finally:
            done = time.monotonic()
        store = None
        # RFC 2971 allows ID in every state, but imaplib's xatom records a new
        # command with the state of its first caller, for the whole process.
        imaplib.Commands["ID"] = ("NONAUTH", "AUTH", "SELECTED")
        with contextlib.suppress(imaplib.IMAP4.abort, OSError):  # a kick may end it here
            imap.xatom("ID", "NIL")
            store = store_of([r for r in imap.untagged_responses.pop("ID", [])
                              if isinstance(r, bytes)])
            imap.logout()
        return Attempt(sent, done, "ok", store)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.attempts.append(self.once())
            except Exception as exc:  # recorded, never the end of the loop
                now = time.monotonic()
                self.attempts.append(Attempt(now, now, f"error: {exc!r}"))
            time.sleep(0.02)

    @contextlib.contextmanager
    def running(self) -> Iterator[LoginLoop]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join(15)

    def count(self, outcome: str, after: float = 0.0, store: str | None = None) -> int:
        return sum(1 for a in list(self.attempts) if a.outcome == outcome and a.sent > after
                   and (store is None or a.store == store))

    def reached(self, wanted: int, outcome: str, after: float = 0.0,
                store: str | None = None) -> Callable[[], bool]:
        """A condition for eventually(): at least ``wanted`` such attempts; says what it saw."""
        def check() -> bool:
            got = self.count(outcome, after, store)
            assert got >= wanted, f"{got} of {wanted} {outcome!r} to {store}: {self.summary()}"
            return True

        return check

    def summary(self) -> str:
        """What the loop saw so far, for a failed wait's message."""
        seen = Counter((a.outcome[:120], a.store) for a in list(self.attempts))
        return f"{len(self.attempts)} attempt(s): {dict(seen.most_common(6))}"


def store_logins(store: DovecotStore, user: str, after: int = 0) -> list[str]:
    """Dovecot's own ``Login:`` lines for ``user`` written after log offset ``after``."""
    return [line for line in store.log_text()[after:].splitlines()
            if f"-login: Info: Login: user=<{user}" in line]


def started(session: dict[str, str]) -> float:
    """When a session began, from its log line (UNIX time)."""
    ended = datetime.fromisoformat(session["ts"]).timestamp()
    return ended - float(session["duration"])


def pool_sessions(pool: Pool, *selectors: str) -> dict[str, list[dict[str, object]]]:
    """The proxies' sessions (serve relays none), by node."""
    if "--node" not in selectors:
        selectors = (*selectors, "--node", PROXIES[0], "--node", PROXIES[1])
    done = pool.cli("sessions", "list", "--pool", "--json", *selectors)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    return {node: answer[node]["sessions"] for node in answer}


def spread_idle(pool: Pool, user: str, opened: list[RawLines]) -> None:
    """IDLE sessions of ``user`` until both nodes relay at least one."""
    def both() -> bool:
        opened.append(idle_session(pool, user))
        return all(pool_sessions(pool, "--user", f"{user}@{DOMAIN}").values())

    eventually(both, 30, interval=0)


@contextlib.contextmanager
def clients() -> Iterator[list[RawLines]]:
    opened: list[RawLines] = []
    try:
        yield opened
    finally:
        for client in opened:
            client.close()


# --- the runbooks ----------------------------------------------------------------------


def test_move_a_mailbox_under_load(pool: Pool) -> None:
    bob = f"bob@{DOMAIN}"
    old, new = pool.stores["a"], pool.stores["b"]
    loop = LoginLoop(pool, "bob")
    with clients() as opened, loop.running():
        spread_idle(pool, "bob", opened)
        opened.append(idle_session(pool, "bob", node=SERVE))  # one through nginx for sure
        carol = idle_session(pool, "carol")
        # The loop reaches the old store (through whichever node HAProxy's
        # leastconn picks: the one with the fewest sessions).
        eventually(loop.reached(3, "ok", store="store-a"), 60)

        # 1. The long copy, with bob online; mail keeps arriving on the old store.
        sync = ["-o", "mail_fsync=never", "backup", "-u", bob,
                f"maildir:{new.home('bob')}/Maildir"]
        assert pool.doveadm("a", *sync).returncode == 0
        old.deliver("bob", b"Subject: arrived during the copy\r\n\r\nlate\r\n")

        # 2. The hold.  From here on, no login may reach the old store.
        out = pool.ok("hold", "user", bob, "--pool", "--reason", "move", "--for", "30m")
        held_at, held_wall = time.monotonic(), time.time()
        old_log_at = len(old.log_text())
        assert [line.split(" until ")[0] for line in out.splitlines()] == [
            f"{n}: ok: held user {bob}" for n in NODES]
        eventually(loop.reached(3, "held", after=held_at), 60)

        # 3. The kick: every session of bob, on every node, ends; carol's stays.
        # The proxies end theirs; serve cannot (nginx holds them): 501, exit 1.
        done = pool.cli("sessions", "kick", "--user", bob, "--pool")
        lines = done.stdout.splitlines()
        assert done.returncode == 1 and len(lines) == 3, done
        assert all(re.match(rf"{n}: ok: closed \d+ session\(s\) in 2 worker\(s\)", line)
                   for n, line in zip(PROXIES, lines, strict=False)), lines
        assert lines[2].startswith(f"{SERVE}: error: HTTP 501: authsvc serve relays no "
                                   "sessions: nginx holds them; run 'doveadm kick USER'")
        # ...so the sessions through nginx end on the old store (Dovecot's user
        # name there is the name without the domain, auth_username_format %Ln).
        assert pool.doveadm("a", "kick", "bob").returncode == 0
        assert all(ended(client) for client in opened)
        assert pool_sessions(pool, "--user", bob) == {n: [] for n in PROXIES}
        eventually(lambda: "bob" not in pool.doveadm("a", "who").stdout, 15)
        assert carol.command(b"DONE", b"i")[-1].startswith(b"i OK")
        # Each node refuses bob now (straight to the node: HAProxy's leastconn
        # may send the whole loop to one).
        for node in NODES:
            refusal = on_node(pool, node, "bob")
            assert refused(refusal), (node, refusal)
            assert (HELD_NGINX if node == SERVE else HELD).encode() in refusal[0], refusal

        # 4. The final pass: only what changed since the copy.
        assert pool.doveadm("a", *sync).returncode == 0
        # 5. The map row.
        pool.db.execute("UPDATE mailboxes SET storage_ip = %s WHERE address = %s",
                        (STORE_ADDRESSES["b"], bob))
        # 6. No replicas here. 7. The flush, then 8. the release.
        out = pool.ok("flush", "--user", bob, "--pool")
        assert [re.sub(r"\d+ cached", "N cached", line) for line in out.splitlines()] == [
            f"{n}: ok: dropped N cached route(s) in 2 worker(s)" for n in NODES]
        releasing = time.monotonic()
        out = pool.ok("release", "user", bob, "--pool")
        assert out.splitlines() == [f"{n}: ok: released user {bob} in 2 of 2 worker(s)"
                                    for n in NODES]
        # Every node sends bob to the new store at once: no TTL to wait for.
        for node in NODES:
            answer, store = on_node(pool, node, "bob")
            assert answer.startswith(b"a OK") and store == "store-b", (node, answer, store)
        eventually(loop.reached(6, "ok", after=releasing), 60)
        carol.close()
    # The move carried the mail that arrived during the copy.
    assert any(b"arrived during the copy" in path.read_bytes()
               for path in (new.home("bob") / "Maildir").glob("*/*"))

    # The evidence.  The clients: after the hold, held or the new store.
    after_hold = [a for a in loop.attempts if a.sent > held_at]
    assert {a.outcome for a in after_hold} <= {"held", "ok"}, after_hold
    assert all(a.store == "store-b" and a.sent > releasing for a in after_hold
               if a.outcome == "ok"), after_hold
    assert loop.count("ok", after=releasing, store="store-b") >= 6
    assert not [a for a in loop.attempts if a.outcome.startswith("error")]
    # The old store's own log: no login of bob after the hold, but for one the
    # loop had sent before the hold returned, if any was then under way.
    in_flight = sum(1 for a in loop.attempts if a.sent <= held_at < a.done)
    assert len(store_logins(old, "bob", old_log_at)) <= in_flight
    assert store_logins(new, "bob")
    # The proxies' session logs: bob's held logins on both nodes, and every
    # session to the old store began before the hold returned (a line's ts is
    # its end; minus its duration, its start).
    for proxy in pool.nodes.values():
        sessions = [s for s in proxy.sessions() if s.get("login") == "bob"]
        to_old = [s for s in sessions if s.get("backend") == pool.store("a")]
        assert to_old and all(started(s) <= held_wall + 0.01 for s in to_old), to_old
        assert any(s.get("result") == "temporary_failure" for s in sessions), proxy.name
        assert any(s.get("backend") == pool.store("b") and s.get("result") == "ok"
                   for s in sessions), proxy.name
    # serve's decision log (n3): held after the hold, the new store after the release.
    decisions = [d for d in pool.serve.decisions(settle=True) if d.get("key") == bob]
    assert any(d["result"] == "held" for d in decisions)
    after = [d for d in decisions if d["result"] == "ok"
             and datetime.fromisoformat(str(d["ts"])).timestamp() > held_wall]
    assert after and {d["backend"] for d in after} == {pool.store("b")}, after


def test_service_a_store_across_a_restart(pool: Pool) -> None:
    store_a = STORE_ADDRESSES["a"]
    with clients() as opened:
        spread_idle(pool, "carol", opened)
        alice = idle_session(pool, "alice")
        opened.append(idle_session(pool, "carol", node=SERVE))
        out = pool.ok("hold", "store", store_a, "--pool", "--reason", "fsck")
        assert out.splitlines() == [f"{n}: ok: held store {store_a} in 2 of 2 worker(s); "
                                    "accepted (the maps cannot list their stores)"
                                    for n in NODES], out
        old_log_at = len(pool.stores["a"].log_text())
        for node in NODES:
            assert refused(on_node(pool, node, "carol")), node
            assert on_node(pool, node, "alice")[1] == "store-b"

        on_proxies = sum(len(v) for v in pool_sessions(pool, "--store", store_a).values())
        # The proxies end theirs, paced; serve cannot (501, exit 1): doveadm kick.
        done = pool.cli("sessions", "kick", "--store", store_a, "--rate", "5", "--pool")
        assert done.returncode == 1
        assert done.stdout.splitlines()[2].startswith(f"{SERVE}: error: HTTP 501: ")
        kicked = sum(int(m) for m in re.findall(r"closed (\d+) session", done.stdout))
        assert kicked == on_proxies and on_proxies < len(opened)
        assert pool.doveadm("a", "kick", "*").returncode == 0
        assert all(ended(client) for client in opened)
        assert alice.command(b"DONE", b"i")[-1].startswith(b"i OK")

        # The work on the store... and meanwhile a node restarts: still held.
        pool.nodes["n2"].stop()
        pool.nodes["n2"].start()
        assert refused(on_node(pool, "n2", "carol"))
        listing = json.loads(pool.ok("hold", "list", "--pool", "--json"))
        assert {n: [(h["kind"], h["target"], h["reason"]) for h in listing[n]["holds"]]
                for n in NODES} == {n: [("store", store_a, "fsck")] for n in NODES}
        pool.ok("hold", "list", "--pool")
        wait_for_status(pool.admin, BACKEND, "n2", "UP")
        with pytest.raises(imaplib.IMAP4.error) as refusal:
            IMAP4(HAPROXY_ADDRESS, pool.port).login("carol", PASSWORDS["carol"])
        assert is_held(str(refusal.value))
        assert store_logins(pool.stores["a"], "carol", old_log_at) == []

        out = pool.ok("release", "store", store_a, "--pool")
        assert out.splitlines() == [f"{n}: ok: released store {store_a} in 2 of 2 worker(s)"
                                    for n in NODES]
        for node in NODES:
            assert on_node(pool, node, "carol")[1] == "store-a"
        alice.close()


def test_service_a_front_end_node(pool: Pool) -> None:
    with clients() as opened:
        spread_idle(pool, "alice", opened)
        n1 = pool.nodes["n1"]
        # Logins only: HAProxy's health checks reach a drained server too.
        # A session's line is written when it ends (ts) and says how long it
        # lasted, so its start is known; sessions of earlier tests may still
        # be ending now, and only a start after the drain would be wrong.
        def started_since(moment: float) -> list[dict[str, str]]:
            return [s for s in n1.sessions() if s.get("login") and (
                datetime.fromisoformat(s["ts"].replace("Z", "+00:00")).timestamp()
                - float(s["duration"]) >= moment)]

        others_before = len(pool.nodes["n2"].sessions()) + len(pool.serve.decisions())
        assert admin_command(pool.admin, f"set server {BACKEND}/n1 state drain").strip() == ""
        wait_for_status(pool.admin, BACKEND, "n1", "DRAIN")
        drained = time.time()
        print(admin_command(pool.admin, f"show servers state {BACKEND}"))
        # New clients go to n2 and n3 only; n1 keeps the sessions it has.
        for _ in range(6):
            imap = IMAP4(HAPROXY_ADDRESS, pool.port)
            imap.login("alice", PASSWORDS["alice"])
            imap.logout()
        eventually(lambda: len(pool.nodes["n2"].sessions()) + len(pool.serve.decisions())
                   >= others_before + 6, 10)
        assert started_since(drained) == []
        on_n1 = pool_sessions(pool, "--node", "n1")["n1"]
        assert on_n1
        assert pool.ok("sessions", "list", "--pool", "--node", "n1").startswith(
            f"n1: ok: {len(on_n1)} session(s) in 2 worker(s)")
        out = pool.ok("sessions", "kick", "--user", "*", "--pool", "--node", "n1")
        assert out.startswith(f"n1: ok: closed {len(on_n1)} session(s)")
        assert pool_sessions(pool, "--node", "n1") == {"n1": []}
        n1.stop()
        n1.start()
        print(admin_command(pool.admin, f"set server {BACKEND}/n1 state ready"), end="")
        wait_for_status(pool.admin, BACKEND, "n1", "UP", timeout=15)
        assert on_node(pool, "n1", "alice")[1] == "store-b"


def test_bad_input_over_the_pool(pool: Pool) -> None:
    def holds() -> dict[str, object]:
        return json.loads(pool.ok("hold", "list", "--pool", "--json"))  # type: ignore[no-any-return]

    before = holds()
    for args in (("hold", "user", "bob smith", "--pool"),
                 ("hold", "store", "no_such host", "--pool"),
                 ("hold", "store", "127.0.0.2:99999", "--pool"),
                 ("hold", "user", "x", "--pool", "--for", "soon"),
                 ("hold", "user", "x", "--pool", "--node", "n9"),
                 ("release", "user", "x", "--pool", "--node", "n9")):
        done = pool.cli(*args)
        assert (done.returncode, done.stdout) == (2, ""), (args, done)
        assert done.stderr.count("\n") == 1, (args, done.stderr)
    assert holds() == before

    # A store no map names: accepted, and said.  Released again.
    out = pool.ok("hold", "store", "10.9.9.9:143", "--pool")
    assert all("accepted" in line for line in out.splitlines()), out
    pool.ok("release", "store", "10.9.9.9:143", "--pool")
    # Releasing what is not held: said, exit 0.
    out = pool.ok("release", "user", "nobody@riseup.net", "--pool")
    assert out.splitlines() == [f"{n}: ok: user nobody@riseup.net was not held; "
                                "nothing released" for n in NODES]

    # A node that is down: reported, exit 1; the others did the work.
    down = pool.root / "down.toml"
    down.write_text(pool.operator.read_text() + f"""
[[haproxy.nodes]]
name = "n4"
host = "127.0.0.13"
control = "127.0.0.13:{free_port('127.0.0.13')}"
""")
    done = pool.cli("hold", "user", "dave@riseup.net", "--pool", config=down)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [*NODES, "n4"]
    assert lines[3].startswith("n4: error: cannot reach authsvc: ")
    assert done.stderr == "authsvc hold: 1 of 4 node(s) failed\n"
    pool.ok("release", "user", "dave@riseup.net", "--pool")

    # A wrong secret: refused by every node, nothing held.
    (pool.root / "wrong-secret").write_text("not-the-secret\n")
    wrong = pool.root / "wrong.toml"
    wrong.write_text(pool.operator.read_text().replace(
        str(pool.root / "control-secret"), str(pool.root / "wrong-secret")))
    done = pool.cli("hold", "store", STORE_ADDRESSES["b"], "--pool", config=wrong)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{n}: error: HTTP 401: unauthorized: send the control secret in X-Authsvc-Control"
        for n in NODES]
    done = pool.cli("release", "store", STORE_ADDRESSES["b"], "--pool", config=wrong)
    assert done.returncode == 1
    assert holds() == before
