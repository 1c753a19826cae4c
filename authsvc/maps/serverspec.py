"""Parse a map's answer, ``[user@]host[:port]``, the way Perdition does (docs/maps.md).

Perdition's ``user_server_port_strn_assign`` (perdition/server_port.c) takes
the port after the *last* colon, then the user before the *last* delimiter.
The user is cut here; ``host[:port]`` follows the one rule of
:mod:`authsvc.address`.  Two deliberate differences from Perdition, both
documented in docs/maps.md and docs/perdition-compatibility.md:

* A bare IPv6 address (more than one colon, no brackets) is a host with no
  port; Perdition would cut ``::1`` into host ``:`` and port ``1``.  Any other
  value with several colons (``10.0.0.5:993:143``, which Perdition turns into
  host ``10.0.0.5:993``) is refused instead of becoming a host that cannot be
  connected to.
* A port must be a number from 1 to 65535; Perdition passes service names to
  getaddrinfo, which needs /etc/services at lookup time.

Unlike a configured address, a host from a map is not checked against the
host-name grammar: only blanks and control characters are refused, and name
resolution decides the rest, as in Perdition.  ``host:`` (an empty port) is a
host with no port, so the default port applies.
"""
from __future__ import annotations

import re

from authsvc.address import parse_port, split_hostport
from authsvc.maps import MapEntry

# str.isspace() and re's \s use the same Unicode table (Py_UNICODE_ISSPACE);
# one search is far cheaper than a generator over the characters.
_BLANK_OR_CONTROL = re.compile(r"[\s\x00-\x1f]")


class ServerSpecError(ValueError):
    """A map value that is not ``[user@]host[:port]``."""


def map_port(text: str) -> int:
    """A port from a map (after a value's colon, or in a port column), by the one rule of
    :func:`authsvc.address.parse_port`."""
    try:
        return parse_port(text)
    except ValueError as exc:
        raise ServerSpecError(str(exc)) from None


def parse_server(value: str, delimiter: str = "@") -> MapEntry | None:
    """Split a map value; None when the host is empty (Perdition: no server)."""
    value = value.strip()
    user: str | None = None
    cut = value.rfind(delimiter) if delimiter else -1
    if cut >= 0:
        user, value = value[:cut], value[cut + len(delimiter) :]
    try:
        host, port_text = split_hostport(value)
    except ValueError as exc:
        raise ServerSpecError(str(exc)) from None
    if not host:
        return None
    if _BLANK_OR_CONTROL.search(host) is not None:
        raise ServerSpecError(f"host {host!r} contains blanks or control characters")
    port = map_port(port_text) if port_text else None
    return MapEntry(host=host, port=port, user=user or None)
