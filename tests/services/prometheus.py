"""A private Prometheus server (Debian's ``prometheus``) scraping the test's nodes, and promtool.

``PrometheusServer(workdir, targets).start()`` writes a configuration with a
1 s scrape interval, one job per target group (``{"serve": ["127.0.0.1:9143"]}``),
runs ``prometheus`` with its own data directory under ``workdir``, on a free
loopback port, and returns once its readiness endpoint answers.
:meth:`PrometheusServer.query` asks the HTTP API
(https://prometheus.io/docs/prometheus/latest/querying/api/) and returns the
result vector; :meth:`PrometheusServer.targets` the scrape targets' health.
The server is stopped by its own pid.

:func:`promtool` runs Debian's ``promtool`` and returns what it printed.

The ``prometheus`` fixture (registered for every test by ``tests/conftest.py``)
is a factory: ``prometheus({"authsvc-serve": [address]})`` starts a server
for the test module and stops it when the module is done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.services.ports import free_port
from tests.services.require import require_binary

HOST = "127.0.0.1"
START_TIMEOUT = 30.0


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` (stdin fed ``stdin``); the finished process, not checked."""
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


class PrometheusServer:
    """One ``prometheus`` process with a private data directory, on loopback."""

    def __init__(self, workdir: Path, targets: Mapping[str, Sequence[str]],
                 *, interval: str = "1s") -> None:
        self.workdir = workdir
        self.targets_by_job = {job: list(addresses) for job, addresses in targets.items()}
        self.interval = interval
        self.port = free_port(HOST)
        self.log_path = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config_text(self) -> str:
        jobs = "".join(
            f"  - job_name: {json.dumps(job)}\n"
            f"    static_configs:\n"
            f"      - targets: {json.dumps(addresses)}\n"
            for job, addresses in self.targets_by_job.items())
        return (f"global:\n  scrape_interval: {self.interval}\n"
                f"  evaluation_interval: {self.interval}\n"
                f"  scrape_timeout: {self.interval}\n"
                f"scrape_configs:\n{jobs}")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        binary = require_binary("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text())
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                 f"--web.listen-address={HOST}:{self.port}",
                 # The test reads the HTTP API only; no console files are installed.
                 "--web.console.templates=", "--web.console.libraries="],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_tail()}")
            if self._get("/-/ready") == 200:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"prometheus did not get ready: {self.log_tail()}")
            time.sleep(0.1)

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as reply:  # noqa: S310
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>?params``: the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310
                body = json.load(reply)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (a vector's samples; a scalar as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their ``health`` and ``lastError``."""
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def stop(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() \
            else ""

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# -- pytest fixtures ---------------------------------------------------------------

StartPrometheus = Callable[[Mapping[str, Sequence[str]]], PrometheusServer]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartPrometheus]:
    """Start a private Prometheus scraping these jobs' targets; stopped after the module."""
    started: list[PrometheusServer] = []

    def start(targets: Mapping[str, Sequence[str]]) -> PrometheusServer:
        server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), targets)
        server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
