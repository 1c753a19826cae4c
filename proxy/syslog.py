"""Send Perdition's ``Auth:`` lines to syslog without ever waiting for it.

``[proxy] auth_log_target`` is a unix datagram socket (``/dev/log``, or one a
test binds itself) or ``host:port`` for UDP.  The socket is non-blocking: a
syslog daemon that is slow, stopped or missing costs a dropped line and a
rate-limited warning in our own log, never a stalled event loop (glibc's
``syslog(3)`` would block).  The socket is reopened on the next line after an
error, so a restarted syslog daemon is picked up.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from authsvc.proxy.authline import auth_line, protocol_name, syslog_datagram

from authsvc.config.fields import parse_hostport
from authsvc.settings import ListenerSettings, ListenTls, ProxySettings

log = logging.getLogger("proxy.syslog")

#: At most one warning about an unreachable syslog per this many seconds.
WARN_EVERY = 60.0


class SyslogSender:
    """One datagram socket to the target, opened on first use."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._sock: socket.socket | None = None
        self._address: str | tuple[str, int] = target
        self._family = socket.AF_UNIX
        if not target.startswith("/"):
            hostport = parse_hostport(target)
            self._family = socket.AF_INET6 if ":" in hostport.host else socket.AF_INET
            self._address = (hostport.host, hostport.port or 514)
        self.sent = 0
        self.dropped = 0
        self._warned_at = float("-inf")

    def send(self, datagram: bytes) -> bool:
        """Send one datagram now, or drop it; True when it left."""
        for attempt in range(2):  # a stale socket (syslog restarted) gets one retry
            try:
                if self._sock is None:
                    self._sock = socket.socket(self._family, socket.SOCK_DGRAM)
                    self._sock.setblocking(False)
                    self._sock.connect(self._address)
                self._sock.send(datagram)
            except BlockingIOError:
                self._drop("syslog is not keeping up")
                return False
            except OSError as exc:
                self.close()
                if attempt == 1:
                    self._drop(exc.strerror or str(exc))
                    return False
                continue
            self.sent += 1
            return True
        return False  # pragma: no cover - the loop always returns

    def _drop(self, why: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("", extra={"fields": {"event": "auth_log_dropped", "target": self.target,
                                              "reason": why, "dropped": self.dropped}})

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class AuthLog:
    """Formats and sends the ``Auth:`` line of one login attempt (perdition(8), LOGGING)."""

    def __init__(self, proxy: ProxySettings, sender: SyslogSender | None = None) -> None:
        self._ident = proxy.auth_log_ident
        self._facility = proxy.auth_log_facility
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
        line = auth_line(
            client=client, local=local, client_secure=client_secure, login=login,
            server=server, server_secure=server_secure, status=status,
            protocol=protocol_name(listener.protocol.value,
                                   listener.tls is ListenTls.IMPLICIT),
        )
        ident = self._ident.replace("{listener}", listener.name)
        self.sender.send(syslog_datagram(line, ident=ident, pid=os.getpid(),
                                         facility=self._facility))

    def close(self) -> None:
        self.sender.close()
