"""The hand-written Prometheus text, and the per-worker files that add up across workers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from authsvc import __version__
from authsvc.exposition import Family
from authsvc.metricfiles import read_file, start_time
from authsvc.metrics import BUCKETS, Metrics
from authsvc.routing import CacheStats
from tests.helpers.prometheus import Scrape
from tests.unit.auth_http_fakes import make_app, make_maps, seed_settings

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

def stats(hits: int = 0, misses: int = 0, up: bool = True) -> CacheStats:
    return CacheStats(hits=hits, misses=misses, negative_hits=0, stale=0, errors=0, map_up=up)


def test_fresh_metrics_render_every_series_at_zero() -> None:
    got = Scrape(Metrics().render())
    assert got.value("authsvc_build_info", version=__version__) == 1
    assert got.value("authsvc_workers") == 1
    assert got.value("authsvc_auth_decisions_total", protocol="pop3",
                     result="map_unavailable") == 0
    assert got.value("authsvc_auth_duration_seconds_bucket", le="+Inf") == 0
    assert got.types["authsvc_auth_duration_seconds"] == "histogram"
    assert got.types["authsvc_auth_decisions"] == "counter"


def test_histogram_is_cumulative() -> None:
    metrics = Metrics()
    metrics.observe_decision("imap", "ok", 0.0003)
    metrics.observe_decision("imap", "ok", 0.003)
    metrics.observe_decision("pop3", "no_route", 99.0)
    got = Scrape(metrics.render())

    def bucket(le: str) -> float:
        return got.value("authsvc_auth_duration_seconds_bucket", le=le)

    assert bucket("0.0005") == 1
    assert bucket("0.0025") == 1
    assert bucket("0.005") == 2
    assert bucket(repr(BUCKETS[-1])) == 2
    assert bucket("+Inf") == 3
    assert got.value("authsvc_auth_duration_seconds_count") == 3
    assert got.value("authsvc_auth_duration_seconds_sum") == pytest.approx(99.0033)
    assert got.value("authsvc_auth_decisions_total", protocol="imap", result="ok") == 2


def test_unknown_labels_fold_into_unknown_and_error() -> None:
    metrics = Metrics()
    metrics.observe_decision("nntp", "weird", 0.001)
    assert Scrape(metrics.render()).value("authsvc_auth_decisions_total", protocol="unknown",
                                         result="error") == 1


def test_cache_series_with_escaped_map_names() -> None:
    metrics = Metrics()
    name = 'SELECT "x" FROM t\\n WHERE\nuser=%s'
    metrics.attach_maps([name])
    metrics.set_cache_stats({name: stats(hits=7, misses=2, up=False), "other": None})
    text = metrics.render()
    assert 'map="SELECT \\"x\\" FROM t\\\\n WHERE\\nuser=%s"' in text
    got = Scrape(text)
    assert got.value("authsvc_cache_hits_total", map=name) == 7
    assert got.value("authsvc_cache_misses_total", map=name) == 2
    assert got.value("authsvc_map_up", map=name) == 0


@pytest.fixture
def other_worker() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose pid stands in for a second worker."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_workers_files_add_up(tmp_path: Path, other_worker: subprocess.Popen[bytes]) -> None:
    me = Metrics(str(tmp_path))
    other = Metrics(str(tmp_path), pid=other_worker.pid)
    for metrics, hits, up in ((me, 3, True), (other, 4, False)):
        metrics.attach_maps(["db"])
        metrics.set_cache_stats({"db": stats(hits=hits, up=up)})
    me.observe_decision("imap", "ok", 0.001)
    for _ in range(2):
        other.observe_decision("imap", "ok", 0.001)
    for view in (me, other):  # whichever worker answers the scrape
        got = Scrape(view.render())
        assert got.value("authsvc_workers") == 2
        assert got.value("authsvc_auth_decisions_total", protocol="imap", result="ok") == 3
        assert got.value("authsvc_auth_duration_seconds_count") == 3
        assert got.value("authsvc_cache_hits_total", map="db") == 7
        assert got.value("authsvc_map_up", map="db") == 0  # gauges: the minimum

    # The other worker dies: its counts stay (totals never go backwards), its
    # gauge no longer counts.
    other.close()
    other_worker.kill()
    other_worker.wait()
    got = Scrape(me.render())
    assert got.value("authsvc_workers") == 1
    assert got.value("authsvc_auth_decisions_total", protocol="imap", result="ok") == 3
    assert got.value("authsvc_map_up", map="db") == 1


def test_close_keeps_numbers_and_file(tmp_path: Path) -> None:
    metrics = Metrics(str(tmp_path))
    metrics.attach_maps(["db"])
    metrics.observe_decision("pop3", "ok", 0.01)
    metrics.close()
    metrics.observe_decision("pop3", "ok", 0.01)  # still works, in memory now
    (path,) = tmp_path.glob("metrics-*.bin")
    stored = dict(read_file(path))
    assert stored[("authsvc_auth_duration_seconds_count", "")] == 1.0
    assert metrics.snapshot()[("authsvc_auth_duration_seconds_count", "")] == 2.0


def test_foreign_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "metrics-1.bin").write_bytes(b"not ours")
    assert read_file(tmp_path / "metrics-1.bin") == []
    assert Scrape(Metrics(str(tmp_path)).render()).value("authsvc_workers") == 1


async def test_cache_counters_come_from_the_router(aiohttp_client: MakeClient) -> None:
    maps = make_maps(cached=True)
    client = await aiohttp_client(make_app(seed_settings(), maps))
    for user in ("Bob", "bob", "nobody", "nobody"):
        async with client.get("/auth", headers={"Auth-User": user, "Auth-Protocol": "imap"}):
            pass
    async with client.get("/metrics") as reply:
        got = Scrape(await reply.text())
    name = "scripted"  # the listeners' map name (auth_http_fakes.seed_settings)
    assert got.value("authsvc_cache_hits_total", map=name) == 1
    assert got.value("authsvc_cache_misses_total", map=name) == 2
    assert got.value("authsvc_cache_negative_hits_total", map=name) == 1
    assert got.value("authsvc_map_up", map=name) == 1


def test_attaching_maps_again_keeps_the_counts_and_drops_retired_maps(tmp_path: Path) -> None:
    # A reload attaches the new router's maps; the worker file is rewritten.
    metrics = Metrics(str(tmp_path))
    metrics.attach_maps(["db", "old"])
    metrics.observe_decision("imap", "ok", 0.001)
    metrics.set_cache_stats({"db": stats(hits=5, up=True), "old": stats(hits=3, up=False)})
    metrics.attach_maps(["db", "popmap"])
    metrics.set_cache_stats({"popmap": stats(hits=2, up=True)})
    got = Scrape(metrics.render())
    assert got.value("authsvc_auth_decisions_total", protocol="imap", result="ok") == 1
    assert got.value("authsvc_cache_hits_total", map="db") == 5
    assert got.value("authsvc_cache_hits_total", map="popmap") == 2
    assert got.label_values("authsvc_map_up", "map") == {"db", "popmap"}
    assert got.label_values("authsvc_cache_hits_total", "map") == {"db", "popmap"}
    (path,) = tmp_path.glob("metrics-*.bin")
    assert {labels for (_family, labels), _ in read_file(path) if "old" in labels} == set()
    metrics.close()


def test_a_dead_workers_retired_map_does_not_come_back(
    tmp_path: Path, other_worker: subprocess.Popen[bytes]
) -> None:
    me = Metrics(str(tmp_path))
    other = Metrics(str(tmp_path), pid=other_worker.pid)
    for metrics in (me, other):
        metrics.attach_maps(["old"])
        metrics.set_cache_stats({"old": stats(hits=4)})
    other.close()
    other_worker.kill()  # it dies before the reload; its file stays
    other_worker.wait()
    me.attach_maps(["new"])
    got = Scrape(me.render())
    assert got.label_values("authsvc_cache_hits_total", "map") == {"new"}
    assert got.value("authsvc_cache_hits_total", map="new") == 0
    me.close()


def test_a_reused_pid_does_not_make_a_dead_worker_live(
    tmp_path: Path, other_worker: subprocess.Popen[bytes]
) -> None:
    """A file whose pid now belongs to another process (started later) is a dead worker's."""
    started = start_time(other_worker.pid)
    assert started is not None
    me = Metrics(str(tmp_path))
    dead = Metrics(str(tmp_path), pid=other_worker.pid, started=started - 1)
    for metrics, up in ((me, True), (dead, False)):
        metrics.attach_maps(["db"])
        metrics.set_cache_stats({"db": stats(hits=1, up=up)})
    got = Scrape(me.render())
    assert got.value("authsvc_workers") == 1
    assert got.value("authsvc_map_up", map="db") == 1  # the dead worker's gauge is ignored
    assert got.value("authsvc_cache_hits_total", map="db") == 2  # its counts stay
    assert len(list(tmp_path.glob(f"metrics-{os.getpid()}-*.bin"))) == 1
    me.close()
    dead.close()


