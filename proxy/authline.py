"""Perdition's ``Auth:`` line and the syslog datagram that carries it, byte for byte.

Operators' fail2ban jails match Perdition's line (docs/proxy.md, fail2ban's
``filter.d/perdition.conf``), so ``authsvc proxy`` can write the same line to
syslog for every login attempt::

    Auth: <srcip>:<srcport>-><dstip>:<dstport> client-secure=<ssl|starttls|plaintext>
    authorisation_id=NONE authentication_id="<login>" server="<host>:<port>"
    protocol=<IMAP4|IMAP4S|POP3|POP3S> server-secure=<ssl|starttls|plaintext>
    status="<ok|failed: reason>"

(one line).  With ``[log] client_ip`` other than ``full`` the source is
``<network>:-`` or ``-:-`` (``authsvc/privacy.py``): fail2ban then has no
address to ban, which docs/security.md says.  The statuses are Perdition's, one per failure kind
(authsvc/failures.py): a store that refused the password gives ``failed:
Re-Authentication Failure``, the one fail2ban counts; an unknown user gives
``failed: Could not determine server``.  The datagram is what glibc's
``syslog(3)`` sends to ``/dev/log``: ``<PRI>Mmm dd hh:mm:ss ident[pid]:
message`` (RFC 3164).  Pure: no sockets here.
"""

from __future__ import annotations

import time

from authsvc.failures import LOGIN_DISABLED_STATUS, FailureKind

#: syslog(3) facility codes (RFC 3164 §4.1.1; Linux <sys/syslog.h>).
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
#: Perdition logs the Auth line at LOG_NOTICE (PERDITION_LOG_AUTH, perdition/perdition.c).
NOTICE = 5
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: A syslog daemon takes at least this much of a datagram (RFC 3164 §4.1 says
#: 1024; rsyslog and journald take 8 KiB); a login is at most a few hundred bytes.
MAX_DATAGRAM = 8192

#: Every control byte (C0 and DEL) to ``?``, the rest as it is.
_CONTROLS_TO_QUESTION_MARK = bytes(b if b >= 0x20 and b != 0x7F else 0x3F for b in range(256))

Address = tuple[str, int]
#: The client's side as written: a hidden one has ``-`` for its port.
ShownAddress = tuple[str, int | str]


def perdition_status(kind: FailureKind | None, *, login_disabled: bool = False) -> str:
    """``ok`` or Perdition's ``failed: ...`` text for the same outcome.

    The text is the kind's ``auth_status`` in authsvc/failures.py's table; a
    store that advertised LOGINDISABLED is Perdition's one finer case.
    """
    if kind is None:
        return "ok"
    if login_disabled:
        return LOGIN_DISABLED_STATUS
    return kind.meaning.auth_status


def protocol_name(protocol: str, implicit_tls: bool) -> str:
    """Perdition's instance protocol: IMAP4, IMAP4S, POP3 or POP3S."""
    base = "IMAP4" if protocol == "imap" else "POP3"
    return base + ("S" if implicit_tls else "")


def secure_name(tls: str) -> str:
    """``ssl``, ``starttls`` or ``plaintext`` from our ``implicit``/``starttls``/``none``."""
    return {"implicit": "ssl", "starttls": "starttls"}.get(tls, "plaintext")


def _clean(login: bytes) -> bytes:
    # A login never holds CR, LF or NUL (they are refused before this), but no
    # control byte may reach a log line in any case.
    return login.translate(_CONTROLS_TO_QUESTION_MARK)


def auth_line(
    *,
    client: ShownAddress,
    local: Address,
    client_secure: str,
    login: bytes,
    server: str,
    protocol: str,
    server_secure: str,
    status: str,
) -> bytes:
    """One ``Auth:`` line, the login as the client sent it (Perdition wrote raw bytes)."""
    ft = f"{client[0]}:{client[1]}->{local[0]}:{local[1]}"
    return (
        f"Auth: {ft} client-secure={client_secure} authorisation_id=NONE "
        f'authentication_id="'.encode("ascii")
        + _clean(login)
        + f'" server="{server}" protocol={protocol} server-secure={server_secure} '
        f'status="{status}"'.encode("ascii", "replace")
    )


def syslog_datagram(
    message: bytes, *, ident: str, pid: int, facility: str, now: float | None = None
) -> bytes:
    """``<PRI>Mmm dd hh:mm:ss ident[pid]: message``, as glibc sends it (local time)."""
    stamp = time.localtime(now)
    head = (f"<{FACILITIES[facility] * 8 + NOTICE}>{_MONTHS[stamp.tm_mon - 1]} "
            f"{stamp.tm_mday:2d} {stamp.tm_hour:02d}:{stamp.tm_min:02d}:{stamp.tm_sec:02d} "
            f"{ident}[{pid}]: ").encode("ascii", "replace")
    return (head + message)[:MAX_DATAGRAM]
