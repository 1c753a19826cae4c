"""What every bench writes next to its figures: when, on what, at what load, from which commit.

The machine these benches run on is shared, so the load average at the start
and at the end of a run is part of the result (docs/capacity.md reads the
figures and shows it next to them).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages from ``/proc/loadavg``."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (empty when not found)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def commit() -> str:
    """The checked-out commit, with ``+dirty`` when the tree has changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "authsvc",
                                "proxy", "bench"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def run_info() -> dict[str, object]:
    """The record of the start of a run; :func:`finish` adds the end."""
    return {
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([f"python -m bench.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
        "commit": commit(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
        "load_average_start": load_average(),
    }


def finish(info: dict[str, object]) -> dict[str, object]:
    """``info`` with the end time and the load average at the end."""
    return info | {
        "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_end": load_average(),
    }
