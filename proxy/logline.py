"""The fields of the one log line per proxy session, and of each failed login.

Pure: a :class:`SessionRecord` is filled in as the session goes and turned
into ``fields`` for ``authsvc.log``'s formatters (``key=value`` or JSON, with
client-supplied values quoted so a login cannot forge a second line).  There
is no password field anywhere in a record; that is the first defence, the
redacted connection trace is the second, ``authsvc.log.PasswordFilter`` the third.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SessionRecord:
    """What one session did; logged once, when it ends."""

    session: int
    listener: str
    protocol: str
    client: str
    local: str
    #: The peer that sent a PROXY header (HAProxy); ``client`` is then the header's.
    via: str | None = None
    tls: str = "none"  # none | implicit | starttls
    login: str | None = None  # the last login tried, as the client typed it
    mechanism: str | None = None
    backend: str | None = None
    backend_login: str | None = None
    #: ok | auth_failed | temporary_failure | no_login | tls_failed | error
    result: str = "no_login"
    attempts: int = 0
    end: str = ""
    bytes_in: int = 0  # from the client
    bytes_out: int = 0  # to the client
    duration: float = 0.0

    def fields(self) -> dict[str, object]:
        """The session line (``event=session``)."""
        # Built in order, a field left out when it has no value: no second
        # dict filtered from a first, once per session.
        out: dict[str, object] = {
            "event": "session",
            "session": self.session,
            "listener": self.listener,
            "protocol": self.protocol,
            "client": self.client,
            "local": self.local,
        }
        if self.via is not None:
            out["via"] = self.via
        out["tls"] = self.tls
        if self.login is not None:
            out["login"] = self.login
        if self.mechanism is not None:
            out["mechanism"] = self.mechanism
        if self.backend is not None:
            out["backend"] = self.backend
        if self.backend_login is not None:
            out["backend_login"] = self.backend_login
        out["result"] = self.result
        out["attempts"] = self.attempts
        if self.end:
            out["end"] = self.end
        out["bytes_in"] = self.bytes_in
        out["bytes_out"] = self.bytes_out
        out["duration"] = round(self.duration, 3)
        return out

    def failure_fields(self, kind: str, reason: str) -> dict[str, object]:
        """One failed login attempt (``event=login_failed``), for fail2ban-style watchers."""
        out: dict[str, object] = {
            "event": "login_failed",
            "session": self.session,
            "listener": self.listener,
            "client": self.client,
            "login": self.login,
            "attempt": self.attempts,
            "kind": kind,
            "backend": self.backend,
            "reason": reason,
        }
        return {key: value for key, value in out.items() if value is not None}


def address(peer: object) -> str:
    """``host:port`` for a socket address tuple, IPv6 in brackets."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "-" if peer is None else str(peer)
