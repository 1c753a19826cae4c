"""Parse a map's answer, ``[user@]host[:port]``, the way Perdition does (server_port.c).

Perdition's ``user_server_port_strn_assign`` takes the port after the *last*
colon, then the user before the *last* delimiter.  Two deliberate differences,
both documented in docs/perdition-compatibility.md:

* A bare IPv6 address (more than one colon, no brackets) is a host with no
  port; Perdition would cut ``::1`` into host ``:`` and port ``1``.  Any other
  value with several colons (``10.0.0.5:993:143``, which Perdition turns into
  host ``10.0.0.5:993``) is refused instead of becoming a host that
  cannot be connected to.
* A port must be a number from 1 to 65535; Perdition passes service names to
  getaddrinfo, which needs /etc/services at lookup time.
"""

from __future__ import annotations

import ipaddress
import re

from authsvc.maps import MapEntry

# str.isspace() and re's \s use the same Unicode table (Py_UNICODE_ISSPACE);
# one search is far cheaper than a generator over the characters.
_BLANK_OR_CONTROL = re.compile(r"[\s\x00-\x1f]")


class ServerSpecError(ValueError):
    """A map value that is not ``[user@]host[:port]``."""


def parse_port(text: str) -> int:
    """A decimal port, 1-65535."""
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ServerSpecError(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ServerSpecError(f"port {port} is out of range 1-65535")
    return port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_server(value: str, delimiter: str = "@") -> MapEntry | None:
    """Split a map value; None when the host is empty (Perdition: no server)."""
    value = value.strip()
    user: str | None = None
    cut = value.rfind(delimiter) if delimiter else -1
    if cut >= 0:
        user, value = value[:cut], value[cut + len(delimiter) :]
    port_text = ""
    if value.startswith("["):
        close = value.find("]")
        if close < 3:  # Perdition wants at least two characters between the brackets
            raise ServerSpecError(f"bad IPv6 literal in {value!r}")
        host, rest = value[1:close], value[close + 1 :]
        if not _is_ipv6(host):
            raise ServerSpecError(f"{host!r} in brackets is no IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise ServerSpecError(f"unexpected {rest!r} after {value[: close + 1]!r}")
            port_text = rest[1:]
    elif value.count(":") > 1:
        if not _is_ipv6(value):
            raise ServerSpecError(f"{value!r} has several colons but is no IPv6 address")
        host = value
    else:
        host, _, port_text = value.partition(":")
    if not host:
        return None
    if _BLANK_OR_CONTROL.search(host) is not None:
        raise ServerSpecError(f"host {host!r} contains blanks or control characters")
    port = parse_port(port_text) if port_text else None
    return MapEntry(host=host, port=port, user=user or None)
