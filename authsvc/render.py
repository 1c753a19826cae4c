"""Render nginx ``mail {}`` and HAProxy configs from Settings: ``render-nginx``, ``render-haproxy``.

The work is split in three: ``render_command`` turns command-line options into
:class:`NginxOptions` / :class:`HaproxyOptions`; ``nginx_view`` / ``haproxy_view``
turn Settings plus options into a small view model (already quoted for the
target syntax, every decision made here, in typed Python); the Jinja2 templates
in ``templates/`` only lay the view model out.  Templates never see Settings.

Facts used here come from nginx's mail module docs (nginx.org/en/docs/mail/) and
HAProxy 2.6's configuration.txt; each is cited where it is used.  Anything
nginx cannot do that the settings ask for is either an
error (backend TLS that was required) or a warning printed to stderr *and*
written as a comment into the output, so the file explains itself.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Literal

import jinja2

from authsvc import __version__
from authsvc.settings import (
    BackendTls,
    HaproxySettings,
    HostPort,
    ListenerSettings,
    ListenTls,
    MailProtocol,
    PoolNode,
    Settings,
    Stage,
)

#: Debian 12's libnginx-mod-mail package puts the module here.
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"

#: The two request headers ``authsvc serve`` reads to know which listener and
#: local name a login came through; nginx sends no port (ngx_mail_auth_http_module, "Protocol").
LISTENER_HEADER = "X-Authsvc-Listener"
LOCAL_NAME_HEADER = "X-Authsvc-Local-Name"

#: RFC 2177 asks IDLE clients to refresh every 29 minutes and RFC 9051 §5.4 sets
#: the autologout timer to at least 30: a load balancer must wait longer than both
#: (HAProxy's configuration.txt, "timeout client").
HAPROXY_MIN_SESSION_TIMEOUT = 31 * 60.0
#: How much longer than the node's own idle timeout HAProxy waits, so the node
#: (which can say goodbye properly) is the one that closes an idle session.
HAPROXY_TIMEOUT_MARGIN = 60.0
#: Perdition's ``timeout 0`` / ``authenticate_timeout 0`` mean "never"; nginx and
#: HAProxy have no "never", so we use nginx's own ``proxy_timeout`` default.
NO_TIMEOUT = 24 * 3600.0

_WILDCARDS = frozenset({"", "*", "0.0.0.0", "::"})
# Words nginx reads unquoted: no whitespace, quotes, ';', '{', '}', '#', '$' or '\'.
_NGINX_BARE = re.compile(r"[A-Za-z0-9._:/=+@*,%\[\]-]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")  # ngx_mail_auth_http_module.c: letters, digits, '-'
_HAPROXY_NAME = re.compile(r"[^A-Za-z0-9_.:-]")
_HAPROXY_TIME = re.compile(r"\d+(us|ms|s|m|h|d)?")
_IMAP_DROPPED = ("STARTTLS", "LOGINDISABLED")


class RenderError(ValueError):
    """The settings ask for something the target cannot do; the message says what."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered config file and the warnings that were also written into it."""

    text: str
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class NginxOptions:
    """``render-nginx`` command-line overrides; the defaults change nothing."""

    #: A complete nginx.conf (load_module, pid, error_log, events, mail) for tests.
    standalone: bool = False
    ssl_cert: str | None = None
    ssl_key: str | None = None
    #: The auth_http target verbatim (``http://host:port/path`` or ``unix:/p:/path``).
    auth_http: str | None = None
    #: Replaces ``settings.nginx.proxy_protocol_from`` when not empty.
    proxy_protocol_from: tuple[str, ...] = ()
    #: Added to every listen port (a node behind HAProxy, or tests on free ports).
    listen_offset: int = 0
    #: Replaces the address of every listener (host only; ports stay).
    bind: str | None = None
    #: Standalone only: pid file, and the directory for pid and error log.
    pid: str | None = None
    prefix: str | None = None


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


# --------------------------------------------------------------------------- view models


