"""Run a real nginx (Debian's, with libnginx-mod-mail) from a rendered ``mail {}`` config.

Typical use in a test::

    settings, ports = loopback_listeners(settings)          # free 127.0.0.1 ports
    pki = make_test_pki(tmp_path / "pki")                    # tests/services/certs.py
    text = render_nginx(settings, NginxOptions(standalone=True, prefix=str(tmp_path),
                        ssl_cert=str(pki.cert), ssl_key=str(pki.key))).text
    with running_nginx(text, tmp_path, ports.values()) as nginx:
        greeting = read_greeting("127.0.0.1", ports["imaps"], tls=pki.client_context())

nginx runs in the foreground (``daemon off``) in its own process group, with its
prefix, pid file and error log in a directory of the caller's; it is ended by
its own pid (SIGTERM to the master, then SIGKILL to its group if it lingers).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from authsvc.render import listener_ports
from authsvc.settings import HostPort, Settings
from tests.services.ports import free_port
from tests.services.require import require_binary

START_TIMEOUT = 10.0


def nginx_binary() -> str:
    """Path of ``nginx``; skips (or fails under CI) when it is not installed."""
    return require_binary("nginx")


def port_free(host: str, port: int) -> bool:
    """True when ``port`` can be bound on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def loopback_listeners(
    settings: Settings, host: str = "127.0.0.1", also_free_on: tuple[str, ...] = ()
) -> tuple[Settings, dict[str, int]]:
    """``settings`` with every listener moved to its own free port on ``host``.

    Returns the new settings and ``{listener name: port}``.  Ports are also free
    on every address in ``also_free_on``: an HAProxy frontend on 127.0.0.1 and
    its nginx node on 127.0.0.2 can then share the port numbers, as two real
    hosts would.  Use this rather than ``--listen-offset`` when a test needs
    ports nobody else holds.
    """
    ports: dict[str, int] = {}
    listeners = []
    for listener in settings.listeners:
        for _ in range(100):
            port = free_port(host)
            if port not in ports.values() and all(port_free(h, port) for h in also_free_on):
                break
        else:
            raise RuntimeError(f"no port free on {host} and {also_free_on}")
        ports[listener.name] = port
        listeners.append(replace(listener, bind=(HostPort(host, port),)))
    return replace(settings, listeners=tuple(listeners)), ports


def listen_addresses(settings: Settings) -> list[tuple[str, int]]:
    """Every (host, port) the settings' listeners bind, wildcards as 127.0.0.1."""
    out = []
    for listener in settings.listeners:
        for hp in listener_ports(listener):
            host = hp.host if hp.host not in ("", "*", "0.0.0.0") else "127.0.0.1"
            out.append((host, hp.port or 0))
    return out


@dataclass
class NginxProcess:
    """A running nginx: its master's pid and where its files are."""

    process: subprocess.Popen[bytes]
    prefix: Path
    conf: Path

    @property
    def pid(self) -> int:
        """The master process id."""
        return self.process.pid

    @property
    def error_log(self) -> Path:
        """nginx's error log (the render's ``error_log``, or ``-e``)."""
        return self.prefix / "error.log"

    def log_text(self) -> str:
        """The error log so far ('' when nginx has not written one)."""
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def reload(self) -> None:
        """``nginx -s reload`` by signal: HUP to the master."""
        os.kill(self.pid, signal.SIGHUP)

    def stop(self) -> None:
        """Fast shutdown (SIGTERM to the master); kill the group if it lingers."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)  # our own group: master and workers
            self.process.wait(timeout=5)


def check_config(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t -c conf -p prefix`` (error log in the prefix); returns the result."""
    return subprocess.run(
        [nginx_binary(), "-t", "-q", "-c", str(conf), "-p", f"{prefix}/",
         "-e", str(prefix / "error.log")],
        capture_output=True, text=True, timeout=30,
    )


def wait_for_ports(
    addresses: Iterable[tuple[str, int]],
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = START_TIMEOUT,
) -> None:
    """Wait until every (host, port) accepts a TCP connection.

    Raises ``RuntimeError`` if ``process`` exits first or time runs out.
    """
    deadline = time.monotonic() + timeout
    for host, port in addresses:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode} before {port}")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing listens on {host}:{port}") from None
                time.sleep(0.05)


def start_nginx(
    config_text: str, prefix: Path, ports: Iterable[int | tuple[str, int]] = ()
) -> NginxProcess:
    """Write ``config_text`` to ``prefix/nginx.conf`` and run nginx in the foreground.

    ``config_text`` is a ``render-nginx --standalone`` output (or any complete
    nginx.conf).  ``ports`` are waited for (a bare int means 127.0.0.1); the call
    returns once they accept connections.  Call :meth:`NginxProcess.stop`, or use
    :func:`running_nginx`.
    """
    binary = nginx_binary()
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config_text)
    process = subprocess.Popen(
        [binary, "-c", str(conf), "-p", f"{prefix}/", "-e", str(prefix / "error.log"),
         "-g", "daemon off;"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    nginx = NginxProcess(process, prefix, conf)
    addresses = [("127.0.0.1", p) if isinstance(p, int) else p for p in ports]
    try:
        wait_for_ports(addresses, process)
    except RuntimeError as exc:
        nginx.stop()
        raise RuntimeError(f"nginx did not start: {exc}\n{nginx.log_text()}") from None
    return nginx


@contextmanager
def running_nginx(
    config_text: str, prefix: Path, ports: Iterable[int | tuple[str, int]] = ()
) -> Iterator[NginxProcess]:
    """:func:`start_nginx` as a context manager that always stops nginx."""
    nginx = start_nginx(config_text, prefix, ports)
    try:
        yield nginx
    finally:
        nginx.stop()


def read_greeting(
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    proxy_header: bytes = b"",
    timeout: float = 5.0,
) -> bytes:
    """Connect, send ``proxy_header`` if any, start implicit TLS with ``tls`` if
    given (``ServerCert.client_context()`` checks the test CA and the name
    ``host``), and return the first line the server sends.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        if proxy_header:
            raw.sendall(proxy_header)
        if tls is not None:
            with tls.wrap_socket(raw, server_hostname=host) as wrapped:
                return _read_line(wrapped)
        return _read_line(raw)


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data
