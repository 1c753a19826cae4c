"""Run a real HAProxy 2.6 from a rendered config and read server states from its admin socket.

Typical use in a test::

    text = render_haproxy(settings, HaproxyOptions(admin_socket=str(sock), ...)).text
    with running_haproxy(text, tmp_path, sock, [("127.0.0.1", front_port)]) as hx:
        wait_for_status(sock, "imap4_nodes", "n1", "UP")
        print(server_states(sock))

HAProxy runs in the foreground (``-db``) in its own process group, with its
config in a directory of the caller's, and is ended by its own pid.  The admin
socket needs ``stats socket <path> level admin`` in the config, which
``render-haproxy --admin-socket PATH`` writes.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.services.nginx import wait_for_ports
from tests.services.require import require_binary

START_TIMEOUT = 10.0


def haproxy_binary() -> str:
    """Path of ``haproxy``; skips (or fails under CI) when it is not installed."""
    return require_binary("haproxy")


def check_config(conf: Path) -> subprocess.CompletedProcess[str]:
    """``haproxy -c -f conf``; returns the result (stdout/stderr as text)."""
    return subprocess.run(
        [haproxy_binary(), "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30
    )


@dataclass
class HaproxyProcess:
    """A running HAProxy and where its files are."""

    process: subprocess.Popen[bytes]
    conf: Path
    admin_socket: Path | None
    log: Path

    @property
    def pid(self) -> int:
        """HAProxy's process id."""
        return self.process.pid

    def log_text(self) -> str:
        """HAProxy's stdout and stderr so far (its log goes to stdout)."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Hard stop (SIGTERM); kill the group if it lingers."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)  # our own group
            self.process.wait(timeout=5)


def admin_command(admin_socket: Path | str, command: str, timeout: float = 5.0) -> str:
    """Send one command to the admin socket and return HAProxy's whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(admin_socket))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@dataclass(frozen=True, slots=True)
class ServerState:
    """One row of ``show servers state`` (the fields tests look at)."""

    backend: str
    server: str
    address: str
    port: int
    #: srv_op_state: 0 stopped (DOWN), 1 starting, 2 running (UP), 3 stopping.
    op_state: int
    #: srv_admin_state bits: 0 = ready, 1/2/4 = maintenance, 8/16/32 = drain.
    admin_state: int
    #: srv_check_status (an HCHK_STATUS_* number) as printed.
    check_status: str

    @property
    def up(self) -> bool:
        """The server takes traffic (op state running)."""
        return self.op_state == 2


def server_states(admin_socket: Path | str) -> dict[tuple[str, str], ServerState]:
    """``show servers state`` parsed: {(backend, server): ServerState}."""
    text = admin_command(admin_socket, "show servers state")
    header: list[str] = []
    out: dict[tuple[str, str], ServerState] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split()
            continue
        fields = line.split()
        if not header or len(fields) < len(header):
            continue  # the leading version line, blank lines
        row = dict(zip(header, fields, strict=False))
        key = (row["be_name"], row["srv_name"])
        out[key] = ServerState(
            backend=row["be_name"],
            server=row["srv_name"],
            address=row["srv_addr"],
            port=int(row["srv_port"]),
            op_state=int(row["srv_op_state"]),
            admin_state=int(row["srv_admin_state"]),
            check_status=row["srv_check_status"],
        )
    return out


def server_status(admin_socket: Path | str) -> dict[tuple[str, str], str]:
    """``show stat`` status column per (backend, server): "UP", "DOWN", "UP 1/3", "MAINT"…"""
    text = admin_command(admin_socket, "show stat").lstrip("# ")
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row["svname"] not in ("FRONTEND", "BACKEND"):
            out[(row["pxname"], row["svname"])] = row["status"]
    return out


def wait_for_status(
    admin_socket: Path | str,
    backend: str,
    server: str,
    status: str,
    timeout: float = START_TIMEOUT,
) -> str:
    """Wait until the server's ``show stat`` status is exactly ``status``; return it.

    Raises ``AssertionError`` with the last status seen when time runs out.
    """
    deadline = time.monotonic() + timeout
    seen = "?"
    while time.monotonic() < deadline:
        seen = server_status(admin_socket).get((backend, server), "missing")
        if seen == status:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{backend}/{server} is {seen!r}, not {status!r} after {timeout}s")


def start_haproxy(
    config_text: str,
    directory: Path,
    admin_socket: Path | None = None,
    ports: Iterable[tuple[str, int]] = (),
) -> HaproxyProcess:
    """Write ``config_text`` to ``directory/haproxy.cfg`` and run HAProxy in the foreground.

    Returns once the admin socket (if given) answers and ``ports`` accept
    connections.  Call :meth:`HaproxyProcess.stop`, or use :func:`running_haproxy`.
    """
    binary = haproxy_binary()
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "haproxy.cfg"
    conf.write_text(config_text)
    log = directory / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(conf)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    hx = HaproxyProcess(process, conf, admin_socket, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while admin_socket is not None:
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {process.returncode}")
            try:
                admin_command(admin_socket, "show info")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("admin socket did not answer") from None
                time.sleep(0.05)
        wait_for_ports(ports, process)
    except RuntimeError as exc:
        hx.stop()
        raise RuntimeError(f"haproxy did not start: {exc}\n{hx.log_text()}") from None
    return hx


@contextmanager
def running_haproxy(
    config_text: str,
    directory: Path,
    admin_socket: Path | None = None,
    ports: Iterable[tuple[str, int]] = (),
) -> Iterator[HaproxyProcess]:
    """:func:`start_haproxy` as a context manager that always stops HAProxy."""
    hx = start_haproxy(config_text, directory, admin_socket, ports)
    try:
        yield hx
    finally:
        hx.stop()