@dataclass(frozen=True, slots=True)
class NginxServer:
    """One nginx ``server {}``: one listener on one address."""

    listener: str
    source: str
    protocol: str
    listens: tuple[str, ...]
    starttls: str | None
    capabilities_directive: str
    capabilities: tuple[str, ...]
    notes: tuple[str, ...]
    ssl_certificate: str | None
    ssl_certificate_key: str | None
    timeout: str
    proxy_timeout: str
    #: (name, quoted value); may hold the shared secret, so never in a repr.
    headers: tuple[tuple[str, str], ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class NginxView:
    """Everything ``nginx-mail.conf.j2`` prints."""

    version: str
    standalone: bool
    module_path: str
    pid: str
    error_log: str
    server_name: str | None
    auth_http: str
    auth_http_timeout: str
    ssl_protocols: tuple[str, ...]
    ssl_session_cache: str | None
    set_real_ip_from: tuple[str, ...]
    servers: tuple[NginxServer, ...]
    warnings: tuple[str, ...]
    #: The output carries the shared secret: the header says to protect the file.
    has_secret: bool


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


# --------------------------------------------------------------------------- helpers


def nginx_quote(word: str) -> str:
    """``word`` as one nginx config argument: bare when safe, else double-quoted."""
    if _NGINX_BARE.fullmatch(word):
        return word
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in word):
        raise RenderError(f"control character in nginx value {word!r}")
    # nginx unescapes \" and \\ inside double quotes (ngx_conf_file.c).
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_time(seconds: float) -> str:
    """A duration in the largest exact unit nginx and HAProxy both read (h, m, s, ms)."""
    if seconds <= 0:
        raise RenderError(f"duration must be positive, got {seconds}")
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    whole = ms // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _nonzero(seconds: float) -> float:
    return NO_TIMEOUT if seconds <= 0 else seconds


def parse_host(text: str) -> str:
    """A ``--bind`` value: an IPv4/IPv6 literal or name, brackets optional."""
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(ch.isspace() for ch in host) or host.startswith("["):
        raise RenderError(f"--bind: not an address: {text!r}")
    return host


def parse_node(text: str, default_offset: int = 0) -> PoolNode:
    """``NAME=HOST[:HEALTHPORT]`` (IPv6 as ``[::1]:9143``) as a :class:`PoolNode`."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise RenderError(f"--node: expected NAME=HOST[:HEALTHPORT], got {text!r}")
    port: int | None = None
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise RenderError(f"--node: bad IPv6 address in {text!r}")
        port_text = tail[1:] if tail else ""
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""  # a bare IPv6 literal has no port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise RenderError(f"--node: bad health port in {text!r}")
        port = int(port_text)
    return PoolNode(
        name=name,
        host=host,
        port_offset=default_offset,
        health=HostPort(host, port) if port is not None else None,
    )


def listener_ports(listener: ListenerSettings) -> tuple[HostPort, ...]:
    """The listener's addresses with every port filled in (143/993/110/995 by default)."""
    implicit = listener.tls is ListenTls.IMPLICIT
    if listener.protocol is MailProtocol.IMAP:
        default = 993 if implicit else 143
    else:
        default = 995 if implicit else 110
    binds = listener.bind or (HostPort(""),)
    return tuple(HostPort(b.host, b.port if b.port is not None else default) for b in binds)


def _source_name(source: str) -> str:
    """The file name of a ``file`` or ``file:line`` source, so renders do not depend
    on where the files were checked out."""
    if not source:
        return "settings"
    path, _, line = source.rpartition(":")
    if path and line.isdigit():
        source = path
    return PurePath(source).name


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("authsvc.templates", "."),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # config files, not HTML  # noqa: S701
        trim_blocks=True,
        lstrip_blocks=True,
    )


# --------------------------------------------------------------------------- nginx


def _auth_http_url(settings: Settings) -> str:
    http = settings.http
    if http.unix:
        # auth_http's ``unix:/path[:/uri]`` form (ngx_mail_auth_http_module docs).
        return f"unix:{http.unix}:{http.path}"
    return f"http://{http.listen}{http.path}"


