"""The ``process_*`` figures per worker, the supervisor's roster, histograms of extra
families, series added while running, and the proxy's store labels with their cap."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from authsvc.proxy.metrics import OTHER_STORE, STORE_LABELS, ProxyMetrics, families

from authsvc.exposition import Family
from authsvc.holds.rules import Hold, HoldSet
from authsvc.holds.state import HOLD_FAMILIES, HoldKeeper
from authsvc.metrics import BUCKETS, Metrics
from authsvc.processes import figures, read_roster, write_roster
from authsvc.settings import HoldsSettings
from tests.helpers.prometheus import Scrape

LATENCY = Family("authsvc_test_latency_seconds", "histogram", "Latency.", buckets=(0.1, 1.0))


def test_this_process_is_worker_0_without_a_supervisor() -> None:
    got = Scrape(Metrics().render())
    assert got.value("authsvc_worker_restarts_total") == 0
    assert got.value("process_open_fds", worker="0") > 2
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert got.value("process_max_fds", worker="0") == soft
    assert got.value("process_resident_memory_bytes", worker="0") > 1_000_000
    assert got.value("process_cpu_seconds_total", worker="0") > 0
    assert abs(got.value("process_start_time_seconds", worker="0") - time.time()) < 3600 * 24
    assert got.types["process_cpu_seconds"] == "counter"


def test_a_scrape_reads_every_worker_of_the_roster(tmp_path: Path) -> None:
    # This process and its parent stand for two workers, in slots 1 and 0.
    write_roster(str(tmp_path), {os.getpid(): 1, os.getppid(): 0}, restarts=3)
    assert read_roster(str(tmp_path)).restarts == 3
    metrics = Metrics(str(tmp_path))
    metrics.attach_maps([])
    got = Scrape(metrics.render())
    assert got.value("authsvc_worker_restarts_total") == 3
    assert got.label_values("process_open_fds", "worker") == {"0", "1"}
    parent = figures(os.getppid())
    assert parent is not None
    assert got.value("process_start_time_seconds", worker="0") == parent.start_time_seconds
    metrics.close()


def test_a_worker_gone_from_the_roster_or_proc_is_left_out(tmp_path: Path) -> None:
    assert figures(2**22 + 7) is None  # above pid_max's ceiling: never a process
    write_roster(str(tmp_path), {os.getpid(): 0, 2**22 + 7: 1}, restarts=0)
    got = Scrape(Metrics(str(tmp_path)).render())
    assert got.label_values("process_open_fds", "worker") == {"0"}
    (tmp_path / "workers.json").write_text("not json")
    assert read_roster(str(tmp_path)).slots == {os.getpid(): 0}


def test_histograms_of_extra_families_are_cumulative_and_sum_over_workers(
        tmp_path: Path) -> None:
    one = Metrics(str(tmp_path), pid=os.getpid(), families=[(LATENCY, [{"store": "a"}])])
    two = Metrics(str(tmp_path), pid=os.getppid(), families=[(LATENCY, [{"store": "a"}])])
    for metrics in (one, two):
        metrics.attach_maps([])
    one.observe(LATENCY, 0.05, store="a")
    one.observe(LATENCY, 0.5, store="a")
    two.observe(LATENCY, 5.0, store="a")
    got = Scrape(one.render())
    assert got.types["authsvc_test_latency_seconds"] == "histogram"
    assert got.value("authsvc_test_latency_seconds_bucket", store="a", le="0.1") == 1
    assert got.value("authsvc_test_latency_seconds_bucket", store="a", le="1.0") == 2
    assert got.value("authsvc_test_latency_seconds_bucket", store="a", le="+Inf") == 3
    assert got.value("authsvc_test_latency_seconds_count", store="a") == 3
    assert got.value("authsvc_test_latency_seconds_sum", store="a") == 5.55
    one.close()
    two.close()


def test_each_label_sets_buckets_add_up_on_their_own(tmp_path: Path) -> None:
    metrics = Metrics(str(tmp_path), families=[(LATENCY, [{"store": "a"}, {"store": "b"}])])
    metrics.attach_maps([])
    for seconds in (0.05, 0.5, 50.0):
        metrics.observe(LATENCY, seconds, store="a")
    metrics.observe(LATENCY, 0.5, store="b")
    got = Scrape(metrics.render())
    bucket = "authsvc_test_latency_seconds_bucket"
    assert [got.value(bucket, store="a", le=le) for le in ("0.1", "1.0", "+Inf")] == [1, 2, 3]
    assert [got.value(bucket, store="b", le=le) for le in ("0.1", "1.0", "+Inf")] == [0, 1, 1]
    assert got.value("authsvc_test_latency_seconds_count", store="b") == 1
    metrics.close()


def test_series_added_while_running_survive_a_reload_of_the_maps(tmp_path: Path) -> None:
    metrics = Metrics(str(tmp_path), families=[(LATENCY, [])])
    metrics.attach_maps(["db"])
    count = ("authsvc_test_latency_seconds_count", '{store="b"}')
    assert count not in metrics.snapshot()
    metrics.add_series([(LATENCY, {"store": "b"}), (LATENCY, {"store": "b"})])
    assert count in metrics.snapshot()
    metrics.observe(LATENCY, 0.2, store="b")
    metrics.attach_maps(["db", "file"])  # a reload adds a map: the added series stay
    metrics.observe(LATENCY, 0.2, store="b")
    got = Scrape(metrics.render())
    assert got.value("authsvc_test_latency_seconds_count", store="b") == 2
    assert got.value("authsvc_map_up", map="file") == 1
    metrics.close()


def test_store_labels_are_capped_and_the_rest_is_other() -> None:
    metrics = Metrics(families=families(["imap4"]))
    proxy = ProxyMetrics(metrics)
    stores = [f"10.0.{i // 250}.{i % 250}:143" for i in range(STORE_LABELS + 5)]
    for store in stores:
        proxy.store_connect(store, 0.003)
    proxy.store_connect(stores[0], None)
    proxy.store_login(stores[-1], 0.2)
    # A login never rewrites the worker file: new stores wait for the refresh.
    assert not Scrape(metrics.render()).label_values(
        "authsvc_proxy_store_connect_seconds_count", "store") - {OTHER_STORE}
    proxy.refresh({}, {}, {}, {stores[0]: 2, stores[-1]: 1, stores[-2]: 1})
    got = Scrape(metrics.render())
    labels = got.label_values("authsvc_proxy_store_connect_seconds_count", "store")
    assert labels == {*stores[:STORE_LABELS], OTHER_STORE}
    assert got.value("authsvc_proxy_store_connect_seconds_count", store=OTHER_STORE) == 5
    assert (BUCKETS[2], BUCKETS[3]) == (0.0025, 0.005)
    assert got.value("authsvc_proxy_store_connect_seconds_bucket", store=stores[0],
                     le="0.0025") == 0
    assert got.value("authsvc_proxy_store_connect_seconds_bucket", store=stores[0],
                     le="0.005") == 1
    assert got.value("authsvc_proxy_store_connect_failures_total", store=stores[0]) == 1
    assert got.value("authsvc_proxy_store_login_seconds_count", store=OTHER_STORE) == 1
    assert got.value("authsvc_proxy_store_sessions", store=stores[0]) == 2
    assert got.value("authsvc_proxy_store_sessions", store=OTHER_STORE) == 2
    assert got.value("authsvc_proxy_store_sessions", store=stores[1]) == 0


def test_the_oldest_hold_s_placing_time_is_a_gauge(tmp_path: Path) -> None:
    metrics = Metrics(families=HOLD_FAMILIES)
    keeper = HoldKeeper(HoldsSettings(state_file=str(tmp_path / "holds.json")), metrics,
                        clock=lambda: 5000.0)
    keeper.current = HoldSet([Hold("user", "bob", since=1000.0),
                              Hold("user", "carol", since=2000.0),
                              Hold("store", "10.0.0.5", since=3000.0, until=4000.0)])
    keeper._refresh(5000.0)
    got = Scrape(metrics.render())
    assert got.value("authsvc_holds_oldest_timestamp_seconds", kind="user") == 1000
    assert got.value("authsvc_holds_oldest_timestamp_seconds", kind="store") == 0  # expired
    assert got.value("authsvc_holds", kind="user") == 2
