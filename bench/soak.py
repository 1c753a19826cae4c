"""Soak: 10,000 idle logged-in sessions through ``authsvc proxy`` while logins come and go.

Not part of CI.  What runs:

* ``bench/soak_backend.py`` as a subprocess: a scripted IMAP store on several
  loopback addresses (``--backends``, 127.0.0.2 ...), one port, standing in
  for Dovecot (10,000 Dovecot processes would measure Dovecot).
* ``authsvc proxy -c <generated toml>`` as a subprocess: one plaintext IMAP
  listener on 127.0.0.1, a map file sending user ``uN`` to store address
  ``N mod backends`` (several store addresses so the proxy's 10,000+ store
  connections do not exhaust one address pair's ephemeral ports).
* this process: first ``--idle`` sessions log in (connect, greeting,
  ``LOGIN``, ``SELECT INBOX``) and stay open, silent; then for ``--minutes``
  a new login starts every 1/``--rate`` s (connect, greeting, ``LOGIN``,
  ``SELECT INBOX``, ``LOGOUT``, close).  Clients bind source addresses
  127.0.0.100-127.0.0.120 in turn, again for ephemeral ports.  At the end
  every idle session is sent ``NOOP`` and must answer ``OK``.

Every ``--interval`` seconds it records: logins done and failed, idle
sessions still open, p50/p99 login latency (connect to the tagged ``OK`` of
``LOGIN``) in that window, and the proxy's RSS and PSS
(``/proc/PID/smaps_rollup``), open descriptors and CPU seconds.  It writes
the samples as JSON (``--json``) and an SVG plot (``--svg``), and prints a
Markdown table.  RLIMIT_NOFILE is raised for itself and, by inheritance, the
store and the proxy.

Run (as root, from the repository root; about 11 minutes)::

    .venv/bin/python -m bench.soak --json /tmp/soak.json --svg docs/soak.svg
    # defaults: --idle 10000 --rate 100 --minutes 10 --interval 10 --backends 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.services.ports import free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
SOURCES = [f"127.0.0.{n}" for n in range(100, 121)]
STEP_TIMEOUT = 15.0


@dataclass
class Sample:
    """One row of the record."""

    t: float  # seconds since the churn phase began (negative: the ramp)
    phase: str
    logins: int  # churn logins completed in the window
    errors: int  # cumulative failures (ramp + churn + idle sessions lost)
    idle_open: int
    p50_ms: float
    p99_ms: float
    rss_mib: float
    pss_mib: float
    fds: int
    cpu_s: float


@dataclass
class Tally:
    """Counters the clients update and the sampler reads."""

    latencies: list[float] = field(default_factory=list)
    done: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    source: int = 0

    def fail(self, why: str) -> None:
        self.errors += 1
        self.error_kinds[why] = self.error_kinds.get(why, 0) + 1

    def next_source(self) -> str:
        self.source += 1
        return SOURCES[self.source % len(SOURCES)]


def raise_nofile(want: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        # Root may raise the hard limit up to fs.nr_open.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


# -- the proxy's figures from /proc ---------------------------------------------------------


def proc_tree(pid: int) -> list[int]:
    """``pid`` and its children (the ``--workers`` supervisor and its workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(c) for c in children)]


def proc_figures(pid: int) -> tuple[float, float, int, float, int]:
    """(RSS MiB, PSS MiB, open descriptors, CPU seconds, processes), summed over the tree.

    PSS is the figure that adds up across forked workers (shared pages are
    split between them); RSS summed counts shared pages once per worker.
    """
    rss = pss = cpu = 0.0
    fds = 0
    tree = proc_tree(pid)
    for member in tree:
        for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Rss":
                rss += int(value.split()[0]) / 1024
            elif key == "Pss":
                pss += int(value.split()[0]) / 1024
        fds += len(os.listdir(f"/proc/{member}/fd"))
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return rss, pss, fds, cpu, len(tree)


# -- clients -------------------------------------------------------------------------------


