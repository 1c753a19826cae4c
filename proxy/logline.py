"""The one structured log line per proxy session, and the per-attempt failure line.

Pure: builds ``key=value`` text from a record, quoting values that need it
(``login="Bob Smith"``) and escaping control bytes, so a hostile login cannot
forge a second log line.  There is no password field anywhere in a record;
that is the first defence, the redacted connection trace is the second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-@/[]+")


def quote(value: object) -> str:
    """A value for ``key=value``: bare when safe, else double-quoted and escaped."""
    text = str(value)
    if text and all(ch in _PLAIN for ch in text):
        return text
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xDC80 <= ord(ch) <= 0xDCFF:
            # Control bytes and undecodable bytes (surrogateescape) as \xNN.
            out.append(f"\\x{ord(ch) & 0xFF:02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def format_fields(fields: list[tuple[str, object]]) -> str:
    """``k1=v1 k2=v2``, skipping None values."""
    return " ".join(f"{key}={quote(value)}" for key, value in fields if value is not None)


@dataclass(slots=True)
class SessionRecord:
    """What one session did; filled in as it goes and logged once at its end."""

    session: int
    listener: str
    protocol: str
    client: str
    local: str
    tls: str = "none"  # none | implicit | starttls
    login: str | None = None  # as the client typed it
    mechanism: str | None = None
    backend: str | None = None
    backend_login: str | None = None
    result: str = "no_login"  # ok | auth_failed | temporary_failure | no_login | tls_failed | error
    attempts: int = 0
    end: str = ""
    bytes_in: int = 0  # from the client
    bytes_out: int = 0  # to the client
    duration: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The session line (event=session)."""
        return format_fields(
            [
                ("event", "session"),
                ("session", self.session),
                ("listener", self.listener),
                ("protocol", self.protocol),
                ("client", self.client),
                ("local", self.local),
                ("tls", self.tls),
                ("login", self.login),
                ("mechanism", self.mechanism),
                ("backend", self.backend),
                ("backend_login", self.backend_login),
                ("result", self.result),
                ("attempts", self.attempts),
                ("end", self.end or None),
                ("bytes_in", self.bytes_in),
                ("bytes_out", self.bytes_out),
                ("duration", f"{self.duration:.3f}"),
            ]
        )

    def failure_line(self, kind: str, reason: str) -> str:
        """One failed login attempt (event=login_failed), for fail2ban-style watchers."""
        return format_fields(
            [
                ("event", "login_failed"),
                ("session", self.session),
                ("listener", self.listener),
                ("client", self.client),
                ("login", self.login),
                ("attempt", self.attempts),
                ("kind", kind),
                ("backend", self.backend),
                ("reason", reason),
            ]
        )


def address(peer: object) -> str:
    """``host:port`` for a socket address tuple, IPv6 in brackets."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "-" if peer is None else str(peer)