def _imap_capabilities(words: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, dropped): nginx adds STARTTLS/LOGINDISABLED itself per ``starttls`` and
    ``AUTH=`` per ``imap_auth``; ``ID`` before login is a BAD in nginx
    (ngx_mail_imap_module docs, ngx_mail_imap_handler.c)."""
    kept: list[str] = []
    dropped: list[str] = []
    for word in words:
        upper = word.upper()
        if upper in _IMAP_DROPPED or upper.startswith("AUTH=") or upper == "ID":
            dropped.append(word)
        elif word not in kept:
            kept.append(word)
    return tuple(kept), tuple(dropped)


def _pop3_capabilities(lines: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, dropped): nginx adds ``STLS`` and ``SASL ...`` itself (ngx_mail_pop3_module)."""
    kept: list[str] = []
    dropped: list[str] = []
    for line in lines:
        first = line.split(" ", 1)[0].upper()
        if first in ("STLS", "SASL"):
            dropped.append(line)
        elif line not in kept:
            kept.append(line)
    return tuple(kept), tuple(dropped)


def _local_name(host: str, settings: Settings) -> str:
    """What serve's add_domain (without explicit_domain) sees as the local name.

    Perdition took the reverse-DNS name of the address the client reached
    (username.c's add_domain).  A listener bound to one address names that address;
    a wildcard bind falls back to ``nginx.server_name``, then to the wildcard.
    """
    if host not in _WILDCARDS:
        return host
    if settings.nginx.server_name:
        return settings.nginx.server_name
    return host or "0.0.0.0"


def _nginx_servers(
    settings: Settings, options: NginxOptions, proxy_protocol: bool, warnings: list[str]
) -> tuple[NginxServer, ...]:
    bind_host = parse_host(options.bind) if options.bind is not None else None
    secret = settings.http.secret
    if not _HEADER_NAME.fullmatch(settings.http.secret_header):
        raise RenderError(f"http.secret_header {settings.http.secret_header!r}: use A-Z, 0-9, -")
    servers: list[NginxServer] = []
    seen: dict[str, str] = {}
    for listener in settings.listeners:
        notes: list[str] = []
        where = f"listener {listener.name}"
        if listener.backend_tls in (BackendTls.IMPLICIT, BackendTls.STARTTLS_REQUIRED):
            # nginx mail has no TLS to backends (ngx_mail_proxy_module, Mailu/Mailu#272);
            # rendering plaintext where TLS was required would be a silent downgrade.
            raise RenderError(
                f"{where} ({listener.source or 'settings'}): TLS to the backend "
                f"({listener.backend_tls.value}) is impossible with nginx mail; use "
                "`authsvc proxy`, or set ssl_mode without *_outgoing"
            )
        if listener.backend_tls is BackendTls.STARTTLS:
            notes.append("tls_outgoing ignored: nginx talks plaintext to backends")
        if listener.connection_limit:
            notes.append(
                f"connection_limit {listener.connection_limit} not enforced: nginx mail "
                "has no per-server limit; use HAProxy maxconn"
            )
        if listener.protocol is MailProtocol.IMAP:
            directive = "imap_capabilities"
            kept, dropped = _imap_capabilities(listener.capability)
        else:
            directive = "pop3_capabilities"
            kept, dropped = _pop3_capabilities(listener.capability)
        if dropped:
            notes.append("capability left to nginx: " + " ".join(dropped))

        cert = key = None
        if listener.tls is not ListenTls.NONE:
            cert = options.ssl_cert or listener.tls_files.cert_file
            key = options.ssl_key or listener.tls_files.key_file
            if not cert or not key:
                raise RenderError(
                    f"{where}: TLS ({listener.tls.value}) needs a certificate and key "
                    "(ssl_cert_file/ssl_key_file, or --ssl-cert/--ssl-key)"
                )
        starttls = None
        if listener.tls is ListenTls.STARTTLS:
            # tls_listen_force = no login before TLS = nginx ``starttls only``.
            starttls = "only" if listener.tls_required else "on"

        # One server {} per distinct address: the local-name header is static per
        # server (nginx sends auth_http_header verbatim, ngx_mail_auth_http_module).
        by_host: dict[str, list[int]] = {}
        for hp in listener_ports(listener):
            host = bind_host if bind_host is not None else hp.host
            port = (hp.port or 0) + options.listen_offset
            if not 0 < port < 65536:
                raise RenderError(f"{where}: port {port} out of range (--listen-offset?)")
            ports = by_host.setdefault(host, [])
            if port not in ports:
                ports.append(port)
        for host, ports in by_host.items():
            listens: list[str] = []
            for port in ports:
                address = str(port) if host in ("", "*") else str(HostPort(host, port))
                if address in seen:
                    raise RenderError(f"{where}: {address} is also used by {seen[address]}")
                seen[address] = where
                words = [address]
                if listener.tls is ListenTls.IMPLICIT:
                    words.append("ssl")
                if proxy_protocol:
                    words.append("proxy_protocol")
                listens.append(" ".join(words))
            local_name = _local_name(host, settings)
            if (
                local_name in _WILDCARDS
                and Stage.LOOKUP in listener.login.add_domain
                and listener.login.explicit_domain is None
            ):
                warnings.append(
                    f"{where}: add_domain needs a local name but the listener binds all "
                    "addresses; set nginx.server_name or bind an address"
                )
            # A server's own auth_http_header list replaces the inherited one
            # (ngx_mail_auth_http_merge_conf in ngx_mail_auth_http_module.c), so every
            # server repeats all of them, the secret included.
            headers = [
                (LISTENER_HEADER, nginx_quote(listener.name)),
                (LOCAL_NAME_HEADER, nginx_quote(local_name)),
            ]
            if secret:
                headers.append((settings.http.secret_header, nginx_quote(secret.reveal())))
            servers.append(
                NginxServer(
                    listener=listener.name,
                    source=_source_name(listener.source),
                    protocol=listener.protocol.value,
                    listens=tuple(listens),
                    starttls=starttls,
                    capabilities_directive=directive,
                    capabilities=tuple(nginx_quote(c) for c in kept),
                    notes=tuple(notes),
                    ssl_certificate=nginx_quote(cert) if cert else None,
                    ssl_certificate_key=nginx_quote(key) if key else None,
                    timeout=format_time(_nonzero(listener.login_timeout)),
                    proxy_timeout=format_time(_nonzero(listener.idle_timeout)),
                    headers=tuple(headers),
                )
            )
    if not servers:
        raise RenderError("no listeners to render")
    return tuple(servers)