async def expect(reader: asyncio.StreamReader, tag: bytes) -> bytes:
    """Read lines up to the one tagged ``tag`` (or the greeting, ``tag=b'*'``); return it."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line.startswith(tag + b" "):
            return line


async def log_in(host: str, port: int, user: str, tally: Tally,
                 ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(tally.next_source(), 0), limit=4096)
    greeting = await expect(reader, b"*")
    if not greeting.startswith(b"* OK"):
        raise ConnectionError(f"greeting {greeting[:40]!r}")
    writer.write(f"a1 LOGIN {user} secret\r\n".encode())
    reply = await expect(reader, b"a1")
    if not reply.startswith(b"a1 OK"):
        raise ConnectionError(f"login {reply[:60]!r}")
    latency = time.perf_counter() - start
    writer.write(b"a2 SELECT INBOX\r\n")
    reply = await expect(reader, b"a2")
    if not reply.startswith(b"a2 OK"):
        raise ConnectionError(f"select {reply[:60]!r}")
    return reader, writer, latency


async def churn_one(host: str, port: int, user: str, tally: Tally) -> None:
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            reader, writer, latency = await log_in(host, port, user, tally)
            writer.write(b"a3 LOGOUT\r\n")
            await expect(reader, b"a3")
        tally.latencies.append(latency)
        tally.done += 1
    except (OSError, ConnectionError, TimeoutError) as exc:
        tally.fail(type(exc).__name__ + ": " + str(exc)[:60])
    finally:
        if writer is not None:
            writer.close()


async def open_idle(host: str, port: int, count: int, users: int, tally: Tally,
                    ) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    gate = asyncio.Semaphore(100)

    async def one(n: int) -> None:
        async with gate:
            try:
                async with asyncio.timeout(STEP_TIMEOUT):
                    reader, writer, latency = await log_in(host, port, f"u{n % users}", tally)
                held.append((reader, writer))
                tally.latencies.append(latency)
            except (OSError, ConnectionError, TimeoutError) as exc:
                tally.fail("idle " + type(exc).__name__ + ": " + str(exc)[:60])

    await asyncio.gather(*(one(n) for n in range(count)))
    return held


async def check_idle(held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
                     tally: Tally) -> int:
    """Send NOOP on every idle session; the number that answered OK."""
    gate = asyncio.Semaphore(200)
    alive = 0

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal alive
        async with gate:
            try:
                async with asyncio.timeout(STEP_TIMEOUT):
                    writer.write(b"n1 NOOP\r\n")
                    reply = await expect(reader, b"n1")
                if reply.startswith(b"n1 OK"):
                    alive += 1
                else:
                    tally.fail("noop reply")
            except (OSError, ConnectionError, TimeoutError) as exc:
                tally.fail("idle lost " + type(exc).__name__)

    await asyncio.gather(*(one(r, w) for r, w in held))
    return alive


# -- the run ---------------------------------------------------------------------------------


def write_files(tmp: Path, port: int, store_port: int, backends: list[str],
                users: int) -> Path:
    popmap = tmp / "popmap"
    popmap.write_text("".join(f"u{n}: {backends[n % len(backends)]}:{store_port}\n"
                              for n in range(users)))
    config = tmp / "authsvc.toml"
    config.write_text(f"""# Generated by bench/soak.py
[log]
level = "info"

[map]
type = "file"
path = "{popmap}"

