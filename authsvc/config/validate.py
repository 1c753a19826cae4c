"""The raw tree to :class:`~authsvc.settings.Settings`: the only code that checks values.

Both readers end here, so a TOML file and a set of Perdition files are held to
the same rules (docs/configuration.md): every key must be known, every value
must have the right type and range, MySQL table and column names must be
identifiers (they are pasted into SQL), listener names must be unique and no
two listeners may share an address and port.  Problems are reported with the
file, line and key of the value, all at once.  A missing certificate, key or
map file is a warning, since files are often deployed after the config is
checked; ``check-config --strict`` fails on it.
"""

from __future__ import annotations

import ipaddress
import re
import secrets

from authsvc.address import parse_host, parse_hostport, well_known_port
from authsvc.config.fields import IDENTIFIER, Section, where
from authsvc.config.issues import PROXY_ONLY, ROUTERS, TLS_TERMINATORS, Report
from authsvc.config.raw import Pos, RawTable, RawValue, overlay
from authsvc.privacy import MODES
from authsvc.redact import Secret
from authsvc.settings import (
    BackendOverride,
    BackendTls,
    CacheSettings,
    ControlSettings,
    FileMapSettings,
    ForwardClient,
    HaproxySettings,
    HoldsSettings,
    HostPort,
    HttpSettings,
    ListenerSettings,
    ListenTls,
    LoginPolicy,
    LogSettings,
    MailProtocol,
    MapSettings,
    MySqlMapSettings,
    NginxSettings,
    NoMapSettings,
    PoolNode,
    ProxySettings,
    RedisSentinel,
    RegexMapSettings,
    Settings,
    Stage,
    ThrottleSettings,
    TlsSettings,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEADER = re.compile(r"^[A-Za-z0-9-]+$")
_STAGES = {"lookup": (Stage.LOOKUP,), "backend_login": (Stage.BACKEND_LOGIN,),
           "all": (Stage.LOOKUP, Stage.BACKEND_LOGIN)}
#: Capabilities the front ends add and remove themselves (perdition/imap4.c, pop3_in.c).
_MANAGED = {True: {"STARTTLS", "LOGINDISABLED"}, False: {"STLS"}}
#: syslog(3) facility names (the Auth: line of ``authsvc proxy``, perdition(8) -F).
SYSLOG_FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
                     "cron", "authpriv", "ftp", *(f"local{n}" for n in range(8)))
#: Keys every map type takes; ``default_server_on_error`` is for maps that can fail.
_MAP_COMMON = {"name", "default_server_on_error"}
_MAP_KEYS = {
    "file": {"path", *_MAP_COMMON},
    "regex": {"path", "perdition_prefix_quirk", *_MAP_COMMON},
    "mysql": {"hosts", "port", "database", "table", "user", "password", "password_file",
              "server_column", "user_column", "port_column", "port_constant",
              "connect_timeout", "query_timeout", "pool_size", "failback_interval",
              "max_replica_lag", "tls", "tls_ca_file", "tls_cert_file", "tls_key_file",
              "tls_verify_name", *_MAP_COMMON},
    "none": {"name"},
}
_MAP_NAME_MAX = 128
#: The keys of a Redis store's address (``Validator.redis_store``).
_REDIS_KEYS = frozenset({"redis_url", "redis_sentinels", "redis_service", "redis_password_file",
                         "redis_sentinel_password_file", "redis_username",
                         "redis_sentinel_username"})
#: The Sentinel form's keys that the URL form carries in its URL instead.
_IN_THE_URL = {"redis_password_file": "password", "redis_username": "user"}
#: ``[nginx] sessions_per_node`` at most: ten million sessions need 20 million
#: descriptors, already far past Linux's default fs.nr_open (authsvc/sizing.py).
MAX_SESSIONS = 10_000_000
#: ``[proxy] nofile`` at most: the largest fs.nr_open Linux accepts
#: (sysctl_nr_open_max in fs/file.c).
MAX_NOFILE = 1_073_741_816


def _login(s: Section) -> LoginPolicy:
    def stages(key: str) -> frozenset[Stage]:
        found: set[Stage] = set()
        for word, item in s.strings(key, []):
            if word not in _STAGES:
                s.error(key, f"unknown stage {word!r} (lookup, backend_login or all)", item)
                continue
            found.update(_STAGES[word])
        return frozenset(found)

    policy = LoginPolicy(
        lower_case=stages("lower_case"),
        strip_domain=stages("strip_domain"),
        add_domain=stages("add_domain"),
        add_domain_depth=s.integer("add_domain_depth", 1, 0, 127),
        explicit_domain=s.optional_string("explicit_domain"),
        domain_delimiter=s.string("domain_delimiter", "@", nonempty=True),
        username_from_database=s.boolean("username_from_database", False),
        max_login_length=s.integer("max_login_length", 255, 1, 4096),
    )
    if policy.explicit_domain is not None and not policy.add_domain:
        s.warn("explicit_domain", "does nothing without add_domain, as in Perdition",
               used_by=ROUTERS)
    if policy.explicit_domain and policy.domain_delimiter in policy.explicit_domain:
        s.error("explicit_domain", f"contains the domain delimiter "
                f"{policy.domain_delimiter!r}", s.table.items.get("explicit_domain"))
    s.finish()
    return policy


