"""``authsvc serve`` as a subprocess under test: start, wait for /healthz, read its log, stop.

The e2e tests run the real command line (``python -m authsvc serve -c ...
--listen HOST:PORT``), as an operator would, rather than the app object in
process: what nginx talks to is then the same process model, signal handling
and logging that production gets.  Its stderr (where authsvc logs) goes to a
file, and :meth:`ServeProcess.decisions` parses the ``event=auth`` lines so a
test can check what authsvc decided and which ``Client-IP`` it saw.

Run by hand: ``python -m tests.services.serve CONFIG [HOST:PORT]``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from authsvc.log import FLUSH_DELAY
from tests.services.ports import free_port

START_TIMEOUT = 20.0

# One key=value field as authsvc.log writes it: a bare word, or a JSON string.
_FIELD = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_fields(line: str) -> dict[str, str | None]:
    """The fields of one ``key=value`` log line; ``-`` (authsvc's None) is None."""
    fields: dict[str, str | None] = {}
    for key, raw in _FIELD.findall(line):
        if raw.startswith('"'):
            fields[key] = json.loads(raw)
        else:
            fields[key] = None if raw == "-" else raw
    return fields


class ServeProcess:
    """One ``authsvc serve``: its pid, URL and log file.

    ``configs`` are passed as repeated ``-c`` options (TOML, or Perdition
    files with an optional ``PROTO=`` prefix).
    """

    def __init__(
        self,
        configs: Sequence[str | Path],
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        workers: int = 1,
        name: str = "serve",
    ) -> None:
        self.configs = [str(c) for c in configs]
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.workers = workers
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9143``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return None if self._process is None else self._process.pid

    def command(self) -> list[str]:
        """The exact command line started (also what the README shows)."""
        argv = [sys.executable, "-m", "authsvc", "serve"]
        for config in self.configs:
            argv += ["-c", config]
        argv += ["--listen", f"{self.host}:{self.port}"]
        if self.workers != 1:
            argv += ["--workers", str(self.workers)]
        return argv

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start and wait until ``/healthz`` answers 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.workdir,
                # Its own group, so Ctrl-C in a terminal running the stack
                # reaches the stack's script only, which then stops us in order.
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"authsvc serve exited with {self._process.returncode}: {self.log_tail()}"
                )
            if self.get("/healthz")[0] == 200:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"authsvc serve did not answer /healthz: {self.log_tail()}")
            time.sleep(0.05)

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """``GET path``: (status, body); status 0 when nothing answers."""
        try:
            # Always http://host:port built above, never a caller-supplied scheme.
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:  # noqa: S310
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError:
            return 0, ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by pid (authsvc drains and exits), SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            # --workers forks children into its session; end them with it.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)

    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def decisions(self, settle: bool = False) -> list[dict[str, str | None]]:
        """Every ``event=auth`` log line so far, parsed (oldest first).

        serve writes decision lines up to ``FLUSH_DELAY`` late (authsvc/log.py);
        ``settle`` first waits that long, so that a count taken before or after
        an action includes every decision already made.
        """
        if settle:
            time.sleep(FLUSH_DELAY + 0.1)
        return [
            parse_fields(line) for line in self.log_text().splitlines()
            if " event=auth " in f" {line} "
        ]

    def wait_for_decision(
        self, timeout: float = 5.0, since: int = 0, **match: str
    ) -> dict[str, str | None]:
        """The first decision whose fields equal ``match``; waits for the log to catch up.

        ``since`` skips that many decisions first (``len(decisions())`` taken
        before the action under test), so an older, equal line cannot match.
        """
        deadline = time.monotonic() + timeout
        while True:
            for fields in self.decisions()[since:]:
                if all(fields.get(key) == value for key, value in match.items()):
                    return fields
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no decision with {match} in {self.name}'s log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def __enter__(self) -> ServeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServeProcess({self.name!r}, {self.url}, pid={self.pid})"


def main(argv: list[str]) -> int:
    """``python -m tests.services.serve CONFIG [HOST:PORT]``: run until Ctrl-C."""
    if not argv:
        print(__doc__)
        return 2
    host, port = "127.0.0.1", None
    if len(argv) > 1:
        host, _, port_text = argv[1].rpartition(":")
        port = int(port_text)
    workdir = Path.cwd()
    with ServeProcess([argv[0]], workdir, host=host, port=port) as serve:
        print(f"authsvc serve pid={serve.pid} url={serve.url} log={serve.log_path}")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
