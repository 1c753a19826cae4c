"""Perdition 2.2 and ``authsvc proxy`` side by side, from the seed deployment's four files.

The compatibility rig (tests/integration/test_perdition_compat.py) runs the
Debian ``perdition`` and ``perdition-mysql`` packages exactly as the seed
deployment (riseup.net's nest; deploy/perdition/) configured them,
and ``authsvc proxy`` on the same four files, against the same Dovecot stores
and MariaDB table, so one scripted client session can be replayed against both.

:func:`write_seed_files` writes the seed's four files (``perdition.imap4.conf``,
``perdition.imaps.conf``, ``perdition.pop3.conf`` and the seed's own
``perdition.pops.conf``) for one bind address.  Compared with the seed, only
what a test machine needs is added or changed, each for a reason
(docs/perdition-compatibility.md, "How the comparison runs"):

* ``map_library`` is the multiarch path: on Debian 12 the module lives in
  /usr/lib/x86_64-linux-gnu; the seed's /usr/lib path does not exist.
* ``map_library_opt`` is the 9-field form (perditiondb(5)) pointed at our database, with
  the stores' IMAP or POP3 port as the constant port column.
* ``bind_address`` and ``listen_port`` are written in the file: ``-b`` on the
  command line would make Perdition ignore the file's ``add_domain`` and
  ``connection_limit`` (perdition/options.c).
* ``no_daemon``, ``log_facility +`` (stderr), ``pid_file ""``: the daemon stays
  in the foreground under its fixture, logs where the fixture can read it and
  writes no pid file (perdition(8)).  ``username``/``group`` are Debian's defaults
  (``nobody``/``nogroup``), written out so both programs read the same file.
* ``authenticate_timeout``/``timeout``: short, for tests.

Each protocol's binary is started with ``-f FILE`` (perdition/config_file.c: Debian's
``perdition.pop3s`` reads ``perdition.pop3s.conf`` or ``perdition.conf``, never
the seed's ``perdition.pops.conf``), in its own process group, and ended by its
own pid (SIGTERM, then SIGKILL to that group for session children left over).

:class:`AuthsvcProxy` runs ``python -m authsvc proxy -c FILE ...`` on the same
four files written for another bind address; nothing else differs.

Run by hand: ``python -m tests.services.perdition`` starts a private MariaDB,
the two Dovecot stores and both proxies, prints where they listen and waits
for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.services.certs import ServerCert, make_test_pki
from tests.services.dovecot import StorePorts
from tests.services.mariadb import TestDatabase
from tests.services.require import require_binary, require_file

#: Listener name -> the Debian binary that serves it (Debian's init script,
#: etc/rc.d/init.d/perdition.debian.in, starts IMAP4S as ``perdition.imaps``).
BINARIES: dict[str, str] = {
    "imap4": "perdition.imap4",
    "imaps": "perdition.imaps",
    "pop3": "perdition.pop3",
    "pop3s": "perdition.pop3s",
}
#: Listener name -> the seed deployment's file name (``pops``, sic).
SEED_FILE_NAMES: dict[str, str] = {
    "imap4": "perdition.imap4.conf",
    "imaps": "perdition.imaps.conf",
    "pop3": "perdition.pop3.conf",
    "pop3s": "perdition.pops.conf",
}
#: Listener name -> (protocol, client TLS), as the seed's ssl_mode makes them.
LISTENER_TLS: dict[str, tuple[str, str]] = {
    "imap4": ("imap", "starttls"),
    "imaps": ("imap", "implicit"),
    "pop3": ("pop3", "starttls"),
    "pop3s": ("pop3", "implicit"),
}
#: Where perditiondb_mysql lives on Debian 12 (package perdition-mysql).
MYSQL_LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_mysql.so.0"
#: The seed's imap_capability in perdition.imap4.conf (and .imaps.conf).
SEED_IMAP_CAPABILITY = (
    "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES "
    "SORT QUOTA IDLE STARTTLS"
)
SEED_DOMAIN = "riseup.net"
START_TIMEOUT = 20.0


def seed_file_text(
    listener: str, *, bind: str, port: int, pki: ServerCert, map_library_opt: str,
    authenticate_timeout: int = 5, timeout: int = 60,
) -> str:
    """One of the seed's four files, pointed at the test daemons (see the module doc)."""
    protocol, tls = LISTENER_TLS[listener]
    seed = ["connection_limit 0"]
    if protocol == "imap":
        seed.append(f'imap_capability "{SEED_IMAP_CAPABILITY}"')
    seed += [
        f"ssl_cert_file {pki.cert}",
        f"ssl_key_file {pki.key}",
        f"map_library {MYSQL_LIBRARY}",
        f"map_library_opt {map_library_opt}",
        "no_lookup",
        "lower_case all",
        f"explicit_domain '{SEED_DOMAIN}'",
        "add_domain servername_lookup",
        # The seed: tls_listen for 143/110, ssl_listen for the two TLS ports.
        f"ssl_mode {'ssl_listen' if tls == 'implicit' else 'tls_listen'}",
    ]
    harness = [
        f"bind_address {bind}",
        f"listen_port {port}",
        "no_daemon",
        "log_facility +",
        'pid_file ""',
        "username nobody",
        "group nogroup",
        f"authenticate_timeout {authenticate_timeout}",
        f"timeout {timeout}",
    ]
    return (
        f"# {SEED_FILE_NAMES[listener]} of the seed deployment, written by "
        "tests/services/perdition.py.\n"
        + "\n".join(seed)
        + "\n# Test harness: where to listen, foreground, stderr log, short timeouts.\n"
        + "\n".join(harness)
        + "\n"
    )


