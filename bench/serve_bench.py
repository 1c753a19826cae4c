"""auth_http throughput of ``authsvc serve`` with wrk, nginx-style (no keep-alive), in one run.

Four scenarios, each driven by ``wrk -c 32 -H "Connection: close"`` with the
headers nginx 1.22 sends plus our template's ``X-Authsvc-*``:

* **(a) hit**: ``authsvc serve`` (one process), a login whose route is cached;
* **(b) miss**: the same server, every request a different login (wrk script
  ``bench/serve_miss.lua``), so every request queries MariaDB;
* **(c) bare**: ``bench/serve_bare.py``, an aiohttp handler that returns the
  same headers and does nothing else: the ceiling;
* **(d) hit, 2 workers**: ``authsvc serve --workers 2``, as (a);
* **(a0) hit, baseline** (with ``--baseline REV``): (a) served by the code of
  git revision REV, checked out with ``git worktree`` into a temporary
  directory and run from there (its path first on ``PYTHONPATH``, so it
  imports its own ``authsvc`` with this venv's dependencies).  The report
  then gives (a)'s CPU per request over (a0)'s, measured in the same run.

The map is MySQL on the machine's MariaDB, in a database of our own
(``tests/services/mariadb.py``) holding ``--rows`` mailboxes; the servers log
at info level (one decision line per login) to files.  Rounds alternate the
order of the scenarios so that drift on a shared machine hits all alike; the
report gives the median of the rounds, and each server's CPU time per request
read from ``/proc`` (less sensitive to neighbours than req/s).

Run from the repository root (about ``rounds x 4 x seconds`` plus set-up)::

    .venv/bin/python -m bench.serve_bench [--seconds 10] [--rounds 3] [--json FILE]
        [--baseline REV] [--scenarios a,a0]

Never part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.services.mariadb import TestDatabase, create_test_database, shared_admin
from tests.services.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
HEADERS = [
    "Connection: close",
    "Auth-Method: plain",
    "Auth-User: user1",
    "Auth-Pass: secret%20pw",
    "Auth-Protocol: imap",
    "Auth-Login-Attempt: 1",
    "Client-IP: 192.0.2.7",
    "X-Authsvc-Listener: imap4",
    "X-Authsvc-Local-Name: mail.riseup.net",
]


def store_of(n: int) -> str:
    """user<n>'s store address (user1 -> 10.0.0.1, as bench/serve_bare.py answers)."""
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


@dataclass
class Server:
    """One server process (or a pre-fork parent and its workers)."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    cpu_pins: str | None

    def pids(self) -> list[int]:
        pids = [self.process.pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Result:
    scenario: str
    round: int
    command: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float
    notes: dict[str, float] = field(default_factory=dict)


def taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus is not None and shutil.which("taskset") else []


def start(name: str, argv: list[str], port: int, log: Path, cpus: str | None,
          root: Path = ROOT) -> Server:
    """Start a server from the checkout at ``root`` (its ``authsvc`` first on the path)."""
    env = dict(os.environ)
    if root != ROOT:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    with log.open("wb") as out:
        process = subprocess.Popen([*taskset(cpus), *argv], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=root, start_new_session=True,
                                   env=env)
    server = Server(name, port, process, cpus)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/auth", timeout=1).close()
            return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)


def write_config(tmp: Path, db: TestDatabase) -> Path:
    password = db.write_password_file(tmp / "db-password")
    config = tmp / "bench.toml"
    config.write_text(f"""
[login]
lower_case = ["lookup", "backend_login"]
add_domain = ["lookup"]
explicit_domain = "riseup.net"

[map]
type = "mysql"
hosts = ["{db.host}:{db.port}"]
database = "{db.name}"
table = "mailboxes"
user = "{db.reader_user}"
password_file = "{password}"
server_column = "storage_ip"
user_column = "address"
port_constant = 143
pool_size = 10

[cache]
ttl = 600
max_size = 1000000

