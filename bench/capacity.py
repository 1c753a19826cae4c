"""The capacity model: what a site needs, computed from the figures the benches wrote.

``python -m bench.capacity`` reads the JSON that the benches committed under
``bench/results/`` (:data:`RESULT_FILES`), and prints, for three sites
(:data:`SITES`) and both deployments (nginx + ``authsvc serve``, and
``authsvc proxy``), the nodes, cores, memory, database, Redis, descriptor,
port and HAProxy figures, and which limit binds first, then the check of the
model against the measured two-node pools (``bench/pool_check.py``), as the
Markdown of docs/capacity.md's generated part (a unit test checks that the
doc holds exactly this output).

Every per-unit figure (CPU per login, KiB per idle session, a process's
baseline memory, CPU per GB relayed) comes from the JSON; the assumptions
that no bench measures are :class:`Node`'s fields, each with its reason in
docs/capacity.md.  When the benches are run again, the model follows.

The arithmetic is plain functions of numbers, so tests/unit/test_capacity.py
can check it without any file.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
#: The bench JSON the model reads, by role (docs/capacity.md names them).
RESULT_FILES = {
    "proxy": "proxy_bench.json",  # bench/proxy_bench.py: proxy and nginx figures
    "login": "login_bench.json",  # bench/login_bench.py: authsvc serve per login
    "redis": "redis_cost.json",  # bench/redis_cost.py: the throttle's Redis work per login
    "pool": "pool_check.json",  # bench/pool_check.py: the measured pool, proxy nodes
    "pool_nginx": "pool_check_nginx.json",  # the same, nginx + serve nodes
}

#: Ephemeral ports per (source address, destination address, destination
#: port): Linux's default ``net.ipv4.ip_local_port_range`` is 32768-60999
#: (Documentation/networking/ip-sysctl.rst).
DEFAULT_PORT_RANGE = 60999 - 32768 + 1
#: MariaDB's default ``max_connections`` (server system variables).
MARIADB_MAX_CONNECTIONS = 151
#: ``LimitNOFILE`` in deploy/systemd/authsvc-proxy.service.
PROXY_LIMIT_NOFILE = 262_144
#: Linux's default ``fs.nr_open``: no process may have more descriptors
#: (Documentation/admin-guide/sysctl/fs.rst).
NR_OPEN = 1_048_576


# -- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A site, as docs/capacity.md's "Inputs" describes it."""

    name: str
    mailboxes: int
    #: Logins per second at the busiest minute.
    logins_per_s: float
    #: Concurrent sessions at the peak (mostly IMAP IDLE).
    sessions: int
    #: Logins per active mailbox per hour (a phone every 5 minutes = 12).
    relogins_per_hour: float = 12.0
    #: The share of logins and sessions over TLS (STARTTLS or implicit).
    tls_share: float = 0.9
    #: ``[cache] ttl``, seconds.
    cache_ttl: float = 60.0

    @property
    def active_mailboxes(self) -> float:
        """Mailboxes that log in during the peak hour: logins/s x 3600 / re-logins per hour."""
        return self.logins_per_s * 3600.0 / self.relogins_per_hour


SITES = (
    Site("small", mailboxes=10_000, logins_per_s=20, sessions=2_000),
    Site("seed", mailboxes=500_000, logins_per_s=500, sessions=50_000),
    Site("large", mailboxes=5_000_000, logins_per_s=5_000, sessions=1_000_000),
)


@dataclass(frozen=True)
class Node:
    """Assumptions no bench measures (docs/capacity.md, "Assumptions")."""

    #: Cores and memory of one node.
    cores: int = 8
    memory_gib: float = 16.0
    #: Plan the busiest node (one node down) to this share of its cores and memory.
    cpu_target: float = 0.6
    memory_target: float = 0.7
    #: Store addresses a node's sessions spread over (1 = one Dovecot proxy address).
    store_addresses: int = 1
    #: Source addresses a node (and HAProxy) connects from.
    source_addresses: int = 1
    #: Ports per (source, destination address, port); see DEFAULT_PORT_RANGE.
    port_range: int = DEFAULT_PORT_RANGE
    #: Plan the port pairs to this share of the range (TIME_WAIT, uneven spread).
    port_target: float = 0.8
    #: ``[map] pool_size`` and MariaDB's ``max_connections``.
    pool_size: int = 10
    max_connections: int = MARIADB_MAX_CONNECTIONS
    #: Mail clients' failed logins, as a share of all logins.
    failure_share: float = 0.02
    #: ``[throttle] address_window`` / ``login_window`` (the keys' lifetime), seconds.
    throttle_window: float = 600.0
    #: Keys one counted failure leaves in Redis: a:, l:, p: hashes and the s: mark.
    keys_per_failure: float = 4.0
    #: Bytes relayed per session per hour (new mail, IDLE updates), MB.
    relay_mb_per_session_hour: float = 2.0
    #: Descriptors beyond two per session: listeners, logs, the map pool, slack.
    base_descriptors: int = 256
    #: LimitNOFILE = this x the busiest process's need, rounded up to a power of two.
    descriptor_headroom: float = 1.25
    #: nginx's workers do not share sessions evenly: plan a worker for this x its share.
    nginx_worker_skew: float = 1.5


