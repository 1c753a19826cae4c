"""The capacity model: what a site needs, computed from the figures the benches wrote.

``python -m bench.capacity`` reads the JSON that the benches committed under
``bench/results/`` (:data:`RESULT_FILES`), and prints, for three sites
(:data:`SITES`) and both deployments (nginx + ``authsvc serve``, and
``authsvc proxy``), the nodes, cores, memory, database, Redis, descriptor,
port and HAProxy figures, and which limit binds first.  ``--markdown`` prints
the same as the tables of docs/capacity.md (a unit test checks that the doc
holds exactly this output), and the check of the model against the measured
two-node pool (``bench/pool_check.py``).

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
    "pool": "pool_check.json",  # bench/pool_check.py: the measured two-node pool
}

#: Ephemeral ports per (source address, destination address, destination
#: port): Linux's default ``net.ipv4.ip_local_port_range`` is 32768-60999
#: (Documentation/networking/ip-sysctl.rst).
DEFAULT_PORT_RANGE = 60999 - 32768 + 1
#: MariaDB's default ``max_connections`` (server system variables).
MARIADB_MAX_CONNECTIONS = 151
#: ``SCAN ... COUNT 500``: the batch ``authsvc/throttle/redis.py`` asks for.
SCAN_COUNT = 500


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
    #: PSS of a process with no session, KiB: one proxy process; nginx's master
    #: and ``nginx_workers`` workers; one authsvc serve process.
    proxy_base_kib: float
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

    serve = {str(r["mode"]): r for r in lrows if r.get("front") == "authsvc"}
    serve_ms = [float(str(r["cpu_ms_per_login"]["authsvc"]))  # type: ignore[index]
                for r in serve.values()]
    serve_pss = [float(str(r["pss_kib"]["authsvc"]))  # type: ignore[index]
                 for r in serve.values() if "pss_kib" in r]
    nginx_workers = _median(prows, "workers", test="memory", front="nginx", mode="plain")
    return Figures(
        proxy_cpu_login_plain=paced("authsvc", "plain"),
        proxy_cpu_login_tls=paced("authsvc", "starttls"),
        nginx_cpu_login_plain=paced("nginx", "plain"),
        nginx_cpu_login_tls=paced("nginx", "starttls"),
        serve_cpu_login=statistics.fmean(serve_ms) / 1000,
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
        proxy_base_kib=memory("authsvc", "plain", "first_base_kib"),
        nginx_base_kib=memory("nginx", "plain", "first_base_kib"),
        nginx_workers=int(nginx_workers),
        serve_base_kib=max(serve_pss) if serve_pss else 0.0,
        sources={
            "CPU per login (proxy, nginx)": f"{RESULT_FILES['proxy']}: test=paced",
            "CPU per login (serve)": f"{RESULT_FILES['login']}: front=authsvc, authsvc group",
            "CPU per GB": f"{RESULT_FILES['proxy']}: test=fetch",
            "KiB per session, base PSS": f"{RESULT_FILES['proxy']}: test=memory",
            "serve base PSS": f"{RESULT_FILES['login']}: pss_kib",
        },
        runs={"proxy": dict(proxy.get("run", {})),  # type: ignore[call-overload]
              "login": dict(login.get("run", {}))},  # type: ignore[call-overload]
    )


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


def redis_commands_per_login(deployment: str, scans: int) -> tuple[float, float]:
    """Redis commands for one successful login and for one counted failure.

    Counted from authsvc/throttle (``service.py`` calls, ``redis.py`` commands;
    a pipeline's MULTI and EXEC count, as ``INFO commandstats`` counts them):

    * serve, success: ``check`` = HGETALL x 2 (one pipeline).  nginx does not
      tell serve whether the store took the password, so nothing after.
    * serve, its own refusal: ``check`` 2 + ``record`` (MULTI, HINCRBY and
      EXPIRE x 3, HGETALL x 2, EXEC = 10) = 12.
    * proxy, success: ``check`` 2 + ``reset_pair`` (HGETALL; MULTI, DEL, EXEC;
      SCAN over the whole keyspace, ``scans`` calls) + the refusal record's
      ``forget`` (ZSCORE, HGET) = 8 + scans.
    * proxy, a password the store refused: ``check`` 2 + ``add_refusal`` (EVAL)
      1 + ``floor`` (ZSCORE, HGET) 2 + ``record`` (SET NX; EXPIRE when the
      password was seen; the 10 above) = 16 to 17.
    """
    if deployment == "serve":
        return 2.0, 12.0
    return 8.0 + scans, 16.5


@dataclass(frozen=True)
class Plan:
    """One deployment's figures for one site (docs/capacity.md's tables)."""

    site: str
    deployment: str
    nodes: int  # N + 1
    binding: str  # the limit that set N
    cores_per_node: float  # busy cores on the busiest node, one node down
    memory_mib_per_node: float
    workers_per_node: int  # cache-holding processes per node
    sessions_per_node: float
    logins_per_node: float
    miss_ratio: float
    mariadb_queries_per_s: float
    mariadb_connections: int
    redis_commands_per_s: float
    redis_scan_keys_per_s: float
    descriptors_per_node: float
    descriptors_per_process: float
    limit_nofile: int
    haproxy_maxconn: int
    haproxy_descriptors: int
    ports_node_to_store: float  # connections per (node source, store address) pair
    ports_haproxy_to_node: float  # per (HAProxy source, node, port) pair
    #: Each limit's use at N (one node down), as a share of what the node may use.
    headroom: Mapping[str, float] = field(default_factory=dict)


def plan(site: Site, deployment: str, fig: Figures, node: Node = Node()) -> Plan:
    """Size ``deployment`` ("serve": nginx + authsvc serve; "proxy") for ``site``.

    Demand first (cores, memory, sessions), then the smallest N that keeps the
    busiest node within every per-node limit with one node down, then N + 1.
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
    else:
        login_cpu = (plain * fig.nginx_cpu_login_plain + tls * fig.nginx_cpu_login_tls
                     + fig.serve_cpu_login)
        gb_cpu = plain * fig.nginx_cpu_gb_plain + tls * fig.nginx_cpu_gb_tls
        kib_session = plain * fig.nginx_kib_session_plain + tls * fig.nginx_kib_session_tls
    cores_total = site.logins_per_s * login_cpu + relay_gb_s * gb_cpu
    usable_cores = node.cores * node.cpu_target
    usable_mib = node.memory_gib * 1024 * node.memory_target
    pair_ports = node.port_range * node.port_target

    def node_memory_mib(sessions: float, serve_workers: int) -> float:
        if deployment == "proxy":
            base = node.cores * fig.proxy_base_kib
        else:
            per_worker = fig.nginx_base_kib / (1 + fig.nginx_workers)
            base = per_worker * (1 + node.cores) + serve_workers * fig.serve_base_kib
        return (base + sessions * kib_session) / 1024

    def serve_workers(n: int) -> int:
        if deployment == "proxy":
            return node.cores  # the proxy runs one worker per core
        busy = site.logins_per_s / n * fig.serve_cpu_login
        return max(1, math.ceil(busy / node.cpu_target))

    def uses(n: int) -> dict[str, float]:
        sessions = site.sessions / n
        return {
            "cpu": cores_total / n / usable_cores,
            "memory": node_memory_mib(sessions, serve_workers(n)) / usable_mib,
            "ports to one store address": sessions / node.store_addresses
            / node.source_addresses / pair_ports,
        }

    n = 1
    while max(uses(n).values()) > 1.0:
        n += 1
    use = uses(n)
    binding = max(use, key=lambda k: use[k])
    sessions_node = site.sessions / n
    workers = serve_workers(n)
    processes = (n + 1) * workers  # every node's caches, the spare's included
    misses = miss_ratio(site.relogins_per_hour, site.cache_ttl, processes)
    queries = site.logins_per_s * misses
    connections = node.pool_size * processes
    failures = site.logins_per_s * node.failure_share
    keys = failures * node.throttle_window * node.keys_per_failure
    scans = max(1, math.ceil(keys / SCAN_COUNT))
    per_ok, per_failure = redis_commands_per_login(deployment, scans)
    successes = site.logins_per_s - failures
    redis = successes * per_ok + failures * per_failure
    scan_keys = successes * keys if deployment == "proxy" else 0.0
    if deployment == "proxy":
        per_process = 2 * sessions_node / node.cores + node.base_descriptors
        per_node = 2 * sessions_node + node.base_descriptors * node.cores
    else:
        # nginx: two per session in its workers, unevenly spread; serve's are few.
        per_process = (2 * sessions_node / node.cores * node.nginx_worker_skew
                       + node.base_descriptors)
        per_node = 2 * sessions_node + node.base_descriptors * (1 + node.cores + workers)
    limit_nofile = next_power_of_two(per_process * node.descriptor_headroom)
    maxconn = next_power_of_two(site.sessions * node.descriptor_headroom)
    headroom = dict(use)
    headroom["MariaDB connections"] = connections / node.max_connections
    headroom["HAProxy ports to one node"] = (
        sessions_node / node.source_addresses / pair_ports)
    return Plan(
        site=site.name, deployment=deployment, nodes=n + 1, binding=binding,
        cores_per_node=cores_total / n,
        memory_mib_per_node=node_memory_mib(sessions_node, workers),
        workers_per_node=workers, sessions_per_node=sessions_node,
        logins_per_node=site.logins_per_s / n, miss_ratio=misses,
        mariadb_queries_per_s=queries, mariadb_connections=connections,
        redis_commands_per_s=redis, redis_scan_keys_per_s=scan_keys,
        descriptors_per_node=per_node, descriptors_per_process=per_process,
        limit_nofile=limit_nofile, haproxy_maxconn=maxconn,
        haproxy_descriptors=2 * maxconn + 100,
        ports_node_to_store=sessions_node / node.store_addresses / node.source_addresses,
        ports_haproxy_to_node=sessions_node / node.source_addresses,
        headroom=headroom,
    )


