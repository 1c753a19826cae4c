"""How much of a mail client's address authsvc writes down: ``[log] client_ip``.

* ``full``: the address as it is (the default; fail2ban bans by it).
* ``truncated``: the network only, ``/24`` of IPv4 and ``/48`` of IPv6, with
  no port: enough to see that a flood comes from one provider, not enough to
  name a subscriber.
* ``none``: ``-``.

This is the one place that decides it, for every log line (the formatters in
``authsvc/log.py`` pass the fields named in :data:`CLIENT_FIELDS` through
:func:`shown_fields`), Perdition's ``Auth:`` line (``proxy/authline.py``) and
``authsvc sessions list``.  The throttle never needs this: it counts the real
address in memory or in Redis and never logs it (docs/security.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

MODES = ("full", "truncated", "none")
HIDDEN = "-"
#: The prefix kept by ``truncated``, per address family.
KEEP_V4, KEEP_V6 = 24, 48

#: Log fields whose value is a mail client's (or an unauthenticated peer's)
#: address, ``ip`` or ``ip:port`` or ``[ipv6]:port``.
CLIENT_FIELDS = frozenset({"client", "peer", "client_ip"})


def _split(text: str) -> str:
    """The address part of ``ip``, ``ip:port``, ``[ip6]:port`` or ``ip6``."""
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text[1:]
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


def shown_ip(text: str, mode: str) -> str:
    """``text`` (an address, with or without a port) as ``mode`` lets it be written.

    With ``truncated``, something that is not an address (``unknown``, a
    unix socket path) is written as ``-``: it cannot be cut, and it might
    still say too much.
    """
    if mode == "full":
        return text
    if mode == "none" or not text:
        return HIDDEN
    try:
        address = ipaddress.ip_address(_split(text))
    except ValueError:
        return HIDDEN
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    keep = KEEP_V4 if address.version == 4 else KEEP_V6
    return str(ipaddress.ip_network(f"{address}/{keep}", strict=False))


def shown_fields(fields: Mapping[str, object], mode: str) -> Mapping[str, object]:
    """``fields`` with every client address shown as ``mode`` says (the same object if none)."""
    if mode == "full" or CLIENT_FIELDS.isdisjoint(fields):
        return fields
    return {key: shown_ip(value, mode) if key in CLIENT_FIELDS and isinstance(value, str)
            else value for key, value in fields.items()}