GAUGE = Family("authsvc_test_gauge", "gauge", "A gauge that can be anything.")


@pytest.mark.parametrize(("value", "written"), [
    (float("nan"), "NaN"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"), (-2.5, "-2.5"),
])
def test_nan_and_infinities_are_written_as_prometheus_writes_them(value: float,
                                                                  written: str) -> None:
    metrics = Metrics(families=[(GAUGE, [{"listener": "imap4"}])])
    metrics.set(GAUGE, value, listener="imap4")
    metrics.observe_decision("imap", "ok", value)
    text = metrics.render()
    assert f'authsvc_test_gauge{{listener="imap4"}} {written}\n' in text
    assert f"authsvc_auth_duration_seconds_sum {written}\n" in text
    parsed = Scrape(text).value("authsvc_test_gauge", listener="imap4")
    assert str(parsed) == str(value)


def test_map_host_series_are_those_of_the_configured_hosts(tmp_path: Path) -> None:
    # One pair of series per configured host (docs/maps.md, "Failover and failback").
    metrics = Metrics(str(tmp_path))
    hosts = {"db": [("db1:3306", 0, False), ("db2:3306", 0, False)]}
    metrics.attach_maps(["db"], hosts)
    got = Scrape(metrics.render())
    assert got.types["authsvc_map_host_answers"] == "counter"
    assert got.types["authsvc_map_host_in_use"] == "gauge"
    assert got.label_values("authsvc_map_host_in_use", "host") == {"db1:3306", "db2:3306"}
    metrics.set_map_hosts({"db": [("db1:3306", 7, False), ("db2:3306", 3, True),
                                  ("unlisted:3306", 1, True)]})
    got = Scrape(metrics.render())
    assert got.value("authsvc_map_host_answers_total", map="db", host="db1:3306") == 7
    assert got.value("authsvc_map_host_answers_total", map="db", host="db2:3306") == 3
    assert got.value("authsvc_map_host_in_use", map="db", host="db1:3306") == 0
    assert got.value("authsvc_map_host_in_use", map="db", host="db2:3306") == 1
    assert not got.has("authsvc_map_host_in_use", map="db", host="unlisted:3306")
    # A reload that lists another host: the counts of the hosts kept stay.
    metrics.attach_maps(["db"], {"db": [("db2:3306", 3, True), ("db3:3306", 0, False)]})
    got = Scrape(metrics.render())
    assert got.label_values("authsvc_map_host_in_use", "host") == {"db2:3306", "db3:3306"}
    assert got.value("authsvc_map_host_answers_total", map="db", host="db2:3306") == 3
    metrics.close()
