"""The hand-written Prometheus text, and the per-worker files that add up across workers."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from authsvc import __version__
from authsvc.metrics import BUCKETS, Metrics, read_file
from authsvc.routing import CacheStats
from tests.unit.auth_http_fakes import make_app, make_maps, seed_settings

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

# One sample line of the text format 0.0.4: name, optional labels, a number.
SAMPLE = re.compile(
    r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r"(-?[0-9.e+-]+|\+Inf|NaN)"
)


def samples(text: str) -> dict[str, str]:
    """Every sample line, checked against the format, as {series: value}."""
    out = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.fullmatch(line), line
        series, value = line.rsplit(" ", 1)
        assert series not in out, f"duplicate {series}"
        out[series] = value
    return out


def stats(hits: int = 0, misses: int = 0, up: bool = True) -> CacheStats:
    return CacheStats(hits=hits, misses=misses, negative_hits=0, stale=0, errors=0, map_up=up)


def test_fresh_metrics_render_every_series_at_zero() -> None:
    text = Metrics().render()
    got = samples(text)
    assert got[f'authsvc_build_info{{version="{__version__}"}}'] == "1"
    assert got["authsvc_workers"] == "1"
    assert got['authsvc_auth_decisions_total{protocol="pop3",result="map_unavailable"}'] == "0"
    assert got['authsvc_auth_duration_seconds_bucket{le="+Inf"}'] == "0"
    assert "# TYPE authsvc_auth_duration_seconds histogram" in text
    assert "# TYPE authsvc_auth_decisions_total counter" in text


def test_histogram_is_cumulative() -> None:
    metrics = Metrics()
    metrics.observe_decision("imap", "ok", 0.0003)
    metrics.observe_decision("imap", "ok", 0.003)
    metrics.observe_decision("pop3", "no_route", 99.0)
    got = samples(metrics.render())
    bucket = 'authsvc_auth_duration_seconds_bucket{{le="{}"}}'.format
    assert got[bucket("0.0005")] == "1"
    assert got[bucket("0.0025")] == "1"
    assert got[bucket("0.005")] == "2"
    assert got[bucket(repr(BUCKETS[-1]))] == "2"
    assert got[bucket("+Inf")] == "3"
    assert got["authsvc_auth_duration_seconds_count"] == "3"
    assert float(got["authsvc_auth_duration_seconds_sum"]) == pytest.approx(99.0033)
    assert got['authsvc_auth_decisions_total{protocol="imap",result="ok"}'] == "2"


def test_unknown_labels_fold_into_unknown_and_error() -> None:
    metrics = Metrics()
    metrics.observe_decision("nntp", "weird", 0.001)
    assert samples(metrics.render())[
        'authsvc_auth_decisions_total{protocol="unknown",result="error"}'
    ] == "1"


def test_cache_series_with_escaped_map_names() -> None:
    metrics = Metrics()
    name = 'SELECT "x" FROM t\\n WHERE\nuser=%s'
    metrics.attach_maps([name])
    metrics.set_cache_stats({name: stats(hits=7, misses=2, up=False), "other": None})
    got = samples(metrics.render())
    label = 'map="SELECT \\"x\\" FROM t\\\\n WHERE\\nuser=%s"'
    assert got[f"authsvc_cache_hits_total{{{label}}}"] == "7"
    assert got[f"authsvc_cache_misses_total{{{label}}}"] == "2"
    assert got[f"authsvc_map_up{{{label}}}"] == "0"


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
        got = samples(view.render())
        assert got["authsvc_workers"] == "2"
        assert got['authsvc_auth_decisions_total{protocol="imap",result="ok"}'] == "3"
        assert got["authsvc_auth_duration_seconds_count"] == "3"
        assert got['authsvc_cache_hits_total{map="db"}'] == "7"
        assert got['authsvc_map_up{map="db"}'] == "0"  # gauges: the minimum

    # The other worker dies: its counts stay (totals never go backwards), its
    # gauge no longer counts.
    other.close()
    other_worker.kill()
    other_worker.wait()
    got = samples(me.render())
    assert got["authsvc_workers"] == "1"
    assert got['authsvc_auth_decisions_total{protocol="imap",result="ok"}'] == "3"
    assert got['authsvc_map_up{map="db"}'] == "1"


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
    assert samples(Metrics(str(tmp_path)).render())["authsvc_workers"] == "1"


async def test_cache_counters_come_from_the_router(aiohttp_client: MakeClient) -> None:
    maps = make_maps(cached=True)
    client = await aiohttp_client(make_app(seed_settings(), maps))
    for user in ("Bob", "bob", "nobody", "nobody"):
        async with client.get("/auth", headers={"Auth-User": user, "Auth-Protocol": "imap"}):
            pass
    async with client.get("/metrics") as reply:
        got = samples(await reply.text())
    name = "scripted"  # the listeners' map name (auth_http_fakes.seed_settings)
    assert got[f'authsvc_cache_hits_total{{map="{name}"}}'] == "1"
    assert got[f'authsvc_cache_misses_total{{map="{name}"}}'] == "2"
    assert got[f'authsvc_cache_negative_hits_total{{map="{name}"}}'] == "1"
    assert got[f'authsvc_map_up{{map="{name}"}}'] == "1"


def test_attaching_maps_twice_keeps_the_counts(tmp_path: Path) -> None:
    # A reload that adds a map attaches again; the worker file is rewritten.
    metrics = Metrics(str(tmp_path))
    metrics.attach_maps(["db"])
    metrics.observe_decision("imap", "ok", 0.001)
    metrics.set_cache_stats({"db": stats(hits=5, up=True)})
    metrics.attach_maps(["db", "popmap"])
    metrics.set_cache_stats({"popmap": stats(hits=2, up=True)})
    got = samples(metrics.render())
    assert got['authsvc_auth_decisions_total{protocol="imap",result="ok"}'] == "1"
    assert got['authsvc_cache_hits_total{map="db"}'] == "5"
    assert got['authsvc_cache_hits_total{map="popmap"}'] == "2"
    metrics.close()
