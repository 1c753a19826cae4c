"""The one frozen, typed settings object, and nothing else.

Both readers (native TOML in ``config/toml.py`` and Perdition's own files in
``config/perdition.py``) produce a raw tree; ``config/validate.py`` is the only
code that turns that tree into these classes.  Nothing here does I/O, and no
class here holds a secret in its ``repr``: the database password is read from a
file at connect time (``MySqlMapSettings.password_file``) or carried as a
:class:`~authsvc.redact.Secret`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from authsvc.redact import Secret


class MailProtocol(enum.Enum):
    """The two mail protocols a listener can speak (nginx's ``Auth-Protocol`` values)."""

    IMAP = "imap"
    POP3 = "pop3"


class Stage(enum.Enum):
    """Where a login name is used; Perdition's states (perdition(8), --add_domain).

    ``LOOKUP`` is Perdition's ``servername_lookup`` (the map key) and
    ``BACKEND_LOGIN`` is ``remote_login`` (the name sent to the store).
    Perdition's ``local_authentication`` has no meaning here: authsvc checks no
    passwords itself.
    """

    LOOKUP = "lookup"
    BACKEND_LOGIN = "backend_login"

    # Members are singletons, so identity hashing is right; Enum's own
    # __hash__ is a Python-level call, and every login asks "stage in ..."
    # of three frozensets twice.
    __hash__ = object.__hash__


class ListenTls(enum.Enum):
    """How a listener offers TLS to clients (Perdition ``ssl_mode`` *_listen bits)."""

    NONE = "none"
    STARTTLS = "starttls"  # tls_listen: STARTTLS / STLS offered
    IMPLICIT = "implicit"  # ssl_listen: TLS from the first byte (993/995)


class BackendTls(enum.Enum):
    """How the proxy talks to a store (Perdition ``ssl_mode`` *_outgoing bits)."""

    NONE = "none"
    STARTTLS = "starttls"  # tls_outgoing: STARTTLS if advertised
    STARTTLS_REQUIRED = "starttls_required"  # tls_outgoing_force
    IMPLICIT = "implicit"  # ssl_outgoing


class ForwardClient(enum.Enum):
    """How the proxy tells a store the client's own address (docs/proxy.md)."""

    NONE = "none"
    ID = "id"  # IMAP ID ("x-originating-ip" ...) / POP3 XCLIENT ADDR= PORT=
    PROXY_V1 = "proxy_v1"  # a PROXY protocol v1 header before the greeting
    PROXY_V2 = "proxy_v2"  # a PROXY protocol v2 header before the greeting


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host (name or IP literal, IPv6 without brackets) and an optional port."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """Perdition's login-name rules (perdition/username.c), per stage."""

    strip_domain: frozenset[Stage] = frozenset()
    add_domain: frozenset[Stage] = frozenset()
    lower_case: frozenset[Stage] = frozenset()
    #: Perdition's add_domain DEPTH: leading labels cut from the local name.
    add_domain_depth: int = 1
    #: Used verbatim by add_domain instead of the local name, when set.
    explicit_domain: str | None = None
    domain_delimiter: str = "@"
    #: Perdition -U: the ``user@`` part of a map answer replaces the login.
    username_from_database: bool = False
    #: Longest login accepted at all, in bytes of UTF-8 (not a Perdition option).
    max_login_length: int = 255


@dataclass(frozen=True, slots=True)
class FileMapSettings:
    """Perdition's flat ``popmap`` format (``key: [user@]server[:port]``)."""

    path: str
    #: The map's name in ``/metrics`` and ``/readyz``; None = :attr:`label` derives one.
    name: str | None = None
    #: On MapUnavailable, route to ``outgoing_server`` as Perdition did; off by
    #: default (docs/configuration.md).
    default_server_on_error: bool = False
    kind: str = "file"

    @property
    def label(self) -> str:
        """``name``, else ``file:<path>``: what identifies the map, and nothing else."""
        return self.name if self.name is not None else f"file:{self.path}"


@dataclass(frozen=True, slots=True)
class RegexMapSettings:
    """Perdition's POSIX-regex ``popmap.re`` format (first match wins)."""

    path: str
    #: Reproduce Perdition's quirk of keeping the key's text before the match.
    perdition_prefix_quirk: bool = False
    #: The map's name in ``/metrics`` and ``/readyz``; None = :attr:`label` derives one.
    name: str | None = None
    #: On MapUnavailable, route to ``outgoing_server`` as Perdition did; off by
    #: default (docs/configuration.md).
    default_server_on_error: bool = False
    kind: str = "regex"

    @property
    def label(self) -> str:
        """``name``, else ``regex:<path>``."""
        return self.name if self.name is not None else f"regex:{self.path}"


@dataclass(frozen=True, slots=True)
class MySqlMapSettings:
    """Perdition's MySQL map (``map_library_opt``, perditiondb(5))."""

    hosts: tuple[HostPort, ...] = (HostPort("localhost"),)
    database: str = "dbPerdition"
    table: str = "tblPerdition"
    user: str = "perdition"
    #: The password itself, when it came from a Perdition file.  Never printed.
    password: Secret | None = None
    #: Where to read the password from (native config); wins over ``password``.
    password_file: str | None = None
    server_column: str = "servername"
    user_column: str = "user"
    #: A column name, or None when ``port_constant`` is used instead.
    port_column: str | None = "port"
    #: The numeric literal of ``...:storage_ip:address:143``: a constant port.
    port_constant: int | None = None
    connect_timeout: float = 3.0
    query_timeout: float = 3.0
    pool_size: int = 10
    #: After a failover, how often an earlier (preferred) host is tried again (docs/maps.md).
    failback_interval: float = 30.0
    #: A replica further behind than this (seconds) is skipped while another host
    #: answers; 0 turns the check off (docs/maps.md, "Failover and failback").
    max_replica_lag: float = 5.0
    #: TLS to the database (TCP hosts); the server's certificate is always verified.
    tls: bool = False
    #: CA certificates (PEM) the server's certificate must chain to; None = the system's.
    tls_ca_file: str | None = None
    #: A client certificate and its key (PEM), for servers that ask for one.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: Check that the certificate names the configured host (its DNS name or IP address).
    tls_verify_name: bool = True
    #: The map's name in ``/metrics`` and ``/readyz``; None = :attr:`label` derives one.
    name: str | None = None
    #: On MapUnavailable, route to ``outgoing_server`` as Perdition did; off by
    #: default (docs/configuration.md).
    default_server_on_error: bool = False
    kind: str = "mysql"

    @property
    def label(self) -> str:
        """``name``, else ``mysql:<first host>/<database>.<table>``.

        Timeouts, columns and the pool do not name the map: the listeners whose
        maps read one table share its series, whatever their constant port.
        """
        if self.name is not None:
            return self.name
        first = str(self.hosts[0]) if self.hosts else ""
        return f"mysql:{first}/{self.database}.{self.table}"


@dataclass(frozen=True, slots=True)
class NoMapSettings:
    """``map_library ""``: no map; every login goes to ``outgoing_server``."""

    kind: str = "none"
    name: str | None = None
    #: No effect: this map never fails.  Here so that every map has the field.
    default_server_on_error: bool = False

    @property
    def label(self) -> str:
        """``name``, else ``none``."""
        return self.name if self.name is not None else "none"


MapSettings = FileMapSettings | RegexMapSettings | MySqlMapSettings | NoMapSettings


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The route cache in front of every map (``maps/cached.py``)."""

    enabled: bool = True
    ttl: float = 60.0
    negative_ttl: float = 10.0
    max_size: int = 100_000
    #: How long past its TTL a route may still be served while the map is down.
    stale_if_error: float = 3600.0


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Certificates a listener presents to clients."""

    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """One listener: what a single Perdition file describes (docs/configuration.md)."""

    name: str
    protocol: MailProtocol
    tls: ListenTls = ListenTls.NONE
    #: tls_listen_force: no login before TLS.
    tls_required: bool = False
    bind: tuple[HostPort, ...] = ()
    #: IMAP: space-separated words; POP3: one CAPA line each.
    capability: tuple[str, ...] = ()
    login: LoginPolicy = field(default_factory=LoginPolicy)
    map: MapSettings = field(default_factory=NoMapSettings)
    #: outgoing_server: the route when the map has no entry.
    default_servers: tuple[HostPort, ...] = ()
    #: outgoing_port: the port when neither the map nor the server gives one.
    default_port: int = 143
    backend_tls: BackendTls = BackendTls.NONE
    tls_files: TlsSettings = field(default_factory=TlsSettings)
    connection_limit: int = 0
    #: Idle timeout after login, seconds; 0 = none (Perdition ``timeout``).
    idle_timeout: float = 1800.0
    #: Idle timeout before login, seconds (Perdition ``authenticate_timeout``).
    login_timeout: float = 1800.0
    #: Where these settings came from, for messages: "file" or "file:line".
    source: str = ""
    #: ``authsvc proxy``: every connection starts with a PROXY v1/v2 header
    #: (HAProxy ``send-proxy``/``send-proxy-v2``), accepted only from trusted networks.
    proxy_protocol: bool = False
    #: Networks trusted to send that header; empty = ``ProxySettings.proxy_protocol_from``.
    proxy_protocol_from: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """``authsvc serve``: the nginx auth_http endpoint."""

    listen: HostPort = HostPort("127.0.0.1", 9143)
    unix: str | None = None
    path: str = "/auth"
    #: Header nginx must send, compared in constant time; None = no secret.
    secret: Secret | None = None
    secret_header: str = "X-Authsvc-Key"  # noqa: S105 - a header name, not a secret
    #: Send Auth-Wait on refusals up to this attempt, then let nginx close.
    max_attempts: int = 10
    auth_wait: int = 3
    #: /readyz answers 503 while the map is down (sites with per-node databases).
    ready_requires_map: bool = False
    #: Seconds from accept to a complete request head; then close, no reply.
    head_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """``[control]``: the operator's listener on serve and proxy (docs/security.md)."""

    #: Where ``authsvc flush`` and ``authsvc throttle`` reach this node; None = no listener.
    listen: HostPort | None = None
    #: What every request must carry in ``X-Authsvc-Control``; distinct from ``[http]``'s.
    secret: Secret | None = None
    #: Source networks (CIDR text) allowed to connect; empty = any source.
    allow: tuple[str, ...] = ()
    #: TLS certificate and key (PEM files) for a control network that is not private.
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Process-wide logging (Perdition ``debug``, ``connection_logging``, ``quiet``)."""

    level: str = "info"
    connection_logging: bool = False
    format: str = "kv"  # kv | json
    #: How much of a client address lines show: full | truncated | none (authsvc/privacy.py).
    client_ip: str = "full"


@dataclass(frozen=True, slots=True)
class NginxSettings:
    """What ``render-nginx`` needs beyond the listeners."""

    server_name: str | None = None
    #: Networks whose PROXY headers nginx trusts (HAProxy in front); empty = none.
    proxy_protocol_from: tuple[str, ...] = ()
    ssl_protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    auth_http_timeout: float = 5.0
    #: The sessions one node must hold: ``render-nginx`` sizes worker_connections,
    #: worker_rlimit_nofile and LimitNOFILE for it (``authsvc/sizing.py``).  The
    #: default needs 2,132 descriptors, under the 4,096 hard limit Linux gives init
    #: (INR_OPEN_MAX, include/uapi/linux/fs.h), so it fits any machine as it is.
    sessions_per_node: int = 1000


@dataclass(frozen=True, slots=True)
class PoolNode:
    """One front-end node (nginx or ``authsvc proxy``) behind HAProxy."""

    name: str
    host: str
    #: The node's mail ports are the listeners' ports plus this offset.
    port_offset: int = 0
    #: Where the node's authsvc answers ``/readyz``; None = no health check port.
    health: HostPort | None = None
    #: Where the node's ``[control] listen`` is reached (``--pool``); None = not given.
    control: HostPort | None = None


@dataclass(frozen=True, slots=True)
class HaproxySettings:
    """What ``render-haproxy`` needs: the pool and its checks."""

    nodes: tuple[PoolNode, ...] = ()
    proxy_protocol: str = "v2"  # v1 | v2 | none
    check_inter: float = 2.0
    check_fall: int = 3
    check_rise: int = 2
    stats: HostPort | None = None
    admin_socket: str | None = None


@dataclass(frozen=True, slots=True)
class BackendOverride:
    """``[[proxy.backends]]``: what the proxy does for one store (by map host, and port)."""

    host: str
    #: None = every port of ``host``.
    port: int | None = None
    #: None = ``ProxySettings.forward_client``.
    forward_client: ForwardClient | None = None
    #: The name the store's certificate must carry; None = ``ProxySettings.backend_tls_name``.
    tls_name: str | None = None


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """``authsvc proxy``: limits and timeouts shared by every proxy listener."""

    #: Every failed login is answered this many seconds after the command
    #: arrived, whatever the cause, so timing does not tell an unknown user
    #: from a wrong password (Perdition sleeps 3 s, perdition/perdition.c).
    auth_failure_delay: float = 2.0
    #: Failed logins allowed on one connection; the last one also closes it.
    max_login_attempts: int = 3
    #: Malformed or unknown pre-auth commands before ``* BYE`` / ``-ERR`` and close.
    max_bad_commands: int = 10
    #: Longest pre-auth command line in bytes, CRLF included.
    max_line_length: int = 8192
    #: Longest pre-auth IMAP literal (a login name or password) in bytes.
    max_literal_length: int = 8192
    #: Connect, greeting and login at the store must finish within this.
    backend_timeout: float = 30.0
    #: CA bundle for stores reached over TLS; None = the system's.
    backend_ca_file: str | None = None
    #: Check the store's certificate and name (Perdition's default, perdition/ssl.c).
    backend_verify: bool = True
    #: Bytes buffered per direction while splicing before the reader pauses.
    splice_buffer: int = 262_144
    #: Relay plain-to-plain sessions with ``os.splice`` (Linux), not through user space.
    zero_copy: bool = True
    #: On SIGTERM, how long logged-in sessions may finish before they are cut.
    drain_timeout: float = 30.0
    #: CA directory (hashed, ``c_rehash``) for stores, besides ``backend_ca_file``.
    backend_ca_path: str | None = None
    #: Check the name in the store's certificate (Perdition ``ssl_no_cn_verify`` = off).
    backend_verify_name: bool = True
    #: The name stores' certificates must carry when the map gives IP addresses;
    #: None = the map's host, name or address.
    backend_tls_name: str | None = None
    #: Tell stores the client's address; ``[[proxy.backends]]`` overrides it per store.
    forward_client: ForwardClient = ForwardClient.NONE
    backends: tuple[BackendOverride, ...] = ()
    #: Networks trusted to send PROXY headers to listeners that expect them.
    proxy_protocol_from: tuple[str, ...] = ()
    #: A PROXY header must be complete this many seconds after the connection.
    proxy_protocol_timeout: float = 3.0
    #: Concurrent sessions from one client address (after PROXY), 0 = no limit.
    client_limit: int = 0
    #: Sessions not yet logged in, all listeners together, 0 = no limit; None =
    #: derived from the descriptor limit at start (``proxy/limits.py``, docs/proxy.md).
    preauth_limit: int | None = None
    #: Sessions not yet logged in from one client address, 0 = no limit.
    client_preauth_limit: int = 20
    #: The descriptor limit each proxy process runs under (systemd ``LimitNOFILE=``),
    #: for ``check-config``'s session check only; None = the shipped unit's.
    nofile: int | None = None
    #: Client networks exempt from ``client_limit`` and ``client_preauth_limit``
    #: (webmail, a balancer that sends no PROXY header), as CIDR text.
    trusted: tuple[str, ...] = ()
    #: Total time from connect to login, however active the client, 0 = none.
    login_deadline: float = 60.0
    #: Where ``/healthz``, ``/readyz`` and ``/metrics`` are served; None = nowhere.
    health_listen: HostPort | None = None
    #: Also write Perdition's ``Auth:`` line (perdition(8), LOGGING) to syslog.
    auth_log: bool = False
    #: A unix datagram socket path, or ``host:port`` for UDP.
    auth_log_target: str = "/dev/log"
    #: The syslog ident; ``{listener}`` is replaced by the listener's name.
    auth_log_ident: str = "perdition.{listener}"
    auth_log_facility: str = "mail"


@dataclass(frozen=True, slots=True)
class RedisSentinel:
    """The Sentinel form of a Redis store: the sentinels ask, the service they watch.

    Redis Sentinel (redis.io, "High availability with Redis Sentinel") names the
    primary of ``service``; the client asks a sentinel for it on every new
    connection, so after a failover the next connection reaches the new primary.
    """

    sentinels: tuple[HostPort, ...]
    service: str
    #: Redis's own password (``requirepass``), for the primary and its replicas.
    password: Secret | None = None
    #: The sentinels' password (their ``requirepass``), when they have one.
    sentinel_password: Secret | None = None
    #: Redis 6 ACL users (``AUTH username password``; redis.io, "ACL"): the
    #: primary's and replicas', and the sentinels'.  None = Redis's ``default``
    #: user.  Kept as secrets like the passwords: never in a log or a repr.
    username: Secret | None = None
    sentinel_username: Secret | None = None


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    """``[throttle]``: brute-force throttling in serve and proxy (docs/security.md)."""

    enabled: bool = False
    #: HMAC key for password fingerprints; the same on every worker and node.
    #: None = a random key per process (repeats are then only recognised there).
    key: Secret | None = None
    #: Sliding windows (seconds) and the failures counted within them.
    address_window: float = 600.0
    #: Failures from one address (IPv6: its prefix) before it is refused outright.
    address_limit: int = 50
    login_window: float = 600.0
    #: Failures for one login (any address) past which every attempt on it waits max_delay.
    login_limit: int = 20
    #: Failures before any delay at all.
    free_failures: int = 3
    #: First delay, doubled per further failure up to ``max_delay`` (seconds).
    delay: float = 1.0
    max_delay: float = 15.0
    ipv6_prefix: int = 64
    #: Networks never throttled (webmail, monitoring), as CIDR text.
    trusted: tuple[str, ...] = ()
    store: str = "memory"  # memory | redis
    redis_url: Secret | None = None
    #: Instead of ``redis_url``: the Sentinel form (docs/configuration.md, "[throttle]").
    redis_sentinel: RedisSentinel | None = None
    #: Each Redis command must answer within this, else the local counts are used.
    redis_timeout: float = 0.25
    #: After a Redis failure, seconds before Redis is tried again.
    redis_retry: float = 5.0


@dataclass(frozen=True, slots=True)
class HoldsSettings:
    """``[holds]``: where the operator's holds are kept (docs/operations.md, "Holds")."""

    store: str = "file"  # file | redis
    #: The JSON file every worker of the node reads at start (store = "file").
    state_file: str = "/var/lib/authsvc/holds.json"
    redis_url: Secret | None = None
    #: Instead of ``redis_url``: the Sentinel form (docs/configuration.md, "[holds]").
    redis_sentinel: RedisSentinel | None = None
    #: Each Redis command must answer within this.
    redis_timeout: float = 2.0
    #: Replicas that must acknowledge a hold (Redis ``WAIT``) before the command
    #: reports success; 1 with the Sentinel form, 0 with ``redis_url``.
    redis_replicas: int = 0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything authsvc needs, built once in ``cli.main`` and passed down."""

    listeners: tuple[ListenerSettings, ...]
    cache: CacheSettings = field(default_factory=CacheSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    nginx: NginxSettings = field(default_factory=NginxSettings)
    haproxy: HaproxySettings = field(default_factory=HaproxySettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    holds: HoldsSettings = field(default_factory=HoldsSettings)

    def listener(self, name: str) -> ListenerSettings | None:
        """The listener called ``name``, if any."""
        for listener in self.listeners:
            if listener.name == name:
                return listener
        return None

    def first_listener(self, protocol: MailProtocol) -> ListenerSettings | None:
        """The first listener of ``protocol``: nginx's fallback without our headers."""
        for listener in self.listeners:
            if listener.protocol is protocol:
                return listener
        return None