# -- figures from the bench JSON ---------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """Per-unit figures, each from a bench's JSON (``sources`` says which row)."""

    #: CPU seconds per login, plain and TLS: the proxy; nginx (mail module, own
    #: auth answer); authsvc serve (one auth_http request).
    proxy_cpu_login_plain: float
    proxy_cpu_login_tls: float
    nginx_cpu_login_plain: float
    nginx_cpu_login_tls: float
    serve_cpu_login: float
    #: What a route-cache miss adds to a login's CPU (serve's, measured; the
    #: proxy runs the same map code, docs/capacity.md).
    cpu_per_miss: float
    #: CPU seconds per GB relayed, plain and TLS.
    proxy_cpu_gb_plain: float
    proxy_cpu_gb_tls: float
    nginx_cpu_gb_plain: float
    nginx_cpu_gb_tls: float
    #: KiB of PSS per idle logged-in session, plain and TLS.
    proxy_kib_session_plain: float
    proxy_kib_session_tls: float
    nginx_kib_session_plain: float
    nginx_kib_session_tls: float
    #: PSS of a process with no session, KiB: one proxy process that has served
    #: logins and fetches (the model's baseline) and a fresh one; nginx's master
    #: and ``nginx_workers`` workers; one authsvc serve process.
    proxy_base_kib: float
    proxy_fresh_base_kib: float
    nginx_base_kib: float
    nginx_workers: int
    serve_base_kib: float
    #: Where each figure came from, and the runs' load averages.
    sources: Mapping[str, str] = field(default_factory=dict)
    runs: Mapping[str, Mapping[str, object]] = field(default_factory=dict)


def _median(rows: Iterable[Mapping[str, object]], key: str, **match: object) -> float:
    values = [float(str(r[key])) for r in rows
              if all(r.get(k) == v for k, v in match.items()) and key in r and "error" not in r]
    if not values:
        raise KeyError(f"no row with {key} for {match}")
    return statistics.median(values)


def figures_from(proxy: Mapping[str, object], login: Mapping[str, object]) -> Figures:
    """The per-unit figures from bench/proxy_bench.py's and bench/login_bench.py's JSON."""
    prows = proxy["rows"]
    lrows = login["rows"]
    assert isinstance(prows, list)
    assert isinstance(lrows, list)

    def paced(front: str, mode: str) -> float:
        return _median(prows, "cpu_s_per_1000", test="paced", front=front, mode=mode) / 1000

    def memory(front: str, mode: str, key: str) -> float:
        return _median(prows, key, test="memory", front=front, mode=mode)

    # serve's CPU per login when logins arrive one at a time (login_bench's
    # paced rows), as for the proxy and nginx; the concurrent rows otherwise.
    front = ("authsvc-paced" if any(r.get("front") == "authsvc-paced" for r in lrows)
             else "authsvc")
    serve = [r for r in lrows if r.get("front") == front]
    serve_ms = [float(str(r["cpu_ms_per_login"]["authsvc"])) for r in serve]
    # A miss: paced logins of users the cache has not seen, against paced hits.
    missed = [float(str(r["cpu_ms_per_login"]["authsvc"])) for r in lrows
              if r.get("front") == "authsvc-paced-miss"]
    hits = [float(str(r["cpu_ms_per_login"]["authsvc"])) for r in serve
            if r.get("mode") == "plain"]
    per_miss = max(0.0, statistics.fmean(missed) - statistics.fmean(hits)) / 1000 \
        if missed and hits and front == "authsvc-paced" else 0.0
    serve_pss = [float(str(r["pss_kib"]["authsvc"])) for r in lrows
                 if str(r.get("front", "")).startswith("authsvc") and "pss_kib" in r]
    # nginx runs ``worker_processes auto``: a master and one worker per CPU.
    nginx_workers = _median(prows, "processes", test="memory", front="nginx", mode="plain") - 1
    return Figures(
        proxy_cpu_login_plain=paced("authsvc", "plain"),
        proxy_cpu_login_tls=paced("authsvc", "starttls"),
        nginx_cpu_login_plain=paced("nginx", "plain"),
        nginx_cpu_login_tls=paced("nginx", "starttls"),
        serve_cpu_login=statistics.fmean(serve_ms) / 1000,
        cpu_per_miss=per_miss,
        proxy_cpu_gb_plain=_median(prows, "cpu_s_per_gb", test="fetch", front="authsvc",
                                   mode="plain"),
        proxy_cpu_gb_tls=_median(prows, "cpu_s_per_gb", test="fetch", front="authsvc",
                                 mode="imaps"),
        nginx_cpu_gb_plain=_median(prows, "cpu_s_per_gb", test="fetch", front="nginx",
                                   mode="plain"),
        nginx_cpu_gb_tls=_median(prows, "cpu_s_per_gb", test="fetch", front="nginx",
                                 mode="imaps"),
        proxy_kib_session_plain=memory("authsvc", "plain", "kib_per_session"),
        proxy_kib_session_tls=memory("authsvc", "tls", "kib_per_session"),
        nginx_kib_session_plain=memory("nginx", "plain", "kib_per_session"),
        nginx_kib_session_tls=memory("nginx", "tls", "kib_per_session"),
        proxy_base_kib=_warm_base(prows),
        proxy_fresh_base_kib=memory("authsvc", "plain", "first_base_kib"),
        nginx_base_kib=memory("nginx", "plain", "first_base_kib"),
        nginx_workers=int(nginx_workers),
        serve_base_kib=max(serve_pss) if serve_pss else 0.0,
        sources={
            "CPU per login (proxy, nginx)": f"{RESULT_FILES['proxy']}: test=paced",
            "CPU per login (serve)": f"{RESULT_FILES['login']}: front={front}, authsvc group",
            "CPU per GB": f"{RESULT_FILES['proxy']}: test=fetch",
            "KiB per session, base PSS": f"{RESULT_FILES['proxy']}: test=memory",
            "serve base PSS": f"{RESULT_FILES['login']}: pss_kib",
        },
        runs={"proxy": dict(proxy.get("run", {})),  # type: ignore[call-overload]
              "login": dict(login.get("run", {}))},  # type: ignore[call-overload]
    )


