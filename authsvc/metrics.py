"""Counters, gauges and a latency histogram, written as Prometheus text by hand.

Why by hand: the exposition format is a few lines of text (``# HELP``, ``# TYPE``,
``name{label="v"} value``), and ``prometheus_client`` would be a new runtime
dependency whose default global registry we would have to avoid anyway (no
module-level mutable state, several workers).  One :class:`Metrics` object is
made per process and passed to whoever records.

Several workers (``authsvc serve --workers N``): each worker keeps its numbers
in a flat array of float64 inside a memory-mapped file
``metrics-<pid>-<start>.bin`` in the server's private run directory, where
``<start>`` is the process's start time (``/proc/<pid>/stat`` field 22, see
proc(5)): a pid alone names a new process once the kernel reuses it, and a dead
worker's gauges must never count as a live one's.  The file starts with the
list of series it holds.  A worker only ever writes its own file, so there are
no locks.  A scrape, whichever worker answers it, reads every file in the
directory and adds the counters up (the file of a worker that died stays, so
totals never go backwards, for the series a live worker still has); gauges take
the minimum over the workers that are still alive.  Decisions and latencies are
written as they happen, so totals are exact; the map caches keep their own
counters, which each worker copies into its file at most twice a second while
logins come in, every second otherwise, and before answering a scrape itself,
so another worker's cache counters may lag by up to a second.  With one
process the array simply lives in memory.  docs/serve.md has the details.

The per-map series are those of the maps in use: :meth:`Metrics.attach_maps`
replaces them after a reload, so a retired map's series disappear.  Values are
written as Prometheus writes them, ``NaN``, ``+Inf`` and ``-Inf`` included.

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
import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from authsvc import __version__
from authsvc.failures import MEANINGS
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

_MAGIC = b"AUTHSVCM"
_HEADER = struct.Struct("<8sII")  # magic, format version, length of the key list


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


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name, Prometheus type and help text."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    #: Gauges over several workers: "min" (map_up: down if any worker sees it
    #: down) or "sum" (a count, such as live sessions).
    combine: str = "min"
    #: A histogram's upper bounds in seconds (``+Inf`` is added).
    buckets: tuple[float, ...] = ()


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


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{key}="{escape_label(value)}"' for key, value in labels.items())
    return "{" + inner + "}" if inner else ""


def _format_value(value: float) -> str:
    """A sample value as Prometheus writes one: ``NaN``, ``+Inf``, ``-Inf``, else a number."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def histogram_series(family: Family, **labels: str) -> list[tuple[str, str]]:
    """The stored series of one labelled histogram of an extra family, in render order.

    Buckets are stored cumulative (each observation adds to every bucket it
    fits), then ``_sum`` and ``_count``.
    """
    bounds = [repr(b) for b in family.buckets] + ["+Inf"]
    return ([(family.name + "_bucket", _labels(**labels, le=b)) for b in bounds]
            + [(family.name + "_sum", _labels(**labels)),
               (family.name + "_count", _labels(**labels))])


def _base_layout() -> list[tuple[str, str]]:
    """(family, labels) of every series that exists before the maps are known."""
    layout = [
        (DECISIONS.name, _labels(protocol=p, result=r)) for p in PROTOCOLS for r in RESULTS
    ]
    # Buckets are stored per bucket (not cumulative) and added up when rendered;
    # the +Inf bucket is the count.
    layout += [(DURATION.name + "_bucket", _labels(le=repr(b))) for b in BUCKETS]
    layout += [(DURATION.name + "_sum", ""), (DURATION.name + "_count", "")]
    return layout


def _map_layout(names: Sequence[str]) -> list[tuple[str, str]]:
    layout: list[tuple[str, str]] = []
    for name in names:
        for family, _ in _CACHE_FIELDS:
            layout.append((family.name, _labels(map=name)))
        layout.append((MAP_UP.name, _labels(map=name)))
    return layout