def nginx_view(settings: Settings, options: NginxOptions | None = None) -> NginxView:
    """The view model of an nginx ``mail {}`` config for ``settings``."""
    options = options or NginxOptions()
    warnings: list[str] = []
    real_ip_from = options.proxy_protocol_from or settings.nginx.proxy_protocol_from
    servers = _nginx_servers(settings, options, bool(real_ip_from), warnings)
    auth_http = options.auth_http or _auth_http_url(settings)
    if auth_http.startswith("https://"):
        # nginx: "invalid port in auth_http" at config time (ngx_mail_auth_http_module.c).
        raise RenderError("auth_http cannot be https:// (nginx speaks plain HTTP only)")
    prefix = (options.prefix or "").rstrip("/")
    pid = options.pid or (f"{prefix}/nginx.pid" if prefix else "nginx.pid")
    error_log = f"{prefix}/error.log" if prefix else "error.log"
    any_tls = any(s.ssl_certificate for s in servers)
    return NginxView(
        version=__version__,
        standalone=options.standalone,
        module_path=NGINX_MAIL_MODULE,
        pid=nginx_quote(pid),
        error_log=nginx_quote(error_log),
        server_name=nginx_quote(settings.nginx.server_name) if settings.nginx.server_name
        else None,
        auth_http=nginx_quote(auth_http),
        auth_http_timeout=format_time(settings.nginx.auth_http_timeout),
        ssl_protocols=tuple(nginx_quote(p) for p in settings.nginx.ssl_protocols),
        ssl_session_cache="shared:AUTHSVC_MAIL:10m" if any_tls else None,
        set_real_ip_from=tuple(nginx_quote(n) for n in real_ip_from),
        servers=servers,
        warnings=tuple(warnings),
        has_secret=bool(settings.http.secret),
    )


