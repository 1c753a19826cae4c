"""Turn a route's backend host into the literal IP address nginx needs in ``Auth-Server``.

nginx parses ``Auth-Server`` with ``ngx_parse_addr`` and never resolves a name
there: a name, or an IPv6 address in brackets, is an internal error at the
client (ngx_mail_auth_http_module.c, docs/serve.md).  Maps may hold names (Perdition
resolves them even with ``no_lookup``: vanessa_socket calls getaddrinfo for the
store), so we resolve them here with ``loop.getaddrinfo`` and keep the answer
for a short while.  A name that does not resolve is a temporary failure, never a
wrong password.
"""

from __future__ import annotations

import asyncio
import socket

from cachetools import TTLCache

#: nginx rejects this one: it equals INADDR_NONE, ngx_parse_addr's error value.
_INADDR_NONE = "255.255.255.255"


class ResolveError(Exception):
    """The backend host has no usable address now."""


def literal_address(host: str) -> str | None:
    """``host`` as nginx wants it when it is an IP literal (IPv6 bare), else None."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, bare)
        except OSError:
            continue
        return bare
    return None


class Resolver:
    """Cached host-name resolution for ``Auth-Server``.

    Literals are answered from a dict with no I/O (the seed's maps hold IPs,
    so this is the hot path); names are looked up once per ``ttl`` seconds, and
    concurrent requests for one name share a single lookup.
    """

    def __init__(self, *, ttl: float = 30.0, timeout: float = 2.0, max_size: int = 4096) -> None:
        self._ttl = ttl
        self._timeout = timeout
        self._max_size = max_size
        self._literals: dict[str, str] = {}
        self._names: TTLCache[str, str] = TTLCache(maxsize=max_size, ttl=ttl)
        self._pending: dict[str, asyncio.Future[str]] = {}

    def known(self, host: str) -> str | None:
        """The address for ``host`` when it needs no lookup: a literal, or a name resolved lately.

        None means :meth:`resolve` must be awaited (a name not resolved in the
        last ``ttl`` seconds, or a literal nginx cannot take).
        """
        found = self._literals.get(host)
        if found is not None:
            return found
        literal = literal_address(host)
        if literal is None:
            return self._names.get(host)
        if literal == _INADDR_NONE:
            return None  # resolve() says why
        if len(self._literals) >= self._max_size:
            self._literals.clear()
        self._literals[host] = literal
        return literal

    async def resolve(self, host: str) -> str:
        """The address to put in ``Auth-Server``; raises :class:`ResolveError`."""
        known = self.known(host)
        if known is not None:
            return known
        if literal_address(host) is not None:  # only INADDR_NONE is not known()
            raise ResolveError(f"{host} cannot be sent to nginx")
        pending = self._pending.get(host)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(host))
            self._pending[host] = pending
            pending.add_done_callback(lambda _: self._pending.pop(host, None))
        return await asyncio.shield(pending)

    async def _lookup(self, host: str) -> str:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise ResolveError(f"resolving {host} timed out") from None
        except OSError as exc:
            raise ResolveError(f"cannot resolve {host}: {exc}") from None
        for _family, _type, _proto, _canon, sockaddr in infos:
            address = str(sockaddr[0])
            # A scoped IPv6 address (fe80::1%eth0) is no use to ngx_parse_addr.
            if "%" not in address and address != _INADDR_NONE:
                self._names[host] = address
                return address
        raise ResolveError(f"{host} has no usable address")
