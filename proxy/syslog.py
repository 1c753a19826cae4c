"""Send Perdition's ``Auth:`` lines to syslog without ever waiting for it.

``[proxy] auth_log_target`` is a unix datagram socket (``/dev/log``, or one a
test binds itself) or ``host:port`` for UDP.  The socket is non-blocking: a
syslog daemon that is slow, stopped or missing costs a dropped line and a
rate-limited warning in our own log, never a stalled event loop (glibc's
``syslog(3)`` would block).  The socket is reopened on the next line after an
error, so a restarted syslog daemon is picked up; when reopening fails too, the
lines of the next second are dropped without trying, so a missing daemon costs
no socket and no ``connect`` per login.

A UDP host name is resolved once, when the writer is made at start, because
a lookup can take seconds and would stall every session.  If it fails then,
lines are dropped (and counted) while the name is looked up again off the
event loop, at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from authsvc.proxy.authline import auth_line, protocol_name, syslog_datagram

from authsvc.address import parse_hostport
from authsvc.privacy import HIDDEN, shown_ip
from authsvc.settings import ListenerSettings, ListenTls, ProxySettings

log = logging.getLogger("proxy.syslog")

#: At most one warning about an unreachable syslog per this many seconds.
WARN_EVERY = 60.0
#: A host name that did not resolve is looked up again at most this often.
RESOLVE_EVERY = 60.0
#: After the socket could not be opened, lines are dropped this long before the next try.
REOPEN_AFTER = 1.0

#: ``socket.getaddrinfo``'s signature, replaceable in tests.
Resolver = Callable[..., Sequence[tuple[Any, ...]]]


class SyslogSender:
    """One datagram socket to the target, opened on first use."""

    def __init__(self, target: str, *, resolve: Resolver = socket.getaddrinfo,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self._clock = clock
        self._sock: socket.socket | None = None
        #: Where datagrams go: the unix socket's path, or a numeric (host, port, ...)
        #: for UDP; None while a host name has not resolved.
        self.address: str | tuple[Any, ...] | None = target
        self._family = socket.AF_UNIX
        self._resolve = resolve
        self._name: tuple[str, int] = ("", 0)
        self._resolving: asyncio.Task[None] | None = None
        self._resolved_at = float("-inf")
        if not target.startswith("/"):
            hostport = parse_hostport(target)
            self._name = (hostport.host, hostport.port or 514)
            self.address = None
            self._resolved_at = time.monotonic()
            try:
                self._use(resolve(*self._name, type=socket.SOCK_DGRAM))
            except OSError as exc:
                self._warn_unresolved(exc)
        self.sent = 0
        self.dropped = 0
        self._warned_at = float("-inf")
        self._reopen_at = float("-inf")

    def _use(self, found: Sequence[tuple[Any, ...]]) -> None:
        family, _type, _proto, _canonical, address = found[0]
        self._family, self.address = family, tuple(address)

    def _warn_unresolved(self, exc: BaseException) -> None:
        log.warning("", extra={"fields": {"event": "auth_log_unresolved", "target": self.target,
                                          "reason": str(exc) or type(exc).__name__}})

    def _resolve_later(self) -> None:
        """Look the host name up again, off the event loop (none running: not now)."""
        if self._resolving is not None or time.monotonic() - self._resolved_at < RESOLVE_EVERY:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._resolved_at = time.monotonic()
        self._resolving = loop.create_task(self._resolve_off_loop())

    async def _resolve_off_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(
                None, lambda: self._resolve(*self._name, type=socket.SOCK_DGRAM))
            self._use(found)
        except OSError as exc:
            self._warn_unresolved(exc)
        finally:
            self._resolving = None

    def send(self, datagram: bytes) -> bool:
        """Send one datagram now, or drop it; True when it left."""
        if self.address is None:
            self._resolve_later()
            self._drop(f"{self._name[0]} does not resolve")
            return False
        if self._sock is None and self._clock() < self._reopen_at:
            self._drop("syslog is unreachable")
            return False
        for attempt in range(2):  # a stale socket (syslog restarted) gets one retry
            try:
                if self._sock is None:
                    self._sock = socket.socket(self._family, socket.SOCK_DGRAM)
                    self._sock.setblocking(False)
                    self._sock.connect(self.address)
                self._sock.send(datagram)
            except BlockingIOError:
                self._drop("syslog is not keeping up")
                return False
            except OSError as exc:
                self._close_socket()
                if attempt == 1:
                    self._reopen_at = self._clock() + REOPEN_AFTER
                    self._drop(exc.strerror or str(exc))
                    return False
                continue
            self.sent += 1
            return True
        return False  # pragma: no cover - the loop always returns

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _drop(self, why: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("", extra={"fields": {"event": "auth_log_dropped", "target": self.target,
                                              "reason": why, "dropped": self.dropped}})

    def close(self) -> None:
        self._close_socket()
        if self._resolving is not None:
            self._resolving.cancel()
            self._resolving = None


class AuthLog:
    """Formats and sends the ``Auth:`` line of one login attempt (``authline.py``)."""

    def __init__(self, proxy: ProxySettings, sender: SyslogSender | None = None, *,
                 client_ip: str = "full") -> None:
        self._client_ip = client_ip  # [log] client_ip
        self._ident = proxy.auth_log_ident
        self._facility = proxy.auth_log_facility
        # Made in the worker that sends (proxy/run.py runs after the fork): its
        # pid, asked once rather than by a system call per login.
        self._pid = os.getpid()
        self.sender = sender if sender is not None else SyslogSender(proxy.auth_log_target)

    def record(
        self,
        listener: ListenerSettings,
        *,
        client: tuple[str, int],
        local: tuple[str, int],
        client_secure: str,
        login: bytes,
        server: str,
        server_secure: str,
        status: str,
    ) -> None:
        shown: tuple[str, int | str] = client
        if self._client_ip != "full":
            shown = (shown_ip(client[0], self._client_ip), HIDDEN)
        line = auth_line(
            client=shown, local=local, client_secure=client_secure, login=login,
            server=server, server_secure=server_secure, status=status,
            protocol=protocol_name(listener.protocol.value,
                                   listener.tls is ListenTls.IMPLICIT),
        )
        ident = self._ident.replace("{listener}", listener.name)
        self.sender.send(syslog_datagram(line, ident=ident, pid=self._pid,
                                         facility=self._facility))

    def close(self) -> None:
        self.sender.close()
