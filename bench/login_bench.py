"""Login throughput through nginx + authsvc, against nginx with a static auth_http answer.

Both front ends run side by side in one run, on the same stack
(``tests/services/stack.py``: private MariaDB map, Dovecot stores, one
``authsvc serve``):

* **authsvc**: nginx rendered by ``authsvc render-nginx`` -> ``authsvc serve``
  (MySQL map behind the route cache, warmed first) -> store a;
* **static**: the same rendered ``mail {}`` on another address, whose
  ``auth_http`` points at an ``http {}`` location in the same nginx that
  returns fixed ``Auth-Status: OK``, ``Auth-Server``, ``Auth-Port`` headers
  (the zero-cost answer: an http block of the same nginx acting as the auth
  server with add_header and return, as Angie's mail_auth_http example does).

One login is: connect, read the greeting, [STARTTLS + handshake], ``LOGIN``,
``SELECT INBOX``, ``LOGOUT``, close.  ``--concurrency`` clients (default 32)
loop over store-a users for ``--seconds`` per round; rounds alternate between
the front ends so drift hits both alike.  Reported per front end and mode:
logins/s, p50/p99 latency, errors, and the CPU seconds each process group
used (nginx master+workers, authsvc serve, Dovecot incl. reaped children,
MariaDB, the load generator), also per 1000 logins.

With ``--paced-rate R`` (default 40; 0 for none) it also starts one login
every 1/R s by the clock through authsvc, plain and STARTTLS (front
``authsvc-paced``: serve's CPU per login one at a time), and, before the
warm-up, plain logins of mailboxes the route cache has not seen yet (front
``authsvc-paced-miss``: what a miss adds).  docs/capacity.md reads both.

Run (as root, from the repository root; takes about three minutes)::

    .venv/bin/python -m bench.login_bench [--seconds 10] [--rounds 2] [--concurrency 32]
        [--paced-rate 40] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import ssl
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.record import finish, run_info
from tests.services.nginx import NginxProcess, start_nginx
from tests.services.ports import free_port
from tests.services.stack import MailUser, Stack, StackOptions, render_node_nginx, running_stack

STATIC_ADDRESS = "127.0.0.12"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting from /proc -----------------------------------------------------------


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(ppid, own cpu seconds, reaped children's cpu seconds) of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2:].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


def group_cpu(root: int) -> float:
    """CPU seconds of ``root`` and all its live descendants, plus what it reaped.

    Dovecot forks one ``imap`` process per login; when it exits its CPU moves
    into the master's cutime/cstime, so counting the root's reaped time keeps
    short-lived children in the total.
    """
    stats: dict[int, tuple[int, float, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            stats[int(entry)] = found
    if root not in stats:
        return 0.0
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total = stats[root][2]
    todo = [root]
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def group_pss_kib(root: int) -> int:
    """PSS in KiB summed over ``root`` and its live descendants (``smaps_rollup``).

    PSS is the figure that adds up across forked processes: pages they share
    are split between them.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            children.setdefault(found[0], []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the load generator ---------------------------------------------------------------


class LoginError(Exception):
    """A login that did not end with LOGOUT's OK."""


async def _expect(reader: asyncio.StreamReader, tag: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise LoginError(f"closed while waiting for {tag!r}")
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise LoginError(line.decode(errors="replace").strip())
            return


async def one_login(host: str, port: int, user: MailUser, context: ssl.SSLContext | None,
                    source: str) -> None:
    """connect, [STARTTLS], LOGIN, SELECT, LOGOUT."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            raise LoginError(f"greeting {greeting!r}")
        if context is not None:
            writer.write(b"s STARTTLS\r\n")
            await _expect(reader, b"s")
            await writer.start_tls(context, server_hostname=host)
        writer.write(f"l LOGIN {user.local} {user.password}\r\n".encode())
        await _expect(reader, b"l")
        writer.write(b"c SELECT INBOX\r\n")
        await _expect(reader, b"c")
        writer.write(b"o LOGOUT\r\n")
        await _expect(reader, b"o")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class Result:
    """One round of one front end in one mode."""

    front: str
    mode: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    cpu: dict[str, float] = field(default_factory=dict)
    #: PSS (KiB) of the process groups right after the round.
    pss_kib: dict[str, int] = field(default_factory=dict)


async def load(host: str, port: int, users: list[MailUser], context: ssl.SSLContext | None,
               seconds: float, concurrency: int, result: Result) -> None:
    """``concurrency`` workers log in back to back until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def worker(index: int) -> None:
        # Each worker its own source address: ports stay plentiful at high rates.
        source = f"127.0.1.{1 + index % 250}"
        while time.monotonic() < deadline:
            user = users[next(counter) % len(users)]
            started = time.perf_counter()
            try:
                await asyncio.wait_for(one_login(host, port, user, context, source), 30)
            except (TimeoutError, OSError, LoginError, ssl.SSLError) as exc:
                result.errors += 1
                result.first_error = result.first_error or repr(exc)
                continue
            result.latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def paced(host: str, port: int, users: list[MailUser], context: ssl.SSLContext | None,
                seconds: float, rate: float, result: Result) -> None:
    """One login started every 1/``rate`` s by the clock, as a site's logins arrive."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(one_login(host, port, users[n % len(users)], context,
                                             f"127.0.1.{1 + n % 250}"), 30)
        except (TimeoutError, OSError, LoginError, ssl.SSLError) as exc:
            result.errors += 1
            result.first_error = result.first_error or repr(exc)
            return
        result.latencies.append(time.perf_counter() - started)

    for n in range(int(seconds * rate)):
        await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


# -- the two front ends ----------------------------------------------------------------


def static_nginx_text(stack: Stack, prefix: Path, auth_port: int) -> str:
    """The node's rendered mail {} on STATIC_ADDRESS, asking an http {} location of its own."""
    text = render_node_nginx(stack.config, stack.pki, address=STATIC_ADDRESS,
                             auth_http=f"{STATIC_ADDRESS}:{auth_port}/auth", prefix=prefix)
    store = stack.stores["a"]
    # nginx adds headers to a 204 (add_header applies to 2xx), and the mail
    # module ignores the status line anyway (ngx_mail_auth_http_module.c).
    return text + f"""
# Static auth_http answer for the benchmark: every login goes to store a.
http {{
    access_log off;
    server {{
        listen {STATIC_ADDRESS}:{auth_port};
        location = /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server {store.address};
            add_header Auth-Port {store.ports.imap};
            return 204;
        }}
    }}
}}
"""


@contextlib.contextmanager
def static_front(stack: Stack) -> Iterator[NginxProcess]:
    prefix = stack.workdir / "static"
    prefix.mkdir()
    text = static_nginx_text(stack, prefix, free_port(STATIC_ADDRESS))
    port = stack.nodes[0].mail_ports["imap4"]
    nginx = start_nginx(text, prefix, [(STATIC_ADDRESS, port)])
    try:
        yield nginx
    finally:
        nginx.stop()


# -- reporting --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(results: list[Result]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    keys = sorted({(r.front, r.mode) for r in results}, key=lambda k: (k[1], k[0]))
    for front, mode in keys:
        mine = [r for r in results if (r.front, r.mode) == (front, mode)]
        latencies = [x for r in mine for x in r.latencies]
        seconds = sum(r.seconds for r in mine)
        logins = len(latencies)
        cpu: dict[str, float] = {}
        for r in mine:
            for group, value in r.cpu.items():
                cpu[group] = cpu.get(group, 0.0) + value
        rows.append({
            "front": front, "mode": mode, "logins": logins,
            "errors": sum(r.errors for r in mine),
            "logins_per_s": logins / seconds if seconds else 0.0,
            "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
            "cpu_s": cpu,
            "cpu_ms_per_login": {g: v * 1000 / logins for g, v in cpu.items()} if logins else {},
            "first_error": next((r.first_error for r in mine if r.first_error), ""),
            # The largest seen after a round: serve's baseline for docs/capacity.md.
            "pss_kib": {g: max(r.pss_kib.get(g, 0) for r in mine) for g in ("authsvc", "nginx")},
        })
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    groups = ["nginx", "authsvc", "dovecot", "mariadb", "client"]
    head = ("| mode | front end | logins/s | p50 ms | p99 ms | errors | "
            + " | ".join(f"{g} CPU ms/login" for g in groups) + " |")
    lines = [head, "|" + "---|" * (6 + len(groups))]
    for row in rows:
        per = row["cpu_ms_per_login"]
        assert isinstance(per, dict)
        cells = [str(row["mode"]), str(row["front"]), f"{row['logins_per_s']:.0f}",
                 f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", str(row["errors"])]
        cells += [f"{per[g]:.2f}" if g in per else "-" for g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    by_mode: dict[str, dict[str, float]] = {}
    for row in rows:
        rate = row["logins_per_s"]
        assert isinstance(rate, float)
        by_mode.setdefault(str(row["mode"]), {})[str(row["front"])] = rate
    lines.append("")
    for mode, rates in by_mode.items():
        if rates.get("static"):
            lines.append(f"* {mode}: authsvc / static = "
                         f"{rates.get('authsvc', 0.0) / rates['static']:.2f}")
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[Result]:
    options = StackOptions(nodes=1, users=args.users)
    results: list[Result] = []
    with running_stack(options) as stack, static_front(stack) as static:
        node = stack.nodes[0]
        assert node.nginx is not None
        assert node.serve.pid is not None
        store_a = stack.stores["a"]
        users = stack.users_on("a")
        port = node.mail_ports["imap4"]
        fronts: dict[str, tuple[str, int]] = {
            "authsvc": (node.address, node.nginx.pid),
            "static": (STATIC_ADDRESS, static.pid),
        }
        groups: dict[str, Callable[[], float]] = {
            "authsvc": lambda: group_cpu(node.serve.pid or 0),
            "dovecot": lambda: group_cpu(store_a.pid or 0),
            "mariadb": lambda: group_cpu(stack.mariadb.pid or 0),
            "client": self_cpu,
        }
        tls = ssl.create_default_context(cafile=str(stack.pki.ca))
        if args.paced_rate > 0:
            # Before the warm-up, every user is new to the route cache: paced
            # logins of distinct users are all misses, and against the paced
            # hits below they give what a miss adds (docs/capacity.md).
            address, nginx_pid = fronts["authsvc"]
            count = min(len(users), int(args.seconds * args.paced_rate))
            result = Result("authsvc-paced-miss", "plain", count / args.paced_rate)
            before = {g: f() for g, f in groups.items()}
            before["nginx"] = group_cpu(nginx_pid)
            asyncio.run(paced(address, port, users[:count], None, count / args.paced_rate,
                              args.paced_rate, result))
            after = {g: f() for g, f in groups.items()}
            after["nginx"] = group_cpu(nginx_pid)
            result.cpu = {g: after[g] - before[g] for g in after}
            results.append(result)
            print(f"paced misses {len(result.latencies)} errors={result.errors} "
                  f"{result.first_error}", file=sys.stderr)
        # Warm authsvc's route cache with every user once (not measured), so
        # the rounds measure the steady state: cache hits.
        warm = Result("warm", "plain", 0)
        asyncio.run(warm_all(node.address, port, users, warm))
        if warm.errors:
            raise SystemExit(f"warm-up failed: {warm.first_error}")
        print(f"warmed {len(warm.latencies)} users", file=sys.stderr)
        for round_no in range(args.rounds):
            for mode, context in (("plain", None), ("starttls", tls)):
                order = ["authsvc", "static"] if round_no % 2 == 0 else ["static", "authsvc"]
                for front in order:
                    address, nginx_pid = fronts[front]
                    result = Result(front, mode, args.seconds)
                    before = {g: f() for g, f in groups.items()}
                    before["nginx"] = group_cpu(nginx_pid)
                    asyncio.run(load(address, port, users, context, args.seconds,
                                     args.concurrency, result))
                    after = {g: f() for g, f in groups.items()}
                    after["nginx"] = group_cpu(nginx_pid)
                    result.cpu = {g: after[g] - before[g] for g in after}
                    result.pss_kib = {"authsvc": group_pss_kib(node.serve.pid or 0),
                                      "nginx": group_pss_kib(nginx_pid)}
                    if front == "static":
                        result.cpu.pop("authsvc")  # idle; not part of this front end
                        result.cpu.pop("mariadb")
                    results.append(result)
                    rate = len(result.latencies) / args.seconds
                    print(f"round {round_no + 1} {mode:8} {front:7} {rate:7.0f} logins/s "
                          f"errors={result.errors} {result.first_error}", file=sys.stderr)
        if args.paced_rate > 0:
            # serve's CPU per login when logins arrive one at a time
            # (docs/capacity.md reads this figure): the authsvc front only.
            for mode, context in (("plain", None), ("starttls", tls)):
                address, nginx_pid = fronts["authsvc"]
                result = Result("authsvc-paced", mode, args.seconds)
                before = {g: f() for g, f in groups.items()}
                before["nginx"] = group_cpu(nginx_pid)
                asyncio.run(paced(address, port, users, context, args.seconds,
                                  args.paced_rate, result))
                after = {g: f() for g, f in groups.items()}
                after["nginx"] = group_cpu(nginx_pid)
                result.cpu = {g: after[g] - before[g] for g in after}
                result.pss_kib = {"authsvc": group_pss_kib(node.serve.pid or 0),
                                  "nginx": group_pss_kib(nginx_pid)}
                results.append(result)
                print(f"paced {mode:8} {len(result.latencies) / args.seconds:7.0f} logins/s "
                      f"errors={result.errors} {result.first_error}", file=sys.stderr)
    return results


async def warm_all(host: str, port: int, users: list[MailUser], result: Result) -> None:
    queue = list(users)

    async def worker() -> None:
        while queue:
            user = queue.pop()
            try:
                await one_login(host, port, user, None, "127.0.1.1")
            except (OSError, LoginError) as exc:
                result.errors += 1
                result.first_error = result.first_error or repr(exc)
                continue
            result.latencies.append(0.0)

    await asyncio.gather(*(worker() for _ in range(16)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.login_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per round and front end")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=3000, help="generated users in the map")
    parser.add_argument("--paced-rate", type=float, default=40.0,
                        help="then logins/s started by the clock through authsvc (0: none)")
    parser.add_argument("--json", type=Path,
                        help="also write the summary here, with the run's time, commit and load")
    args = parser.parse_args(argv)
    info = run_info()
    results = run(args)
    rows = summarise(results)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"run": finish(info), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
