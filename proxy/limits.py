"""Who may have a session: connection, per-client, pre-auth and descriptor limits, by counting.

Pure bookkeeping, no I/O: the server asks :meth:`Admission.connect` when it
accepts a connection (the listener's ``connection_limit``, and ``preauth_limit``
over all listeners), :meth:`Admission.identify` once it knows the client's
real address (after a PROXY header: ``client_limit`` and
``client_preauth_limit``, which ``[proxy] trusted`` networks skip), tells it
when the session logs in and when it ends.  Each :class:`Ticket` is released
exactly once, whatever path the session took.  :class:`DescriptorBudget`
turns the process's descriptor limit into the default ``preauth_limit`` and
says when a new connection's descriptor is too close to that limit to serve.

Perdition counted every live child of a listener, logged in or not, against
``connection_limit`` and then killed its own listener at the limit
(vanessa_socket's accept loop, docs/perdition-compatibility.md); here the extra
client is refused and the listener stays.
The pre-auth limits exist because a connection that never logs in costs the
same memory as one that does and is what a flood is made of.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from authsvc.settings import ProxySettings
from authsvc.sizing import descriptor_headroom

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refused(enum.Enum):
    """Why a connection was not admitted (a metric label and a log field)."""

    CONNECTION_LIMIT = "connection_limit"
    PREAUTH_LIMIT = "preauth_limit"
    CLIENT_LIMIT = "client_limit"
    CLIENT_PREAUTH_LIMIT = "client_preauth_limit"
    #: The new connection's descriptor is in the headroom (:class:`DescriptorBudget`).
    DESCRIPTORS = "descriptors"

#: The refusals that concern one client address (their reply says so).
CLIENT_REFUSALS = frozenset({Refused.CLIENT_LIMIT, Refused.CLIENT_PREAUTH_LIMIT})


class DescriptorBudget:
    """What the descriptor limit (``RLIMIT_NOFILE``'s soft value at start) allows.

    With ``N`` the limit, ``headroom = max(32, N // 16)`` descriptors
    (:func:`authsvc.sizing.descriptor_headroom`, which ``check-config`` uses too) are kept
    for what is not a client connection (listening sockets, logs, maps, the
    store side of logins in progress) and for accepting a connection only to
    refuse it.  The rest is shared so that pre-login connections (one
    descriptor each) can never take more than a third of it: the default
    ``preauth_limit`` is ``(N - headroom) // 3``, which leaves the other two
    thirds for at least as many logged-in sessions (two descriptors each,
    client and store).  docs/proxy.md, "Limits".
    """

    __slots__ = ("headroom", "limit", "preauth_limit")

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1)
        self.headroom = descriptor_headroom(self.limit)
        self.preauth_limit = max(1, (self.limit - self.headroom) // 3)

    def near(self, descriptor: int) -> bool:
        """Whether a just-accepted socket's descriptor number is in the headroom.

        The kernel gives every new descriptor the lowest free number (POSIX,
        "File Descriptor Allocation"), so a number this high means the table
        below it is full: serving the connection would eat into the headroom.
        """
        return descriptor >= self.limit - self.headroom


def client_key(address: str) -> str:
    """One client, one key: an IPv4-mapped IPv6 address counts as its IPv4 address."""
    if ":" not in address:
        # An IPv4 address parses only in its one textual form (ipaddress
        # rejects leading zeros), so the key is the text itself; no parse per login.
        return address
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


class Ticket:
    """One admitted connection; hand it back to :meth:`Admission.release` once."""

    __slots__ = ("client", "listener", "logged_in", "released")

    def __init__(self, listener: str) -> None:
        self.listener = listener
        self.client: str | None = None
        self.logged_in = False
        self.released = False


class Admission:
    """The counters behind every limit, for one process."""

    def __init__(self, proxy: ProxySettings, connection_limits: Mapping[str, int],
                 budget: DescriptorBudget | None = None) -> None:
        self._budget = budget
        self.configure(proxy, connection_limits)
        # Plain dicts, not Counters: a Counter's missing key and ``del`` are
        # Python methods, paid on every connection.
        self._live: dict[str, int] = {}  # per listener, logged in or not
        self._preauth: dict[str, int] = {}  # per listener, not logged in
        self._client_live: dict[str, int] = {}
        self._client_preauth: dict[str, int] = {}

    def configure(self, proxy: ProxySettings, connection_limits: Mapping[str, int]) -> None:
        """The limits (at start and on reload); the counts stay."""
        self._limits = dict(connection_limits)
        self._client_limit = proxy.client_limit
        self._client_preauth_limit = proxy.client_preauth_limit
        if proxy.preauth_limit is not None:
            self._preauth_limit = proxy.preauth_limit
        else:
            self._preauth_limit = self._budget.preauth_limit if self._budget is not None else 0

    @property
    def preauth_limit(self) -> int:
        """The ``preauth_limit`` in force, derived or set (0 = none)."""
        return self._preauth_limit

    # --- reading (metrics) --------------------------------------------------------

    def live(self, listener: str) -> int:
        return self._live.get(listener, 0)

    def preauth(self, listener: str) -> int:
        return self._preauth.get(listener, 0)

    def logged_in(self, listener: str) -> int:
        return self._live.get(listener, 0) - self._preauth.get(listener, 0)

    @property
    def preauth_total(self) -> int:
        return sum(self._preauth.values())

    # --- the life of a ticket -----------------------------------------------------

    def connect(self, listener: str) -> Ticket | Refused:
        """A new connection on ``listener``, before its client is known."""
        limit = self._limits.get(listener, 0)
        live, preauth = self._live, self._preauth
        if limit and live.get(listener, 0) >= limit:
            return Refused.CONNECTION_LIMIT
        if self._preauth_limit and self.preauth_total >= self._preauth_limit:
            return Refused.PREAUTH_LIMIT
        live[listener] = live.get(listener, 0) + 1
        preauth[listener] = preauth.get(listener, 0) + 1
        return Ticket(listener)

    def identify(self, ticket: Ticket, address: str, *, exempt: bool = False) -> Refused | None:
        """The client's real address is known; None when it may go on.

        An ``exempt`` client (``[proxy] trusted``) is counted but never refused.
        """
        if ticket.released or ticket.client is not None:
            return None
        key = client_key(address)
        if not exempt:
            if self._client_limit and self._client_live.get(key, 0) >= self._client_limit:
                return Refused.CLIENT_LIMIT
            if self._client_preauth_limit and (
                    self._client_preauth.get(key, 0) >= self._client_preauth_limit):
                return Refused.CLIENT_PREAUTH_LIMIT
        ticket.client = key
        self._client_live[key] = self._client_live.get(key, 0) + 1
        self._client_preauth[key] = self._client_preauth.get(key, 0) + 1
        return None

    def login(self, ticket: Ticket) -> None:
        """The session logged in: it no longer counts as pre-auth."""
        if ticket.released or ticket.logged_in:
            return
        ticket.logged_in = True
        self._decrement(self._preauth, ticket.listener)
        if ticket.client is not None:
            self._decrement(self._client_preauth, ticket.client)

    def release(self, ticket: Ticket) -> None:
        """The connection is gone (idempotent)."""
        if ticket.released:
            return
        ticket.released = True
        self._decrement(self._live, ticket.listener)
        if not ticket.logged_in:
            self._decrement(self._preauth, ticket.listener)
        if ticket.client is not None:
            self._decrement(self._client_live, ticket.client)
            if not ticket.logged_in:
                self._decrement(self._client_preauth, ticket.client)

    @staticmethod
    def _decrement(counter: dict[str, int], key: str) -> None:
        left = counter.get(key, 0) - 1
        counter[key] = left
        if left <= 0:
            del counter[key]  # no key per client that ever connected


def parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (validated by the config) as network objects."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def in_networks(address: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether ``address`` (IPv4-mapped IPv6 counts as IPv4) is in any of ``networks``."""
    if not networks:
        return False
    try:
        parsed = ipaddress.ip_address(client_key(address))
    except ValueError:
        return False  # not an IP peer (a unix socket): never trusted
    return any(parsed in network for network in networks if network.version == parsed.version)