[log]
level = "info"

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = {free_port()}
""")
    return config


def wrk(port: int, seconds: int, connections: int, cpus: str | None,
        script: Path | None = None, env: dict[str, str] | None = None) -> tuple[str, str]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in HEADERS:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://127.0.0.1:{port}/auth")
    full = [*taskset(cpus), *argv]
    done = subprocess.run(full, capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})}, timeout=seconds + 60)
    shown = " ".join(f"'{a}'" if " " in a else a for a in full)
    if env:
        shown = " ".join(f"{k}={v}" for k, v in env.items()) + " " + shown
    return done.stdout, shown


def parse_wrk(text: str) -> tuple[int, float, float, float, int]:
    """(requests, req/s, p50 ms, p99 ms, errors) from wrk's --latency output."""
    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        assert match, text
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(non2xx.group(1)) if non2xx else 0
    return requests, rps, ms("50"), ms("99"), errors


def counter(metrics: str, pattern: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{pattern}(?:\{{[^}}]*\}})? (\S+)$", metrics, re.M))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def checkout(rev: str, tmp: Path) -> Iterator[Path]:
    """A git worktree of ``rev`` under ``tmp``, removed afterwards."""
    where = tmp / f"baseline-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), rev],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
                       check=False)


@contextlib.contextmanager
def servers(config: Path, tmp: Path, pin: bool,
            baseline: Path | None = None) -> Iterator[dict[str, Server]]:
    python = sys.executable
    one = "0" if pin else None
    started: dict[str, Server] = {}
    try:
        if baseline is not None:
            port = free_port()
            started["serve0"] = start("serve0", [python, "-m", "authsvc", "serve",
                                                 "-c", str(config),
                                                 "--listen", f"127.0.0.1:{port}"],
                                      port, tmp / "serve0.log", one, root=baseline)
        port = free_port()
        started["serve"] = start("serve", [python, "-m", "authsvc", "serve", "-c", str(config),
                                           "--listen", f"127.0.0.1:{port}"],
                                 port, tmp / "serve.log", one)
        port = free_port()
        started["serve2"] = start("serve2", [python, "-m", "authsvc", "serve", "-c", str(config),
                                             "--listen", f"127.0.0.1:{port}", "--workers", "2"],
                                  port, tmp / "serve2.log", None)
        port = free_port()
        started["bare"] = start("bare", [python, str(ROOT / "bench" / "serve_bare.py"),
                                         str(port)], port, tmp / "bare.log", one)
        yield started
    finally:
        for server in started.values():
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin servers to CPU 0 and wrk to CPU 1")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run scenario (a0): (a) on git revision REV, in the same run")
    parser.add_argument("--scenarios", default="a,b,c,d",
                        help="which to run, comma-separated (default a,b,c,d; "
                             "a0 is added with --baseline)")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if args.baseline and "a0" not in scenarios:
        scenarios.append("a0")
    if "a0" in scenarios and not args.baseline:
        parser.error("scenario a0 needs --baseline REV")
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 1
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    load_cpu = "1" if pin else None
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(create_test_database(shared_admin()))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        baseline = stack.enter_context(checkout(args.baseline, tmp)) if args.baseline else None
        print(f"loading {args.rows} mailboxes ...", file=sys.stderr)
        db.add_mailboxes((f"user{n}@riseup.net", store_of(n)) for n in range(args.rows))
        config = write_config(tmp, db)
        with servers(config, tmp, pin, baseline) as running:
            warm = ["serve", "serve2", *(["serve0"] if baseline is not None else [])]
            for name in warm:  # warm: user1's route in every worker's cache
                for _ in range(50):
                    subprocess.run(["curl", "-s", "-o", "/dev/null",
                                    *[x for h in HEADERS for x in ("-H", h)],
                                    f"http://127.0.0.1:{running[name].port}/auth"], check=True)
            per_round = args.rows // args.rounds
            for number in range(args.rounds):
                turn = number % len(scenarios)
                order = scenarios[turn:] + scenarios[:turn]
                for scenario in order:
                    server = running[{"a": "serve", "b": "serve", "c": "bare",
                                      "d": "serve2", "a0": "serve0"}[scenario]]
                    env = None
                    script = None
                    if scenario == "b":
                        script = ROOT / "bench" / "serve_miss.lua"
                        start_at = 1 + number * per_round
                        env = {"AUTHSVC_BENCH_START": str(start_at),
                               "AUTHSVC_BENCH_END": str(start_at + per_round - 1)}
                    before_metrics = server.get("/metrics") if scenario != "c" else ""
                    cpu0 = server.cpu_seconds()
                    text, command = wrk(server.port, args.seconds, args.connections, load_cpu,
                                        script, env)
                    cpu1 = server.cpu_seconds()
                    requests, rps, p50, p99, errors = parse_wrk(text)
                    notes: dict[str, float] = {}
                    if scenario != "c":
                        time.sleep(1.2)  # worker files catch up (metrics.py)
                        after = server.get("/metrics")
                        ok = 'authsvc_auth_decisions_total{protocol="imap",result="ok"}'
                        notes["ok_answers"] = (counter(after, re.escape(ok))
                                               - counter(before_metrics, re.escape(ok)))
                        for kind in ("hits", "misses"):
                            name = f"authsvc_cache_{kind}_total"
                            notes[kind] = counter(after, name) - counter(before_metrics, name)
                    result = Result(scenario, number + 1, command, requests, rps, p50, p99,
                                    errors, (cpu1 - cpu0) / max(requests, 1) * 1e6, notes)
                    results.append(result)
                    print(f"round {number + 1} {scenario}: {rps:.0f} req/s p50 {p50:.2f} ms "
                          f"p99 {p99:.2f} ms errors {errors} cpu {result.cpu_us_per_request:.0f}"
                          f" us/req {notes}", file=sys.stderr)
    report(results, args, pin, scenarios)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