def _warm_base(rows: list[Mapping[str, object]]) -> float:
    """The proxy's PSS with no session after the bench's logins and fetches.

    ``warm_base_kib`` of the first memory fill (``--fresh`` measures it before
    restarting the process); without it, the PSS before the first fill.
    """
    try:
        return _median(rows, "warm_base_kib", test="memory", front="authsvc", mode="plain")
    except KeyError:
        return _median(rows, "first_base_kib", test="memory", front="authsvc", mode="plain")


def load_json(name: str, directory: Path = RESULTS) -> dict[str, object]:
    """One of :data:`RESULT_FILES`, parsed."""
    data = json.loads((directory / RESULT_FILES[name]).read_text())
    assert isinstance(data, dict)
    return data


def load_figures(directory: Path = RESULTS) -> Figures:
    """The figures from the committed bench JSON."""
    return figures_from(load_json("proxy", directory), load_json("login", directory))


# -- the formulas ------------------------------------------------------------------------


def miss_ratio(relogins_per_hour: float, ttl: float, processes: int) -> float:
    """The share of logins the route cache cannot answer.

    A mailbox logs in as a Poisson process of rate ``lam`` = re-logins per hour
    / 3600.  Each process has its own cache, and HAProxy and the kernel spread
    one mailbox's logins over all ``processes`` that cache, so each sees rate
    ``lam / processes``.  An entry lives ``ttl`` seconds from the miss that
    filled it (cachetools' TTLCache: a hit does not extend it).  After a miss,
    the hits until the entry expires are on average ``lam * ttl / processes``,
    and the next login after that is a miss again: one miss per
    ``1 + lam * ttl / processes`` logins.
    """
    if ttl <= 0:
        return 1.0
    hits_per_miss = relogins_per_hour / 3600.0 * ttl / max(processes, 1)
    return 1.0 / (1.0 + hits_per_miss)


def next_power_of_two(n: float) -> int:
    """The smallest power of two at or above ``n`` (at least 1024)."""
    return max(1024, 1 << math.ceil(math.log2(max(n, 1.0))))


@dataclass(frozen=True)
class RedisCost:
    """The throttle's Redis work per login, from bench/redis_cost.py.

    What the code sends (authsvc/throttle: ``service.py`` calls, ``redis.py``
    commands; a pipeline's MULTI and EXEC and the commands a script runs
    count, as ``INFO commandstats`` counts them), and what the bench counted:

    * serve, success: ``check`` = HGETALL x 2 (one pipeline).  nginx does not
      tell serve whether the store took the password, so nothing after.
    * proxy, success: ``check`` (HGETALL x 2) + ``reset_pair`` (HGETALL; MULTI,
      DEL of the pair's counts and its hash of marks, EXEC) + the refusal
      record's ``forget`` (ZSCORE, HGET) = 8, whatever the keyspace holds.
    * proxy, a password the store refused: ``check``, ``refused`` (an EVAL whose
      script runs ZSCORE, ZADD, HSET, ZRANGEBYSCORE, ZCARD), ``floor`` (ZSCORE,
      HGET), ``failed`` (an EVAL marking the password's fingerprint: HGET,
      HSET, EXPIRE, HLEN; a MULTI of HINCRBY and EXPIRE x 3 and HGETALL x 2):
      about 25.

    Redis CPU per proxy success is fitted as ``ok_cpu_us + ok_cpu_us_per_key *
    keys``, the line through the smallest keyspace's figure that fits the
    larger ones best (least squares): a larger keyspace costs Redis a little
    more per command (its hash table and caches), no command visits it all.
    """

    ok_commands: float  # proxy success
    serve_commands: float
    failed_commands: float
    ok_cpu_us: float
    ok_cpu_us_per_key: float
    serve_cpu_us: float
    failed_cpu_us: float
    run: Mapping[str, object] = field(default_factory=dict)

    def per_login(self, deployment: str, keys: float) -> tuple[float, float, float, float]:
        """(commands, Redis CPU s) for a success, then for a failure."""
        if deployment == "serve":
            # serve counts only its own refusals (rare next to mail clients'
            # wrong passwords, which nginx never reports): a failure costs a
            # success's check here.
            return (self.serve_commands, self.serve_cpu_us / 1e6,
                    self.serve_commands, self.serve_cpu_us / 1e6)
        return (self.ok_commands, (self.ok_cpu_us + self.ok_cpu_us_per_key * keys) / 1e6,
                self.failed_commands, self.failed_cpu_us / 1e6)


