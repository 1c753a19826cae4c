"""bench/capacity.py: the model's arithmetic, and docs/capacity.md holding exactly its output."""

from __future__ import annotations

import io
import math
import re
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import pytest

from bench.capacity import (
    RESULTS,
    Figures,
    Node,
    PoolLoad,
    RedisCost,
    Site,
    figures_from,
    main,
    miss_ratio,
    next_power_of_two,
    plan,
    predict_pool,
    redis_cost_from,
)

ROOT = Path(__file__).resolve().parents[2]

FIG = Figures(
    proxy_cpu_login_plain=0.002, proxy_cpu_login_tls=0.003,
    nginx_cpu_login_plain=0.0005, nginx_cpu_login_tls=0.001, serve_cpu_login=0.0002,
    cpu_per_miss=0.0,
    proxy_cpu_gb_plain=1.0, proxy_cpu_gb_tls=2.0, nginx_cpu_gb_plain=1.0, nginx_cpu_gb_tls=2.0,
    proxy_kib_session_plain=16.0, proxy_kib_session_tls=32.0,
    nginx_kib_session_plain=8.0, nginx_kib_session_tls=16.0,
    proxy_base_kib=20 * 1024.0, proxy_fresh_base_kib=18 * 1024.0, nginx_base_kib=30 * 1024.0,
    nginx_workers=2,
    serve_base_kib=32 * 1024.0,
)
REDIS = RedisCost(ok_commands=8, serve_commands=2, failed_commands=21, ok_cpu_us=100,
                  ok_cpu_us_per_key=0.5, serve_cpu_us=20, failed_cpu_us=300)


def test_miss_ratio_is_one_miss_per_expected_hits_plus_one() -> None:
    # 12 re-logins an hour = one per 300 s; a 60 s entry then sees 0.2 hits.
    assert miss_ratio(12, 60, 1) == pytest.approx(1 / 1.2)
    # Spread over 4 caches, each sees a quarter of the logins: 0.05 hits.
    assert miss_ratio(12, 60, 4) == pytest.approx(1 / 1.05)
    # A TTL of an hour, one cache: 12 hits per miss.
    assert miss_ratio(12, 3600, 1) == pytest.approx(1 / 13)
    assert miss_ratio(12, 0, 1) == 1.0


def test_next_power_of_two() -> None:
    assert next_power_of_two(1) == 1024
    assert next_power_of_two(1025) == 2048
    assert next_power_of_two(65536) == 65536
    assert next_power_of_two(65537) == 131072


def test_active_mailboxes_beyond_the_site_are_refused() -> None:
    with pytest.raises(ValueError, match="active mailboxes"):
        plan(Site("x", mailboxes=100, logins_per_s=10, sessions=10), "proxy", FIG, REDIS)


def test_proxy_plan_arithmetic() -> None:
    site = Site("t", mailboxes=1_000_000, logins_per_s=1000, sessions=100_000,
                relogins_per_hour=12, tls_share=0.5, cache_ttl=60)
    node = Node(cores=4, memory_gib=4, cpu_target=0.5, memory_target=0.5,
                relay_mb_per_session_hour=0.0, failure_share=0.0)
    p = plan(site, "proxy", FIG, REDIS, node)
    # 1000 logins/s x 2.5 ms = 2.5 cores; 2 usable per node -> N = 2 by CPU...
    # memory: 100,000 x 24 KiB = 2,344 MiB + bases; 2,048 usable -> N = 2 too.
    assert p.nodes == 3
    assert p.cores_per_node == pytest.approx(1.25)
    workers = math.ceil(1.25 / 0.5)
    assert p.workers_per_node == workers
    assert p.memory_mib_per_node == pytest.approx((workers * 20 * 1024 + 50_000 * 24) / 1024)
    processes = 3 * workers
    assert p.miss_ratio == pytest.approx(1 / (1 + 12 / 3600 * 60 / processes))
    assert p.mariadb_queries_per_s == pytest.approx(1000 * p.miss_ratio)
    assert p.mariadb_connections == 10 * processes
    # No failures: no keys; a success costs the same whatever the keyspace.
    assert p.redis_commands_per_s == pytest.approx(1000 * 8)
    assert p.redis_cores == pytest.approx(1000 * 100e-6)
    assert p.descriptors_per_process == pytest.approx(2 * 50_000 / workers + 256)
    assert p.limit_nofile == next_power_of_two(p.descriptors_per_process * 1.25)
    assert p.haproxy_maxconn == 125_952  # 125,000 rounded up to a multiple of 1,024
    assert p.uses["ports, node to one store address"] == pytest.approx(
        50_000 / (Node().port_range * 0.8))
    assert p.first_to_bind()[0] == "ports, node to one store address"


