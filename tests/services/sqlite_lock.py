"""Another process that holds a SQLite file's write lock, as a stalled worker would.

``python -m tests.services.sqlite_lock FILE SECONDS`` opens ``FILE``, runs
``BEGIN IMMEDIATE``, prints ``locked``, sleeps, commits and prints
``released``; :func:`lock_held` runs it for a test.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def lock_held(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Hold ``path``'s write lock from another process for ``seconds`` from entry."""
    holder = subprocess.Popen([sys.executable, "-m", "tests.services.sqlite_lock", str(path),
                               str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        yield holder
        assert holder.stdout.readline() == "released\n"
        assert holder.wait(10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def main(argv: list[str]) -> int:
    db = sqlite3.connect(argv[0], timeout=10, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(argv[1]))
    db.execute("COMMIT")
    print("released", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