def report(results: list[Result], args: argparse.Namespace, pin: bool,
           scenarios: list[str]) -> None:
    labels = {"a": "(a) cached hit, 1 process", "b": "(b) miss -> MariaDB, 1 process",
              "c": "(c) bare aiohttp handler", "d": "(d) cached hit, --workers 2",
              "a0": f"(a0) cached hit, 1 process, baseline {args.baseline}"}
    labels = {key: label for key, label in labels.items() if key in scenarios}
    median: dict[str, dict[str, float]] = {}
    pinning = "servers on CPU 0, wrk on CPU 1, (d) unpinned" if pin else "none"
    print(f"\nmachine: {os.cpu_count()} CPUs, {cpu_model()}; load average now: "
          f"{os.getloadavg()[0]:.2f}; pinning: {pinning}")
    print("\n| scenario | req/s | p50 ms | p99 ms | server CPU µs/request | errors |")
    print("|---|---|---|---|---|---|")
    for key, label in labels.items():
        rows = [r for r in results if r.scenario == key]
        median[key] = {
            "rps": statistics.median(r.rps for r in rows),
            "p50": statistics.median(r.p50_ms for r in rows),
            "p99": statistics.median(r.p99_ms for r in rows),
            "cpu": statistics.median(r.cpu_us_per_request for r in rows),
        }
        m = median[key]
        print(f"| {label} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu']:.0f} | "
              f"{sum(r.errors for r in rows)} |")
    a, b, c = median.get("a"), median.get("b"), median.get("c")
    print()
    if a and c:
        print(f"(a)/(c) = {a['rps'] / c['rps']:.2f} (target >= 0.8), (a) p99 {a['p99']:.2f} ms "
              f"(target < 10)")
    if a and b:
        print(f"(b)/(a) = {b['rps'] / a['rps']:.2f} (target >= 0.5)")
    if a and "a0" in median:
        a0 = median["a0"]
        print(f"(a)/(a0) server CPU per request = {a['cpu'] / a0['cpu']:.2f} (target <= 1.1); "
              f"req/s {a['rps'] / a0['rps']:.2f}")
        per_round = [(x.cpu_us_per_request / y.cpu_us_per_request) for x, y in zip(
            [r for r in results if r.scenario == "a"],
            [r for r in results if r.scenario == "a0"], strict=True)]
        print("(a)/(a0) CPU per round: " + ", ".join(f"{v:.2f}" for v in per_round))
    misses = [r.notes for r in results if r.scenario == "b"]
    print("(b) cache misses / answers per round: " + ", ".join(
        f"{n.get('misses', 0):.0f}/{n.get('ok_answers', 0):.0f}" for n in misses))
    print("\ncommands (round 1):")
    for r in results[: len(scenarios)]:
        print(f"  {r.scenario}: {r.command}")


if __name__ == "__main__":
    sys.exit(main())