def _identifier(s: Section, key: str, default: str) -> str:
    value = s.string(key, default)
    if not IDENTIFIER.match(value):
        what = "a number" if value.isdigit() else "empty" if not value else repr(value)
        s.error(key, f"{key.replace('_', ' ')} is {what}, not an SQL identifier "
                "([A-Za-z_][A-Za-z0-9_]*): it is pasted into the query",
                s.table.items.get(key))
    return value


def _mysql(s: Section) -> MySqlMapSettings:
    port = s.integer("port", 0, 0, 65535)
    hosts: list[HostPort] = []
    for text, item in s.strings("hosts", ["localhost"]):
        if text.startswith("/"):  # a Unix socket path
            hosts.append(HostPort(text))
            continue
        try:
            host = parse_hostport(text)
        except ValueError as exc:
            s.error("hosts", str(exc), item)
            continue
        # "localhost" is the Unix socket, where libmysqlclient (and so Perdition's
        # perditiondb_mysql.c) ignores the port; an explicit "localhost:3306" is TCP.
        if host.port is None and port and host.host != "localhost":
            host = HostPort(host.host, port)
        hosts.append(host)
    hosts_raw = s.table.items.get("hosts")
    if hosts_raw is not None and hosts_raw.value == []:
        s.error("hosts", "no database host given", hosts_raw)
    constant_raw = s.table.items.get("port_constant")
    constant = s.integer("port_constant", 0, 1, 65535) if constant_raw else None
    column: str | None = None
    if constant_raw is None:
        column = _identifier(s, "port_column", "port")
    elif "port_column" in s.table.items:
        s.raw("port_column")
        s.error("port_column", "give port_column or port_constant, not both",
                s.table.items["port_column"])
    settings = MySqlMapSettings(
        hosts=tuple(hosts),
        database=s.string("database", "dbPerdition", nonempty=True),
        table=_identifier(s, "table", "tblPerdition"),
        user=s.string("user", "perdition", nonempty=True),
        password=s.secret("password"),
        password_file=s.path("password_file", check="password file", used_by=ROUTERS),
        server_column=_identifier(s, "server_column", "servername"),
        user_column=_identifier(s, "user_column", "user"),
        port_column=column,
        port_constant=constant,
        connect_timeout=s.seconds("connect_timeout", 3.0, positive=True),
        query_timeout=s.seconds("query_timeout", 3.0, positive=True),
        pool_size=s.integer("pool_size", 10, 1, 1000),
        failback_interval=s.seconds("failback_interval", 30.0, positive=True),
        max_replica_lag=s.seconds("max_replica_lag", 5.0),
        tls=s.boolean("tls", False),
        tls_ca_file=s.path("tls_ca_file", check="CA file", used_by=ROUTERS),
        tls_cert_file=s.path("tls_cert_file", check="client certificate", used_by=ROUTERS),
        tls_key_file=s.path("tls_key_file", check="client key", used_by=ROUTERS),
        tls_verify_name=s.boolean("tls_verify_name", True),
        name=_map_name(s),
        default_server_on_error=s.boolean("default_server_on_error", False),
    )
    if settings.password is None and settings.password_file is None:
        s.warn("password_file", "no password_file: connecting without a password",
               used_by=ROUTERS)
    _mysql_tls(s, settings)
    return settings


def _mysql_tls(s: Section, settings: MySqlMapSettings) -> None:
    """The TLS keys only mean something together with ``tls = true``, and cert with key."""
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        given = "tls_cert_file" if settings.tls_cert_file is not None else "tls_key_file"
        s.error(given, "give tls_cert_file and tls_key_file together (a client certificate "
                "and its key)", s.table.items.get(given))
    if not settings.tls:
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify_name"):
            if key in s.table.items:
                s.warn(key, "does nothing without tls = true", s.table.items[key],
                       used_by=ROUTERS)


def _map_name(s: Section) -> str | None:
    """The map's ``name``, the label of its series in /metrics: 1 to 128 characters."""
    name = s.optional_string("name", nonempty=True)
    if name is not None and len(name) > _MAP_NAME_MAX:
        s.error("name", f"longer than {_MAP_NAME_MAX} characters", s.table.items.get("name"))
        return None
    return name


