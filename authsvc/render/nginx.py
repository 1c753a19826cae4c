"""The nginx view: Settings plus ``render-nginx`` options to the ``mail {}`` config.

:func:`nginx_view` makes every decision in typed Python and quotes every value
for nginx; ``templates/nginx-mail.conf.j2`` only lays the view out.  The nginx
facts used here come from nginx's mail module documentation
(https://nginx.org/en/docs/mail/) and source, and are gathered for operators in
docs/operations.md ("What the render contains").  Anything nginx cannot do that
the settings ask for is either an error (backend TLS that was required) or a
warning printed to stderr *and* written as a comment into the output, so the
file explains itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

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
    BackendTls,
    HostPort,
    ListenTls,
    MailProtocol,
    Settings,
    Stage,
)
from authsvc.sizing import LINUX_NR_OPEN, NginxSizing, nginx_sizing

#: Where Debian 12's libnginx-mod-mail package installs the module (docs/operations.md).
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"

#: The two request headers ``authsvc serve`` reads to know which listener and
#: local name a login came through: nginx's auth_http request carries no
#: listening port (docs/serve.md).
LISTENER_HEADER = "X-Authsvc-Listener"
LOCAL_NAME_HEADER = "X-Authsvc-Local-Name"

_WILDCARDS = frozenset({"", "*", "0.0.0.0", "::"})
# Words nginx reads unquoted: no whitespace, quotes, ';', '{', '}', '#', '$' or '\'.
_NGINX_BARE = re.compile(r"[A-Za-z0-9._:/=+@*,%\[\]-]+")
# Letters, digits and '-': a header name (RFC 9110 §5.1) that nginx writes verbatim
# and that needs no quoting in either config syntax.
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
_IMAP_DROPPED = ("STARTTLS", "LOGINDISABLED")


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
    #: worker_processes, worker_connections, worker_rlimit_nofile and LimitNOFILE
    #: for ``[nginx] sessions_per_node``: comments, applied with ``standalone``.
    sizing: NginxSizing
    warnings: tuple[str, ...]
    #: The output carries the shared secret: the header says to protect the file.
    has_secret: bool


def nginx_quote(word: str) -> str:
    """``word`` as one nginx config argument: bare when safe, else double-quoted."""
    if _NGINX_BARE.fullmatch(word):
        return word
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in word):
        raise RenderError(f"control character in nginx value {word!r}")
    # nginx unescapes \" and \\ inside double quotes (ngx_conf_file.c).
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _source_name(source: str) -> str:
    """The file name of a ``file`` or ``file:line`` source, so renders do not depend
    on where the files were checked out."""
    if not source:
        return "settings"
    path, _, line = source.rpartition(":")
    if path and line.isdigit():
        source = path
    return PurePath(source).name


def _auth_http_url(settings: Settings) -> str:
    http = settings.http
    if http.unix:
        # nginx's URL parser (ngx_parse_url) reads ``unix:/path[:/uri]``; checked on 1.22.
        return f"unix:{http.unix}:{http.path}"
    return f"http://{http.listen}{http.path}"


def _imap_capabilities(words: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, dropped): nginx adds STARTTLS/LOGINDISABLED itself per ``starttls`` and
    ``AUTH=`` per ``imap_auth`` (nginx docs, imap_capabilities); nginx answers ``ID``
    before login with BAD (docs/operations.md)."""
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
    """(kept, dropped): nginx adds ``STLS`` and ``SASL ...`` itself (nginx docs,
    pop3_capabilities)."""
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
    (perdition(8), --add_domain).  A listener bound to one address names that address;
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
    bound = bind_host(options.bind) if options.bind is not None else None
    secret = settings.http.secret
    if not _HEADER_NAME.fullmatch(settings.http.secret_header):
        raise RenderError(f"http.secret_header {settings.http.secret_header!r}: use A-Z, 0-9, -")
    servers: list[NginxServer] = []
    seen: dict[str, str] = {}
    for listener in settings.listeners:
        notes: list[str] = []
        where = f"listener {listener.name}"
        if listener.backend_tls in (BackendTls.IMPLICIT, BackendTls.STARTTLS_REQUIRED):
            # nginx mail has no TLS to backends (ngx_mail_proxy_module has no ssl
            # directives; Mailu issue #272);
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
        # server (nginx sends auth_http_header verbatim; nginx docs, auth_http_header).
        by_host: dict[str, list[int]] = {}
        for hp in listener_ports(listener):
            host = bound if bound is not None else hp.host
            port = (hp.port or 0) + options.listen_offset
            if not 0 < port < 65536:
                raise RenderError(f"{where}: port {port} out of range (--listen-offset?)")
            ports = by_host.setdefault(host, [])
            if port not in ports:
                ports.append(port)
        for host, ports in by_host.items():
            listens: list[str] = []
            for port in ports:
                address = str(port) if host in ALL_ADDRESSES else str(HostPort(host, port))
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
                    timeout=format_time(nonzero(listener.login_timeout)),
                    proxy_timeout=format_time(nonzero(listener.idle_timeout)),
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
        # nginx -t fails with "invalid port in auth_http": it speaks plain HTTP only.
        raise RenderError("auth_http cannot be https:// (nginx speaks plain HTTP only)")
    prefix = (options.prefix or "").rstrip("/")
    pid = options.pid or (f"{prefix}/nginx.pid" if prefix else "nginx.pid")
    error_log = f"{prefix}/error.log" if prefix else "error.log"
    any_tls = any(s.ssl_certificate for s in servers)
    sizing = nginx_sizing(settings.nginx.sessions_per_node,
                          sum(len(s.listens) for s in servers))
    if sizing.limit_nofile > LINUX_NR_OPEN:
        warnings.append(
            f"LimitNOFILE={sizing.limit_nofile} is above Linux's default fs.nr_open "
            f"({LINUX_NR_OPEN}): raise it first (sysctl fs.nr_open), or nginx cannot "
            "get that many descriptors")
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
        sizing=sizing,
        warnings=tuple(warnings),
        has_secret=bool(settings.http.secret),
    )


def render_nginx(settings: Settings, options: NginxOptions | None = None) -> Rendered:
    """The nginx config text (``mail {}``, or a whole nginx.conf with ``standalone``)."""
    return render_template("nginx-mail.conf.j2", nginx_view(settings, options))


