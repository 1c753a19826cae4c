"""The per-worker metric files, through which ``--workers N`` processes add up their numbers.

Each worker (``--workers N``, serve's or the proxy's) keeps its numbers in a
flat array of float64 inside a memory-mapped file ``metrics-<pid>-<start>.bin``
in the server's private run directory, where ``<start>`` is the process's
start time (``/proc/<pid>/stat`` field 22, see proc(5)): a pid alone names a
new process once the kernel reuses it, and a dead worker's gauges must never
count as a live one's.  The file starts with the list of series it holds.  A
worker only ever writes its own file, so there are no locks.  A scrape,
whichever worker answers it, reads every file in the directory (the file of a
worker that died stays, so totals never go backwards).  How the numbers are
combined is ``authsvc/metrics.py``'s; docs/serve.md has the details.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

#: Each series a file holds: its stored family name and its label text.
Layout = list[tuple[str, str]]
#: One file's series and their values.
Series = list[tuple[tuple[str, str], float]]

_MAGIC = b"AUTHSVCM"
_HEADER = struct.Struct("<8sII")  # magic, format version, length of the key list


class WorkerFile:
    """One worker's file, written with a layout and mapped: :attr:`values` is its array."""

    def __init__(self, directory: str, pid: int, started: int, layout: Layout) -> None:
        """Write ``metrics-<pid>-<started>.bin`` for ``layout``, every value 0, and map it."""
        keys = json.dumps(layout).encode()
        keys += b" " * (-(len(keys) + _HEADER.size) % 8)  # values start 8-aligned
        offset = _HEADER.size + len(keys)
        name = f"metrics-{pid}-{started}.bin"
        path, fresh = Path(directory, name), Path(directory, f".{name}.new")
        with open(fresh, "wb") as out:
            out.write(_HEADER.pack(_MAGIC, 1, len(keys)) + keys)
            out.truncate(offset + 8 * len(layout))
        with open(fresh, "r+b") as f:
            self._mmap = mmap.mmap(f.fileno(), 0)
        # Renamed into place whole: a scrape reads the old layout or the new one.
        os.replace(fresh, path)
        whole = memoryview(self._mmap)
        window = whole[offset:]
        self.values: memoryview[float] = window.cast("d")
        # Every export of the mmap, released before the mmap is closed.
        self._views: list[memoryview[float] | memoryview[int]] = [self.values, window, whole]

    def close(self) -> None:
        """Unmap the file (it stays); :attr:`values` can no longer be used."""
        for view in self._views:
            view.release()
        self._views = []
        self._mmap.close()


def worker_series(directory: str, me: tuple[int, int]) -> Iterator[tuple[bool, Series]]:
    """Each worker file's series, and whether its worker is alive (``me``, (pid, start), is)."""
    for path in sorted(Path(directory).glob("metrics-*.bin")):
        owner = _owner(path)
        if owner is None:
            continue
        series = read_file(path)
        yield owner == me or _alive(*owner), series


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


def read_file(path: Path) -> Series:
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