def redis_cost_from(data: Mapping[str, object]) -> RedisCost:
    """The Redis figures from bench/redis_cost.py's JSON."""
    rows = data["rows"]
    assert isinstance(rows, list)

    def of(path: str) -> list[tuple[float, float, float]]:
        return [(float(r["keys"]), float(r["commands"]), float(r["redis_cpu_us"]))
                for r in rows if r["path"] == path]

    ok = sorted(of("proxy_ok"))
    k0, _, cpu0 = ok[0]
    slope = _slope_through([k - k0 for k, _, _ in ok], [c - cpu0 for _, _, c in ok])
    return RedisCost(
        ok_commands=statistics.fmean(c for _, c, _ in ok),
        serve_commands=statistics.fmean(c for _, c, _ in of("serve_ok")),
        failed_commands=statistics.fmean(c for _, c, _ in of("proxy_failed")),
        ok_cpu_us=cpu0 - slope * k0, ok_cpu_us_per_key=slope,
        serve_cpu_us=statistics.fmean(u for _, _, u in of("serve_ok")),
        failed_cpu_us=statistics.fmean(u for _, _, u in of("proxy_failed")),
        run=dict(data.get("run", {})),  # type: ignore[call-overload]
    )


def _slope_through(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of a line through the origin and the points."""
    var = sum(x * x for x in xs)
    return sum(x * y for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


#: What to do when a limit is reached (docs/capacity.md, "When a limit binds").
FIXES = {
    "CPU": "more nodes (or larger ones)",
    "memory": "more nodes, or more memory per node",
    "ports, node to one store address": "several store addresses (or source addresses "
                                        "per node), or a wider ip_local_port_range",
    "ports, HAProxy to one node port": "several HAProxy source addresses (`source` per "
                                       "server), or more nodes",
    "MariaDB connections": "a smaller [map] pool_size, or a higher max_connections",
    "descriptors per process": "LimitNOFILE (worker_rlimit_nofile for nginx) as in the table",
    "HAProxy descriptors": "fs.nr_open above HAProxy's need, or several balancers",
    "Redis": "Redis on its own fast core, or one Redis service per pool of nodes",
}


@dataclass(frozen=True)
class Plan:
    """One deployment's figures for one site (docs/capacity.md's tables)."""

    site: str
    deployment: str
    nodes: int  # N + 1
    set_by: str  # CPU or memory: the limit that set N
    cores_per_node: float  # busy cores on the busiest node, one node down
    memory_mib_per_node: float
    workers_per_node: int  # cache-holding processes per node (proxy or serve workers)
    sessions_per_node: float
    logins_per_node: float
    miss_ratio: float
    mariadb_queries_per_s: float
    mariadb_connections: int
    redis_commands_per_s: float
    redis_keys: float  # throttle keys alive in Redis
    redis_cores: float  # Redis CPU seconds per second
    descriptors_per_node: float
    descriptors_per_process: float
    limit_nofile: int
    haproxy_maxconn: int
    haproxy_descriptors: int
    #: Each limit's use at N (one node down), 1.0 = the limit.
    uses: Mapping[str, float] = field(default_factory=dict)

    def first_to_bind(self) -> tuple[str, float]:
        """The limit closest to (or furthest past) its bound."""
        name = max(self.uses, key=lambda k: self.uses[k])
        return name, self.uses[name]


def plan(site: Site, deployment: str, fig: Figures, redis: RedisCost,
         node: Node = Node()) -> Plan:
    """Size ``deployment`` ("serve": nginx + authsvc serve; "proxy") for ``site``.

    N is the fewest nodes whose busiest node stays within ``cpu_target`` of its
    cores and ``memory_target`` of its memory with all the load on N nodes;
    the pool runs N + 1.  Every other limit is then checked at N (one node
    down), as a share of its bound; the largest share is the first to bind.
    """
    if site.active_mailboxes > site.mailboxes:
        raise ValueError(f"{site.name}: {site.active_mailboxes:.0f} active mailboxes "
                         f"(logins/s x 3600 / re-logins per hour) > {site.mailboxes} mailboxes")
    tls, plain = site.tls_share, 1.0 - site.tls_share
    relay_gb_s = site.sessions * node.relay_mb_per_session_hour / 3600.0 / 1000.0
    if deployment == "proxy":
        login_cpu = plain * fig.proxy_cpu_login_plain + tls * fig.proxy_cpu_login_tls
        gb_cpu = plain * fig.proxy_cpu_gb_plain + tls * fig.proxy_cpu_gb_tls
        kib_session = plain * fig.proxy_kib_session_plain + tls * fig.proxy_kib_session_tls
        cached_cpu = login_cpu  # every cycle of the proxy is a cache-holding process's
    else:
        login_cpu = (plain * fig.nginx_cpu_login_plain + tls * fig.nginx_cpu_login_tls
                     + fig.serve_cpu_login)
        gb_cpu = plain * fig.nginx_cpu_gb_plain + tls * fig.nginx_cpu_gb_tls
        kib_session = plain * fig.nginx_kib_session_plain + tls * fig.nginx_kib_session_tls
        cached_cpu = fig.serve_cpu_login
    usable_cores = node.cores * node.cpu_target
    usable_mib = node.memory_gib * 1024 * node.memory_target
    pair_ports = node.port_range * node.port_target
    # A route-cache miss adds fig.cpu_per_miss to its login; how many logins
    # miss depends on the processes, which depend on the CPU: size with every
    # login a miss first, then again with the miss ratio of that pool.
    misses = 1.0

    def cores_total() -> float:
        return (site.logins_per_s * (login_cpu + misses * fig.cpu_per_miss)
                + relay_gb_s * gb_cpu)

    def workers(n: int) -> int:
        # The cache-holding processes: as many as their CPU needs (each
        # worker has its own route cache and its own map pool), at most a core each.
        busy = site.logins_per_s / n * (cached_cpu + misses * fig.cpu_per_miss)
        if deployment == "proxy":
            busy += relay_gb_s / n * gb_cpu
        return min(node.cores, max(1, math.ceil(busy / node.cpu_target)))

    def memory_mib(sessions: float, w: int) -> float:
        if deployment == "proxy":
            base = w * fig.proxy_base_kib
        else:
            # nginx ``worker_processes auto``: a master and one worker per core.
            per_process = fig.nginx_base_kib / (1 + fig.nginx_workers)
            base = per_process * (1 + node.cores) + w * fig.serve_base_kib
        return (base + sessions * kib_session) / 1024

    def nodes_needed() -> int:
        n = 1
        while (cores_total() / n > usable_cores
               or memory_mib(site.sessions / n, workers(n)) > usable_mib):
            n += 1
        return n

    for _ in range(2):
        n = nodes_needed()
        w = workers(n)
        processes = (n + 1) * w  # every node's caches, the spare's included
        misses = miss_ratio(site.relogins_per_hour, site.cache_ttl, processes)
    cores = cores_total()
    sessions_node = site.sessions / n
    connections = node.pool_size * processes
    failures = site.logins_per_s * node.failure_share
    # serve counts only its own refusals (nginx never says what the store
    # answered, docs/security.md): mail clients' wrong passwords leave no keys.
    keys = (failures * node.throttle_window * node.keys_per_failure
            if deployment == "proxy" else 0.0)
    successes = site.logins_per_s - failures
    ok_commands, ok_cpu, failed_commands, failed_cpu = redis.per_login(deployment, keys)
    redis_commands = successes * ok_commands + failures * failed_commands
    redis_busy = successes * ok_cpu + failures * failed_cpu
    if deployment == "proxy":
        per_process = 2 * sessions_node / w + node.base_descriptors
        per_node = 2 * sessions_node + node.base_descriptors * w
        shipped = PROXY_LIMIT_NOFILE
    else:
        # nginx: two per session, spread unevenly over its workers; serve: few.
        per_process = (2 * sessions_node / node.cores * node.nginx_worker_skew
                       + node.base_descriptors)
        per_node = 2 * sessions_node + node.base_descriptors * (1 + node.cores + w)
        shipped = 0
    # HAProxy: one maxconn per proxied session, two descriptors each (client
    # and server side; configuration manual, "maxconn" and "ulimit-n").
    maxconn = math.ceil(site.sessions * node.descriptor_headroom / 1024) * 1024
    haproxy_fds = 2 * maxconn + 1024
    uses = {
        "CPU": cores / n / usable_cores,
        "memory": memory_mib(sessions_node, w) / usable_mib,
        "ports, node to one store address": sessions_node / node.store_addresses
        / node.source_addresses / pair_ports,
        "ports, HAProxy to one node port": sessions_node / node.source_addresses / pair_ports,
        "MariaDB connections": connections / node.max_connections,
        "HAProxy descriptors": haproxy_fds / NR_OPEN,
    }
    if shipped:
        uses["descriptors per process"] = per_process / shipped
    # Redis runs commands on one thread: one core is its bound.
    uses["Redis"] = redis_busy
    return Plan(
        site=site.name, deployment=deployment, nodes=n + 1,
        set_by=("the minimum, 1" if n == 1
                else "CPU" if uses["CPU"] >= uses["memory"] else "memory"),
        cores_per_node=cores / n, memory_mib_per_node=memory_mib(sessions_node, w),
        workers_per_node=w, sessions_per_node=sessions_node,
        logins_per_node=site.logins_per_s / n, miss_ratio=misses,
        mariadb_queries_per_s=site.logins_per_s * misses, mariadb_connections=connections,
        redis_commands_per_s=redis_commands, redis_keys=keys, redis_cores=redis_busy,
        descriptors_per_node=per_node, descriptors_per_process=per_process,
        limit_nofile=next_power_of_two(per_process * node.descriptor_headroom),
        haproxy_maxconn=maxconn, haproxy_descriptors=haproxy_fds, uses=uses,
    )


# -- the check against the measured pool --------------------------------------------------


@dataclass(frozen=True)
class PoolLoad:
    """What one window of bench/pool_check.py ran, all nodes together."""

    deployment: str  # "proxy", or "nginx" (nginx + serve)
    nodes: int  # one proxy process, or one nginx and one serve, each
    seconds: float
    logins_plain: int
    logins_tls: int
    sessions_plain: int
    sessions_tls: int
    users: int  # mailboxes the logins picked from at random
    cache_ttl: float


def predict_pool(load: PoolLoad, fig: Figures, *, fresh: bool = False
                 ) -> tuple[float, float, float]:
    """(CPU seconds, PSS MiB, map lookups) the model predicts for the pool's nodes together.

    CPU: logins x CPU per login + lookups x CPU per miss (idle sessions cost
    no measurable CPU).
    Memory: per node, the processes' baseline + sessions x KiB per session;
    ``fresh``: a fresh proxy process's baseline instead of a warm one's.
    Lookups: logins x :func:`miss_ratio`, each mailbox logging in
    ``logins / seconds / users`` times a second, over ``nodes`` caches.
    """
    logins = load.logins_plain + load.logins_tls
    per_hour = logins / load.seconds / load.users * 3600
    lookups = logins * miss_ratio(per_hour, load.cache_ttl, load.nodes)
    if load.deployment == "proxy":
        cpu = (load.logins_plain * fig.proxy_cpu_login_plain
               + load.logins_tls * fig.proxy_cpu_login_tls)
        base = fig.proxy_fresh_base_kib if fresh else fig.proxy_base_kib
        kib = (load.nodes * base + load.sessions_plain * fig.proxy_kib_session_plain
               + load.sessions_tls * fig.proxy_kib_session_tls)
    else:
        cpu = (load.logins_plain * fig.nginx_cpu_login_plain
               + load.logins_tls * fig.nginx_cpu_login_tls + logins * fig.serve_cpu_login)
        kib = (load.nodes * (fig.nginx_base_kib + fig.serve_base_kib)
               + load.sessions_plain * fig.nginx_kib_session_plain
               + load.sessions_tls * fig.nginx_kib_session_tls)
    return cpu + lookups * fig.cpu_per_miss, kib / 1024, lookups


def pool_check(pool: Mapping[str, object], fig: Figures
               ) -> list[tuple[int, str, float, float, float]]:
    """(window, what, predicted, measured, error) for each window of bench/pool_check.py."""
    runs = pool["runs"]
    assert isinstance(runs, list)
    rows = []
    for window in runs:
        raw: dict[str, object] = {"deployment": "proxy", **window["load"]}
        load = PoolLoad(**{k: raw[k] for k in PoolLoad.__dataclass_fields__})  # type: ignore[arg-type]
        measured = window["measured"]
        cpu, mib, lookups = predict_pool(load, fig)
        checks = [("CPU seconds", cpu, float(measured["cpu_s"])),
                  ("PSS MiB", mib, float(measured["pss_mib"]))]
        if load.deployment == "proxy":
            checks.append(("PSS MiB, with a fresh process's baseline",
                           predict_pool(load, fig, fresh=True)[1], float(measured["pss_mib"])))
        checks.append(("mailboxes looked up in MariaDB", lookups,
                       float(measured["map_lookups"])))
        for what, predicted, got in checks:
            rows.append((int(window["run"]) + 1, what, predicted, got, (predicted - got) / got))
    return rows


# -- output ------------------------------------------------------------------------------

DEPLOYMENTS = (("serve", "nginx + authsvc serve"), ("proxy", "authsvc proxy"))


def _n(x: float) -> str:
    """A count for a table: thousands separated, small values to two figures."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def _run_line(name: str, run: Mapping[str, object]) -> str:
    return (f"| {RESULT_FILES[name]} | {run.get('started_utc', '?')} | {run.get('commit', '?')} "
            f"| {run.get('load_average_start', '?')} | {run.get('load_average_end', '?')} |")


