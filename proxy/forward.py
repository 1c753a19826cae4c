"""The client's address for a store: what each ``forward_client`` mode puts on the wire.

Dovecot trusts these only from ``login_trusted_networks`` (Dovecot's docs,
proxy forwarding): IMAP ``ID`` with ``x-originating-ip``/``-port`` (the client) and
``x-connected-ip``/``-port`` (where it connected), POP3 ``XCLIENT ADDR= PORT=``;
or a PROXY header before anything else, for a listener with ``haproxy = yes``.
Pure functions, used by the back machines; nothing here does I/O.
"""

from __future__ import annotations

import ipaddress

from authsvc.proxy.events import Endpoints
from authsvc.proxy.proxy_protocol import encode_v1, encode_v2

from authsvc.settings import ForwardClient, ProxySettings

#: Dovecot refuses ID values over 1024 bytes and XCLIENT lines over 1024 (its docs);
#: addresses and ports are far below that.


def proxy_header(mode: ForwardClient, endpoints: Endpoints | None) -> bytes:
    """The PROXY header to send before the greeting, or b"" for the other modes."""
    if endpoints is None:
        return b""
    if mode is ForwardClient.PROXY_V1:
        return encode_v1(endpoints.client, endpoints.local)
    if mode is ForwardClient.PROXY_V2:
        return encode_v2(endpoints.client, endpoints.local)
    return b""


def imap_id_arguments(endpoints: Endpoints) -> str:
    """The parenthesised list of ``ID`` (RFC 2971) with Dovecot's forwarding keys."""
    fields = (
        ("x-originating-ip", endpoints.client[0]),
        ("x-originating-port", str(endpoints.client[1])),
        ("x-connected-ip", endpoints.local[0]),
        ("x-connected-port", str(endpoints.local[1])),
    )
    # Addresses and decimal ports never hold '"' or '\\': quoting is enough.
    return "(" + " ".join(f'"{key}" "{value}"' for key, value in fields) + ")"


def pop3_xclient(endpoints: Endpoints) -> bytes:
    """Dovecot's POP3 ``XCLIENT`` line for the client's address and port."""
    host, port = endpoints.client
    return f"XCLIENT ADDR={host} PORT={port}\r\n".encode("ascii")


def backend_options(
    proxy: ProxySettings, host: str, port: int
) -> tuple[ForwardClient, str | None]:
    """(forward_client, certificate name) for a route: the first matching
    ``[[proxy.backends]]`` entry, else the ``[proxy]`` defaults."""
    if not proxy.backends:
        return proxy.forward_client, proxy.backend_tls_name
    wanted = _canonical(host)
    for backend in proxy.backends:
        if _canonical(backend.host) == wanted and backend.port in (None, port):
            return (backend.forward_client or proxy.forward_client,
                    backend.tls_name or proxy.backend_tls_name)
    return proxy.forward_client, proxy.backend_tls_name


def _canonical(host: str) -> str:
    """An IP address in its one textual form, a host name in lower case."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower().rstrip(".")