def _map(s: Section) -> MapSettings:
    kind = s.choice("type", "none", _MAP_KEYS)
    result: MapSettings
    if kind == "file":
        path = s.path("path", check="map file", used_by=ROUTERS)
        if path is None:
            s.required_string("path")
        result = FileMapSettings(path or "", name=_map_name(s),
                                 default_server_on_error=s.boolean("default_server_on_error",
                                                                   False))
    elif kind == "regex":
        path = s.path("path", check="regex map file", used_by=ROUTERS)
        if path is None:
            s.required_string("path")
        result = RegexMapSettings(path or "", s.boolean("perdition_prefix_quirk", False),
                                  name=_map_name(s),
                                  default_server_on_error=s.boolean("default_server_on_error",
                                                                    False))
    elif kind == "mysql":
        result = _mysql(s)
    else:
        result = NoMapSettings(name=_map_name(s))
    elsewhere = {key: f"does not apply to type = {kind!r} maps"
                 for keys in _MAP_KEYS.values() for key in keys}
    s.finish(elsewhere)
    return result


def _map_table(top: RawTable | None, own: RawTable | None) -> RawTable | None:
    """A listener's map over the top-level one, key by key, unless it names another type."""
    if own is None or top is None:
        return own or top
    own_type, top_type = own.items.get("type"), top.items.get("type")
    if own_type is not None and (top_type is None or own_type.value != top_type.value):
        return own
    return overlay(top, own)


def _capability(s: Section, protocol: str) -> tuple[str, ...]:
    words = s.strings("capability", [])
    for word, item in words:
        if not word.strip():
            s.error("capability", "empty capability", item)
        elif word.upper() in _MANAGED[protocol == "imap"]:
            s.error("capability", f"{word!r} is managed from tls and tls_required (added "
                    "while TLS can still be started); remove it from the list", item)
        elif protocol == "imap" and " " in word:
            s.error("capability", f"IMAP capability {word!r} contains a space; list one "
                    "word per item", item)
    return tuple(word for word, _ in words)


