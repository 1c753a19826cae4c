"""The HAProxy view: Settings plus ``render-haproxy`` options to a whole ``haproxy.cfg``.

One frontend per listener and one backend of nodes behind it.
:func:`haproxy_view` makes every decision in typed Python;
``templates/haproxy.cfg.j2`` only lays the view out.  The HAProxy facts used
here come from HAProxy 2.6's configuration manual and are explained for
operators in docs/operations.md ("HAProxy in front of several nodes").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from authsvc import __version__
from authsvc.render.common import (
    ALL_ADDRESSES,
    Rendered,
    RenderError,
    bind_host,
    format_time,
    listener_ports,
    nonzero,
    render_template,
)
from authsvc.settings import (
    HaproxySettings,
    HostPort,
    ListenTls,
    MailProtocol,
    PoolNode,
    Settings,
)

#: RFC 2177 asks IDLE clients to refresh every 29 minutes and RFC 9051 §5.4 sets
#: the autologout timer to at least 30: a load balancer must wait longer than both.
HAPROXY_MIN_SESSION_TIMEOUT = 31 * 60.0
#: How much longer than the node's own idle timeout HAProxy waits, so the node
#: (which can say goodbye properly) is the one that closes an idle session.
HAPROXY_TIMEOUT_MARGIN = 60.0

_HAPROXY_NAME = re.compile(r"[^A-Za-z0-9_.:-]")
_HAPROXY_TIME = re.compile(r"\d+(us|ms|s|m|h|d)?")


@dataclass(frozen=True, slots=True)
class HaproxyOptions:
    """``render-haproxy`` command-line overrides; the defaults change nothing."""

    #: Replaces ``settings.haproxy.nodes`` when not empty.
    nodes: tuple[PoolNode, ...] = ()
    #: Replaces the address of every frontend.
    bind: str | None = None
    #: Replaces every node's port offset when set.
    node_port_offset: int | None = None
    #: "v1", "v2" or "none"; None keeps ``settings.haproxy.proxy_protocol``.
    proxy_protocol: str | None = None
    stats: HostPort | None = None
    admin_socket: str | None = None
    #: An HAProxy time (``2s``, ``500ms``); None keeps ``settings.haproxy.check_inter``.
    check_inter: str | None = None


@dataclass(frozen=True, slots=True)
class HaproxyServer:
    """One ``server`` line: a node's mail port for one listener."""

    name: str
    address: str


@dataclass(frozen=True, slots=True)
class HaproxyPool:
    """A frontend for one listener and the backend of nodes behind it."""

    listener: str
    frontend: str
    backend: str
    binds: tuple[str, ...]
    timeout: str
    banner: str
    goodbye: str
    goodbye_reply: str
    tls: bool
    send_proxy: str | None
    health_port: int | None
    servers: tuple[HaproxyServer, ...]


@dataclass(frozen=True, slots=True)
class HaproxyView:
    """Everything ``haproxy.cfg.j2`` prints."""

    version: str
    admin_socket: str | None
    stats: str | None
    check_inter: str
    check_fall: int
    check_rise: int
    proxy_protocol: str
    pools: tuple[HaproxyPool, ...]
    warnings: tuple[str, ...]


def _haproxy_name(text: str) -> str:
    return _HAPROXY_NAME.sub("_", text)


def _health_port(nodes: tuple[PoolNode, ...]) -> int | None:
    """The one health port all nodes share, or None when no node has one.

    ``tcp-check connect port N`` is a backend-wide rule, so one port serves every
    server of a backend; the check connects to each server's own address.
    """
    healths = {n.health for n in nodes}
    if healths == {None}:
        return None
    ports = {h.port for h in healths if h is not None}
    if None in healths or len(ports) != 1 or None in ports:
        raise RenderError(
            "haproxy nodes: every node needs the same health port (NAME=HOST:PORT), "
            "or none of them"
        )
    for node in nodes:
        if node.health is not None and node.health.host not in (node.host, ""):
            raise RenderError(
                f"haproxy node {node.name}: the health check connects to the node's own "
                f"address {node.host}, not {node.health.host}"
            )
    (port,) = ports
    assert port is not None
    return port


