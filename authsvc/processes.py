"""The workers' process figures for ``/metrics``, and the supervisor's record of its workers.

Two jobs that meet at a scrape:

* :func:`figures` reads one process's standard figures from ``/proc``
  (proc(5): ``/proc/<pid>/stat`` fields 14, 15 and 22, ``statm``, ``fd/``,
  ``limits``; ``/proc/stat`` ``btime``), the numbers Prometheus's client
  libraries export under the ``process_*`` names
  (https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics).
  A worker reads them for every live worker of its node, so whichever
  worker answers a scrape shows all of them (same user, so ``/proc`` lets it).
* The supervisor (``authsvc/runtime/workers.py``) writes ``workers.json`` in
  the private run directory whenever it starts a worker or one dies: each
  live worker's pid and slot (0 to N-1: a bounded label, where a pid would
  make a new series at every restart) and how many workers it has replaced.
  A scrape reads it (:func:`read_roster`), so ``authsvc_worker_restarts_total``
  is counted where a scrape sees it.  No file (one process, no supervisor):
  the process itself is worker 0, and nothing was restarted.
"""

from __future__ import annotations

import json
import os
import resource
from dataclasses import dataclass
from pathlib import Path

ROSTER = "workers.json"


@dataclass(frozen=True, slots=True)
class Figures:
    """One process's figures, in base units."""

    open_fds: float
    max_fds: float
    resident_bytes: float
    cpu_seconds: float
    start_time_seconds: float


@dataclass(frozen=True, slots=True)
class Roster:
    """The live workers by pid (their slot) and the restarts so far."""

    slots: dict[int, int]
    restarts: int


def write_roster(run_dir: str, slots: dict[int, int], restarts: int) -> None:
    """Replace ``workers.json`` whole (a scrape reads the old one or the new one)."""
    path, fresh = Path(run_dir, ROSTER), Path(run_dir, f".{ROSTER}.new")
    fresh.write_text(json.dumps({"slots": {str(pid): slot for pid, slot in slots.items()},
                                 "restarts": restarts}))
    os.replace(fresh, path)


def read_roster(run_dir: str | None) -> Roster:
    """The supervisor's roster; this process alone as worker 0 when there is none."""
    if run_dir is not None:
        try:
            data = json.loads(Path(run_dir, ROSTER).read_text())
            slots = {int(pid): int(slot) for pid, slot in data["slots"].items()}
            return Roster(slots, int(data["restarts"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    return Roster({os.getpid(): 0}, 0)


def _boot_time() -> float:
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def _max_fds(pid: int) -> float:
    if pid == os.getpid():
        return float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft = line[len("Max open files"):].split()[0]
                return float("inf") if soft == "unlimited" else float(soft)
    raise ValueError("no open-files limit")


def figures(pid: int) -> Figures | None:
    """The figures of process ``pid``; None when it is gone or ``/proc`` is not there."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # Fields counted after the command name's last ")" (it may hold blanks).
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
        return Figures(
            open_fds=float(len(os.listdir(f"/proc/{pid}/fd"))),
            max_fds=_max_fds(pid),
            resident_bytes=float(resident_pages * os.sysconf("SC_PAGE_SIZE")),
            cpu_seconds=(int(fields[14 - 3]) + int(fields[15 - 3])) / ticks,
            start_time_seconds=_boot_time() + int(fields[22 - 3]) / ticks,
        )
    except (OSError, IndexError, ValueError):
        return None