class _Validator:
    def __init__(self, report: Report) -> None:
        self.report = report

    def section(self, table: RawTable | None, prefix: str, pos: Pos) -> Section:
        return Section(table if table is not None else RawTable(pos), prefix, self.report)

    def listener(
        self, table: RawTable, top_login: RawTable | None, top_map: RawTable | None
    ) -> tuple[ListenerSettings, list[tuple[HostPort, RawValue | None]]]:
        s = Section(table, "listener", self.report)
        name = s.required_string("name")
        if name is not None and not _NAME.match(name):
            s.error("name", f"{name!r}: use letters, digits, '_', '.' and '-'",
                    table.items["name"])
        protocol = s.choice("protocol", "", ("imap", "pop3"))
        if not protocol and "protocol" not in table.items:
            s.error("protocol", "missing (required): imap or pop3")
        tls = s.choice("tls", "none", [t.value for t in ListenTls])
        tls_required = s.boolean("tls_required", False)
        if tls_required and tls != "starttls":
            s.error("tls_required", "applies only to tls = \"starttls\"", table.items.get(
                "tls_required"))
        # A missing protocol is reported above; IMAP's ports stand in until it is fixed.
        mail = MailProtocol(protocol or "imap")
        port = s.integer("port", well_known_port(mail, tls == "implicit"), 1, 65535)
        binds = [(HostPort(h.host, h.port or port), raw) for h, raw in
                 s.hostports("bind", ["0.0.0.0"])]
        backend_tls = s.choice("backend_tls", "none", [t.value for t in BackendTls])
        outgoing_port = s.integer(
            "outgoing_port", well_known_port(mail, backend_tls == "implicit"), 1, 65535)
        servers = tuple(h for h, _ in s.hostports("outgoing_server", []))
        cert = s.path("cert", check="certificate", used_by=TLS_TERMINATORS)
        key = s.path("key", check="private key", used_by=TLS_TERMINATORS)
        if tls != "none":
            for what, value in (("cert", cert), ("key", key)):
                if value is None and what not in table.items:
                    s.error(what, f"missing: required when tls = {tls!r}")
        own_login = s.table_of("login")
        own_map = s.table_of("map")
        login_table = overlay(top_login, own_login) if top_login and own_login else (
            own_login or top_login)
        login = _login(self.section(login_table, "login", table.pos))
        map_table = _map_table(top_map, own_map)
        map_settings = _map(self.section(map_table, "map", table.pos))
        settings = ListenerSettings(
            name=name or "",
            protocol=mail,
            tls=ListenTls(tls),
            tls_required=tls_required,
            bind=tuple(h for h, _ in binds),
            capability=_capability(s, protocol),
            login=login,
            map=map_settings,
            default_servers=servers,
            default_port=outgoing_port,
            backend_tls=BackendTls(backend_tls),
            tls_files=TlsSettings(cert, key),
            connection_limit=s.integer("connection_limit", 0, 0, 10_000_000),
            idle_timeout=s.seconds("timeout", 1800.0),
            login_timeout=s.seconds("login_timeout", 1800.0),
            source=where(table.pos),
            proxy_protocol=s.boolean("proxy_protocol", False),
            proxy_protocol_from=_networks(s, "proxy_protocol_from"),
        )
        if isinstance(map_settings, NoMapSettings) and not servers:
            s.warn("outgoing_server", f"listener {name!r} has no map and no outgoing_server: "
                   "every login will be refused", table.items.get("map"), used_by=ROUTERS)
        s.finish()
        return settings, binds

    def listeners(self, top: Section) -> tuple[ListenerSettings, ...]:
        top_login = top.table_of("login")
        top_map = top.table_of("map")
        tables = top.tables("listener")
        if not tables:
            top.error("listener", "no listener: define at least one [[listener]]")
            # Check the shared tables anyway, so their errors are not hidden.
            _login(self.section(top_login, "login", top.table.pos))
            _map(self.section(top_map, "map", top.table.pos))
            return ()
        built: list[ListenerSettings] = []
        names: dict[str, Pos] = {}
        bound: list[tuple[HostPort, str, Pos]] = []
        for table in tables:
            listener, binds = self.listener(table, top_login, top_map)
            built.append(listener)
            name_raw = table.items.get("name")
            name_pos = name_raw.pos if name_raw is not None else table.pos
            if listener.name in names and listener.name:
                first = names[listener.name]
                self.report.error(name_pos.file, name_pos.line, name_pos.key,
                                  f"listener name {listener.name!r} is already used "
                                  f"({where(first)})")
            names.setdefault(listener.name, name_pos)
            for hostport, raw in binds:
                pos = raw.pos if raw is not None else table.items["bind"].pos if (
                    "bind" in table.items) else table.pos
                for other, other_name, other_pos in bound:
                    if _overlaps(hostport, other):
                        self.report.error(pos.file, pos.line, pos.key,
                                          f"{hostport} is also listened on by listener "
                                          f"{other_name!r} as {other} ({where(other_pos)})")
                bound.append((hostport, listener.name, pos))
        return tuple(built)

    def settings(self, root: RawTable) -> Settings:
        top = Section(root, "", self.report)
        listeners = self.listeners(top)
        pos = root.pos
        c = self.section(top.table_of("cache"), "cache", pos)
        cache = CacheSettings(
            enabled=c.boolean("enabled", True), ttl=c.seconds("ttl", 60.0),
            negative_ttl=c.seconds("negative_ttl", 10.0),
            max_size=c.integer("max_size", 100_000, 1, 100_000_000),
            stale_if_error=c.seconds("stale_if_error", 3600.0))
        c.finish()
        h = self.section(top.table_of("http"), "http", pos)
        path = h.string("path", "/auth")
        if not path.startswith("/"):
            h.error("path", f"{path!r} must start with '/'", h.table.items.get("path"))
        header = h.string("secret_header", "X-Authsvc-Key")
        if not _HEADER.match(header):
            h.error("secret_header", f"{header!r} is not an HTTP header name",
                    h.table.items.get("secret_header"))
        http = HttpSettings(
            listen=h.hostport("listen", need_port=True) or HostPort("127.0.0.1", 9143),
            unix=h.path("unix"), path=path, secret=self.secret_file(h),
            secret_header=header, max_attempts=h.integer("max_attempts", 10, 1, 1000),
            auth_wait=h.integer("auth_wait", 3, 0, 60),
            ready_requires_map=h.boolean("ready_requires_map", False),
            head_timeout=h.seconds("head_timeout", 10.0, positive=True))
        h.finish()
        g = self.section(top.table_of("log"), "log", pos)
        log = LogSettings(level=g.choice("level", "info", ("debug", "info", "warning", "error")),
                          connection_logging=g.boolean("connection_logging", False),
                          format=g.choice("format", "kv", ("kv", "json")),
                          client_ip=g.choice("client_ip", "full", MODES))
        g.finish()
        nginx, haproxy = self.nginx(top, pos), self.haproxy(top, pos)
        proxy = self.proxy(top, pos, tables=top.tables("listener"), listeners=listeners)
        throttle = self.throttle(top, pos)
        settings = Settings(listeners=listeners, cache=cache, http=http, log=log,
                            nginx=nginx, haproxy=haproxy, proxy=proxy, throttle=throttle,
                            control=self.control(top, pos, http, proxy.health_listen),
                            holds=self.holds(top, pos))
        top.finish()
        return settings

    def secret_file(self, h: Section, key: str = "secret_file") -> Secret | None:
        path = h.path(key)
        if path is None:
            return None
        raw = h.table.items[key]
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            h.error(key, f"cannot read {path}: {reason}", raw)
            return None
        if not text or any(ord(ch) < 0x20 for ch in text):
            h.error(key, f"{path} must hold one line of text", raw)
            return None
        return Secret(text)

    def redis_store(self, s: Section, used: bool) -> tuple[Secret | None, RedisSentinel | None]:
        """A Redis store's address, ``[throttle]``'s or ``[holds]``': a URL or Sentinel.

        Exactly one form when ``used`` (the section's store is Redis);
        docs/configuration.md, "Redis: a URL or Sentinel".
        """
        url = s.optional_string("redis_url")
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            s.error("redis_url", "must start with redis://, rediss:// or unix://",
                    s.table.items.get("redis_url"))
            url = None
        given = s.table.items
        sentinels = [host for host, _ in s.hostports("redis_sentinels", [])]
        service = s.optional_string("redis_service", nonempty=True)
        password = self.secret_file(s, "redis_password_file")
        sentinel_password = self.secret_file(s, "redis_sentinel_password_file")
        username = _acl_user(s, "redis_username")
        sentinel_username = _acl_user(s, "redis_sentinel_username")
        for user, key in (("redis_username", "redis_password_file"),
                          ("redis_sentinel_username", "redis_sentinel_password_file")):
            if user in s.table.items and key not in s.table.items:
                # AUTH takes a user with a password (redis.io, "AUTH").
                s.error(user, f"give {key} too: Redis's AUTH takes the user's password",
                        s.table.items[user])
        sentinel: RedisSentinel | None = None
        if "redis_sentinels" in given:
            if "redis_url" in given:
                s.error("redis_sentinels", "give redis_url or redis_sentinels, not both",
                        given["redis_sentinels"])
            elif not sentinels and given["redis_sentinels"].value == []:
                s.error("redis_sentinels", "no sentinel given", given["redis_sentinels"])
            elif service is None and "redis_service" not in given:
                s.required_string("redis_service")
            elif sentinels and service is not None:
                sentinel = RedisSentinel(sentinels=tuple(sentinels), service=service,
                                         password=password,
                                         sentinel_password=sentinel_password,
                                         username=username,
                                         sentinel_username=sentinel_username)
                if used and len(sentinels) < 3:
                    # A majority of sentinels must agree to fail over; with
                    # fewer than three, losing one box can stop that (redis.io,
                    # "High availability with Redis Sentinel", "Fundamental
                    # things to know about Sentinel before deploying").
                    s.warn("redis_sentinels", f"{len(sentinels)} sentinel(s): deploy at "
                           "least three, on separate machines, so that a majority can "
                           "still agree on a failover", given["redis_sentinels"],
                           used_by=ROUTERS)
        else:
            for key in ("redis_service", "redis_password_file", "redis_sentinel_password_file",
                        "redis_username", "redis_sentinel_username"):
                if key in given:
                    s.error(key, "belongs to the Sentinel form: give redis_sentinels too"
                            + (f" (with redis_url, the {_IN_THE_URL[key]} goes in the URL: "
                               "redis://user:password@host)" if key in _IN_THE_URL else ""),
                            given[key])
            if used and url is None and "redis_url" not in given:
                s.error("redis_url", "missing (required): or the Sentinel form, "
                        "redis_sentinels and redis_service")
        return (Secret(url) if url is not None else None), sentinel

    def control(self, top: Section, pos: Pos, http: HttpSettings,
                health: HostPort | None) -> ControlSettings:
        """``[control]``: the operator's listener, its secret, allow-list and TLS."""
        c = self.section(top.table_of("control"), "control", pos)
        listen = c.hostport("listen", need_port=True)
        secret = self.secret_file(c)
        cert = c.path("cert", check="certificate", used_by=ROUTERS)
        key = c.path("key", check="key", used_by=ROUTERS)
        settings = ControlSettings(listen=listen, secret=secret,
                                   allow=_networks(c, "allow"), cert=cert, key=key)
        items = c.table.items
        if listen is not None and secret is None and "secret_file" not in items:
            c.error("listen", "a control listener needs its own secret: set "
                    "[control] secret_file", items["listen"])
        if (cert is None) != (key is None):
            given = "cert" if cert is not None else "key"
            c.error(given, "give both cert and key, or neither", items[given])
        if listen is None:
            for name in ("secret_file", "allow", "cert", "key"):
                if name in items:
                    c.warn(name, "has no effect without [control] listen", items[name],
                           used_by=ROUTERS)
        if (secret is not None and http.secret is not None
                and secret.matches(http.secret.reveal())):
            c.error("secret_file", "must differ from [http] secret_file: nginx's secret "
                    "must not open the operator's commands", items["secret_file"])
        if listen is not None and http.unix is None and _overlaps(listen, http.listen):
            c.error("listen", f"{listen} is also [http] listen", items["listen"])
        if listen is not None and health is not None and _overlaps(listen, health):
            c.error("listen", f"{listen} is also [proxy] health_listen", items["listen"])
        c.finish()
        return settings

    def nginx(self, top: Section, pos: Pos) -> NginxSettings:
        n = self.section(top.table_of("nginx"), "nginx", pos)
        d = NginxSettings()
        networks = n.strings("proxy_protocol_from", [])
        for network, item in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                n.error("proxy_protocol_from", f"{network!r} is not a network (CIDR)", item)
        protocols = n.strings("ssl_protocols", ["TLSv1.2", "TLSv1.3"])
        for protocol, item in protocols:
            if protocol not in ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"):
                n.error("ssl_protocols", f"{protocol!r} is not TLSv1, TLSv1.1, TLSv1.2 or "
                        "TLSv1.3", item)
        server_name = n.optional_string("server_name")
        settings = NginxSettings(server_name=server_name,
                                 proxy_protocol_from=tuple(t for t, _ in networks),
                                 ssl_protocols=tuple(t for t, _ in protocols),
                                 auth_http_timeout=n.seconds("auth_http_timeout", 5.0,
                                                             positive=True),
                                 sessions_per_node=n.integer("sessions_per_node",
                                                             d.sessions_per_node, 1,
                                                             MAX_SESSIONS))
        n.finish()
        return settings

    def haproxy(self, top: Section, pos: Pos) -> HaproxySettings:
        a = self.section(top.table_of("haproxy"), "haproxy", pos)
        nodes: list[PoolNode] = []
        for table in a.tables("nodes"):
            s = Section(table, "haproxy.nodes", self.report)
            name, host = s.required_string("name"), s.required_string("host")
            if host is not None:
                try:
                    node = parse_hostport(host)
                except ValueError as exc:
                    s.error("host", str(exc), table.items["host"])
                else:
                    if node.port is not None:
                        s.error("host", f"{host!r}: a node's host takes no port (the ports "
                                "come from the listeners, port_offset and health)",
                                table.items["host"])
                    host = node.host
            nodes.append(PoolNode(name=name or "", host=host or "",
                                  port_offset=s.integer("port_offset", 0, 0, 60000),
                                  health=s.hostport("health", need_port=True),
                                  control=s.hostport("control", need_port=True)))
            s.finish()
        settings = HaproxySettings(
            nodes=tuple(nodes),
            proxy_protocol=a.choice("proxy_protocol", "v2", ("v1", "v2", "none")),
            check_inter=a.seconds("check_inter", 2.0, positive=True),
            check_fall=a.integer("check_fall", 3, 1, 100),
            check_rise=a.integer("check_rise", 2, 1, 100),
            stats=a.hostport("stats", need_port=True),
            admin_socket=a.path("admin_socket"))
        a.finish()
        return settings


    def proxy(self, top: Section, pos: Pos, *, tables: list[RawTable],
              listeners: tuple[ListenerSettings, ...]) -> ProxySettings:
        """``[proxy]``: ``authsvc proxy``'s limits, store TLS, forwarding and logs."""
        p = self.section(top.table_of("proxy"), "proxy", pos)
        d = ProxySettings()
        backends: list[BackendOverride] = []
        for table in p.tables("backends"):
            b = Section(table, "proxy.backends", self.report)
            server = b.hostport("server", need_port=False)
            if server is None and "server" not in table.items:
                b.required_string("server")
            forward = b.choice("forward_client", "", [f.value for f in ForwardClient])
            if server is not None:
                backends.append(BackendOverride(
                    host=server.host, port=server.port,
                    forward_client=ForwardClient(forward) if forward else None,
                    tls_name=_tls_name(b, "tls_name")))
            b.finish()
        target = p.string("auth_log_target", d.auth_log_target, nonempty=True)
        if not target.startswith("/"):
            try:
                if parse_hostport(target).port is None:
                    raise ValueError(f"{target!r} needs a port")
            except ValueError as exc:
                p.error("auth_log_target", f"{exc}: give a unix socket path (/dev/log) or "
                        "host:port for UDP", p.table.items.get("auth_log_target"))
        ident = p.string("auth_log_ident", d.auth_log_ident, nonempty=True)
        rest = ident.replace("{listener}", "")
        if any(ch.isspace() or ch in "{}[]:" for ch in rest):
            p.error("auth_log_ident", f"{ident!r}: no spaces, ':', '[', ']' or braces other "
                    "than {listener}", p.table.items.get("auth_log_ident"))
        settings = ProxySettings(
            auth_failure_delay=p.seconds("auth_failure_delay", d.auth_failure_delay),
            max_login_attempts=p.integer("max_login_attempts", d.max_login_attempts, 1, 1000),
            max_bad_commands=p.integer("max_bad_commands", d.max_bad_commands, 1, 1000),
            max_line_length=p.integer("max_line_length", d.max_line_length, 512, 1_048_576),
            max_literal_length=p.integer("max_literal_length", d.max_literal_length, 256,
                                         1_048_576),
            backend_timeout=p.seconds("backend_timeout", d.backend_timeout, positive=True),
            backend_ca_file=p.path("backend_ca_file", check="CA file", used_by=PROXY_ONLY),
            backend_verify=p.boolean("backend_verify", d.backend_verify),
            splice_buffer=p.integer("splice_buffer", d.splice_buffer, 4096, 64 * 1_048_576),
            zero_copy=p.boolean("zero_copy", d.zero_copy),
            drain_timeout=p.seconds("drain_timeout", d.drain_timeout),
            backend_ca_path=p.path("backend_ca_path", check="CA directory",
                                   used_by=PROXY_ONLY),
            backend_verify_name=p.boolean("backend_verify_name", d.backend_verify_name),
            backend_tls_name=_tls_name(p, "backend_tls_name"),
            forward_client=ForwardClient(p.choice("forward_client", d.forward_client.value,
                                                  [f.value for f in ForwardClient])),
            backends=tuple(backends),
            proxy_protocol_from=_networks(p, "proxy_protocol_from"),
            proxy_protocol_timeout=p.seconds("proxy_protocol_timeout",
                                             d.proxy_protocol_timeout, positive=True),
            client_limit=p.integer("client_limit", d.client_limit, 0, 10_000_000),
            preauth_limit=(p.integer("preauth_limit", 0, 0, 10_000_000)
                           if p.raw("preauth_limit") is not None else d.preauth_limit),
            client_preauth_limit=p.integer("client_preauth_limit", d.client_preauth_limit,
                                           0, 10_000_000),
            nofile=(p.integer("nofile", 0, 1, MAX_NOFILE)
                    if p.raw("nofile") is not None else d.nofile),
            trusted=_networks(p, "trusted"),
            login_deadline=p.seconds("login_deadline", d.login_deadline),
            health_listen=p.hostport("health_listen", need_port=True),
            auth_log=p.boolean("auth_log", d.auth_log),
            auth_log_target=target,
            auth_log_ident=ident,
            auth_log_facility=p.choice("auth_log_facility", d.auth_log_facility,
                                       SYSLOG_FACILITIES),
        )
        p.finish()
        for listener, table in zip(listeners, tables, strict=False):
            if listener.proxy_protocol and not (listener.proxy_protocol_from
                                                or settings.proxy_protocol_from):
                raw = table.items.get("proxy_protocol")
                self.report.error(
                    raw.pos.file if raw else table.pos.file, raw.pos.line if raw else 0,
                    raw.pos.key if raw else "listener.proxy_protocol",
                    f"listener {listener.name!r} expects PROXY headers but trusts nobody to "
                    "send them: set proxy_protocol_from here or in [proxy]")
        return settings


    def throttle(self, top: Section, pos: Pos) -> ThrottleSettings:
        """``[throttle]``: brute-force throttling (docs/security.md)."""
        t = self.section(top.table_of("throttle"), "throttle", pos)
        d = ThrottleSettings()
        key: Secret | None = None
        key_text = t.optional_string("key")
        key_file = t.path("key_file")
        if key_text is not None and key_file is not None:
            t.error("key_file", "give key or key_file, not both", t.table.items.get("key_file"))
        elif key_file is not None:
            try:
                with open(key_file, encoding="utf-8") as handle:
                    key_text = handle.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                t.error("key_file", f"cannot read {key_file}: {reason}",
                        t.table.items.get("key_file"))
                key_text = None
        if key_text is not None:
            if len(key_text) < 16:
                t.error("key_file" if key_file is not None else "key",
                        "the key must be at least 16 characters",
                        t.table.items.get("key_file" if key_file is not None else "key"))
            else:
                key = Secret(key_text)
        store = t.choice("store", d.store, ("memory", "redis"))
        url, sentinel = self.redis_store(t, store == "redis")
        delay = t.seconds("delay", d.delay)
        max_delay = t.seconds("max_delay", d.max_delay)
        if max_delay < delay:
            t.error("max_delay", f"{max_delay} is less than delay ({delay})",
                    t.table.items.get("max_delay"))
        enabled = t.boolean("enabled", d.enabled)
        if enabled and key is None:
            # Settings are built once, before --workers forks, so one random
            # key made here is shared by every worker: a repeated wrong
            # password counts once whichever worker sees it.  Nodes sharing
            # Redis cannot share it, and need a configured key.
            key = Secret(secrets.token_hex(32))
            if store == "redis":
                t.warn("key", "no key or key_file: each node makes its own random key, so "
                       "one device's repeated wrong password counts once per node",
                       used_by=ROUTERS)
        settings = ThrottleSettings(
            enabled=enabled,
            key=key,
            address_window=t.seconds("address_window", d.address_window, positive=True),
            address_limit=t.integer("address_limit", d.address_limit, 1, 1_000_000),
            login_window=t.seconds("login_window", d.login_window, positive=True),
            login_limit=t.integer("login_limit", d.login_limit, 1, 1_000_000),
            free_failures=t.integer("free_failures", d.free_failures, 0, 1_000_000),
            delay=delay,
            max_delay=max_delay,
            ipv6_prefix=t.integer("ipv6_prefix", d.ipv6_prefix, 32, 128),
            trusted=_networks(t, "trusted"),
            store=store,
            redis_url=url,
            redis_sentinel=sentinel,
            redis_timeout=t.seconds("redis_timeout", d.redis_timeout, positive=True),
            redis_retry=t.seconds("redis_retry", d.redis_retry, positive=True),
        )
        t.finish()
        return settings

    def holds(self, top: Section, pos: Pos) -> HoldsSettings:
        """``[holds]``: where holds are kept, a state file or Redis (docs/operations.md)."""
        h = self.section(top.table_of("holds"), "holds", pos)
        d = HoldsSettings()
        store = h.choice("store", d.store, ("file", "redis"))
        state_file = h.optional_string("state_file")
        if state_file is not None and not state_file.strip():
            h.error("state_file", "must name a file", h.table.items.get("state_file"))
            state_file = None
        url, sentinel = self.redis_store(h, store == "redis")
        if store == "file":
            for key in sorted(_REDIS_KEYS | {"redis_replicas"}):
                if key in h.table.items:
                    h.warn(key, 'has no effect unless store = "redis"', h.table.items[key],
                           used_by=ROUTERS)
        # WAIT needs replicas: a lone server (redis_url) has none, so it
        # requires none unless told; a Sentinel service has at least one.
        replicas = h.integer("redis_replicas", 1 if sentinel is not None else d.redis_replicas,
                             0, 100)
        if store == "redis" and "state_file" in h.table.items:
            h.warn("state_file", 'has no effect with store = "redis"',
                   h.table.items["state_file"], used_by=ROUTERS)
        settings = HoldsSettings(
            store=store,
            state_file=state_file if state_file is not None else d.state_file,
            redis_url=url,
            redis_sentinel=sentinel,
            redis_timeout=h.seconds("redis_timeout", d.redis_timeout, positive=True),
            redis_replicas=replicas,
        )
        h.finish()
        return settings