def test_a_miss_adds_its_cpu_at_the_pool_s_miss_ratio() -> None:
    site = Site("t", mailboxes=1_000_000, logins_per_s=1000, sessions=1000)
    node = Node(relay_mb_per_session_hour=0.0)
    without = plan(site, "serve", FIG, REDIS, node)
    with_misses = plan(site, "serve", replace(FIG, cpu_per_miss=0.001), REDIS, node)
    assert with_misses.cores_per_node - without.cores_per_node == pytest.approx(
        1000 * with_misses.miss_ratio * 0.001 / (with_misses.nodes - 1))


def test_more_store_addresses_relieve_the_ports() -> None:
    site = Site("t", mailboxes=1_000_000, logins_per_s=100, sessions=100_000)
    one = plan(site, "serve", FIG, REDIS, Node())
    four = plan(site, "serve", FIG, REDIS, Node(store_addresses=4))
    key = "ports, node to one store address"
    assert four.uses[key] == pytest.approx(one.uses[key] / 4)


def test_redis_keyspace_scan_grows_with_failures() -> None:
    site = Site("t", mailboxes=1_000_000, logins_per_s=100, sessions=1000)
    p = plan(site, "proxy", FIG, REDIS, Node(failure_share=0.1, throttle_window=600,
                                             keys_per_failure=4))
    keys = 100 * 0.1 * 600 * 4
    assert p.redis_keys == pytest.approx(keys)
    assert p.redis_commands_per_s == pytest.approx(90 * 8 + 10 * 21)
    assert p.redis_cores == pytest.approx(90 * (100 + 0.5 * keys) / 1e6 + 10 * 300 / 1e6)
    serve = plan(site, "serve", FIG, REDIS, Node(failure_share=0.1))
    assert serve.redis_commands_per_s == pytest.approx(100 * 2)


def test_predict_pool() -> None:
    load = PoolLoad(deployment="proxy", nodes=2, seconds=60, logins_plain=1200,
                    logins_tls=1200, sessions_plain=2000, sessions_tls=2000, users=2400,
                    cache_ttl=60)
    cpu, mib, lookups = predict_pool(load, FIG)
    assert cpu == pytest.approx(1200 * 0.002 + 1200 * 0.003)
    assert mib == pytest.approx((2 * 20 * 1024 + 2000 * 16 + 2000 * 32) / 1024)
    assert predict_pool(load, FIG, fresh=True)[1] == pytest.approx(mib - 2 * 2)
    # 40 logins/s over 2,400 mailboxes: each one every 60 s; a 60 s entry in
    # one of two caches sees half a hit on average: 2 misses in 3 logins.
    assert lookups == pytest.approx(2400 * 2 / 3)
    missing = replace(FIG, cpu_per_miss=0.0003)
    assert predict_pool(load, missing)[0] == pytest.approx(cpu + 1600 * 0.0003)
    nginx = replace(load, deployment="nginx")
    cpu, mib, _ = predict_pool(nginx, FIG)
    assert cpu == pytest.approx(1200 * 0.0005 + 1200 * 0.001 + 2400 * 0.0002)
    assert mib == pytest.approx((2 * (30 + 32) * 1024 + 2000 * 8 + 2000 * 16) / 1024)


