"""What every refusal means, in one table that both faces read.

A login that gets no session has a :class:`FailureKind`.  :data:`MEANINGS`
says, for each kind, everything a front end does with it: whether it is
temporary, whether the throttle counts it, which of the two client-facing
replies it gets, its metric label, Perdition's ``Auth:`` status for it, whether
the session ends after the reply, and how loudly it is logged.  ``authsvc
serve`` (``authsvc/http/auth_http.py``) and ``authsvc proxy``
(``proxy/attempt.py`` and the two front machines) render these columns in
their own words and decide nothing else themselves; docs/serve.md and
docs/proxy.md list the replies.

Two rules shape the table (docs/security.md):

* an unknown user, a name the login rules reject and a password the store
  refuses read the same to the client, so nobody can probe which users exist;
* a failure that says nothing about the password (a map or store that is down,
  our own configuration) reads as "try again later", so clients keep the
  password and retry instead of asking the user for a new one.

Pure: no I/O.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class FailureKind(enum.Enum):
    """Why a login gets no session."""

    NO_ROUTE = "no_route"  # not in the map, and no outgoing_server
    MAP_UNAVAILABLE = "map_unavailable"  # database down or slow
    BAD_LOGIN = "bad_login"  # empty, too long, NUL or control characters
    UNKNOWN_LISTENER = "unknown_listener"  # no listener for this protocol/name
    BACKEND_CONNECT = "backend_connect"  # the store cannot be reached (proxy)
    BACKEND_PROTOCOL = "backend_protocol"  # the store's dialogue or TLS failed (proxy)
    BACKEND_AUTH = "backend_auth"  # the store refused the password (proxy)
    THROTTLED = "throttled"  # the throttle refused the address before routing
    HELD = "held"  # the route's user or store is on hold (maintenance, docs/operations.md)

    @property
    def meaning(self) -> Meaning:
        """This kind's row of :data:`MEANINGS`."""
        return MEANINGS[self]

    @property
    def temporary(self) -> bool:
        """True when the client is told to try again later (:attr:`Meaning.temporary`)."""
        return MEANINGS[self].temporary


class Reply(enum.Enum):
    """The two things a client may be told after a failed login."""

    #: "Invalid login or password" (serve), ``NO [AUTHENTICATIONFAILED]`` /
    #: ``-ERR [AUTH]`` (proxy).
    AUTHENTICATION = "authentication failure"
    #: "Temporary server problem, try again later" (serve), ``NO [UNAVAILABLE]``
    #: / ``-ERR [SYS/TEMP]`` (proxy): RFC 5530 §3, RFC 3206 §4.
    TEMPORARY = "temporary failure"


@dataclass(frozen=True, slots=True)
class Meaning:
    """One kind's row: what both faces do with it."""

    #: The client is told to try again later and keeps the password: the
    #: failure says nothing about it.
    temporary: bool
    #: The throttle counts it as a failure of this address and login.
    counted: bool
    reply: Reply
    #: The ``result`` label of ``authsvc_auth_decisions_total`` (serve) and
    #: ``authsvc_proxy_logins_total`` (proxy), and the logs' word for it.
    label: str
    #: Perdition's ``status="..."`` on its ``Auth:`` syslog line (docs/proxy.md
    #: lists them).  fail2ban's ``filter.d/perdition.conf`` counts only
    #: "failed: Re-Authentication Failure".
    auth_status: str
    #: The session ends after the reply (serve: no ``Auth-Wait``, so nginx
    #: closes; proxy: the reply, then close).
    closes: bool = False
    #: The level of the failure's log line.
    log_level: int = logging.INFO


_NO_SERVER = "failed: Could not determine server"
_STORE_REFUSED = "failed: Re-Authentication Failure"
_NO_CONNECT = "failed: Could not connect to server"

MEANINGS: Mapping[FailureKind, Meaning] = MappingProxyType({
    # What a wrong login looks like: the same reply as a wrong password.
    FailureKind.NO_ROUTE: Meaning(
        temporary=False, counted=True, reply=Reply.AUTHENTICATION, label="no_route",
        auth_status=_NO_SERVER),
    FailureKind.BAD_LOGIN: Meaning(
        temporary=False, counted=True, reply=Reply.AUTHENTICATION, label="bad_login",
        auth_status=_NO_SERVER),
    FailureKind.BACKEND_AUTH: Meaning(
        temporary=False, counted=True, reply=Reply.AUTHENTICATION, label="backend_auth",
        auth_status=_STORE_REFUSED),
    # Past the throttle's cap: refused even with the right password, in the
    # words of any refusal and with the Auth: status fail2ban already counts,
    # so neither a client nor fail2ban sees the throttle (docs/security.md);
    # for the same reason not temporary, though the block ends when the window
    # slides.  Not counted again: the address is already refused.
    FailureKind.THROTTLED: Meaning(
        temporary=False, counted=False, reply=Reply.AUTHENTICATION, label="throttled",
        auth_status=_STORE_REFUSED, closes=True),
    # Nothing known about the password: try again later.
    FailureKind.MAP_UNAVAILABLE: Meaning(
        temporary=True, counted=False, reply=Reply.TEMPORARY, label="map_unavailable",
        auth_status=_NO_SERVER),
    FailureKind.BACKEND_CONNECT: Meaning(
        temporary=True, counted=False, reply=Reply.TEMPORARY, label="backend_connect",
        auth_status=_NO_CONNECT),
    FailureKind.BACKEND_PROTOCOL: Meaning(
        temporary=True, counted=False, reply=Reply.TEMPORARY, label="backend_protocol",
        auth_status="failed: Connection Negotiation Failure"),
    # An operator's hold on the user or the store (``authsvc hold``): the
    # mailbox is being moved or the store serviced, and the client should retry
    # in a moment.  Not counted: the password was never tried.  Its Auth:
    # status is the one of a store that cannot be reached, which is what a
    # held store is to the client, and which fail2ban's perdition filter does
    # not count (docs/security.md): a hold must never ban its own users.
    FailureKind.HELD: Meaning(
        temporary=True, counted=False, reply=Reply.TEMPORARY, label="held",
        auth_status=_NO_CONNECT),
    # A listener name nginx sends that the configuration lacks: the operator's
    # mistake, not the user's.  The client retries (the fix may be a reload
    # away); the log line says why, at error level.
    FailureKind.UNKNOWN_LISTENER: Meaning(
        temporary=True, counted=False, reply=Reply.TEMPORARY, label="unknown_listener",
        auth_status=_NO_SERVER, log_level=logging.ERROR),
})

#: Perdition's status when the store advertised LOGINDISABLED (RFC 3501 §6.2.3):
#: a :attr:`FailureKind.BACKEND_PROTOCOL` failure that Perdition names apart.
LOGIN_DISABLED_STATUS = "failed: Login Disabled"
