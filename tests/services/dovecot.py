"""A Dovecot 2.3 mail store under test: config, users, a marker mailbox, start and stop.

Each :class:`DovecotStore` is one ``dovecot -F -c <conf>`` in the foreground,
with its own base_dir, state_dir, passwd-file and maildirs in a private temp
directory, listening on free loopback ports of its own address (127.0.0.2 and
127.0.0.3 in the stack).  Every user's INBOX starts with one message whose
Subject is the store's *marker* (``store-a``), and the IMAP ``ID`` reply
carries it too (``x-authsvc-store``), so a test can tell which store a login
reached, over IMAP or POP3.

Settings chosen for tests (Debian's 2.3.19 defaults otherwise):

* ``disable_plaintext_auth = no``: else plain-text LOGIN gets LOGINDISABLED.
* the front ends in ``login_trusted_networks`` (their logins count as
  secured, and Dovecot takes the client address they forward), and the
  per-IP auth penalty (2 s doubling up to 15 s) switched off unless
  ``penalty=True``: every failed login behind nginx comes from the same
  address, and 2.3.19 applies the penalty to trusted networks too (measured:
  0.5 s, then 4.5 s per failure).
* ``auth_username_format = %Ln``: ``bob``, ``Bob`` and ``bob@riseup.net`` are
  one user, as the seed's Perdition (``lower_case all``) sends either form.
* high ``mail_max_userip_connections`` and ``process_limit``: every login of a
  load test comes from the same front-end address.
* with ``haproxy=True``, two more listeners (``imap_haproxy``, ``pop3_haproxy``)
  with ``haproxy = yes``: Dovecot then requires a PROXY header from every peer
  on them (from ``haproxy_trusted_networks``), so they get ports of their own
  and the plain listeners stay as they are.
* running as root needs the package's ``dovecot``/``dovenull`` users
  (``default_internal_user``/``default_login_user``); mail is owned by
  ``nobody``, and the temp directory is world-traversable so they can reach it.

Run by hand: ``python -m tests.services.dovecot [ADDRESS]`` starts one store
with a few users, prints its ports and waits for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.services.certs import ServerCert, make_test_pki
from tests.services.ports import free_port

#: The unprivileged owner of every test mailbox (Dovecot refuses uid 0 for mail).
MAIL_OWNER = "nobody"
#: Address of the first message of every seeded INBOX, and its Message-ID domain.
MARKER_FROM = "harness@mail.test"


@dataclass(frozen=True, slots=True)
class StorePorts:
    """The ports one store listens on; TLS ports are None without certificates."""

    imap: int
    pop3: int
    imaps: int | None
    pop3s: int | None
    #: ``haproxy = yes`` listeners (a PROXY header required), when asked for.
    imap_haproxy: int | None = None
    pop3_haproxy: int | None = None


def shared_ports(addresses: tuple[str, ...], *, tls: bool, haproxy: bool = False) -> StorePorts:
    """Ports free on every one of ``addresses``: one number per service for all stores.

    The seed's MySQL map answers a store address with a constant port
    (``...:storage_ip:address:143``, perditiondb(5)), so every store must
    listen on the same port numbers, each on its own address.
    """
    def pick() -> int:
        while True:
            port = free_port(addresses[0])
            if all(_bindable(address, port) for address in addresses[1:]):
                return port

    return StorePorts(
        imap=pick(), pop3=pick(), imaps=pick() if tls else None, pop3s=pick() if tls else None,
        imap_haproxy=pick() if haproxy else None, pop3_haproxy=pick() if haproxy else None,
    )


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


def marker_message(marker: str, user: str) -> bytes:
    """The first message of every seeded INBOX: its Subject names the store."""
    return (
        f"From: {MARKER_FROM}\r\n"
        f"To: {user}@riseup.net\r\n"
        f"Subject: {marker}\r\n"
        f"Message-ID: <{marker}.{user}@mail.test>\r\n"
        "Date: Tue, 25 Nov 2025 12:00:00 +0000\r\n"
        "\r\n"
        f"This mailbox lives on {marker}.\r\n"
    ).encode()


def _config(
    *,
    workdir: Path,
    name: str,
    address: str,
    ports: StorePorts,
    trusted_networks: tuple[str, ...],
    pki: ServerCert | None,
    marker: str,
    penalty: bool = False,
) -> str:
    passwd = workdir / "passwd"
    tls_listener = {
        "imap": "" if ports.imaps is None else (
            f"  inet_listener imaps {{\n    address = {address}\n"
            f"    port = {ports.imaps}\n    ssl = yes\n  }}\n"
        ),
        "pop3": "" if ports.pop3s is None else (
            f"  inet_listener pop3s {{\n    address = {address}\n"
            f"    port = {ports.pop3s}\n    ssl = yes\n  }}\n"
        ),
    }
    for service, port in (("imap", ports.imap_haproxy), ("pop3", ports.pop3_haproxy)):
        if port is not None:
            tls_listener[service] += (
                f"  inet_listener {service}_haproxy {{\n    address = {address}\n"
                f"    port = {port}\n    haproxy = yes\n  }}\n"
            )
    haproxy = (
        f"haproxy_trusted_networks = {' '.join(trusted_networks)}\nhaproxy_timeout = 3s\n"
        if ports.imap_haproxy is not None or ports.pop3_haproxy is not None else ""
    )
    ssl = (
        f"ssl = yes\nssl_cert = <{pki.cert}\nssl_key = <{pki.key}\n" if pki else "ssl = no\n"
    )
    # The mode-0 listener is how the penalty is switched off (see the comment
    # in the generated file); without it, the auth process applies it.
    anvil = "" if penalty else _NO_PENALTY
    return f"""# Generated by tests/services/dovecot.py for store {name}; throw-away.
