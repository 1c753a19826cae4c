"""``authsvc proxy`` as the operator runs it: a foreground subprocess, ended by its pid.

``ProxyProcess(config, log_path).start(listening=N)`` runs ``python -m authsvc
proxy -c CONFIG [--workers W]`` and returns once the log shows ``N``
``event=listening`` lines (one per listening socket and worker), without
connecting: a probe connection would be a session (or, on a PROXY listener,
a refused header) in the very log the tests read.  :meth:`ProxyProcess.lines`
parses the lines of one event, ``key=value`` or JSON (``[log] format``).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.eventually import eventually

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_line(line: str) -> dict[str, str]:
    """The fields of one ``key=value`` or JSON log line (quoted values unquoted)."""
    if line.startswith("{"):
        return {key: "-" if value is None else str(value)
                for key, value in json.loads(line).items()}
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"'):
            value = shlex.split(value)[0] if value != '""' else ""
        fields[key] = value
    return fields


@dataclass
class ProxyProcess:
    """One ``authsvc proxy`` process (with its workers), logging to ``log_path``."""

    config: Path
    log_path: Path
    workers: int = 1
    #: RLIMIT_NOFILE (soft and hard) for the process, set in the child before exec.
    nofile: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, listening: int, timeout: float = 20.0) -> None:
        args = [sys.executable, "-m", "authsvc", "proxy", "-c", str(self.config)]
        if self.workers != 1:
            args += ["--workers", str(self.workers)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            preexec_fn=self._limit if self.nofile else None)
        deadline = time.monotonic() + timeout
        while len(self.lines("listening")) < listening:
            if self.process.poll() is not None:
                raise RuntimeError(f"authsvc proxy exited:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"authsvc proxy did not listen:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def _limit(self) -> None:  # in the child, between fork and exec
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lines(self, event: str) -> list[dict[str, str]]:
        """Every log line of ``event`` (``session``, ``refused``, ``listening`` ...)."""
        marks = (f" event={event} ", f'"event": "{event}"')
        return [parse_line(line) for line in self.log_text().splitlines()
                if any(mark in line for mark in marks) or line.endswith(f" event={event}")]

    def wait_for(self, event: str, count: int = 1, timeout: float = 10.0,
                 **match: str) -> list[dict[str, str]]:
        """Wait until ``count`` lines of ``event`` whose fields start with ``match`` exist.

        Returns them all; fails (``AssertionError`` with the log's tail) at ``timeout``.
        """
        def enough() -> list[dict[str, str]]:
            found = [f for f in self.lines(event)
                     if all(f.get(k, "").startswith(v) for k, v in match.items())]
            assert len(found) >= count, (
                f"{count} x event={event} {match} not in the log:\n{self.log_text()[-3000:]}")
            return found

        return eventually(enough, timeout)

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