def test_figures_and_redis_cost_read_the_bench_rows() -> None:
    proxy = {"run": {"cpus": 2}, "rows": [
        {"test": "paced", "front": "authsvc", "mode": "plain", "cpu_s_per_1000": 2.0},
        {"test": "paced", "front": "authsvc", "mode": "starttls", "cpu_s_per_1000": 3.0},
        {"test": "paced", "front": "nginx", "mode": "plain", "cpu_s_per_1000": 0.5},
        {"test": "paced", "front": "nginx", "mode": "starttls", "cpu_s_per_1000": 1.0},
        *({"test": "fetch", "front": f, "mode": m, "cpu_s_per_gb": 1.5}
          for f in ("authsvc", "nginx") for m in ("plain", "imaps")),
        *({"test": "memory", "front": f, "mode": m, "kib_per_session": 10.0,
           "first_base_kib": 2048, "processes": 3 if f == "nginx" else 1}
          for f in ("authsvc", "nginx") for m in ("plain", "tls")),
        {"test": "memory", "front": "authsvc", "mode": "plain", "kib_per_session": 10.0,
         "first_base_kib": 2048, "warm_base_kib": 4096, "processes": 1},
        {"test": "memory", "front": "authsvc", "mode": "tls", "error": "EMFILE"},
    ]}
    login = {"rows": [
        {"front": "authsvc", "mode": "plain", "cpu_ms_per_login": {"authsvc": 0.1},
         "pss_kib": {"authsvc": 30000}},
        {"front": "authsvc", "mode": "starttls", "cpu_ms_per_login": {"authsvc": 0.3},
         "pss_kib": {"authsvc": 31000}},
        {"front": "static", "mode": "plain", "cpu_ms_per_login": {"nginx": 9.0}},
    ]}
    paced = {"rows": [*login["rows"], {"front": "authsvc-paced", "mode": "plain",
                                       "cpu_ms_per_login": {"authsvc": 0.5}},
                      {"front": "authsvc-paced-miss", "mode": "plain",
                       "cpu_ms_per_login": {"authsvc": 0.8}}]}
    assert figures_from(proxy, paced).serve_cpu_login == pytest.approx(0.0005)
    assert figures_from(proxy, paced).cpu_per_miss == pytest.approx(0.0003)
    fig = figures_from(proxy, login)
    assert fig.cpu_per_miss == 0.0  # no paced rows: no miss figure
    assert fig.proxy_cpu_login_plain == pytest.approx(0.002)
    assert fig.nginx_cpu_login_tls == pytest.approx(0.001)
    assert fig.serve_cpu_login == pytest.approx(0.0002)
    assert fig.nginx_workers == 2
    assert fig.serve_base_kib == 31000
    assert fig.proxy_base_kib == 4096  # the warm figure, where the bench wrote one
    assert fig.proxy_fresh_base_kib == 2048
    redis = redis_cost_from({"rows": [
        {"keys": 0, "path": "proxy_ok", "commands": 8, "redis_cpu_us": 100},
        {"keys": 1000, "path": "proxy_ok", "commands": 8, "redis_cpu_us": 600},
        {"keys": 0, "path": "serve_ok", "commands": 2, "redis_cpu_us": 20},
        {"keys": 0, "path": "proxy_failed", "commands": 21, "redis_cpu_us": 300},
    ]})
    assert redis.ok_commands == 8
    assert redis.ok_cpu_us == pytest.approx(100)  # the smallest keyspace's figure
    assert redis.ok_cpu_us_per_key == pytest.approx(0.5)


def _generated(text: str) -> str:
    match = re.search(r"<!-- generated by python -m bench.capacity -->\n(.*?)"
                      r"<!-- end of generated part -->", text, re.S)
    assert match is not None, "docs/capacity.md lost its generated part's markers"
    return match.group(1)


def test_the_doc_holds_what_the_model_prints() -> None:
    """docs/capacity.md's tables are `python -m bench.capacity`'s output, unedited."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--results", str(RESULTS)]) == 0
    doc = (ROOT / "docs" / "capacity.md").read_text()
    assert _generated(doc) == out.getvalue(), (
        "docs/capacity.md is out of date: paste `python -m bench.capacity` between its markers")