base_dir = {workdir}/run
state_dir = {workdir}/state
instance_name = authsvc-test-{name}
listen = {address}
protocols = imap pop3
log_path = {workdir}/dovecot.log
# Dovecot's own greeting; behind nginx the client sees nginx's instead.
login_greeting = {marker} ready
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
auth_failure_delay = 0
login_trusted_networks = {" ".join(trusted_networks)}
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir
mail_max_userip_connections = 100000
imap_id_send = name * x-authsvc-store {marker}
{haproxy}{ssl}
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service imap-login {{
  inet_listener imap {{
    address = {address}
    port = {ports.imap}
  }}
{tls_listener["imap"]}  # High-performance mode: few login processes, many clients each.
  service_count = 0
  process_min_avail = 2
  client_limit = 4000
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {address}
    port = {ports.pop3}
  }}
{tls_listener["pop3"]}  service_count = 0
  process_min_avail = 1
  client_limit = 4000
}}
# Reuse mail processes across logins (every test user has the same uid), so
# a login costs no fork+exec of imap/pop3: the load tests measure the front end.
service imap {{
  process_limit = 1000
  service_count = 1000
  process_min_avail = 4
}}
service pop3 {{
  process_limit = 1000
  service_count = 1000
  process_min_avail = 2
}}
service auth {{
  client_limit = 6000
}}
{anvil}"""


_NO_PENALTY = """# 2.3.19's login processes no longer flag trusted clients "no-penalty", so the
# per-IP auth penalty (2 s doubling to 15 s) would still hit every failed login
# behind nginx, which all come from one address.  The auth process cannot open
# a mode-0 socket, and Dovecot then turns the penalty off (auth-penalty.c).
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""