def render_nginx(settings: Settings, options: NginxOptions | None = None) -> Rendered:
    """The nginx config text (``mail {}``, or a whole nginx.conf with ``standalone``)."""
    view = nginx_view(settings, options)
    text = _environment().get_template("nginx-mail.conf.j2").render(v=view)
    return Rendered(text=text, warnings=view.warnings)


# --------------------------------------------------------------------------- HAProxy


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
    bind_host = parse_host(options.bind) if options.bind is not None else None

    pools: list[HaproxyPool] = []
    for listener in settings.listeners:
        addresses = listener_ports(listener)
        binds: list[str] = []
        for hp in addresses:
            host = bind_host if bind_host is not None else hp.host
            bind = f":{hp.port}" if host in ("", "*") else str(HostPort(host, hp.port))
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
            _nonzero(listener.idle_timeout) + HAPROXY_TIMEOUT_MARGIN, HAPROXY_MIN_SESSION_TIMEOUT
        )
        name = _haproxy_name(listener.name)
        pools.append(
            HaproxyPool(
                listener=listener.name,
                frontend=f"{name}_in",
                backend=f"{name}_nodes",
                binds=tuple(binds),
                timeout=format_time(session),
                # HAProxy 2.6 needs the space quoted (configuration.txt, tcp-check expect).
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
    view = haproxy_view(settings, options)
    text = _environment().get_template("haproxy.cfg.j2").render(v=view)
    return Rendered(text=text, warnings=view.warnings)


# --------------------------------------------------------------------------- command


def _parse_hostport(text: str, what: str) -> HostPort:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise RenderError(f"{what}: expected HOST:PORT, got {text!r}")
    return HostPort(parse_host(host), int(port))


def nginx_options(args: argparse.Namespace) -> NginxOptions:
    """``render-nginx``'s parsed arguments as :class:`NginxOptions`."""
    return NginxOptions(
        standalone=args.standalone,
        ssl_cert=args.ssl_cert,
        ssl_key=args.ssl_key,
        auth_http=args.auth_http,
        proxy_protocol_from=tuple(args.proxy_protocol_from),
        listen_offset=args.listen_offset,
        bind=args.bind,
        pid=args.pid,
        prefix=args.prefix,
    )


def haproxy_options(args: argparse.Namespace) -> HaproxyOptions:
    """``render-haproxy``'s parsed arguments as :class:`HaproxyOptions`."""
    offset: int | None = args.node_port_offset
    return HaproxyOptions(
        nodes=tuple(parse_node(n, offset or 0) for n in args.node),
        bind=args.bind,
        node_port_offset=offset,
        proxy_protocol="v1" if args.proxy_v1 else None,
        stats=_parse_hostport(args.stats, "--stats") if args.stats else None,
        admin_socket=args.admin_socket,
        check_inter=args.check_inter,
    )


def render_command(args: argparse.Namespace) -> int:
    """``authsvc render-nginx`` / ``render-haproxy``: print the config to stdout.

    Load warnings and render warnings go to stderr; the config goes to stdout
    only when it is complete, so ``> mail.conf`` never leaves half a file's worth
    of surprises.  Exit 0, or 2 when the settings cannot be rendered.
    """
    from authsvc.config import load_settings

    command: Literal["render-nginx", "render-haproxy"] = args.command
    loaded = load_settings(list(args.config))
    for issue in loaded.warnings:
        print(f"authsvc: warning: {issue}", file=sys.stderr)
    try:
        if command == "render-nginx":
            rendered = render_nginx(loaded.settings, nginx_options(args))
        else:
            rendered = render_haproxy(loaded.settings, haproxy_options(args))
    except RenderError as exc:
        print(f"authsvc: {command}: {exc}", file=sys.stderr)
        return 2
    for warning in rendered.warnings:
        print(f"authsvc: {command}: warning: {warning}", file=sys.stderr)
    sys.stdout.write(rendered.text)
    return 0