def figures_table(fig: Figures, redis: RedisCost) -> str:
    """The per-unit figures the model read, and the runs they came from."""
    rows = [
        ("proxy CPU ms per login, plain / STARTTLS",
         f"{fig.proxy_cpu_login_plain * 1e3:.2f} / {fig.proxy_cpu_login_tls * 1e3:.2f}"),
        ("nginx CPU ms per login, plain / STARTTLS",
         f"{fig.nginx_cpu_login_plain * 1e3:.2f} / {fig.nginx_cpu_login_tls * 1e3:.2f}"),
        ("serve CPU ms per login (auth_http request)", f"{fig.serve_cpu_login * 1e3:.2f}"),
        ("CPU ms a route-cache miss adds to a login", f"{fig.cpu_per_miss * 1e3:.2f}"),
        ("proxy CPU s per GB relayed, plain / TLS",
         f"{fig.proxy_cpu_gb_plain:.2f} / {fig.proxy_cpu_gb_tls:.2f}"),
        ("nginx CPU s per GB relayed, plain / TLS",
         f"{fig.nginx_cpu_gb_plain:.2f} / {fig.nginx_cpu_gb_tls:.2f}"),
        ("proxy KiB PSS per idle session, plain / TLS",
         f"{fig.proxy_kib_session_plain:.1f} / {fig.proxy_kib_session_tls:.1f}"),
        ("nginx KiB PSS per idle session, plain / TLS",
         f"{fig.nginx_kib_session_plain:.1f} / {fig.nginx_kib_session_tls:.1f}"),
        ("proxy process PSS with no session, MiB: after logins and fetches (used) / fresh",
         f"{fig.proxy_base_kib / 1024:.1f} / {fig.proxy_fresh_base_kib / 1024:.1f}"),
        (f"nginx PSS with no session (master + {fig.nginx_workers} workers), MiB",
         f"{fig.nginx_base_kib / 1024:.1f}"),
        ("serve process PSS, MiB", f"{fig.serve_base_kib / 1024:.1f}"),
        ("Redis commands per login: serve / proxy success / proxy failure",
         f"{redis.serve_commands:.0f} / {redis.ok_commands:.0f} / "
         f"{redis.failed_commands:.1f}"),
        ("Redis CPU µs per login: serve / proxy success / proxy failure",
         f"{redis.serve_cpu_us:.0f} / {redis.ok_cpu_us:.0f} + {redis.ok_cpu_us_per_key:.2f} "
         f"x keys / {redis.failed_cpu_us:.0f}"),
    ]
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += ["", "| file | run started (UTC) | commit | load average at start | at end |",
              "|---|---|---|---|---|"]
    lines += [_run_line(name, run) for name, run in (*fig.runs.items(), ("redis", redis.run))]
    return "\n".join(lines)


