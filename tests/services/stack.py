"""The whole mail front end on loopback: MariaDB, two Dovecot stores, nginx+authsvc, HAProxy.

What :func:`running_stack` starts, each daemon in the foreground, on free
ports, in one temp directory, and ends by its own pid when the block ends:

* a test PKI (``certs.py``): one CA, one server certificate for every address;
* a private ``mariadbd`` (``mariadb.py``) holding the
  seed's ``mailboxes`` table (``address`` -> ``storage_ip``) with a few thousand
  generated users spread over the two stores, plus ``bob@riseup.net``
  (store b) and ``alice@riseup.net`` (store a);
* two Dovecot stores (``dovecot.py``) on 127.0.0.2 (``store-a``) and
  127.0.0.3 (``store-b``), same port numbers on each, because the seed's map
  answers with a constant port;
* ``authsvc.toml``: the seed deployment's four Perdition listeners (imap4 with
  STARTTLS, imaps, pop3 with STLS, pop3s), its login rules (``lower_case all``,
  ``explicit_domain riseup.net``, ``add_domain servername_lookup``) and its MySQL
  map (``storage_ip``, ``address``, constant port), with short test timeouts;
* per node (127.0.0.10, 127.0.0.11, ...): ``authsvc serve`` and an nginx
  rendered by ``authsvc render-nginx --standalone`` for that node;
* with ``haproxy=True``: HAProxy on 127.0.0.20 rendered by ``authsvc
  render-haproxy``, sending PROXY v2 to the nodes, whose nginx trusts PROXY
  headers from HAProxy's outgoing address (127.0.0.1, see HAPROXY_SOURCE).

Clients connect to :meth:`Stack.port` on :attr:`Stack.front_address`: HAProxy's
address when there is one, else the first node's.

Run by hand (prints every address and port, Ctrl-C stops everything)::

    python -m tests.services.stack up                  # one node
    python -m tests.services.stack up --nodes 2 --haproxy
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.certs import ServerCert, make_test_pki
from tests.services.dovecot import DovecotStore, StorePorts, dovecot_stores
from tests.services.haproxy import HaproxyProcess, start_haproxy
from tests.services.mariadb import (
    PrivateMariaDb,
    TestDatabase,
    create_test_database,
    generate_mailboxes,
)
from tests.services.nginx import NginxProcess, start_nginx
from tests.services.ports import free_port
from tests.services.serve import ServeProcess

DOMAIN = "riseup.net"
STORE_ADDRESSES = {"a": "127.0.0.2", "b": "127.0.0.3"}
NODE_ADDRESSES = ("127.0.0.10", "127.0.0.11", "127.0.0.12")
HAPROXY_ADDRESS = "127.0.0.20"
#: Where HAProxy's connections to the nodes come from: it binds no source, so
#: the kernel picks lo's primary address for a 127.0.0.x destination.  nginx
#: trusts PROXY headers only from this peer (set_real_ip_from); from any other
#: peer it reads the header but keeps the peer's own address as Client-IP.
HAPROXY_SOURCE = "127.0.0.1/32"
#: The seed's imap_capability (perdition.imap4.conf, without STARTTLS, which
#: nginx adds itself when the listener offers it).
SEED_IMAP_CAPABILITY = (
    "IMAP4rev1", "UIDPLUS", "CHILDREN", "NAMESPACE", "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES", "SORT", "QUOTA", "IDLE",
)
#: Listener name -> (protocol, tls), the seed's four Perdition files.
LISTENERS: dict[str, tuple[str, str]] = {
    "imap4": ("imap", "starttls"),
    "imaps": ("imap", "implicit"),
    "pop3": ("pop3", "starttls"),
    "pop3s": ("pop3", "implicit"),
}
#: Node mail ports are the listener ports plus this, behind HAProxy.
NODE_PORT_OFFSET = 10000


@dataclass(frozen=True, slots=True)
class MailUser:
    """One generated mailbox: the map key, its store and the store's password."""

    key: str  # bob@riseup.net, as in the map
    store: str  # "a" or "b"
    password: str

    @property
    def local(self) -> str:
        """The login without the domain (``bob``)."""
        return self.key.split("@", 1)[0]


@dataclass(frozen=True, slots=True)
class StackOptions:
    """What to start.  Defaults: one node, no HAProxy, 3000 generated users."""

    nodes: int = 1
    haproxy: bool = False
    users: int = 3000
    #: Seconds nginx waits before answering a refused login (authsvc http.auth_wait).
    auth_wait: int = 1
    #: HAProxy check interval and fall/rise counts (short, so tests see changes fast).
    check_inter: str = "300ms"
    check_fall: int = 2
    check_rise: int = 1
    #: Extra TOML appended to the generated authsvc.toml (tests that need more).
    extra_toml: str = ""
    #: ``[log] client_ip`` (authsvc/privacy.py).
    client_ip: str = "full"