class DovecotStore:
    """One Dovecot instance: a mail store on its own loopback address.

    ``users`` maps a login name (no domain) to its password.  Use as a context
    manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        name: str,
        address: str,
        users: Mapping[str, str],
        *,
        pki: ServerCert | None = None,
        trusted_networks: tuple[str, ...] = ("127.0.0.0/8",),
        workdir: Path | None = None,
        marker: str | None = None,
        ports: StorePorts | None = None,
        penalty: bool = False,
    ) -> None:
        self.name = name
        self.penalty = penalty
        self.address = address
        self.users = dict(users)
        self.pki = pki
        self.trusted_networks = trusted_networks
        self.marker = marker or f"store-{name}"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"authsvc-dovecot-{name}-"))
        self.ports = ports or StorePorts(
            imap=free_port(address),
            pop3=free_port(address),
            imaps=free_port(address) if pki else None,
            pop3s=free_port(address) if pki else None,
        )
        self.config_path = self.workdir / "dovecot.conf"
        self.log_path = self.workdir / "dovecot.log"
        self._process: subprocess.Popen[bytes] | None = None
        owner = pwd.getpwnam(MAIL_OWNER)
        self._uid, self._gid = owner.pw_uid, owner.pw_gid
        self._sequence = 0

    # -- files ---------------------------------------------------------------

    def home(self, user: str) -> Path:
        """The home directory of ``user`` (its maildir is ``home/Maildir``)."""
        return self.workdir / "home" / user.lower()

    def _chown(self, path: Path) -> None:
        os.chown(path, self._uid, self._gid)

    def _maildir(self, user: str) -> Path:
        maildir = self.home(user) / "Maildir"
        if not maildir.exists():
            for path in (self.home(user), maildir):
                path.mkdir(mode=0o700, exist_ok=True)
                self._chown(path)
            for sub in ("cur", "new", "tmp"):
                (maildir / sub).mkdir(mode=0o700)
                self._chown(maildir / sub)
        return maildir

    def deliver(self, user: str, message: bytes) -> Path:
        """Put ``message`` into ``user``'s INBOX (as Maildir ``new/``); returns its file.

        Writes to ``tmp/`` then renames, the Maildir delivery protocol, so a
        running Dovecot never sees half a message.
        """
        maildir = self._maildir(user)
        self._sequence += 1
        unique = f"{int(time.time())}.M{self._sequence}P{os.getpid()}.{self.name}"
        tmp = maildir / "tmp" / unique
        tmp.write_bytes(message)
        self._chown(tmp)
        final = maildir / "new" / unique
        tmp.rename(final)
        return final

    def _write_files(self) -> None:
        # dovecot, dovenull and nobody must traverse it; nothing secret lives here.
        os.chmod(self.workdir, 0o755)  # noqa: S103
        for sub in ("run", "state"):
            (self.workdir / sub).mkdir(exist_ok=True)
        home_root = self.workdir / "home"
        home_root.mkdir(exist_ok=True)
        self._chown(home_root)
        lines = [
            f"{user.lower()}:{{PLAIN}}{password}:{self._uid}:{self._gid}::{self.home(user)}::nodelay=yes\n"
            for user, password in self.users.items()
        ]
        passwd = self.workdir / "passwd"
        passwd.write_text("".join(lines))
        os.chmod(passwd, 0o644)  # read by the auth process, which runs as dovecot
        # One marker file, hard-linked into every INBOX: thousands of users cost
        # one write each store, not thousands.
        seed = self.workdir / "marker.eml"
        seed.write_bytes(marker_message(self.marker, "user"))
        self._chown(seed)
        for user in self.users:
            maildir = self._maildir(user)
            target = maildir / "cur" / f"1000000000.M0P0.{self.name}:2,"
            if not target.exists():
                os.link(seed, target)
        self.config_path.write_text(
            _config(
                workdir=self.workdir,
                name=self.name,
                address=self.address,
                ports=self.ports,
                trusted_networks=self.trusted_networks,
                pki=self.pki,
                marker=self.marker,
                penalty=self.penalty,
            )
        )

    # -- process -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The master's process id while running."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = 15.0) -> None:
        """Write the config and mailboxes, start Dovecot, wait for its greeting."""
        binary = shutil.which("dovecot", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
        if binary is None:
            raise FileNotFoundError("dovecot is not installed")
        self._write_files()
        check = subprocess.run(
            [binary, "-c", str(self.config_path), "-n"], capture_output=True, text=True,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(f"dovecot config for {self.name} rejected: {check.stderr}")
        output = (self.workdir / "stdout.log").open("wb")
        self._process = subprocess.Popen(
            [binary, "-F", "-c", str(self.config_path)],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        output.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot {self.name} exited: {self.log_tail()}")
            if self._greets():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"dovecot {self.name} did not greet: {self.log_tail()}")
            time.sleep(0.05)

    def _greets(self) -> bool:
        try:
            with socket.create_connection((self.address, self.ports.imap), timeout=1) as sock:
                return sock.recv(200).startswith(b"* OK")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """End the master by its pid (it ends its own children) and wait for it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def cleanup(self) -> None:
        """Stop, then remove the temp directory if this store made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        """Everything Dovecot logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the log and of the master's own output, for error messages."""
        stdout = self.workdir / "stdout.log"
        text = self.log_text() + (stdout.read_text(errors="replace") if stdout.exists() else "")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> DovecotStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"DovecotStore({self.name!r}, {self.address}, imap={self.ports.imap})"


@contextlib.contextmanager
def dovecot_stores(
    users_by_store: Mapping[str, Mapping[str, str]],
    addresses: Mapping[str, str],
    *,
    pki: ServerCert | None = None,
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8",),
    haproxy: bool = False,
    penalty: bool = False,
) -> Iterator[dict[str, DovecotStore]]:
    """Start one store per name in ``users_by_store``; all stop when the block ends.

    All stores listen on the same port numbers (:func:`shared_ports`), each
    on its own address.  ``haproxy``: add the ``haproxy = yes`` listeners.
    ``penalty``: keep Dovecot's per-address auth penalty on.
    """
    ports = shared_ports(tuple(addresses[name] for name in users_by_store), tls=pki is not None,
                         haproxy=haproxy)
    stores: dict[str, DovecotStore] = {}
    try:
        for name, users in users_by_store.items():
            store = DovecotStore(
                name, addresses[name], users, pki=pki, trusted_networks=trusted_networks,
                ports=ports, penalty=penalty,
            )
            stores[name] = store
            store.start()
        yield stores
    finally:
        for store in stores.values():
            store.cleanup()


def main(argv: list[str]) -> int:
    """``python -m tests.services.dovecot [ADDRESS]``: one store, until Ctrl-C."""
    address = argv[0] if argv else "127.0.0.2"
    workdir = Path(tempfile.mkdtemp(prefix="authsvc-dovecot-pki-"))
    try:
        pki = make_test_pki(workdir)
        users = {"bob": "bobpass", "alice": "alicepass"}
        with DovecotStore("a", address, users, pki=pki) as store:
            print(f"dovecot store-a pid={store.pid} imap={address}:{store.ports.imap} "
                  f"pop3={address}:{store.ports.pop3} imaps={store.ports.imaps} "
                  f"pop3s={store.ports.pop3s}")
            print(f"users: {users}; CA: {pki.ca}; log: {store.log_path}")
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
