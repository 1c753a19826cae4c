"""Who is trusted: one check for the operator endpoints and for serve's ``GET /auth``.

A request is trusted when either holds:

* it came over a unix socket: the socket file's permissions decided who could
  connect (docs/serve.md, "Cache control");
* it carries the shared secret (``[http] secret``) in ``[http] secret_header``,
  compared in constant time (:meth:`authsvc.redact.Secret.matches`).

With no secret configured, the operator endpoints (``/cache/flush``,
``/throttle``) trust only the unix socket, while ``GET /auth`` is open: nginx
needs no secret unless the operator sets one (``open_without_secret``).  A TCP
peer is never trusted for its address, IPv4 or IPv6 alike.

The control listener (``listener.py``) checks two things, each on its own:
the source address against ``[control] allow`` (:func:`source_allowed`; a
refusal is a 403), then its own secret, ``[control] secret_file``, in
:data:`CONTROL_HEADER` (:func:`trusted` with ``open_without_secret=False``; a
refusal is a 401).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from authsvc.redact import Secret

if TYPE_CHECKING:
    from aiohttp import web

    from authsvc.settings import Settings

#: The header that carries ``[control] secret_file`` to the control listener.
CONTROL_HEADER = "X-Authsvc-Control"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def over_unix_socket(sockname: object) -> bool:
    """Whether a listening socket's address is a unix socket's (a path).

    An inet address is a tuple, ``(host, port)`` or ``(host, port, flow, scope)``.
    """
    return isinstance(sockname, str | bytes)


def sockname_of(request: web.Request) -> object:
    """The address of the socket that accepted ``request`` (None once it is gone)."""
    transport = request.transport
    return transport.get_extra_info("sockname") if transport is not None else None


def trusted(
    headers: Mapping[str, str],
    secret: Secret | None,
    header: str,
    *,
    sockname: object = None,
    open_without_secret: bool = False,
) -> bool:
    """The trust check.

    ``headers`` is case-insensitive (aiohttp's) or keyed by lower-cased name
    (``authsvc/http/wire.py``'s); ``header`` is the secret's header name.
    """
    if over_unix_socket(sockname):
        return True
    if secret is None:
        return open_without_secret
    offered = headers.get(header.lower())
    if offered is None:
        return False
    try:
        return secret.matches(offered)
    except UnicodeEncodeError:  # raw non-UTF-8 bytes: cannot be our secret
        return False


def networks_of(texts: Iterable[str]) -> tuple[Network, ...]:
    """``[control] allow`` as networks (validated already: CIDR or a bare address)."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def source_allowed(remote: str | None, allow: tuple[Network, ...]) -> bool:
    """Whether a caller at ``remote`` may talk to the control listener.

    No allow-list admits any source (the secret still decides).  An IPv4
    caller on a dual-stack socket shows as ``::ffff:a.b.c.d``; it is matched as
    the IPv4 address it is.
    """
    if not allow:
        return True
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == network.version and address in network
               for network in allow)


def details_check(settings: Settings) -> Callable[[web.Request], bool]:
    """Who may read why a map is down (``/readyz``): the unix socket or a secret.

    The control secret (``[control] secret_file`` in :data:`CONTROL_HEADER`)
    or the ``[http]`` secret in its header; without either configured, only
    the unix socket.  A load balancer needs only the status code.
    """
    keys = ((settings.control.secret, CONTROL_HEADER),
            (settings.http.secret, settings.http.secret_header))

    def check(request: web.Request) -> bool:
        sockname = sockname_of(request)
        return any(trusted(request.headers, secret, header, sockname=sockname)
                   for secret, header in keys)

    return check