@dataclass
class Node:
    """One front-end node: ``authsvc serve`` plus the nginx rendered for it."""

    name: str
    address: str
    serve: ServeProcess
    nginx_text: str
    prefix: Path
    mail_ports: dict[str, int]
    nginx: NginxProcess | None = None

    def start_nginx(self) -> None:
        """Start (again) this node's nginx; returns when its ports accept."""
        if self.nginx is not None and self.nginx.process.poll() is None:
            return
        self.nginx = start_nginx(
            self.nginx_text, self.prefix, [(self.address, p) for p in self.mail_ports.values()]
        )

    def stop_nginx(self) -> None:
        """Stop this node's nginx by its pid."""
        if self.nginx is not None:
            self.nginx.stop()

    def stop(self) -> None:
        """Stop nginx, then serve."""
        self.stop_nginx()
        self.serve.stop()


@dataclass
class Stack:
    """Everything :func:`running_stack` started, and how to reach it."""

    workdir: Path
    options: StackOptions
    pki: ServerCert
    mariadb: PrivateMariaDb
    db: TestDatabase
    stores: dict[str, DovecotStore]
    store_ports: StorePorts
    config: Path
    listener_ports: dict[str, int]
    users: dict[str, MailUser]
    nodes: list[Node] = field(default_factory=list)
    haproxy: HaproxyProcess | None = None
    admin_socket: Path | None = None

    @property
    def front_address(self) -> str:
        """Where clients connect: HAProxy, else the first node's nginx."""
        return HAPROXY_ADDRESS if self.haproxy is not None else self.nodes[0].address

    def port(self, listener: str) -> int:
        """The client-facing port of ``listener`` (imap4, imaps, pop3, pop3s)."""
        if self.haproxy is not None:
            return self.listener_ports[listener]
        return self.nodes[0].mail_ports[listener]

    def user(self, key: str) -> MailUser:
        """The mailbox of map key ``key`` (``bob@riseup.net``)."""
        return self.users[key]

    def users_on(self, store: str) -> list[MailUser]:
        """Every generated user living on ``store``, in map order."""
        return [u for u in self.users.values() if u.store == store]

    def describe(self) -> str:
        """Human-readable addresses and ports (what ``stack up`` prints)."""
        lines = [f"workdir      {self.workdir}", f"CA           {self.pki.ca}"]
        lines.append(f"mariadb      127.0.0.1:{self.mariadb.port} pid={self.mariadb.pid} "
                     f"db={self.db.name} reader={self.db.reader_user}")
        for store in self.stores.values():
            lines.append(
                f"dovecot {store.name}    {store.address} imap={store.ports.imap} "
                f"pop3={store.ports.pop3} imaps={store.ports.imaps} pop3s={store.ports.pop3s} "
                f"pid={store.pid} marker={store.marker!r}"
            )
        for node in self.nodes:
            nginx_pid = node.nginx.pid if node.nginx else None
            ports = " ".join(f"{k}={v}" for k, v in node.mail_ports.items())
            lines.append(f"node {node.name}      {node.address} {ports} nginx pid={nginx_pid}")
            lines.append(f"  serve      {node.serve.url} pid={node.serve.pid} "
                         f"log={node.serve.log_path}")
        if self.haproxy is not None:
            ports = " ".join(f"{k}={v}" for k, v in self.listener_ports.items())
            lines.append(f"haproxy      {HAPROXY_ADDRESS} {ports} pid={self.haproxy.pid} "
                         f"admin={self.admin_socket}")
        lines.append(f"config       {self.config}")
        bob = self.users[f"bob@{DOMAIN}"]
        alice = self.users[f"alice@{DOMAIN}"]
        lines.append(f"users        Bob / {bob.password} (store-{bob.store}); "
                     f"alice / {alice.password} (store-{alice.store}); "
                     f"user0..user{self.options.users - 1} / pw-userN")
        return "\n".join(lines)


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


def pick_listener_ports(
    front: list[str], nodes: list[str], offset: int
) -> dict[str, int]:
    """One port per listener, free on every ``front`` address, port+offset free on ``nodes``.

    Picked below the kernel's ephemeral range (32768+), so the node ports
    (port + offset) still fit under 65536 and nothing else grabs them.
    """
    rng = random.Random(secrets.randbits(32))
    taken: set[int] = set()
    ports: dict[str, int] = {}
    for name in LISTENERS:
        for _ in range(1000):
            port = rng.randrange(20000, 30000)
            if port in taken:
                continue
            if all(_bindable(a, port) for a in front) and all(
                _bindable(a, port + offset) for a in nodes
            ):
                ports[name] = port
                taken.add(port)
                break
        else:
            raise RuntimeError("no free listener ports")
    return ports


