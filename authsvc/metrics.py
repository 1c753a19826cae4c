"""The ``Metrics`` object: what serve and the proxy record, and their /metrics text.

One :class:`Metrics` object is made per process and passed to whoever
records; its text is written in the exposition format by hand
(``authsvc/exposition.py`` says why).

Several workers (``--workers N``): each worker keeps its numbers in its own
file (``authsvc/metricfiles.py``).  A scrape, whichever worker answers it,
adds the counters of every file up (a dead worker's for the series a live
worker still has); gauges take the minimum over the workers that are still
alive.  Decisions and latencies are written as they happen, so totals are
exact; the map caches keep their own counters, which each worker copies into
its file at most twice a second while logins come in, every second otherwise,
and before answering a scrape itself, so another worker's cache counters may
lag by up to a second.  With one process the array simply lives in memory.
docs/serve.md has the details.

The per-map series are those of the maps in use: :meth:`Metrics.attach_maps`
replaces them after a reload, so a retired map's series disappear.

Other front ends (``authsvc proxy``) add families of their own with
``Metrics(..., families=...)`` and record with :meth:`Metrics.add`,
:meth:`Metrics.set` and, for a histogram family, :meth:`Metrics.observe`; a
gauge that counts (live sessions) says ``combine="sum"`` and is added up over
the live workers instead.  Series whose label values are only known while
running (a store's) are added with :meth:`Metrics.add_series`, which writes
the worker file again, so not on a hot path.

Every scrape also shows ``authsvc_worker_restarts_total`` and the standard
``process_*`` figures of each live worker, labelled by its slot, read at the
scrape (``authsvc/processes.py``).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from authsvc import __version__
from authsvc.exposition import (
    Family,
    cumulative_samples,
    format_labels,
    format_value,
    header,
    histogram_series,
)
from authsvc.failures import MEANINGS
from authsvc.metricfiles import Series, WorkerFile, start_time, worker_series
from authsvc.processes import figures, read_roster

#: ``protocol`` label values; anything else nginx sends is counted as "unknown".
PROTOCOLS = ("imap", "pop3", "smtp", "unknown")
#: ``result`` label values: "ok", every failure's label (authsvc/failures.py),
#: and the HTTP front's own.
RESULTS = (
    "ok",
    *(meaning.label for meaning in MEANINGS.values()),
    "resolve_failed",
    "unsupported",
    "bad_request",
    "forbidden",
    "error",
)
#: Latency histogram bounds in seconds: a cache hit is well under 1 ms, a MySQL
#: round trip a few ms, and nginx gives up at auth_http_timeout (60 s default).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class CacheCounters(Protocol):
    """What a route cache reports (``CachedMap.stats``, ``Router.cache_stats()``); read-only."""

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def negative_hits(self) -> int: ...
    @property
    def stale(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def map_up(self) -> bool: ...


#: An extra family and the label sets of its series (``Metrics(families=...)``).
FamilySeries = tuple[Family, Sequence[Mapping[str, str]]]


DECISIONS = Family(
    "authsvc_auth_decisions_total", "counter", "auth_http answers by protocol and result."
)
DURATION = Family(
    "authsvc_auth_duration_seconds", "histogram", "Time from request to auth_http answer."
)
CACHE_HITS = Family("authsvc_cache_hits_total", "counter", "Routes served from the cache.")
CACHE_MISSES = Family("authsvc_cache_misses_total", "counter", "Lookups that asked the map.")
CACHE_NEGATIVE = Family(
    "authsvc_cache_negative_hits_total", "counter", "Absent keys answered from the cache."
)
CACHE_STALE = Family(
    "authsvc_cache_stale_total", "counter", "Expired routes served while the map was down."
)
MAP_ERRORS = Family("authsvc_map_errors_total", "counter", "Map lookups that failed.")
MAP_UP = Family("authsvc_map_up", "gauge", "1 when the map answered its last lookup or check.")
MAP_HOST_ANSWERS = Family(
    "authsvc_map_host_answers_total", "counter",
    "Statements each host of a map's failover list answered.",
)
MAP_HOST_IN_USE = Family(
    "authsvc_map_host_in_use", "gauge",
    "Processes whose map uses this host of its failover list now.", combine="sum",
)
#: Each host of a map's failover list: its answers and whether it is in use
#: (``Router.map_hosts()``), by map name.
MapHosts = Mapping[str, Sequence[tuple[str, int, bool]]]
WORKERS = Family("authsvc_workers", "gauge", "Worker processes alive.")
BUILD = Family("authsvc_build_info", "gauge", "authsvc version.")
RESTARTS = Family("authsvc_worker_restarts_total", "counter",
                  "Workers the supervisor replaced after they died.")
#: The standard process figures, per worker (``authsvc/processes.py``).
OPEN_FDS = Family("process_open_fds", "gauge", "Open file descriptors.")
MAX_FDS = Family("process_max_fds", "gauge", "Maximum number of open file descriptors.")
RESIDENT = Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
CPU = Family("process_cpu_seconds_total", "counter", "User and system CPU time in seconds.")
STARTED = Family("process_start_time_seconds", "gauge",
                 "Start time of the process since the Unix epoch in seconds.")
_PROCESS_FIELDS = (
    (OPEN_FDS, "open_fds"),
    (MAX_FDS, "max_fds"),
    (RESIDENT, "resident_bytes"),
    (CPU, "cpu_seconds"),
    (STARTED, "start_time_seconds"),
)

_CACHE_FIELDS = (
    (CACHE_HITS, "hits"),
    (CACHE_MISSES, "misses"),
    (CACHE_NEGATIVE, "negative_hits"),
    (CACHE_STALE, "stale"),
    (MAP_ERRORS, "errors"),
)
_FAMILIES = {
    f.name: f
    for f in (
        BUILD,
        WORKERS,
        DECISIONS,
        DURATION,
        CACHE_HITS,
        CACHE_MISSES,
        CACHE_NEGATIVE,
        CACHE_STALE,
        MAP_ERRORS,
        MAP_UP,
        MAP_HOST_ANSWERS,
        MAP_HOST_IN_USE,
    )
}


def _base_layout() -> list[tuple[str, str]]:
    """(family, labels) of every series that exists before the maps are known."""
    layout = [
        (DECISIONS.name, format_labels(protocol=p, result=r)) for p in PROTOCOLS for r in RESULTS
    ]
    # Buckets are stored per bucket (not cumulative) and added up when rendered;
    # the +Inf bucket is the count.
    layout += [(DURATION.name + "_bucket", format_labels(le=repr(b))) for b in BUCKETS]
    layout += [(DURATION.name + "_sum", ""), (DURATION.name + "_count", "")]
    return layout


def _map_layout(names: Sequence[str]) -> list[tuple[str, str]]:
    layout: list[tuple[str, str]] = []
    for name in names:
        for family, _ in _CACHE_FIELDS:
            layout.append((family.name, format_labels(map=name)))
        layout.append((MAP_UP.name, format_labels(map=name)))
    return layout


def _host_layout(hosts: MapHosts) -> list[tuple[str, str]]:
    return [(family.name, format_labels(map=name, host=host))
            for name, entries in hosts.items() for host, _, _ in entries
            for family in (MAP_HOST_ANSWERS, MAP_HOST_IN_USE)]


class Metrics:
    """One process's numbers; see the module docstring for the multi-worker files."""

    def __init__(
        self,
        directory: str | None = None,
        *,
        pid: int | None = None,
        started: int | None = None,
        families: Sequence[FamilySeries] = (),
    ) -> None:
        """``directory``: the private run directory shared by all workers, or None.

        ``pid`` and ``started`` (its start time) name this worker's file
        (default: this process; tests set them).  ``families``: extra families
        and every label set they will be recorded with (the layout is fixed, so
        all workers' files line up).
        """
        self._directory = directory
        self._pid = pid if pid is not None else os.getpid()
        self._started = started if started is not None else start_time(self._pid) or 0
        self._extra = [family for family, _ in families]
        self._families = {**_FAMILIES, **{family.name: family for family in self._extra}}
        self._layout = _base_layout()
        for family, series in families:
            for labels in series:
                if family.kind == "histogram":
                    self._layout += histogram_series(family, **labels)
                else:
                    self._layout.append((family.name, format_labels(**labels)))
        self._values: memoryview[float] = memoryview(bytearray(8 * len(self._layout))).cast("d")
        #: This worker's file while it is open (``directory`` given, maps attached).
        self._file: WorkerFile | None = None
        self._index = {key: i for i, key in enumerate(self._layout)}
        #: Where each (family, label values) an extra family was recorded with
        #: sits in the layout, so a login's counts do not format label text
        #: (emptied whenever the layout changes).
        self._at: dict[tuple[str, ...], int] = {}
        self._histogram_at: dict[tuple[str, ...], tuple[list[int], int, int]] = {}
        self._decision_index = {
            (p, r): self._index[(DECISIONS.name, format_labels(protocol=p, result=r))]
            for p in PROTOCOLS
            for r in RESULTS
        }
        self._bucket0 = self._index[(DURATION.name + "_bucket", format_labels(le=repr(BUCKETS[0])))]
        self._sum = self._index[(DURATION.name + "_sum", "")]
        self._count = self._index[(DURATION.name + "_count", "")]
        #: The series before the per-map ones: the same for the process's life.
        self._fixed = len(self._layout)
        self._map_index: dict[str, int] = {}
        self._host_series: list[tuple[str, str]] = []
        #: Series added while running (:meth:`add_series`), after the per-map ones.
        self._dynamic: list[tuple[str, str]] = []

    @property
    def directory(self) -> str | None:
        """The workers' shared run directory, or None (one process)."""
        return self._directory

    # -- recording ---------------------------------------------------------------------------

    def observe_decision(self, protocol: str, result: str, seconds: float) -> None:
        """Count one auth_http answer and its latency."""
        index = self._decision_index.get((protocol, result))
        if index is None:
            index = self._decision_index[
                (protocol if protocol in PROTOCOLS else "unknown",
                 result if result in RESULTS else "error")
            ]
        values = self._values
        values[index] += 1.0
        bucket = bisect.bisect_left(BUCKETS, seconds)
        if bucket < len(BUCKETS):
            values[self._bucket0 + bucket] += 1.0
        values[self._sum] += seconds
        values[self._count] += 1.0

    def set_cache_stats(self, stats: Mapping[str, CacheCounters | None]) -> None:
        """Copy each map's cache counters (absolute numbers kept by the cache)."""
        values = self._values
        for name, counters in stats.items():
            base = self._map_index.get(name)
            if base is None or counters is None:
                continue
            values[base] = counters.hits
            values[base + 1] = counters.misses
            values[base + 2] = counters.negative_hits
            values[base + 3] = counters.stale
            values[base + 4] = counters.errors
            values[base + 5] = 1.0 if counters.map_up else 0.0

    def _series_at(self, family: Family, labels: dict[str, str]) -> int:
        """The layout index of one series of an extra family; KeyError when not laid out."""
        key = (family.name, *labels.keys(), *labels.values())
        at = self._at.get(key)
        if at is None:
            at = self._at[key] = self._index[(family.name, format_labels(**labels))]
        return at

    def add(self, family: Family, amount: float = 1.0, **labels: str) -> None:
        """Add to one series of an extra family (a counter, or a gauge that counts)."""
        self._values[self._series_at(family, labels)] += amount

    def set(self, family: Family, value: float, **labels: str) -> None:
        """Set one series of an extra family (a gauge)."""
        self._values[self._series_at(family, labels)] = value

    def set_map_hosts(self, hosts: MapHosts) -> None:
        """Copy each map host's answers (absolute numbers) and whether it is in use."""
        values, index = self._values, self._index
        for name, entries in hosts.items():
            for host, answers, in_use in entries:
                at = index.get((MAP_HOST_ANSWERS.name, format_labels(map=name, host=host)))
                if at is not None:  # a host the layout has (bounded by the configured lists)
                    values[at] = answers
                    values[at + 1] = 1.0 if in_use else 0.0

    def observe(self, family: Family, seconds: float, **labels: str) -> None:
        """Count one observation in a histogram of an extra family."""
        key = (family.name, *labels.keys(), *labels.values())
        at = self._histogram_at.get(key)
        if at is None:
            index, name = self._index, family.name
            buckets = [index[(name + "_bucket", format_labels(**labels, le=bound))]
                       for bound in [*map(repr, family.buckets), "+Inf"]]
            at = self._histogram_at[key] = (buckets,
                                            index[(name + "_sum", format_labels(**labels))],
                                            index[(name + "_count", format_labels(**labels))])
        buckets, total, count = at
        values = self._values
        # Stored per bucket, the first bound >= seconds (else +Inf), and added
        # up when rendered, as the duration histogram is: one addition per
        # observation, not one per bucket it fits.
        values[buckets[bisect.bisect_left(family.buckets, seconds)]] += 1.0
        values[total] += seconds
        values[count] += 1.0

    def add_series(self, series: Iterable[tuple[Family, Mapping[str, str]]]) -> None:
        """Start recording series found while running (a store's), at zero.

        The worker file is written again with the longer layout (as after a
        reload), a few milliseconds: call this off the login path, with every
        new series at once.
        """
        new: list[tuple[str, str]] = []
        for family, labels in series:
            keys = (histogram_series(family, **labels) if family.kind == "histogram"
                    else [(family.name, format_labels(**labels))])
            new += [key for key in keys if key not in self._index and key not in new]
        if not new:
            return
        self._dynamic += new
        self._relayout(self._layout + new)

    def set_map_up(self, name: str, up: bool) -> None:
        """Record a map's state seen by a readiness check (maps without a cache)."""
        base = self._map_index.get(name)
        if base is not None:
            self._values[base + 5] = 1.0 if up else 0.0

    def attach_maps(self, names: Iterable[str], hosts: MapHosts | None = None) -> None:
        """Make the per-map series those of ``names``, the maps in use; opens the worker file.

        Called when the router opens and after each reload: a retired map's
        series go, a new map's come (up until a lookup or check says not), and
        a kept map's keep their numbers.  ``hosts``: the maps with a host list
        (``Router.map_hosts()``), one pair of series per configured host.
        """
        names = list(dict.fromkeys(names))
        host_series = _host_layout(hosts or {})
        if (names == list(self._map_index) and host_series == self._host_series
                and (self._directory is None or self._file is not None)):
            return  # the same maps, and the worker file (if any) is open already
        old_names = self._map_index
        self._relayout(self._layout[: self._fixed] + _map_layout(names) + host_series
                       + self._dynamic)
        self._host_series = host_series
        self._map_index = {}
        for offset, name in enumerate(names):
            base = self._fixed + offset * (len(_CACHE_FIELDS) + 1)
            self._map_index[name] = base
            if name not in old_names:
                self._values[base + len(_CACHE_FIELDS)] = 1.0  # up until a lookup or check says not

    def _relayout(self, layout: list[tuple[str, str]]) -> None:
        """Record ``layout`` from now on, keeping the numbers of the series it keeps."""
        # Copy the numbers out first: a new layout rewrites this worker's file
        # and unmaps the old view.
        saved = self.snapshot()
        if self._directory is not None:
            opened = WorkerFile(self._directory, self._pid, self._started, layout)
            if self._file is not None:  # attached twice: the old mapping goes
                self._file.close()
            self._file = opened
            values = opened.values
        else:
            values = memoryview(bytearray(8 * len(layout))).cast("d")
        for i, key in enumerate(layout):
            values[i] = saved.get(key, 0.0)
        old_values = self._values
        self._layout = layout
        self._index = {key: i for i, key in enumerate(layout)}
        self._at = {}
        self._histogram_at = {}
        self._values = values
        old_values.release()  # a no-op for the old file's view, released with it

    def close(self) -> None:
        """Copy the numbers out of the worker file and release it (the file stays)."""
        if self._file is None:
            return
        values = memoryview(bytearray(8 * len(self._layout))).cast("d")
        values[:] = self._values
        self._values = values
        self._file.close()
        self._file = None

    # -- reading -----------------------------------------------------------------------------

    def snapshot(self) -> dict[tuple[str, str], float]:
        """This process's own numbers."""
        return {key: self._values[i] for i, key in enumerate(self._layout)}

    def totals(self) -> tuple[dict[tuple[str, str], float], int]:
        """Numbers of all workers (counters added, gauges the minimum), and workers alive.

        A dead worker's counters count for the series a live worker still has:
        a map that a reload retired leaves no series behind.
        """
        if self._directory is None:
            return self.snapshot(), 1
        totals: dict[tuple[str, str], float] = {}
        gauges: dict[tuple[str, str], float] = {}
        dead: list[Series] = []
        alive = 0
        for live, series in worker_series(self._directory, (self._pid, self._started)):
            if not live:
                dead.append(series)
                continue
            alive += 1
            for key, value in series:
                family = self._families.get(key[0])
                if family is not None and family.kind == "gauge":
                    if family.combine == "sum":
                        gauges[key] = gauges.get(key, 0.0) + value
                    else:
                        gauges[key] = min(gauges.get(key, value), value)
                else:
                    totals[key] = totals.get(key, 0.0) + value
        for series in dead:
            for key, value in series:
                if key in totals:  # a counter that a live worker has too
                    totals[key] += value
        totals.update(gauges)
        return totals, max(alive, 1)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of :meth:`totals`."""
        values, alive = self.totals()
        by_family: dict[str, list[tuple[str, float]]] = {}
        for (stored, labels), value in values.items():
            by_family.setdefault(stored, []).append((labels, value))
        lines: list[str] = []
        lines += header(BUILD)
        lines.append(f"{BUILD.name}{format_labels(version=__version__)} 1")
        lines += header(WORKERS)
        lines.append(f"{WORKERS.name} {alive}")
        lines += header(DECISIONS)
        for labels, value in by_family.get(DECISIONS.name, []):
            lines.append(f"{DECISIONS.name}{labels} {format_value(value)}")
        lines += header(DURATION)
        buckets = dict(by_family.get(DURATION.name + "_bucket", []))
        count = sum(v for _, v in by_family.get(DURATION.name + "_count", []))
        running = 0.0
        for bound in BUCKETS:
            running += buckets.get(format_labels(le=repr(bound)), 0.0)
            lines.append(f'{DURATION.name}_bucket{{le="{bound!r}"}} {format_value(running)}')
        lines.append(f'{DURATION.name}_bucket{{le="+Inf"}} {format_value(count)}')
        total = sum(v for _, v in by_family.get(DURATION.name + "_sum", []))
        lines.append(f"{DURATION.name}_sum {format_value(total)}")
        lines.append(f"{DURATION.name}_count {format_value(count)}")
        for family in (*(f for f, _ in _CACHE_FIELDS), MAP_UP, MAP_HOST_ANSWERS, MAP_HOST_IN_USE,
                       *self._extra):
            if family.kind == "histogram":
                # Each label set's buckets, sum and count together, as laid out;
                # the buckets are stored per bucket and rendered cumulative.
                samples = cumulative_samples(family, values)
            else:
                samples = [(family.name, labels, value)
                           for labels, value in by_family.get(family.name, [])]
            if not samples:
                continue
            lines += header(family)
            for stored, labels, value in samples:
                lines.append(f"{stored}{labels} {format_value(value)}")
        roster = read_roster(self._directory)
        lines += header(RESTARTS)
        lines.append(f"{RESTARTS.name} {roster.restarts}")
        found = [(slot, figures(pid)) for pid, slot in sorted(roster.slots.items(),
                                                               key=lambda item: item[1])]
        for family, field in _PROCESS_FIELDS:
            lines += header(family)
            for slot, figured in found:
                if figured is not None:
                    value = float(getattr(figured, field))
                    lines.append(f"{family.name}{format_labels(worker=str(slot))} "
                                 f"{format_value(value)}")
        return "\n".join(lines) + "\n"