def write_seed_files(
    directory: Path, *, bind: str, ports: Mapping[str, int], pki: ServerCert,
    db: TestDatabase, store_ports: StorePorts,
) -> dict[str, Path]:
    """The seed's four files in ``directory`` for ``bind``; returns listener -> path.

    The IMAP files' map answers the stores' IMAP port and the POP3 files' map
    their POP3 port, as the seed's ``...:address:143`` / ``...:address:110``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for listener, name in SEED_FILE_NAMES.items():
        protocol = LISTENER_TLS[listener][0]
        store_port = store_ports.imap if protocol == "imap" else store_ports.pop3
        path = directory / name
        path.write_text(seed_file_text(
            listener, bind=bind, port=ports[listener], pki=pki,
            map_library_opt=db.map_library_opt(port=store_port),
        ))
        # The file holds the reader's password, as the seed's did.
        path.chmod(0o600)
        paths[listener] = path
    return paths


def require_mysql_module() -> None:
    """Skip (developer machine) or fail (CI=true) when perdition-mysql is not installed."""
    require_file(MYSQL_LIBRARY, "perdition-mysql")


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


def common_ports(addresses: tuple[str, ...]) -> dict[str, int]:
    """One port per listener, free on every address: the two file sets differ in bind only.

    Picked below the kernel's ephemeral range (32768+), as tests/services/stack.py
    does, so no outgoing connection takes the port before the daemon binds it.
    """
    rng = random.Random(secrets.randbits(32))
    ports: dict[str, int] = {}
    for listener in SEED_FILE_NAMES:
        for _ in range(1000):
            port = rng.randrange(20000, 30000)
            if port not in ports.values() and all(_bindable(a, port) for a in addresses):
                ports[listener] = port
                break
        else:
            raise RuntimeError(f"no port free on all of {addresses}")
    return ports


def _greets(address: str, port: int, tls: str, pki: ServerCert) -> bool:
    """True once the listener answers with a greeting line (over TLS when implicit)."""
    try:
        with socket.create_connection((address, port), timeout=2) as raw:
            sock: socket.socket = raw
            if tls == "implicit":
                sock = pki.client_context().wrap_socket(raw, server_hostname=address)
            return sock.recv(512)[:1] in (b"*", b"+")
    except (OSError, ssl.SSLError):
        return False


def _wait_listening(
    process: subprocess.Popen[bytes], address: str, port: int, tls: str, pki: ServerCert,
    what: str, log: Path,
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _greets(address, port, tls, pki):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not greet on {address}:{port}:\n{_tail(log)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _end(process: subprocess.Popen[bytes], *, group: bool) -> None:
    """SIGTERM our pid and wait; then SIGKILL its process group (forked session children)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if group:
        # Perdition forks one child per session (perdition.c); the group id is our pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