[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
bind = ["127.0.0.1"]
port = {port}
capability = ["IMAP4rev1", "IDLE"]
login_timeout = 30
timeout = 3600
""")
    return config


def window_stats(latencies: list[float]) -> tuple[float, float]:
    if not latencies:
        return 0.0, 0.0
    if len(latencies) < 2:
        return latencies[0] * 1000, latencies[0] * 1000
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1000, q[98] * 1000


async def run(args: argparse.Namespace, proxy_pid: int, port: int) -> dict[str, object]:
    tally = Tally()
    samples: list[Sample] = []
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    churn_start = [0.0]
    phase = ["ramp"]
    t0 = time.monotonic()

    def idle_open() -> int:
        return sum(1 for r, w in held if not r.at_eof() and not w.is_closing())

    async def sampler() -> None:
        while True:
            await asyncio.sleep(args.interval)
            window, tally.latencies = tally.latencies, []
            p50, p99 = window_stats(window)
            done, tally.done = tally.done, 0
            rss, pss, fds, cpu, _ = proc_figures(proxy_pid)
            now = time.monotonic()
            t = now - churn_start[0] if churn_start[0] else now - t0 - 1e6
            sample = Sample(round(t, 1), phase[0], done, tally.errors, idle_open(),
                            round(p50, 2), round(p99, 2), round(rss, 1), round(pss, 1),
                            fds, round(cpu, 1))
            samples.append(sample)
            print(json.dumps(asdict(sample)), flush=True)

    sampling = asyncio.create_task(sampler())
    held.extend(await open_idle("127.0.0.1", port, args.idle, args.users, tally))
    ramp_seconds = time.monotonic() - t0
    # The ramp's latencies are reported once, not mixed into the first churn window.
    ramp_p50, ramp_p99 = window_stats(tally.latencies)
    tally.latencies, tally.done = [], 0
    print(f"# {len(held)} idle sessions open after {ramp_seconds:.1f} s", flush=True)
    # Re-base the samples taken during the ramp on the churn start.
    churn_start[0] = time.monotonic()
    for s in samples:
        s.t = round(s.t + 1e6 - (churn_start[0] - t0), 1)
    phase[0] = "churn"
    tasks: set[asyncio.Task[None]] = set()
    end = churn_start[0] + args.minutes * 60
    n = 0
    while time.monotonic() < end:
        n += 1
        task = asyncio.create_task(churn_one("127.0.0.1", port, f"u{(n * 7919) % args.users}",
                                             tally))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        # Pace by the schedule, not by sleep: a slow step does not lower the rate.
        await asyncio.sleep(max(0.0, churn_start[0] + n / args.rate - time.monotonic()))
    await asyncio.gather(*tasks)
    await asyncio.sleep(args.interval)  # one last sample with no churn in it
    sampling.cancel()
    alive = await check_idle(held, tally)
    for _, writer in held:
        writer.close()
    return {
        "idle_requested": args.idle, "idle_opened": len(held), "idle_alive_at_end": alive,
        "ramp_seconds": round(ramp_seconds, 1), "ramp_p50_ms": round(ramp_p50, 1),
        "ramp_p99_ms": round(ramp_p99, 1), "churn_logins": n,
        "errors": tally.errors, "error_kinds": tally.error_kinds,
        "samples": [asdict(s) for s in samples],
    }


# -- the plot ------------------------------------------------------------------------------


def write_svg(path: Path, samples: list[dict[str, float]], title: str) -> None:
    """Three stacked panels against time: memory (MiB), descriptors, latency (ms, log scale)."""
    width, panel_h, left, top = 720, 150, 70, 30
    series: list[tuple[str, list[tuple[str, str]], bool]] = [
        ("proxy memory, MiB, all processes (RSS solid, PSS dashed)",
         [("rss_mib", ""), ("pss_mib", "6,4")], False),
        ("proxy open descriptors, all processes", [("fds", "")], False),
        ("login latency per 10 s window, ms, log scale (p99 solid, p50 dashed)",
         [("p99_ms", ""), ("p50_ms", "6,4")], True),
    ]
    ts = [float(s["t"]) for s in samples]
    tmin, tmax = min(ts), max(ts)
    plot_w = width - left - 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{top + len(series) * (panel_h + 40) + 20}" font-family="sans-serif" '
           f'font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{title}</text>']

    def x(t: float) -> float:
        return left + (t - tmin) / ((tmax - tmin) or 1) * plot_w

    for i, (label, keys, log_scale) in enumerate(series):
        y0 = top + i * (panel_h + 40) + 15
        vmax = max(float(s[k]) for s in samples for k, _ in keys) * 1.1 or 1.0
        hi = math.ceil(math.log10(vmax)) if log_scale else 0  # 1 ms .. next power of ten

        def frac(v: float, vmax: float = vmax, hi: int = hi, log_scale: bool = log_scale,
                 ) -> float:
            if log_scale:
                return math.log10(max(v, 1.0)) / (hi or 1)
            return v / vmax

        ticks = ([(frac(10.0 ** e), f"{10 ** e:g}") for e in range(hi + 1)] if log_scale
                 else [(f, f"{vmax * f:.0f}") for f in (0.0, 0.5, 1.0)])
        out.append(f'<text x="{left}" y="{y0 - 4}">{label}</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" '
                   f'fill="none" stroke="#999"/>')
        for f, text in ticks:
            yy = y0 + panel_h - f * panel_h
            out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{text}</text>')
            out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" '
                       f'stroke="#eee"/>')
        if tmin < 0 < tmax:
            out.append(f'<line x1="{x(0):.1f}" y1="{y0}" x2="{x(0):.1f}" '
                       f'y2="{y0 + panel_h}" stroke="#bbb" stroke-dasharray="2,2"/>')
        for key, dash in keys:
            points = " ".join(f"{x(float(s['t'])):.1f},"
                              f"{y0 + panel_h - frac(float(s[key])) * panel_h:.1f}"
                              for s in samples)
            dashed = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline points="{points}" fill="none" stroke="#1f5fa8" '
                       f'stroke-width="1.5"{dashed}/>')
        out.append(f'<text x="{left}" y="{y0 + panel_h + 14}">{tmin:.0f} s</text>')
        out.append(f'<text x="{left + plot_w}" y="{y0 + panel_h + 14}" text-anchor="end">'
                   f'{tmax:.0f} s (0 = churn starts, all idle sessions open)</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def _title(idle: int, args: argparse.Namespace) -> str:
    return (f"authsvc proxy soak: {idle} idle sessions, {args.rate:g} logins/s, "
            f"{args.minutes:g} min, {args.workers} workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--backends", type=int, default=4)
    # Two workers by default: a proxy process holds two descriptors per
    # session, and RLIMIT_NOFILE's hard limit here (20,000, no
    # CAP_SYS_RESOURCE to raise it) would stop one process short of 10,000.
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--svg", type=Path)
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="only draw --svg again from a saved --json")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads(args.replot.read_text())
        write_svg(args.svg, saved["samples"], _title(saved["idle_requested"], args))
        return
    # SIGTERM ends the run through the finally below, which stops the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    raise_nofile(args.idle * 3 + 10_000)
    backends = [f"127.0.0.{n}" for n in range(2, 2 + args.backends)]
    port, store_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="authsvc-soak-") as tmpdir:
        tmp = Path(tmpdir)
        config = write_files(tmp, port, store_port, backends, args.users)
        store = subprocess.Popen(
            [sys.executable, "-m", "bench.soak_backend", "--port", str(store_port),
             *[a for b in backends for a in ("--listen", b)]],
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        log_path = tmp / "proxy.log"
        with log_path.open("wb") as log:
            proxy = subprocess.Popen([sys.executable, "-m", "authsvc", "proxy", "-c", str(config),
                                      "--workers", str(args.workers)],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while log_path.read_text(errors="replace").count("event=listening") < args.workers:
                if proxy.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"proxy did not start:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            result = asyncio.run(run(args, proxy.pid, port))
            result["proxy_exit"] = proxy.poll()
            result["proxy_processes"] = proc_figures(proxy.pid)[4]
            log_text = log_path.read_text(errors="replace")
            result["proxy_log_errors"] = [line for line in log_text.splitlines()
                                          if "level=error" in line or "Traceback" in line][:20]
            result["command"] = " ".join(sys.argv)
        finally:
            for child in (proxy, store):
                if child.poll() is None:
                    os.kill(child.pid, signal.SIGTERM)
                    try:
                        child.wait(30)
                    except subprocess.TimeoutExpired:
                        os.kill(child.pid, signal.SIGKILL)
                        child.wait()
    samples = result["samples"]
    assert isinstance(samples, list)
    print("| t (s) | phase | logins | errors | idle open | p50 ms | p99 ms | RSS MiB | PSS MiB "
          "| fds | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in samples:
        print(f"| {s['t']} | {s['phase']} | {s['logins']} | {s['errors']} | {s['idle_open']} "
              f"| {s['p50_ms']} | {s['p99_ms']} | {s['rss_mib']} | {s['pss_mib']} | {s['fds']} "
              f"| {s['cpu_s']} |")
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.svg:
        write_svg(args.svg, samples, _title(args.idle, args))


if __name__ == "__main__":
    main()
