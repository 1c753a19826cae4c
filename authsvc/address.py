"""Host and port text: the one parser of ``host[:port]`` and the mail protocols' ports.

Every reader of an address uses these functions: the configuration (TOML and
Perdition files), map answers, the command-line options of ``serve`` and the
renderers, and the proxy's syslog target.  One rule everywhere
(docs/configuration.md, "Addresses"):

* ``host`` or ``host:port``: a host name or an IPv4 address, then an optional port;
* ``[v6]`` or ``[v6]:port``: an IPv6 address in brackets, then an optional port;
  brackets hold an IPv6 address and nothing else (RFC 3986 §3.2.2);
* a bare value with more than one colon is an IPv6 address with **no** port, and
  it must be a whole IPv6 address.  ``::1:80`` is the address ``::1:80`` (which
  is ``::0.1.0.128``), never host ``::1`` port 80: a port after an IPv6 address
  needs the brackets, ``[::1]:80``.

A port is a decimal number from 1 to 65535.  Nothing here does I/O; errors are
``ValueError`` with a message that names the text, for the caller to place
(a config error adds the file, line and key).
"""

from __future__ import annotations

import ipaddress
import re

from authsvc.settings import HostPort, MailProtocol

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$")


def well_known_port(protocol: MailProtocol, implicit_tls: bool) -> int:
    """The protocol's IANA port: IMAP 143 (RFC 9051), POP3 110 (RFC 1939), and their
    implicit-TLS ports 993 and 995 (RFC 8314)."""
    if protocol is MailProtocol.IMAP:
        return 993 if implicit_tls else 143
    return 995 if implicit_tls else 110


def parse_port(text: str) -> int:
    """A decimal port 1-65535 (ASCII digits only), or ValueError."""
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_host(host: str) -> str:
    """An IP literal (written the standard way) or a host name, or ValueError."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host) or ".." in host:
        raise ValueError(f"{host!r} is not an IP address or host name")
    return host


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def split_hostport(text: str) -> tuple[str, str | None]:
    """``text`` cut by the module's rule into (host, port text), or ValueError.

    The host comes without brackets and unchecked unless it is an IPv6 address;
    it may be empty.  The port text is None when there is no ``:port`` part, and
    ``""`` for a colon with nothing after it; the caller decides what both mean.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: '[' without ']'")
        host, rest = text[1:close], text[close + 1 :]
        if not _is_ipv6(host):
            raise ValueError(f"{text!r}: {host!r} in brackets is no IPv6 address")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: unexpected {rest!r} after ']'")
        return host, rest[1:]
    if text.count(":") > 1:
        if not _is_ipv6(text):
            raise ValueError(f"{text!r} has several colons but is no IPv6 address "
                             "(an IPv6 address with a port is written [v6]:port)")
        return text, None
    host, colon, port = text.partition(":")
    return host, port if colon else None


def parse_hostport(text: str, *, need_port: bool = False) -> HostPort:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address.

    Surrounding blanks are ignored.  With ``need_port``, a value without a port is
    an error.
    """
    text = text.strip()
    host, port_text = split_hostport(text)
    if not host:
        raise ValueError(f"{text!r} has no host")
    port = None if port_text is None else parse_port(port_text)
    if need_port and port is None:
        hint = "; an IPv6 address takes a port in brackets, [v6]:port" if ":" in host else ""
        raise ValueError(f"{text!r} needs a port (host:port){hint}")
    return HostPort(parse_host(host), port)