def _acl_user(s: Section, key: str) -> Secret | None:
    """A Redis 6 ACL user's name (redis.io, "ACL"), kept from logs like a password.

    One word: ACL files and ``redis.conf`` give users as ``user <name> <rules>``,
    split on spaces.  The message never repeats the name.
    """
    name = s.optional_string(key, nonempty=True)
    if name is None:
        return None
    if any(ch.isspace() for ch in name):
        s.error(key, "a Redis user's name is one word, with no spaces",
                s.table.items.get(key))
        return None
    return Secret(name)


def _networks(s: Section, key: str) -> tuple[str, ...]:
    """A list of CIDR networks (a bare address is a /32 or /128)."""
    found: list[str] = []
    for text, item in s.strings(key, []):
        try:
            found.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            s.error(key, f"{text!r} is not a network (CIDR) or address", item)
    return tuple(found)


def _tls_name(s: Section, key: str) -> str | None:
    """A certificate name: a host name or an IP address."""
    text = s.optional_string(key)
    if text is None:
        return None
    try:
        return parse_host(text)
    except ValueError as exc:
        s.error(key, str(exc), s.table.items.get(key))
        return None


def _overlaps(a: HostPort, b: HostPort) -> bool:
    """Whether two listen addresses collide: same port, and same or wildcard address."""
    if a.port != b.port:
        return False
    if a.host == b.host or "::" in (a.host, b.host):  # "::" is dual-stack by default
        return True
    wildcards = {"0.0.0.0"}
    return (a.host in wildcards and ":" not in b.host) or (
        b.host in wildcards and ":" not in a.host)


def validate(root: RawTable, report: Report) -> Settings | None:
    """Settings for ``root``; None when any error was reported (all are in ``report``)."""
    before = len(report.errors)
    settings = _Validator(report).settings(root)
    return settings if len(report.errors) == before else None