def common_port(addresses: list[str]) -> int:
    """A port free on every one of ``addresses`` (HAProxy checks one health port for all)."""
    for _ in range(1000):
        port = free_port(addresses[0])
        if all(_bindable(a, port) for a in addresses[1:]):
            return port
    raise RuntimeError("no common free port")


def _users(count: int) -> dict[str, MailUser]:
    rows = generate_mailboxes(count, DOMAIN, [STORE_ADDRESSES["a"], STORE_ADDRESSES["b"]])
    store_of = {address: name for name, address in STORE_ADDRESSES.items()}
    users = {
        key: MailUser(key, store_of[ip], f"pw-{key.split('@')[0]}") for key, ip in rows
    }
    # Named users for the tests and for a human with a mail client.  Bob lives
    # on the second store, so "reached the first store" cannot pass by luck.
    users[f"bob@{DOMAIN}"] = MailUser(f"bob@{DOMAIN}", "b", "bob-secret")
    users[f"alice@{DOMAIN}"] = MailUser(f"alice@{DOMAIN}", "a", "alice-secret")
    return users


def _toml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def write_config(
    path: Path, *, db: TestDatabase, password_file: Path, pki: ServerCert,
    listener_ports: dict[str, int], store_ports: StorePorts, options: StackOptions,
) -> Path:
    """The stack's ``authsvc.toml``: the seed deployment, pointed at our daemons."""
    listeners = []
    for name, (protocol, tls) in LISTENERS.items():
        lines = [
            "[[listener]]",
            f'name = "{name}"',
            f'protocol = "{protocol}"',
            f'tls = "{tls}"',
            f"port = {listener_ports[name]}",
            'bind = ["127.0.0.1"]',  # every render and serve here overrides it
            f'cert = "{pki.cert}"',
            f'key = "{pki.key}"',
            # Perdition authenticate_timeout / timeout; short enough for tests.
            "login_timeout = 10",
            "timeout = 600",
        ]
        if protocol == "imap":
            lines.append(f"capability = {_toml_list(SEED_IMAP_CAPABILITY)}")
        if protocol == "pop3":
            # The seed's POP3 files say ...:address:110: the store's POP3 port.
            lines += ["[listener.map]", f"port_constant = {store_ports.pop3}"]
        listeners.append("\n".join(lines))
    text = f"""# Generated by tests/services/stack.py: the seed deployment on loopback.
[http]
listen = "127.0.0.1:9143"   # every serve here gets --listen
# Short Auth-Wait so refused-login tests stay quick (nginx sleeps this long).
auth_wait = {options.auth_wait}
max_attempts = 10

[cache]
ttl = 300
negative_ttl = 2
stale_if_error = 3600

[log]
level = "info"
client_ip = "{options.client_ip}"

[nginx]
server_name = "mail.test"
auth_http_timeout = 5

[haproxy]
check_fall = {options.check_fall}
check_rise = {options.check_rise}

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
password_file = "{password_file}"
server_column = "storage_ip"
user_column = "address"
# The seed's ...:storage_ip:address:143: a constant port, the stores' IMAP port.
port_constant = {store_ports.imap}
connect_timeout = 1
query_timeout = 1
pool_size = 4

{chr(10).join(listeners)}
{options.extra_toml}
"""
    path.write_text(text)
    return path


def _authsvc(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "authsvc", *args], capture_output=True, text=True,
        timeout=60, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"authsvc {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def render_node_nginx(
    config: Path, pki: ServerCert, *, address: str, auth_http: str, prefix: Path,
    offset: int = 0, proxy_from: str | None = None,
) -> str:
    """``authsvc render-nginx --standalone`` for one node on ``address``."""
    args = [
        "render-nginx", "-c", str(config), "--standalone",
        "--ssl-cert", str(pki.cert), "--ssl-key", str(pki.key),
        "--auth-http", auth_http, "--bind", address, "--listen-offset", str(offset),
        "--pid", str(prefix / "nginx.pid"), "--prefix", str(prefix),
    ]
    if proxy_from is not None:
        args += ["--proxy-protocol-from", proxy_from]
    return _authsvc(*args)