@dataclass
class PerditionDaemon:
    """One Perdition binary on one of the seed's files: foreground, own pid, stderr to a file."""

    listener: str
    config: Path
    address: str
    port: int
    pki: ServerCert
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        binary = require_binary(BINARIES[self.listener])
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-f", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_listening(self.process, self.address, self.port, LISTENER_TLS[self.listener][1],
                        self.pki, BINARIES[self.listener], self.log_path)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            _end(process, group=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class AuthsvcProxy:
    """``python -m authsvc proxy -c FILE ...`` on the seed's four files, logging to a file."""

    configs: Mapping[str, Path]
    address: str
    ports: Mapping[str, int]
    pki: ServerCert
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        argv = [sys.executable, "-m", "authsvc", "proxy"]
        for path in self.configs.values():
            argv += ["-c", str(path)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        for listener, port in self.ports.items():
            _wait_listening(self.process, self.address, port, LISTENER_TLS[listener][1],
                            self.pki, "authsvc proxy", self.log_path)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            _end(process, group=False)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running_perdition(
    configs: Mapping[str, Path], *, address: str, ports: Mapping[str, int], pki: ServerCert,
    workdir: Path,
) -> Iterator[dict[str, PerditionDaemon]]:
    """The four Perdition daemons, each on its file; all ended by pid when the block ends."""
    daemons: dict[str, PerditionDaemon] = {}
    try:
        for listener, path in configs.items():
            daemon = PerditionDaemon(listener, path, address, ports[listener], pki,
                                     workdir / f"{BINARIES[listener]}.log")
            daemons[listener] = daemon
            daemon.start()
        yield daemons
    finally:
        for daemon in daemons.values():
            daemon.stop()


@contextlib.contextmanager
def running_authsvc_proxy(
    configs: Mapping[str, Path], *, address: str, ports: Mapping[str, int], pki: ServerCert,
    workdir: Path,
) -> Iterator[AuthsvcProxy]:
    """``authsvc proxy`` on the four files; ended by its pid when the block ends."""
    proxy = AuthsvcProxy(configs, address, ports, pki, workdir / "authsvc-proxy.log")
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


def main() -> int:  # pragma: no cover - manual use
    """Both proxies, the stores and a private MariaDB on loopback until Ctrl-C."""
    from tests.services.dovecot import dovecot_stores
    from tests.services.mariadb import create_test_database, running_private_mariadb

    perdition_address, authsvc_address = "127.0.0.30", "127.0.0.31"
    stores_at = {"a": "127.0.0.2", "b": "127.0.0.3"}
    workdir = Path(tempfile.mkdtemp(prefix="authsvc-perdition-"))
    os.chmod(workdir, 0o755)  # noqa: S103 - dovecot and nobody traverse it
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        pki = make_test_pki(workdir / "pki", names=("localhost", perdition_address,
                                                    authsvc_address))
        server = stack.enter_context(running_private_mariadb())
        db = stack.enter_context(create_test_database(server.admin, port=server.port))
        db.add_mailboxes([(f"bob@{SEED_DOMAIN}", stores_at["b"]),
                          (f"alice@{SEED_DOMAIN}", stores_at["a"])])
        stores = stack.enter_context(dovecot_stores(
            {"a": {"alice": "alice-secret"}, "b": {"bob": "bob-secret"}}, stores_at, pki=pki))
        ports = common_ports((perdition_address, authsvc_address))
        for address, name in ((perdition_address, "perdition"), (authsvc_address, "authsvc")):
            files = write_seed_files(workdir / name, bind=address, ports=ports, pki=pki, db=db,
                                     store_ports=stores["a"].ports)
            if name == "perdition":
                stack.enter_context(running_perdition(files, address=address, ports=ports,
                                                      pki=pki, workdir=workdir))
            else:
                stack.enter_context(running_authsvc_proxy(files, address=address, ports=ports,
                                                          pki=pki, workdir=workdir))
        print(f"perdition {perdition_address}, authsvc proxy {authsvc_address}: "
              + " ".join(f"{k}={v}" for k, v in ports.items()))
        print(f"CA {pki.ca}; logs in {workdir}; users Bob/bob-secret (store-b), "
              "alice/alice-secret (store-a); Ctrl-C to stop")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
