"""authsvc proxy against Perdition and nginx mail (static auth), side by side, one run.

All three front ends run at once against the same Dovecot store and the
same MariaDB map:

* **perdition**: Debian's Perdition 2.2 on the seed deployment's files
  (``tests/services/perdition.py``), ``perdition.imap4`` and ``perdition.imaps``;
* **authsvc**: ``authsvc proxy`` on the same two files (one process);
* **nginx**: nginx mail with ``auth_http`` answered by a fixed ``http {}``
  location of the same nginx (as ``bench/login_bench.py``'s "static"),
  ``worker_processes auto``.

The seed files are written by the rig; only ``timeout`` is raised from the
rig's 60 s to an hour, so idle sessions stay for the memory figure.

Measured, each ``--runs`` times, front ends interleaved:

* ``logins``: logins/s with ``--concurrency`` clients (connect, greeting,
  [STARTTLS], LOGIN, SELECT INBOX, LOGOUT), plain and STARTTLS; front-end CPU
  seconds per 1,000 logins;
* ``paced``: front-end CPU seconds per 1,000 logins when one login starts
  every 1/``--paced-rate`` s (authsvc and nginx), the way a site's logins
  arrive (docs/capacity.md reads this figure);
* ``fetch``: MB/s of ``FETCH * BODY.PEEK[]`` of one 20 MB message over 4
  connections, plain (143) and implicit TLS (993); front-end CPU s per GB;
* ``memory``: PSS (``/proc/PID/smaps_rollup``, summed over the front end's
  process and all its descendants) per idle logged-in session, at each
  ``--sessions`` count, plain and implicit TLS.  The sessions log in to a
  minimal scripted IMAP backend (``--backend`` mode of this file, its own
  process on 127.0.0.4), not Dovecot, so 10,000 sessions need no Dovecot
  process per login; the front ends cannot tell (the map sends ``idle*``
  users there).  RLIMIT_NOFILE is raised to 65,536 in this process, which the
  front ends and the backend inherit; where the hard limit cannot be raised
  (a container without CAP_SYS_RESOURCE, hard limit 20,000) one proxy process
  holds at most ~9,990 sessions (two descriptors each): use ``--sessions 9900``.
  A fill that fails is a row with ``error``, and the run goes on.

Run (as root, from the repository root)::

    .venv/bin/python -m bench.proxy_bench --json /tmp/proxy-bench.json
    # defaults: --runs 3 --seconds 10 --concurrency 32 --sessions 1000 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.login_bench import group_cpu
from bench.record import finish, run_info
from tests.services.certs import ServerCert, make_test_pki
from tests.services.nginx import NginxProcess, start_nginx
from tests.services.perdition import (
    SEED_DOMAIN,
    AuthsvcProxy,
    PerditionDaemon,
    common_ports,
    write_seed_files,
)
from tests.services.ports import free_port

PERDITION, AUTHSVC, NGINX = "127.0.0.30", "127.0.0.31", "127.0.0.32"
STORE, BACKEND = "127.0.0.2", "127.0.0.4"
FRONTS = ("perdition", "authsvc", "nginx")
PASSWORD = "bench-secret"  # noqa: S105 - a throwaway test password
FETCH_USER = "fetcher"
FETCH_SIZE = 20 * 1024 * 1024
NOFILE = 65_536


# -- the scripted backend (its own process) ---------------------------------------------


async def _backend_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greet, say OK to every command; enough for a proxy's login and an idle session."""
    writer.write(b"* OK [CAPABILITY IMAP4rev1 ID] bench backend ready\r\n")
    with contextlib.suppress(OSError):
        while line := await reader.readline():
            # Literals (nginx and Perdition send LOGIN's arguments as {N}):
            # a continuation request, the N bytes, then the rest of the line.
            while (match := re.search(rb"\{(\d+)(\+?)\}\r\n$", line)) is not None:
                if not match.group(2):
                    writer.write(b"+ go ahead\r\n")
                literal = await reader.readexactly(int(match.group(1)))
                line = line[:match.start()] + literal + await reader.readline()
            tag, _, rest = line.partition(b" ")
            verb = rest.split(b" ", 1)[0].strip().upper()
            if verb == b"CAPABILITY":
                writer.write(b"* CAPABILITY IMAP4rev1 ID\r\n")
            elif verb == b"LOGOUT":
                writer.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                break
            writer.write(tag + b" OK done\r\n")
    writer.close()