def _host_layout(hosts: MapHosts) -> list[tuple[str, str]]:
    return [(family.name, _labels(map=name, host=host))
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
                    self._layout.append((family.name, _labels(**labels)))
        self._values: memoryview[float] = memoryview(bytearray(8 * len(self._layout))).cast("d")
        self._mmap: mmap.mmap | None = None
        # Every export of the mmap, released before the mmap is closed.
        self._views: list[memoryview[float] | memoryview[int]] = []
        self._index = {key: i for i, key in enumerate(self._layout)}
        #: Where each (family, label values) an extra family was recorded with
        #: sits in the layout, so a login's counts do not format label text
        #: (emptied whenever the layout changes).
        self._at: dict[tuple[str, ...], int] = {}
        self._histogram_at: dict[tuple[str, ...], tuple[list[int], int, int]] = {}
        self._decision_index = {
            (p, r): self._index[(DECISIONS.name, _labels(protocol=p, result=r))]
            for p in PROTOCOLS
            for r in RESULTS
        }
        self._bucket0 = self._index[(DURATION.name + "_bucket", _labels(le=repr(BUCKETS[0])))]
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
            at = self._at[key] = self._index[(family.name, _labels(**labels))]
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
                at = index.get((MAP_HOST_ANSWERS.name, _labels(map=name, host=host)))
                if at is not None:  # a host the layout has (bounded by the configured lists)
                    values[at] = answers
                    values[at + 1] = 1.0 if in_use else 0.0

    def observe(self, family: Family, seconds: float, **labels: str) -> None:
        """Count one observation in a histogram of an extra family."""
        key = (family.name, *labels.keys(), *labels.values())
        at = self._histogram_at.get(key)
        if at is None:
            index, name = self._index, family.name
            buckets = [index[(name + "_bucket", _labels(**labels, le=bound))]
                       for bound in [*map(repr, family.buckets), "+Inf"]]
            at = self._histogram_at[key] = (buckets, index[(name + "_sum", _labels(**labels))],
                                            index[(name + "_count", _labels(**labels))])
        buckets, total, count = at
        values = self._values
        # Cumulative buckets: every bucket from the first bound >= seconds, and +Inf.
        for bucket in buckets[bisect.bisect_left(family.buckets, seconds):]:
            values[bucket] += 1.0
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
                    else [(family.name, _labels(**labels))])
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
                and (self._directory is None or self._mmap is not None)):
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
            values = self._open_file(layout)
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
        old_values.release()  # a no-op for a view _open_file released already

    def _open_file(self, layout: list[tuple[str, str]]) -> memoryview[float]:
        assert self._directory is not None
        keys = json.dumps(layout).encode()
        keys += b" " * (-(len(keys) + _HEADER.size) % 8)  # values start 8-aligned
        offset = _HEADER.size + len(keys)
        name = f"metrics-{self._pid}-{self._started}.bin"
        path, fresh = Path(self._directory, name), Path(self._directory, f".{name}.new")
        with open(fresh, "wb") as out:
            out.write(_HEADER.pack(_MAGIC, 1, len(keys)) + keys)
            out.truncate(offset + 8 * len(layout))
        with open(fresh, "r+b") as f:
            mapped = mmap.mmap(f.fileno(), 0)
        # Renamed into place whole: a scrape reads the old layout or the new one.
        os.replace(fresh, path)
        if self._mmap is not None:  # attached twice: the old mapping goes
            self._unmap()
        whole = memoryview(mapped)
        window = whole[offset:]
        values = window.cast("d")
        self._mmap, self._views = mapped, [values, window, whole]
        return values

    def _unmap(self) -> None:
        assert self._mmap is not None
        for view in self._views:
            view.release()
        self._views = []
        self._mmap.close()
        self._mmap = None

    def close(self) -> None:
        """Copy the numbers out of the worker file and release it (the file stays)."""
        if self._mmap is None:
            return
        values = memoryview(bytearray(8 * len(self._layout))).cast("d")
        values[:] = self._values
        self._values = values
        self._unmap()

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
        dead: list[list[tuple[tuple[str, str], float]]] = []
        alive = 0
        for path in sorted(Path(self._directory).glob("metrics-*.bin")):
            owner = _owner(path)
            if owner is None:
                continue
            series = read_file(path)
            if owner != (self._pid, self._started) and not _alive(*owner):
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

        def head(family: Family) -> None:
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.kind}")

        head(BUILD)
        lines.append(f"{BUILD.name}{_labels(version=__version__)} 1")
        head(WORKERS)
        lines.append(f"{WORKERS.name} {alive}")
        head(DECISIONS)
        for labels, value in by_family.get(DECISIONS.name, []):
            lines.append(f"{DECISIONS.name}{labels} {_format_value(value)}")
        head(DURATION)
        buckets = dict(by_family.get(DURATION.name + "_bucket", []))
        count = sum(v for _, v in by_family.get(DURATION.name + "_count", []))
        running = 0.0
        for bound in BUCKETS:
            running += buckets.get(_labels(le=repr(bound)), 0.0)
            lines.append(f'{DURATION.name}_bucket{{le="{bound!r}"}} {_format_value(running)}')
        lines.append(f'{DURATION.name}_bucket{{le="+Inf"}} {_format_value(count)}')
        total = sum(v for _, v in by_family.get(DURATION.name + "_sum", []))
        lines.append(f"{DURATION.name}_sum {_format_value(total)}")
        lines.append(f"{DURATION.name}_count {_format_value(count)}")
        for family in (*(f for f, _ in _CACHE_FIELDS), MAP_UP, MAP_HOST_ANSWERS, MAP_HOST_IN_USE,
                       *self._extra):
            if family.kind == "histogram":
                # Each label set's buckets, sum and count together, as stored.
                names = {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
                samples = [(stored, labels, value)
                           for (stored, labels), value in values.items() if stored in names]
            else:
                samples = [(family.name, labels, value)
                           for labels, value in by_family.get(family.name, [])]
            if not samples:
                continue
            head(family)
            for stored, labels, value in samples:
                lines.append(f"{stored}{labels} {_format_value(value)}")
        roster = read_roster(self._directory)
        head(RESTARTS)
        lines.append(f"{RESTARTS.name} {roster.restarts}")
        found = [(slot, figures(pid)) for pid, slot in sorted(roster.slots.items(),
                                                               key=lambda item: item[1])]
        for family, field in _PROCESS_FIELDS:
            head(family)
            for slot, figured in found:
                if figured is not None:
                    value = float(getattr(figured, field))
                    lines.append(f"{family.name}{_labels(worker=str(slot))} "
                                 f"{_format_value(value)}")
        return "\n".join(lines) + "\n"


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None if unknown.

    Field 22 of ``/proc/<pid>/stat`` (proc(5)).  The command name, field 2,
    may hold blanks and parentheses, so the fields are counted after its
    last ``)``.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[22 - 3])
    except (OSError, IndexError, ValueError):
        return None


def _owner(path: Path) -> tuple[int, int] | None:
    """(pid, start time) from ``metrics-<pid>-<start>.bin``; None for another name."""
    parts = path.stem.split("-")
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1]), int(parts[2])


def _alive(pid: int, started: int) -> bool:
    """Whether the worker that wrote a file still runs: its pid, started when it did."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the pid: not ours
        return False
    now = start_time(pid)
    # 0: the writer could not read its start time (no /proc); the pid decides.
    return started == 0 or now is None or now == started


def read_file(path: Path) -> list[tuple[tuple[str, str], float]]:
    """The series of one worker file; an empty list for a file that is not one."""
    try:
        data = path.read_bytes()
        magic, version, keys_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != 1:
            return []
        layout = json.loads(data[_HEADER.size : _HEADER.size + keys_len])
        offset = _HEADER.size + keys_len
        values = memoryview(data)[offset : offset + 8 * len(layout)].cast("d")
        return [((str(fam), str(lab)), values[i]) for i, (fam, lab) in enumerate(layout)]
    except (OSError, ValueError, struct.error, TypeError):
        return []