def first_to_bind(p: Plan) -> tuple[str, float]:
    """The limit with the least headroom at the plan's N (one node down)."""
    name = max(p.headroom, key=lambda k: p.headroom[k])
    return name, p.headroom[name]


# -- the check against the measured pool --------------------------------------------------


@dataclass(frozen=True)
class PoolLoad:
    """What bench/pool_check.py ran: per node, over its measured window."""

    nodes: int
    seconds: float
    logins_plain: int
    logins_tls: int
    sessions_plain: int
    sessions_tls: int


def predict_pool(load: PoolLoad, fig: Figures) -> tuple[float, float]:
    """(CPU seconds, PSS MiB) the model predicts for all the pool's proxy nodes together.

    CPU: logins x CPU per login (idle sessions cost no measurable CPU).
    Memory: per node, one process's baseline + sessions x KiB per session.
    """
    cpu = (load.logins_plain * fig.proxy_cpu_login_plain
           + load.logins_tls * fig.proxy_cpu_login_tls)
    kib = (load.nodes * fig.proxy_base_kib
           + load.sessions_plain * fig.proxy_kib_session_plain
           + load.sessions_tls * fig.proxy_kib_session_tls)
    return cpu, kib / 1024


def pool_check(pool: Mapping[str, object], fig: Figures) -> list[tuple[str, float, float, float]]:
    """(what, predicted, measured, error) for CPU and memory of bench/pool_check.py's run."""
    raw = pool["load"]
    assert isinstance(raw, dict)
    load = PoolLoad(**{k: raw[k] for k in PoolLoad.__dataclass_fields__})
    measured = pool["measured"]
    assert isinstance(measured, dict)
    cpu, mib = predict_pool(load, fig)
    rows = []
    for what, predicted, got in (("CPU seconds, all nodes", cpu, float(measured["cpu_s"])),
                                 ("PSS MiB, all nodes", mib, float(measured["pss_mib"]))):
        rows.append((what, predicted, got, (predicted - got) / got))
    return rows


