"""Listening sockets, bound before any worker forks, and their names in log lines.

TCP: one socket per worker on the same address, with ``SO_REUSEPORT`` when
there are several, so the kernel spreads new connections across them.  Unix
(``authsvc serve --unix``): one socket, inherited by every worker, which all
accept from it; a stale socket file left by a crash is replaced, a live one is
not.  Both faces bind here (``authsvc/http/serve.py``, ``proxy/command.py``).
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from authsvc.settings import HostPort


class ListenError(Exception):
    """The address cannot be listened on; the message says why."""


def bind_tcp(address: HostPort, count: int, backlog: int = 1024) -> list[socket.socket]:
    """``count`` listening sockets on one address, with SO_REUSEPORT when count > 1."""
    port = address.port if address.port is not None else 9143
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address.host, port))
            port = sock.getsockname()[1]  # port 0: the rest join the port the first got
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sockets


def bind_unix(path: str, backlog: int = 1024, mode: int = 0o660) -> socket.socket:
    """A listening unix socket at ``path``; a stale socket file is replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ListenError(f"cannot check {path}: {exc.strerror}") from None
            os.unlink(path)  # nobody listens: a leftover from a crash
        else:
            raise ListenError(f"{path} is in use by a running server")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # nginx (www-data) must connect; everyone else must not: put nginx in
        # the socket's group (docs/serve.md).  Whoever can connect may flush.
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def describe_socket(sock: socket.socket) -> str:
    """``host:port``, ``[v6]:port`` or ``unix:/path``, for log lines."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = inet_address(name)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def inet_address(name: object) -> tuple[str, int]:
    """(host, port) of a socket address; a unix socket's has no port (0)."""
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return str(name), 0