async def _serve_backend(port: int) -> None:
    server = await asyncio.start_server(_backend_session, BACKEND, port, backlog=4096)
    async with server:
        await server.serve_forever()


# -- processes and accounting -----------------------------------------------------------


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def group_pss_kib(root: int) -> int:
    """PSS in KiB summed over ``root`` and its descendants (smaps_rollup)."""
    total = 0
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


@dataclass
class Front:
    name: str
    address: str
    ports: dict[str, int]
    pid: int
    #: Stops the front end and starts it again, for a fresh process (authsvc only).
    restart: Callable[[], int] | None = None


def nginx_text(prefix: Path, pki: ServerCert, ports: dict[str, int], auth_port: int,
               store_port: int) -> str:
    """nginx mail on NGINX with a fixed auth answer: ``idle*`` users to the scripted backend."""
    return f"""load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes auto;
worker_rlimit_nofile {NOFILE};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 30000; }}
mail {{
    auth_http {NGINX}:{auth_port}/auth;
    proxy on;
    imap_capabilities IMAP4rev1;
    ssl_certificate {pki.cert};
    ssl_certificate_key {pki.key};
    server {{ listen {NGINX}:{ports['imap4']}; protocol imap; starttls on; }}
    server {{ listen {NGINX}:{ports['imaps']} ssl; protocol imap; }}
}}
http {{
    access_log off;
    map $http_auth_user $bench_store {{ ~^idle {BACKEND}; default {STORE}; }}
    server {{
        listen {NGINX}:{auth_port};
        location = /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server $bench_store;
            add_header Auth-Port {store_port};
            return 204;
        }}
    }}
}}
"""


