"""The one client of the control endpoints, for the operator's commands (``commands.py``).

Which node, and how (docs/operations.md, "Operator commands"):

* ``--pool`` reaches every ``[[haproxy.nodes]]`` at its ``control`` address
  (``pool.py``, :func:`node_url`);
* ``--url http(s)://HOST:PORT`` or ``--url unix:/path`` picks the node;
* else ``[control] listen`` from ``--config`` (this node's control listener;
  a wildcard address is reached on loopback), over TLS when ``[control]
  cert`` is set;
* else, for one more release, ``authsvc serve``'s own socket (``[http] unix``
  or ``listen``), where those endpoints are deprecated.

Over TCP it sends the ``[control]`` secret in ``X-Authsvc-Control`` when the
config has one, else the ``[http]`` secret for serve's old endpoints; over a
unix socket it sends none (``trust.py`` says why either is trusted).  It
returns the HTTP status and the JSON body.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import urllib.parse

from authsvc.control.trust import CONTROL_HEADER
from authsvc.settings import HostPort, Settings

#: What a wildcard listen address is reached on from the same host.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _base(scheme: str, address: HostPort) -> str:
    host = _LOOPBACK.get(address.host, address.host)
    return f"{scheme}://[{host}]:{address.port}" if ":" in host else \
        f"{scheme}://{host}:{address.port}"


def node_url(settings: Settings, control: HostPort) -> str:
    """The URL of a pool node's control listener (``[[haproxy.nodes]] control``):
    https when ``[control] cert`` is set, as every node's listener then speaks TLS."""
    return _base("https" if settings.control.cert is not None else "http", control)


def target(settings: Settings, url: str | None) -> tuple[str | None, str]:
    """(unix socket path or None, base URL) to reach the node."""
    if url is not None:
        if url.startswith("unix:"):
            return url[len("unix:"):], "http://localhost"
        return None, url.rstrip("/")
    control = settings.control
    if control.listen is not None:
        return None, _base("https" if control.cert is not None else "http", control.listen)
    if settings.http.unix is not None:
        return settings.http.unix, "http://localhost"
    return None, f"http://{settings.http.listen}"


def credentials(settings: Settings, unix: str | None) -> dict[str, str]:
    """The header that proves the caller: the control secret, or serve's old one."""
    if unix is not None:
        return {}
    if settings.control.secret is not None:
        return {CONTROL_HEADER: settings.control.secret.reveal()}
    if settings.http.secret is not None:
        return {settings.http.secret_header: settings.http.secret.reveal()}
    return {}


def client_tls(settings: Settings) -> ssl.SSLContext:
    """Verify the node's certificate: the system's CAs, and ``[control] cert`` itself."""
    context = ssl.create_default_context()
    if settings.control.cert is not None:
        # A pool's own certificate (often self-signed) is the one to expect;
        # trusting it as it is, not only a root above it, is OpenSSL's partial chain.
        context.load_verify_locations(settings.control.cert)
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (serve's ``[http] unix``, ``--url unix:/path``)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(settings: Settings, method: str, path: str, form: dict[str, str] | None = None,
            url: str | None = None,
            limit: float | None = 10.0) -> tuple[int, dict[str, object]]:
    """One request to a control endpoint; (HTTP status, JSON body).

    The standard library's client: a command that starts, asks and exits
    should not pay for importing an asynchronous HTTP stack.  A GET carries
    ``form`` in its query, anything else in a form body.  ``limit`` bounds
    each wait on the node (None: none, for a paced kick).  Raises OSError
    (TLS errors included) or ``http.client.HTTPException``.
    """
    unix, base = target(settings, url)
    connection: http.client.HTTPConnection
    if unix is not None:
        connection = _UnixConnection(unix, limit)
    else:
        parts = urllib.parse.urlsplit(base)
        host = parts.hostname or "localhost"
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(host, parts.port, timeout=limit,
                                                     context=client_tls(settings))
        else:
            connection = http.client.HTTPConnection(host, parts.port, timeout=limit)
    encoded = urllib.parse.urlencode(form or {})
    headers = credentials(settings, unix)
    body: str | None = None
    if method == "GET":
        path = f"{path}?{encoded}" if encoded else path
    else:
        body = encoded
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        connection.request(method, path, body=body, headers=headers)
        reply = connection.getresponse()
        text = reply.read().decode("utf-8", "replace")
        status = reply.status
    finally:
        connection.close()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"error": text.strip()[:200]}
    return status, answer if isinstance(answer, dict) else {"error": str(answer)}


async def call(settings: Settings, method: str, path: str, form: dict[str, str] | None = None,
               url: str | None = None,
               limit: float | None = 10.0) -> tuple[int, dict[str, object]]:
    """:func:`request` in a thread, so that ``--pool`` asks every node at once."""
    return await asyncio.to_thread(request, settings, method, path, form, url, limit)