def haproxy_view(settings: Settings, options: HaproxyOptions | None = None) -> HaproxyView:
    """The view model of an HAProxy config balancing ``settings``' listeners over nodes."""
    options = options or HaproxyOptions()
    hx: HaproxySettings = settings.haproxy
    nodes = options.nodes or hx.nodes
    if not nodes:
        raise RenderError("no nodes: set haproxy.nodes or pass --node NAME=HOST[:HEALTHPORT]")
    if options.node_port_offset is not None:
        nodes = tuple(replace(n, port_offset=options.node_port_offset) for n in nodes)
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise RenderError(f"haproxy nodes: duplicate names in {names}")
    proxy_protocol = options.proxy_protocol or hx.proxy_protocol
    send_proxy: dict[str, str | None] = {"v1": "send-proxy", "v2": "send-proxy-v2", "none": None}
    if proxy_protocol not in send_proxy:
        raise RenderError(f"haproxy.proxy_protocol must be v1, v2 or none, not {proxy_protocol!r}")
    check_inter = options.check_inter or format_time(hx.check_inter)
    if not _HAPROXY_TIME.fullmatch(check_inter):
        raise RenderError(f"--check-inter: not an HAProxy time: {check_inter!r}")
    health_port = _health_port(nodes)
    warnings: list[str] = []
    if health_port is None:
        warnings.append(
            "no node has a health port: checks test the mail banner only, not authsvc /readyz"
        )
    bound = bind_host(options.bind) if options.bind is not None else None

    pools: list[HaproxyPool] = []
    for listener in settings.listeners:
        addresses = listener_ports(listener)
        binds: list[str] = []
        for hp in addresses:
            host = bound if bound is not None else hp.host
            bind = f":{hp.port}" if host in ALL_ADDRESSES else str(HostPort(host, hp.port))
            if bind not in binds:
                binds.append(bind)
        port = addresses[0].port or 0  # every node port is the first port plus its offset
        servers = []
        for node in nodes:
            node_port = port + node.port_offset
            if not 0 < node_port < 65536:
                raise RenderError(f"node {node.name}: port {node_port} out of range")
            servers.append(
                HaproxyServer(_haproxy_name(node.name), str(HostPort(node.host, node_port)))
            )
        imap = listener.protocol is MailProtocol.IMAP
        session = max(
            nonzero(listener.idle_timeout) + HAPROXY_TIMEOUT_MARGIN, HAPROXY_MIN_SESSION_TIMEOUT
        )
        name = _haproxy_name(listener.name)
        pools.append(
            HaproxyPool(
                listener=listener.name,
                frontend=f"{name}_in",
                backend=f"{name}_nodes",
                binds=tuple(binds),
                timeout=format_time(session),
                # HAProxy 2.6 needs the space quoted (its configuration manual,
                # section 2.2 "Quoting and escaping").
                banner='"* OK"' if imap else '"+OK"',
                # A polite goodbye keeps "client closed connection" out of nginx's log.
                goodbye=r'"a1 LOGOUT\r\n"' if imap else r'"QUIT\r\n"',
                goodbye_reply='"* BYE"' if imap else '"+OK"',
                tls=listener.tls is ListenTls.IMPLICIT,
                send_proxy=send_proxy[proxy_protocol],
                health_port=health_port,
                servers=tuple(servers),
            )
        )
    if not pools:
        raise RenderError("no listeners to render")
    stats = options.stats or hx.stats
    return HaproxyView(
        version=__version__,
        admin_socket=options.admin_socket or hx.admin_socket,
        stats=str(stats) if stats else None,
        check_inter=check_inter,
        check_fall=hx.check_fall,
        check_rise=hx.check_rise,
        proxy_protocol=proxy_protocol,
        pools=tuple(pools),
        warnings=tuple(warnings),
    )


def render_haproxy(settings: Settings, options: HaproxyOptions | None = None) -> Rendered:
    """The HAProxy config text."""
    return render_template("haproxy.cfg.j2", haproxy_view(settings, options))