@contextlib.contextmanager
def running_fronts(users: int, idle_users: int) -> Iterator[tuple[dict[str, Front], ServerCert]]:
    """MariaDB map, one Dovecot store, the scripted backend and the three front ends."""
    from tests.services.dovecot import dovecot_stores
    from tests.services.mariadb import create_test_database, running_private_mariadb

    workdir = Path(tempfile.mkdtemp(prefix="authsvc-proxy-bench-"))
    os.chmod(workdir, 0o755)  # noqa: S103 - dovecot and nobody traverse it
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        pki = make_test_pki(workdir / "pki", names=("localhost", PERDITION, AUTHSVC, NGINX))
        server = stack.enter_context(running_private_mariadb())
        db = stack.enter_context(create_test_database(server.admin, port=server.port))
        names = [f"user{i:04d}" for i in range(users)] + [FETCH_USER]
        db.add_mailboxes([(f"{n}@{SEED_DOMAIN}", STORE) for n in names])
        db.add_mailboxes([(f"idle{i:05d}@{SEED_DOMAIN}", BACKEND) for i in range(idle_users)])
        stores = stack.enter_context(dovecot_stores(
            {"a": dict.fromkeys(names, PASSWORD)}, {"a": STORE}, pki=pki))
        store = stores["a"]
        body = b"x" * 76 + b"\r\n"
        store.deliver(FETCH_USER, b"Subject: big\r\n\r\n" + body * (FETCH_SIZE // len(body)))
        backend = subprocess.Popen(
            [sys.executable, "-m", "bench.proxy_bench", "--backend", str(store.ports.imap)],
            stdin=subprocess.DEVNULL)
        stack.callback(_end, backend)
        ports = common_ports((PERDITION, AUTHSVC, NGINX))
        ports = {k: v for k, v in ports.items() if k in ("imap4", "imaps")}
        fronts: dict[str, Front] = {}
        for address, name in ((PERDITION, "perdition"), (AUTHSVC, "authsvc")):
            files = write_seed_files(workdir / name, bind=address, ports=ports | {
                "pop3": 1, "pop3s": 2}, pki=pki, db=db, store_ports=store.ports)
            files = {k: v for k, v in files.items() if k in ports}
            for path in files.values():  # idle sessions must outlive the rig's 60 s
                path.write_text(re.sub(r"(?m)^timeout 60$", "timeout 3600", path.read_text()))
            if name == "perdition":
                for listener, path in files.items():
                    daemon = PerditionDaemon(listener, path, address, ports[listener], pki,
                                             workdir / f"perdition.{listener}.log")
                    daemon.start()
                    stack.callback(daemon.stop)
                    assert daemon.pid is not None
                    fronts[f"perdition.{listener}"] = Front(name, address, ports, daemon.pid)
            else:
                proxy = AuthsvcProxy(files, address, ports, pki, workdir / "authsvc.log")
                proxy.start()
                stack.callback(proxy.stop)
                assert proxy.pid is not None
                fronts[name] = Front(name, address, ports, proxy.pid,
                                     restart=functools.partial(_restart, proxy))
        prefix = workdir / "nginx"
        auth_port = free_port(NGINX)
        nginx: NginxProcess = start_nginx(
            nginx_text(prefix, pki, ports, auth_port, store.ports.imap), prefix,
            [(NGINX, ports["imap4"]), (NGINX, ports["imaps"])])
        stack.callback(nginx.stop)
        fronts["nginx"] = Front("nginx", NGINX, ports, nginx.pid)
        time.sleep(1.0)  # the scripted backend is listening by now
        yield fronts, pki


def _restart(proxy: AuthsvcProxy) -> int:
    proxy.stop()
    proxy.start()
    assert proxy.pid is not None
    return proxy.pid


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(10)


def roots(fronts: dict[str, Front], front: str, listener: str) -> list[int]:
    """The process trees that make up ``front`` for ``listener`` (Perdition: one per port)."""
    if front == "perdition":
        return [fronts[f"perdition.{listener}"].pid]
    return [fronts[front].pid]


def cpu_of(fronts: dict[str, Front], front: str) -> float:
    pids = ([fronts["perdition.imap4"].pid, fronts["perdition.imaps"].pid]
            if front == "perdition" else [fronts[front].pid])
    return sum(group_cpu(pid) for pid in pids)


# -- the IMAP client --------------------------------------------------------------------


class BenchError(Exception):
    """A session that did not go as scripted."""


async def expect(reader: asyncio.StreamReader, tag: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise BenchError(f"closed while waiting for {tag!r}")
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise BenchError(line.decode(errors="replace").strip())
            return


async def connect(host: str, port: int, context: ssl.SSLContext | None, *, implicit: bool,
                  source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(source, 0), ssl=context if implicit else None, limit=1 << 20,
        server_hostname=host if implicit else None)
    greeting = await reader.readline()
    if not greeting.startswith(b"* OK"):
        writer.close()
        raise BenchError(f"greeting {greeting!r}")
    if context is not None and not implicit:
        writer.write(b"s STARTTLS\r\n")
        await expect(reader, b"s")
        await writer.start_tls(context, server_hostname=host)
    return reader, writer


async def one_login(host: str, port: int, user: str, context: ssl.SSLContext | None,
                    source: str) -> None:
    reader, writer = await connect(host, port, context, implicit=False, source=source)
    try:
        # One command at a time: Perdition drops what a client pipelines
        # behind LOGIN (tests/integration/test_perdition_compat.py).
        writer.write(f"l LOGIN {user} {PASSWORD}\r\n".encode())
        await expect(reader, b"l")
        writer.write(b"c SELECT INBOX\r\n")
        await expect(reader, b"c")
        writer.write(b"o LOGOUT\r\n")
        await expect(reader, b"o")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def logins(host: str, port: int, users: int, context: ssl.SSLContext | None,
                 seconds: float, concurrency: int) -> tuple[int, int, str]:
    """(logins done, errors, the first error) of ``concurrency`` clients looping."""
    deadline = time.monotonic() + seconds
    done = errors = 0
    first = ""
    counter = iter(range(10**9))

    async def worker(index: int) -> None:
        nonlocal done, errors, first
        source = f"127.0.1.{1 + index % 250}"
        while time.monotonic() < deadline:
            user = f"user{next(counter) % users:04d}"
            try:
                await asyncio.wait_for(one_login(host, port, user, context, source), 30)
                done += 1
            except (TimeoutError, OSError, BenchError, ssl.SSLError) as exc:
                errors += 1
                first = first or repr(exc)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done, errors, first


async def paced_logins(host: str, port: int, users: int, context: ssl.SSLContext | None,
                       seconds: float, rate: float,
                       pick: Callable[[int], str] | None = None) -> tuple[int, int, str]:
    """(logins done, errors, the first error) with one login started every 1/``rate`` s.

    The clock sets the pace, not the previous login's end: logins arrive the
    way a site's do, spread out, each waking the front end on its own, and
    not in the back-to-back batches of :func:`logins`.  ``pick`` names the
    user of the n-th login (default: the ``users`` in turn).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    done = errors = 0
    first = ""
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        nonlocal done, errors, first
        try:
            user = pick(n) if pick is not None else f"user{n % users:04d}"
            await asyncio.wait_for(one_login(host, port, user, context,
                                             f"127.0.1.{1 + n % 250}"), 30)
            done += 1
        except (TimeoutError, OSError, BenchError, ssl.SSLError) as exc:
            errors += 1
            first = first or repr(exc)

    for n in range(int(seconds * rate)):
        await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return done, errors, first


async def fetch(host: str, port: int, context: ssl.SSLContext | None, seconds: float,
                connections: int) -> int:
    """Bytes of message body received by ``connections`` clients fetching for ``seconds``."""
    deadline = time.monotonic() + seconds
    total = 0

    async def worker(index: int) -> None:
        nonlocal total
        reader, writer = await connect(host, port, context, implicit=context is not None,
                                       source=f"127.0.2.{1 + index}")
        writer.write(f"l LOGIN {FETCH_USER} {PASSWORD}\r\n".encode())
        await expect(reader, b"l")
        writer.write(b"c SELECT INBOX\r\n")
        await expect(reader, b"c")
        while time.monotonic() < deadline:
            writer.write(b"f FETCH * BODY.PEEK[]\r\n")
            line = await reader.readline()
            match = re.search(rb"\{(\d+)\}\r\n$", line)
            if match is None:
                raise BenchError(f"no literal: {line[:80]!r}")
            size = int(match.group(1))
            if size < FETCH_SIZE - 4096:
                raise BenchError(f"message of {size} bytes: not the 20 MB one")
            left = size
            while left:
                chunk = await reader.read(min(left, 1 << 20))
                if not chunk:
                    raise BenchError("closed inside the literal")
                left -= len(chunk)
            total += size
            await expect(reader, b"f")
        writer.write(b"o LOGOUT\r\n")
        await expect(reader, b"o")
        writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return total


async def hold_sessions(host: str, port: int, context: ssl.SSLContext | None, count: int,
                        parallel: int = 64) -> list[asyncio.StreamWriter]:
    """``count`` logged-in idle sessions (implicit TLS with a context)."""
    writers: list[asyncio.StreamWriter] = []
    counter = iter(range(count))

    async def opener(index: int) -> None:
        source = f"127.0.3.{1 + index % 250}"
        for n in counter:
            reader, writer = await connect(host, port, context, implicit=context is not None,
                                           source=source)
            writer.write(f"l LOGIN idle{n:05d} {PASSWORD}\r\n".encode())
            await expect(reader, b"l")
            writers.append(writer)

    await asyncio.gather(*(opener(i) for i in range(parallel)))
    return writers


async def release(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.transport.abort()
    await asyncio.sleep(2.0)


# -- the measurements -------------------------------------------------------------------


def measure_logins(fronts: dict[str, Front], pki: ServerCert, args: argparse.Namespace,
                   rows: list[dict[str, object]], run: int) -> None:
    for mode in ("plain", "starttls"):
        order = FRONTS if run % 2 == 0 else tuple(reversed(FRONTS))
        for name in order:
            front = fronts["perdition.imap4" if name == "perdition" else name]
            context = pki.client_context() if mode == "starttls" else None
            before = cpu_of(fronts, name)
            started = time.monotonic()
            done, errors, first = asyncio.run(logins(
                front.address, front.ports["imap4"], args.users, context, args.seconds,
                args.concurrency))
            elapsed = time.monotonic() - started
            cpu = cpu_of(fronts, name) - before
            row: dict[str, object] = {"test": "logins", "mode": mode, "front": name, "run": run,
                   "logins_per_s": done / elapsed, "errors": errors, "first_error": first,
                   "cpu_s_per_1000": 1000 * cpu / max(done, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            time.sleep(2.0)


def measure_paced(fronts: dict[str, Front], pki: ServerCert, args: argparse.Namespace,
                  rows: list[dict[str, object]], run: int) -> None:
    """Front-end CPU per login at ``--paced-rate`` logins/s (authsvc and nginx)."""
    for mode in ("plain", "starttls"):
        for name in ("authsvc", "nginx"):
            front = fronts[name]
            context = pki.client_context() if mode == "starttls" else None
            before = cpu_of(fronts, name)
            started = time.monotonic()
            done, errors, first = asyncio.run(paced_logins(
                front.address, front.ports["imap4"], args.users, context, args.seconds,
                args.paced_rate))
            elapsed = time.monotonic() - started
            cpu = cpu_of(fronts, name) - before
            row: dict[str, object] = {
                "test": "paced", "mode": mode, "front": name, "run": run,
                "rate": args.paced_rate, "logins_per_s": done / elapsed, "errors": errors,
                "first_error": first, "cpu_s_per_1000": 1000 * cpu / max(done, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            time.sleep(1.0)


def measure_fetch(fronts: dict[str, Front], pki: ServerCert, args: argparse.Namespace,
                  rows: list[dict[str, object]], run: int) -> None:
    for mode in ("plain", "imaps"):
        for name in FRONTS:
            front = fronts["perdition.imap4" if name == "perdition" else name]
            context = pki.client_context() if mode == "imaps" else None
            port = front.ports["imaps" if mode == "imaps" else "imap4"]
            before = cpu_of(fronts, name)
            started = time.monotonic()
            total = asyncio.run(fetch(front.address, port, context, args.seconds, 4))
            elapsed = time.monotonic() - started
            cpu = cpu_of(fronts, name) - before
            row: dict[str, object] = {"test": "fetch", "mode": mode, "front": name, "run": run,
                   "mb_per_s": total / elapsed / 1e6, "cpu_s_per_gb": cpu / (total / 1e9)}
            print(json.dumps(row), flush=True)
            rows.append(row)


async def memory_scenario(host: str, port: int, context: ssl.SSLContext | None, count: int,
                          pids: list[int]) -> tuple[int, int, int]:
    """(PSS before, PSS with ``count`` idle sessions, sessions opened), in KiB."""
    await release(await hold_sessions(host, port, context, 32))  # warm-up
    base = sum(group_pss_kib(p) for p in pids)
    writers = await hold_sessions(host, port, context, count)
    await asyncio.sleep(3.0)
    held = sum(group_pss_kib(p) for p in pids)
    await release(writers)
    return base, held, len(writers)


def measure_memory(fronts: dict[str, Front], pki: ServerCert, args: argparse.Namespace,
                   rows: list[dict[str, object]], run: int, count: int,
                   first_base: dict[tuple[str, str], int]) -> None:
    """PSS per idle session, against the PSS before the front end's first fill.

    A long-running process keeps the memory freed by an earlier fill (CPython's
    arenas, glibc's heap) and reuses it for the next, so "before this run"
    would hide the sessions' cost; ``first_base`` keeps, per front end and
    mode, the PSS before its first fill.  Perdition's session processes exit,
    so its figure is the same either way.  With ``--fresh``, authsvc is
    restarted before each fill instead, so each figure is a fresh process's
    (the TLS fill then owes nothing to the plain one).
    """
    for mode in ("plain", "tls"):
        for name in args.fronts:
            listener = "imaps" if mode == "tls" else "imap4"
            front = fronts[f"perdition.{listener}" if name == "perdition" else name]
            warm: int | None = None
            if args.fresh and front.restart is not None:
                # What the process holds with no session after what it did
                # before (logins, fetches, an earlier fill): a long-running
                # node's baseline, which docs/capacity.md uses.
                warm = sum(group_pss_kib(p) for p in roots(fronts, name, listener))
                front.pid = front.restart()
                first_base.pop((name, mode), None)
            context = pki.client_context() if mode == "tls" else None
            port = front.ports[listener]

            row: dict[str, object]
            try:
                base, held, opened = asyncio.run(memory_scenario(
                    front.address, port, context, count, roots(fronts, name, listener)))
            except (OSError, BenchError, ssl.SSLError, TimeoutError) as exc:
                row = {"test": "memory", "mode": mode, "front": name, "run": run,
                       "sessions": count, "error": repr(exc)}
            else:
                row = {"test": "memory", "mode": mode, "front": name, "run": run,
                       "sessions": opened, "base_kib": base, "held_kib": held,
                       "processes": sum(len(descendants(p))
                                        for p in roots(fronts, name, listener)),
                       "fresh": bool(args.fresh and front.restart is not None)}
                if warm is not None:
                    row["warm_base_kib"] = warm
                first = first_base.setdefault((name, mode), base)
                row["first_base_kib"] = first
                row["kib_per_session"] = (held - first) / max(opened, 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
            time.sleep(3.0)


def summary(rows: list[dict[str, object]]) -> str:
    """Median [min-max] per test, mode and front end, and the ratios to Perdition."""
    metrics = {"logins": ("logins_per_s", "cpu_s_per_1000"),
               "paced": ("logins_per_s", "cpu_s_per_1000"), "fetch": ("mb_per_s", "cpu_s_per_gb"),
               "memory": ("kib_per_session",)}
    lines = []
    keys = sorted({(str(r["test"]), str(r["mode"]), int(str(r.get("sessions", 0))), str(r["front"]))
                   for r in rows if "error" not in r})
    medians: dict[tuple[str, str, int, str, str], float] = {}
    for test, mode, sessions, front in keys:
        for metric in metrics[test]:
            values = [float(str(r[metric])) for r in rows
                      if (r["test"], r["mode"], int(str(r.get("sessions", 0))), r["front"])
                      == (test, mode, sessions, front) and "error" not in r]
            median = statistics.median(values)
            medians[test, mode, sessions, front, metric] = median
            lines.append(f"{test} {mode}{f' {sessions}' if sessions else ''} {front} {metric}: "
                         f"{median:.2f} [{min(values):.2f}-{max(values):.2f}] n={len(values)}")
    for (test, mode, sessions, front, metric), value in sorted(medians.items()):
        ref = medians.get((test, mode, sessions, "perdition", metric))
        if front != "perdition" and ref:
            lines.append(f"ratio {test} {mode} {sessions or ''} {front}/perdition {metric}: "
                         f"{value / ref:.3f}")
    return "\n".join(lines)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, NOFILE), max(hard, NOFILE)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--sessions", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--memory-runs", type=int, default=None,
                        help="runs of the memory test per session count (default --runs)")
    parser.add_argument("--tests", nargs="*", default=["logins", "paced", "fetch", "memory"])
    parser.add_argument("--paced-rate", type=float, default=50.0,
                        help="logins/s of the paced test (one started every 1/rate s)")
    parser.add_argument("--fronts", nargs="*", default=list(FRONTS), choices=FRONTS,
                        help="memory: the front ends to fill (default all three)")
    parser.add_argument("--fresh", action="store_true",
                        help="memory: a fresh authsvc proxy process for each fill")
    parser.add_argument("--json", type=Path,
                        help="also write the rows here, with the run's time, commit and load")
    args = parser.parse_args(argv)
    raise_nofile()
    if args.backend:
        asyncio.run(_serve_backend(args.backend))
        return 0
    info = run_info()
    rows: list[dict[str, object]] = []
    first_base: dict[tuple[str, str], int] = {}
    idle = max(args.sessions or [0]) + 100
    with running_fronts(args.users, idle) as (fronts, pki):
        for run in range(args.runs):
            if "logins" in args.tests:
                measure_logins(fronts, pki, args, rows, run)
            if "paced" in args.tests:
                measure_paced(fronts, pki, args, rows, run)
            if "fetch" in args.tests:
                measure_fetch(fronts, pki, args, rows, run)
        if "memory" in args.tests:
            for count in args.sessions:
                for run in range(args.memory_runs or args.runs):
                    measure_memory(fronts, pki, args, rows, run, count, first_base)
    text = summary(rows)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"run": finish(info), "rows": rows, "summary": text},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
