"""``host``, ``host:port`` and ``[v6]:port`` as a :class:`~authsvc.settings.HostPort` (sans-IO).

The configuration's validator (``authsvc/config/``) and the proxy's syslog
writer (``proxy/syslog.py``) read addresses with these, so a value that
passed validation reads the same way where it is used.  No name is resolved
here.
"""

from __future__ import annotations

import ipaddress
import re

from authsvc.settings import HostPort

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$")


def parse_port(text: str) -> int:
    """A decimal port 1-65535, or ValueError."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_host(host: str) -> str:
    """An IP literal or a host name, or ValueError."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host) or ".." in host:
        raise ValueError(f"{host!r} is not an IP address or host name")
    return host


def parse_hostport(text: str) -> HostPort:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    text = text.strip()
    port: int | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: '[' without ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: unexpected {rest!r} after ']'")
            port = parse_port(rest[1:])
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address: no port
    else:
        host, colon, port_text = text.partition(":")
        if colon:
            port = parse_port(port_text)
    if not host:
        raise ValueError(f"{text!r} has no host")
    return HostPort(parse_host(host), port)
