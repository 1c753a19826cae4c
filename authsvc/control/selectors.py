"""Which relayed sessions an operator means: ``--user MASK``, ``--client CIDR``, ``--store``.

Pure: the selectors are parsed here, by the CLI before it sends anything and
again by the control endpoint (``sessions.py``), and matched against
:class:`SessionFacts`, what the proxy knows of one relayed session.

* ``--user`` matches the map key (``bob@riseup.net``), as the key is, case
  and all.  The mask takes ``*`` (any run of characters) and ``?`` (one
  character), as doveadm's user masks do (doveadm(1), "user mask"); every
  other character stands for itself, ``[`` included.
* ``--client`` is a network (CIDR) or one address; an IPv4 client on a
  dual-stack socket (``::ffff:a.b.c.d``) is matched as the IPv4 address it is.
* ``--store`` is the address the proxy connected to, with an optional port.
  A host name is resolved by the CLI when the command runs
  (``commands.py``), and every address it has matches; the endpoint takes
  addresses only, so a node never waits on DNS inside its event loop.

On the wire (form or query): ``user=``, ``client=``, ``store=ADDR[,ADDR...]``
and ``store_port=``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from authsvc.address import parse_host, parse_port, split_hostport
from authsvc.privacy import shown_ip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A map key is at most this long in every map we read; a longer mask is a typo.
MAX_MASK = 512


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the proxy knows of one relayed session, for ``authsvc sessions list``."""

    worker: int  # the process id of the worker that relays it
    session: int  # the number in its event=session log line
    listener: str
    protocol: str
    login: str  # as the client typed it
    user: str  # the map key
    client: str  # ip:port, the PROXY header's when trusted
    client_ip: str
    store: str  # the address:port the proxy connected to
    store_ip: str
    store_port: int
    store_host: str  # the map's host:port (a name, when the map gives one)
    client_tls: str  # none | implicit | starttls
    store_tls: str  # plaintext | ssl | starttls
    started: float  # Unix time the connection was accepted
    bytes_in: int  # from the client
    bytes_out: int  # to the client


def shown_client(facts: SessionFacts, client_ip: str = "full") -> str:
    """The client address as the session list shows it.

    Every control request carries the control secret (``listener.py``), so
    its holder may see the address, unless ``[log] client_ip`` says the site
    keeps no client addresses (``authsvc/privacy.py``).  A selector's
    ``client=`` still matches the real address.
    """
    return shown_ip(facts.client, client_ip)


def user_mask(text: str) -> re.Pattern[str]:
    """A doveadm-style mask as a pattern over the whole key, or ValueError."""
    if not text or len(text) > MAX_MASK:
        raise ValueError(f"user mask {text[:40]!r} must be 1 to {MAX_MASK} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise ValueError(f"user mask {text!r} contains a blank or a control character")
    parts = ("." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in text)
    return re.compile("".join(parts), re.DOTALL)


def client_network(text: str) -> Network:
    """A CIDR or one address, or ValueError."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"client {text!r} is not an address or a network (CIDR)") from None


def store_target(text: str) -> tuple[str, int | None]:
    """``HOST[:PORT]`` as (host name or IP literal, port), or ValueError."""
    try:
        host, port_text = split_hostport(text.strip())
        if not host:
            raise ValueError("no host")
        return parse_host(host), None if port_text is None else parse_port(port_text)
    except ValueError as exc:
        raise ValueError(f"store {text!r} is not HOST or HOST:PORT ({exc})") from None


def _ip(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class Selector:
    """The sessions an operator means; an empty selector means every one."""

    user: str | None = None
    client: str | None = None
    stores: tuple[str, ...] = ()  # IP literals
    store_port: int | None = None

    @property
    def empty(self) -> bool:
        return self.user is None and self.client is None and not self.stores \
            and self.store_port is None

    def as_form(self) -> dict[str, str]:
        form: dict[str, str] = {}
        if self.user is not None:
            form["user"] = self.user
        if self.client is not None:
            form["client"] = self.client
        if self.stores:
            form["store"] = ",".join(self.stores)
        if self.store_port is not None:
            form["store_port"] = str(self.store_port)
        return form

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_form().items()) or "all"

    def matcher(self) -> Matcher:
        return Matcher(self)


class Matcher:
    """A :class:`Selector` compiled once, to test many sessions."""

    def __init__(self, selector: Selector) -> None:
        self._mask = user_mask(selector.user) if selector.user is not None else None
        self._network = client_network(selector.client) if selector.client is not None else None
        self._stores = frozenset(_ip(s) for s in selector.stores)
        self._port = selector.store_port

    def __call__(self, facts: SessionFacts) -> bool:
        if self._mask is not None and self._mask.fullmatch(facts.user) is None:
            return False
        if self._port is not None and facts.store_port != self._port:
            return False
        try:
            if self._network is not None:
                client = _ip(facts.client_ip)
                if client.version != self._network.version or client not in self._network:
                    return False
            if self._stores and _ip(facts.store_ip) not in self._stores:
                return False
        except ValueError:
            return False
        return True


def parse_selector(params: Mapping[str, str]) -> Selector:
    """The selector of a control request, or ValueError with a one-line message."""
    user = params.get("user")
    client = params.get("client")
    if user is not None:
        user_mask(user)
    if client is not None:
        client_network(client)
    stores: list[str] = []
    for text in filter(None, (params.get("store") or "").split(",")):
        try:
            stores.append(str(_ip(text.strip().strip("[]"))))
        except ValueError:
            raise ValueError(f"store {text!r} is not an IP address (the client resolves "
                             "host names)") from None
    port_text = params.get("store_port")
    port = parse_port(port_text) if port_text else None
    return Selector(user=user, client=client, stores=tuple(stores), store_port=port)
