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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from authsvc.redact import Secret

if TYPE_CHECKING:
    from aiohttp import web


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


def request_check(secret: Secret | None, header: str) -> Callable[[web.Request], bool]:
    """The trust check of an operator endpoint, for one request: unix socket or secret.

    Without a secret only the unix socket is trusted (``open_without_secret``
    is False): what it guards is not nginx's to read.
    """

    def check(request: web.Request) -> bool:
        return trusted(request.headers, secret, header, sockname=sockname_of(request))

    return check