# -- output ------------------------------------------------------------------------------

DEPLOYMENTS = (("serve", "nginx + authsvc serve"), ("proxy", "authsvc proxy"))


def _n(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def figures_table(fig: Figures) -> str:
    rows = [
        ("proxy CPU ms per login, plain / TLS",
         f"{fig.proxy_cpu_login_plain * 1e3:.2f} / {fig.proxy_cpu_login_tls * 1e3:.2f}"),
        ("nginx CPU ms per login, plain / TLS",
         f"{fig.nginx_cpu_login_plain * 1e3:.2f} / {fig.nginx_cpu_login_tls * 1e3:.2f}"),
        ("serve CPU ms per login", f"{fig.serve_cpu_login * 1e3:.2f}"),
        ("proxy CPU s per GB relayed, plain / TLS",
         f"{fig.proxy_cpu_gb_plain:.2f} / {fig.proxy_cpu_gb_tls:.2f}"),
        ("nginx CPU s per GB relayed, plain / TLS",
         f"{fig.nginx_cpu_gb_plain:.2f} / {fig.nginx_cpu_gb_tls:.2f}"),
        ("proxy KiB per idle session, plain / TLS",
         f"{fig.proxy_kib_session_plain:.1f} / {fig.proxy_kib_session_tls:.1f}"),
        ("nginx KiB per idle session, plain / TLS",
         f"{fig.nginx_kib_session_plain:.1f} / {fig.nginx_kib_session_tls:.1f}"),
        ("proxy process baseline PSS, MiB", f"{fig.proxy_base_kib / 1024:.1f}"),
        (f"nginx baseline PSS (master + {fig.nginx_workers} workers), MiB",
         f"{fig.nginx_base_kib / 1024:.1f}"),
        ("serve process baseline PSS, MiB", f"{fig.serve_base_kib / 1024:.1f}"),
    ]
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    for name, run in fig.runs.items():
        lines.append(f"| {RESULT_FILES[name]}: run | {run.get('started_utc', '?')}, commit "
                     f"{run.get('commit', '?')}, load average {run.get('load_average_start')}"
                     f" -> {run.get('load_average_end')} |")
    return "\n".join(lines)


def site_table(site: Site, fig: Figures, node: Node = Node()) -> str:
    plans = [plan(site, d, fig, node) for d, _ in DEPLOYMENTS]
    head = (f"**{site.name}**: {site.mailboxes:,} mailboxes, {site.logins_per_s:,.0f} "
            f"logins/s, {site.sessions:,} sessions, {site.relogins_per_hour:g} re-logins per "
            f"active mailbox per hour ({site.active_mailboxes:,.0f} active), TLS share "
            f"{site.tls_share:.0%}, cache TTL {site.cache_ttl:g} s")
    rows: list[tuple[str, list[str]]] = [
        ("nodes (N+1)", [str(p.nodes) for p in plans]),
        ("set by", [p.binding for p in plans]),
        ("busy cores per node (one node down)", [f"{p.cores_per_node:.2f}" for p in plans]),
        ("memory per node, MiB", [_n(p.memory_mib_per_node) for p in plans]),
        ("sessions / logins/s per node", [f"{_n(p.sessions_per_node)} / "
                                          f"{_n(p.logins_per_node)}" for p in plans]),
        ("cache-holding processes per node", [str(p.workers_per_node) for p in plans]),
        ("route cache miss ratio", [f"{p.miss_ratio:.2f}" for p in plans]),
        ("MariaDB lookups/s after the cache", [_n(p.mariadb_queries_per_s) for p in plans]),
        ("MariaDB connections (pool x processes x nodes) / max_connections",
         [f"{p.mariadb_connections} / {Node().max_connections}" for p in plans]),
        ("Redis commands/s (throttle)", [_n(p.redis_commands_per_s) for p in plans]),
        ("Redis keys visited by SCAN/s", [_n(p.redis_scan_keys_per_s) for p in plans]),
        ("descriptors per node / busiest process", [f"{_n(p.descriptors_per_node)} / "
                                                    f"{_n(p.descriptors_per_process)}"
                                                    for p in plans]),
        ("LimitNOFILE (per process)", [str(p.limit_nofile) for p in plans]),
        ("HAProxy maxconn / descriptors", [f"{p.haproxy_maxconn} / {p.haproxy_descriptors}"
                                           for p in plans]),
        ("connections per node-to-store port pair", [_n(p.ports_node_to_store) for p in plans]),
        ("first to bind (use at N)", [f"{n} ({u:.0%})" for n, u in map(first_to_bind, plans)]),
    ]
    lines = [head, "", "| | " + " | ".join(label for _, label in DEPLOYMENTS) + " |",
             "|---|" + "---|" * len(plans)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def check_table(pool: Mapping[str, object], fig: Figures) -> str:
    run = pool.get("run", {})
    assert isinstance(run, dict)
    raw = pool["load"]
    assert isinstance(raw, dict)
    lines = [f"Load per run: {raw['nodes']} proxy nodes behind HAProxy, "
             f"{raw['logins_plain'] + raw['logins_tls']:,} logins in {raw['seconds']:g} s "
             f"({raw['logins_tls']:,} with STARTTLS), {raw['sessions_plain']:,} plain and "
             f"{raw['sessions_tls']:,} TLS idle sessions held; {run.get('started_utc', '?')}, "
             f"commit {run.get('commit', '?')}, load average {run.get('load_average_start')} -> "
             f"{run.get('load_average_end')}.", "",
             "| | predicted | measured | error |", "|---|---|---|---|"]
    for what, predicted, measured, error in pool_check(pool, fig):
        lines.append(f"| {what} | {predicted:.1f} | {measured:.1f} | {error:+.0%} |")
    return "\n".join(lines)


def markdown(fig: Figures, pool: Mapping[str, object] | None,
             sites: Iterable[Site] = SITES) -> str:
    """The generated part of docs/capacity.md."""
    parts = ["### Figures read from the bench JSON", "", figures_table(fig), ""]
    for site in sites:
        parts += [f"### Site: {site.name}", "", site_table(site, fig), ""]
    if pool is not None:
        parts += ["### The model against the measured pool", "", check_table(pool, fig), ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="directory of the bench JSON (default bench/results)")
    parser.add_argument("--markdown", action="store_true",
                        help="print only the generated part of docs/capacity.md")
    parser.add_argument("--site", nargs=4, metavar=("NAME", "MAILBOXES", "LOGINS_S", "SESSIONS"),
                        help="a site of your own instead of the three")
    parser.add_argument("--relogins-per-hour", type=float)
    parser.add_argument("--tls-share", type=float)
    parser.add_argument("--cache-ttl", type=float)
    args = parser.parse_args(argv)
    fig = load_figures(args.results)
    pool_path = args.results / RESULT_FILES["pool"]
    pool = json.loads(pool_path.read_text()) if pool_path.exists() else None
    sites = list(SITES)
    if args.site:
        name, mailboxes, rate, sessions = args.site
        sites = [Site(name, int(mailboxes), float(rate), int(sessions))]
    changes = {k: v for k, v in (("relogins_per_hour", args.relogins_per_hour),
                                 ("tls_share", args.tls_share), ("cache_ttl", args.cache_ttl))
               if v is not None}
    sites = [replace(s, **changes) for s in sites]  # type: ignore[arg-type]
    text = markdown(fig, pool, sites)
    if not args.markdown:
        text = f"Capacity model from {args.results}\n\n{text}"
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