def render_haproxy(config: Path, stack: Stack, admin_socket: Path) -> str:
    """``authsvc render-haproxy`` for the stack's nodes."""
    args = ["render-haproxy", "-c", str(config), "--bind", HAPROXY_ADDRESS,
            "--node-port-offset", str(NODE_PORT_OFFSET), "--admin-socket", str(admin_socket),
            "--check-inter", stack.options.check_inter]
    for node in stack.nodes:
        args += ["--node", f"{node.name}={node.address}:{node.serve.port}"]
    return _authsvc(*args)


@contextlib.contextmanager
def running_stack(
    options: StackOptions = StackOptions(),
    *,
    mariadb: PrivateMariaDb | None = None,
    workdir: Path | None = None,
) -> Iterator[Stack]:
    """Start the stack described by ``options``; stop all of it when the block ends.

    ``mariadb`` lets a test session share its private server (the stack adds a
    database of its own there); without it the stack starts one.
    """
    own_workdir = workdir is None
    root = workdir or Path(tempfile.mkdtemp(prefix="authsvc-stack-"))
    with contextlib.ExitStack() as cleanup:
        if own_workdir:
            cleanup.callback(shutil.rmtree, root, True)
        pki = make_test_pki(root / "pki")
        if mariadb is None:
            mariadb = PrivateMariaDb()
            cleanup.callback(mariadb.close)
        mariadb.ensure_running()
        db = cleanup.enter_context(create_test_database(mariadb.admin, host="127.0.0.1",
                                                        port=mariadb.port))
        users = _users(options.users)
        db.add_mailboxes((u.key, STORE_ADDRESSES[u.store]) for u in users.values())
        by_store: dict[str, dict[str, str]] = {name: {} for name in STORE_ADDRESSES}
        for user in users.values():
            by_store[user.store][user.local] = user.password
        stores = cleanup.enter_context(dovecot_stores(by_store, STORE_ADDRESSES, pki=pki))
        store_ports = next(iter(stores.values())).ports

        node_addresses = list(NODE_ADDRESSES[: options.nodes])
        offset = NODE_PORT_OFFSET if options.haproxy else 0
        front = [HAPROXY_ADDRESS] if options.haproxy else node_addresses
        listener_ports = pick_listener_ports(front, node_addresses if offset else [], offset)
        password_file = db.write_password_file(root / "map-password")
        config = write_config(
            root / "authsvc.toml", db=db, password_file=password_file, pki=pki,
            listener_ports=listener_ports, store_ports=store_ports, options=options,
        )
        stack = Stack(root, options, pki, mariadb, db, stores, store_ports, config,
                      listener_ports, users)
        # One serve port for every node: render-haproxy checks the same health
        # port on each node.
        serve_port = common_port(node_addresses)
        for index, address in enumerate(node_addresses, start=1):
            prefix = root / f"n{index}"
            prefix.mkdir()
            serve = ServeProcess([config], prefix, host=address, port=serve_port, name="serve")
            node = Node(f"n{index}", address, serve, "", prefix,
                        {k: v + offset for k, v in listener_ports.items()})
            stack.nodes.append(node)
            cleanup.callback(node.stop)
            serve.start()
            node.nginx_text = render_node_nginx(
                config, pki, address=address, auth_http=f"{address}:{serve_port}/auth",
                prefix=prefix, offset=offset,
                proxy_from=HAPROXY_SOURCE if options.haproxy else None,
            )
            node.start_nginx()
        if options.haproxy:
            stack.admin_socket = root / "haproxy.sock"
            text = render_haproxy(config, stack, stack.admin_socket)
            stack.haproxy = start_haproxy(
                text, root / "haproxy", stack.admin_socket,
                [(HAPROXY_ADDRESS, p) for p in listener_ports.values()],
            )
            cleanup.callback(stack.haproxy.stop)
        yield stack


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt, so the ``with`` blocks stop
    every daemon in order.  Explicit because a shell starts background jobs with
    SIGINT ignored, and SIGTERM would otherwise end us without any cleanup."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def main(argv: list[str]) -> int:
    """``python -m tests.services.stack up [--nodes N] [--haproxy] [--users N]``."""
    parser = argparse.ArgumentParser(prog="python -m tests.services.stack")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--nodes", type=int, default=1, choices=[1, 2, 3])
    parser.add_argument("--haproxy", action="store_true")
    parser.add_argument("--users", type=int, default=3000)
    args = parser.parse_args(argv)
    options = StackOptions(nodes=args.nodes, haproxy=args.haproxy, users=args.users)
    stop_on_signals()
    with contextlib.suppress(KeyboardInterrupt), running_stack(options) as stack:
        print(stack.describe(), flush=True)
        print(f"connect to {stack.front_address}: "
              + " ".join(f"{k}={stack.port(k)}" for k in LISTENERS), flush=True)
        print("Ctrl-C stops everything", flush=True)
        signal.pause()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