def site_table(site: Site, fig: Figures, redis: RedisCost, node: Node = Node()) -> str:
    """One site's outputs for both deployments."""
    plans = [plan(site, d, fig, redis, node) for d, _ in DEPLOYMENTS]
    head = (f"**{site.name}**: {site.mailboxes:,} mailboxes, {site.logins_per_s:,.0f} "
            f"logins/s, {site.sessions:,} sessions, {site.relogins_per_hour:g} re-logins per "
            f"active mailbox per hour ({site.active_mailboxes:,.0f} active), TLS share "
            f"{site.tls_share:.0%}, cache TTL {site.cache_ttl:g} s.")
    rows: list[tuple[str, list[str]]] = [
        ("nodes (N+1), N set by", [f"{p.nodes} ({p.set_by})" for p in plans]),
        (f"busy cores per node, one node down (of {node.cores})",
         [f"{p.cores_per_node:.2f}" for p in plans]),
        ("memory per node, MiB", [_n(p.memory_mib_per_node) for p in plans]),
        ("sessions / logins/s per node", [f"{_n(p.sessions_per_node)} / "
                                          f"{_n(p.logins_per_node)}" for p in plans]),
        ("cache-holding processes per node", [str(p.workers_per_node) for p in plans]),
        ("route cache miss ratio", [f"{p.miss_ratio:.2f}" for p in plans]),
        ("MariaDB lookups/s after the cache", [_n(p.mariadb_queries_per_s) for p in plans]),
        (f"MariaDB connections, at most (of {node.max_connections})",
         [str(p.mariadb_connections) for p in plans]),
        ("Redis commands/s (throttle)", [_n(p.redis_commands_per_s) for p in plans]),
        ("Redis: throttle keys / busy cores", [f"{_n(p.redis_keys)} / {p.redis_cores:.2f}"
                                               for p in plans]),
        ("descriptors per node / busiest process", [f"{_n(p.descriptors_per_node)} / "
                                                    f"{_n(p.descriptors_per_process)}"
                                                    for p in plans]),
        ("LimitNOFILE per process (nginx: worker_rlimit_nofile)",
         [str(p.limit_nofile) for p in plans]),
        ("HAProxy connections (client and server side)",
         [f"{2 * site.sessions:,}" for _ in plans]),
        ("HAProxy maxconn / descriptors", [f"{p.haproxy_maxconn:,} / {p.haproxy_descriptors:,}"
                                           for p in plans]),
    ]
    limits = sorted(plans[0].uses, key=lambda k: -max(p.uses.get(k, 0.0) for p in plans))
    for name in limits:
        rows.append((f"use: {name}", [f"{p.uses[name]:.0%}" if name in p.uses else "-"
                                      for p in plans]))
    binds = [p.first_to_bind() for p in plans]
    rows.append(("**binds first**", [f"**{n}** ({u:.0%})" for n, u in binds]))
    lines = [head, "", "| | " + " | ".join(label for _, label in DEPLOYMENTS) + " |",
             "|---|" + "---|" * len(plans)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    fixes = sorted({n for n, u in binds} | {n for p in plans for n, u in p.uses.items()
                                            if u > 1.0})
    lines += ["", "Fixes: " + "; ".join(f"{n}: {FIXES[n]}" for n in fixes) + "."]
    return "\n".join(lines)


def check_table(pool: Mapping[str, object], fig: Figures, name: str = "pool") -> str:
    """The model's prediction for bench/pool_check.py's load, against what it measured."""
    run = pool.get("run", {})
    assert isinstance(run, dict)
    runs = pool["runs"]
    assert isinstance(runs, list)
    raw = runs[0]["load"]
    kind = ("nginx + authsvc serve" if raw.get("deployment") == "nginx"
            else "authsvc proxy")
    lines = [f"Load per window: {raw['nodes']} {kind} nodes behind HAProxy, "
             f"{raw['logins_plain'] + raw['logins_tls']:,} logins in {raw['seconds']:g} s "
             f"({raw['logins_tls']:,} with STARTTLS) over {raw['users']:,} mailboxes picked at "
             f"random, route cache TTL {raw['cache_ttl']:g} s, {raw['sessions_plain']:,} plain "
             f"and {raw['sessions_tls']:,} TLS idle sessions held.", "",
             "| window | | predicted | measured | error |", "|---|---|---|---|---|"]
    for window, what, predicted, measured, error in pool_check(pool, fig):
        lines.append(f"| {window} | {what} | {predicted:,.1f} | {measured:,.1f} "
                     f"| {error:+.0%} |")
    lines += ["", "| file | run started (UTC) | commit | load average at start | at end |",
              "|---|---|---|---|---|", _run_line(name, run)]
    return "\n".join(lines)


def miss_table(relogins_per_hour: float = 12.0, ttls: Iterable[float] = (60, 300, 900, 3600),
               processes: Iterable[int] = (1, 4, 16, 64)) -> str:
    """:func:`miss_ratio` for a few TTLs and numbers of cache-holding processes."""
    counts = list(processes)
    lines = [f"Route cache miss ratio at {relogins_per_hour:g} re-logins per active mailbox "
             "per hour:", "",
             "| TTL (s) | " + " | ".join(f"{p} process{'es' if p > 1 else ''}"
                                        for p in counts) + " |",
             "|---|" + "---|" * len(counts)]
    for ttl in ttls:
        lines.append(f"| {ttl:g} | " + " | ".join(
            f"{miss_ratio(relogins_per_hour, ttl, p):.2f}" for p in counts) + " |")
    return "\n".join(lines)


def markdown(fig: Figures, redis: RedisCost, pools: Mapping[str, Mapping[str, object]],
             sites: Iterable[Site] = SITES, node: Node = Node()) -> str:
    """The generated part of docs/capacity.md."""
    parts = ["### Figures read from the bench JSON", "", figures_table(fig, redis), "",
             "### The route cache", "", miss_table(), ""]
    for site in sites:
        parts += [f"### Site: {site.name}", "", site_table(site, fig, redis, node), ""]
    titles = {"pool": "authsvc proxy", "pool_nginx": "nginx + authsvc serve"}
    for name, pool in pools.items():
        parts += [f"### The model against the measured pool: {titles[name]}", "",
                  check_table(pool, fig, name), ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="directory of the bench JSON (default bench/results)")
    parser.add_argument("--site", nargs=4, metavar=("NAME", "MAILBOXES", "LOGINS_S", "SESSIONS"),
                        help="a site of your own instead of the three")
    parser.add_argument("--relogins-per-hour", type=float)
    parser.add_argument("--tls-share", type=float)
    parser.add_argument("--cache-ttl", type=float)
    for name, default in vars(Node()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                            help=f"(default {default})")
    args = parser.parse_args(argv)
    fig = load_figures(args.results)
    redis = redis_cost_from(load_json("redis", args.results))
    pools = {name: json.loads((args.results / RESULT_FILES[name]).read_text())
             for name in ("pool", "pool_nginx") if (args.results / RESULT_FILES[name]).exists()}
    sites = list(SITES)
    if args.site:
        name, mailboxes, rate, sessions = args.site
        sites = [Site(name, int(mailboxes), float(rate), int(sessions))]
    changes = {k: v for k, v in (("relogins_per_hour", args.relogins_per_hour),
                                 ("tls_share", args.tls_share), ("cache_ttl", args.cache_ttl))
               if v is not None}
    sites = [replace(s, **changes) for s in sites]
    node = Node(**{name: getattr(args, name) for name in vars(Node())})
    sys.stdout.write(markdown(fig, redis, pools, sites, node))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
