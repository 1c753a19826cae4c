"""authsvc proxy against nginx mail, Perdition and an earlier revision, side by side, one run.

The front ends run at once against the same Dovecot store and the same
MariaDB map; ``--fronts`` picks which (default: all that can run):

* **nginx**: nginx mail with ``auth_http`` answered by a fixed ``http {}``
  location of the same nginx (as ``bench/login_bench.py``'s "static"),
  ``worker_processes auto``: the cheapest nginx can be;
* **nginx-serve**: the same nginx mail, its ``auth_http`` answered by
  ``authsvc serve`` (one process, the MySQL map behind the route cache, as a
  site deploys nginx with authsvc; docs/serve.md);
* **baseline** (with ``--baseline REV``): ``authsvc proxy`` from the code of
  git revision REV, checked out with ``git worktree`` into a temporary
  directory and started with that tree first on ``PYTHONPATH`` (it uses this
  venv's dependencies; a tree whose proxy is still the top-level ``proxy``
  package resolves it from there too);
* **authsvc**: ``authsvc proxy`` from this tree, one process, stdlib asyncio
  (``AUTHSVC_LOOP=asyncio``, also when the ``authsvc[uvloop]`` extra is installed);
* **uvloop** (when uvloop is importable in this venv): the same code on
  uvloop's loop (``AUTHSVC_LOOP=uvloop``, authsvc/runtime/loop.py);
* **system** (only when named): the same code, stdlib asyncio, on the
  system's ``/usr/bin/python3``: on Debian 12, Debian's CPython 3.11, the
  interpreter ``deploy/run.sh`` and ``tests/run.sh`` make their venv with on
  a fresh machine.  It runs from a venv of its own (``--system-venv``, made
  and given this tree, editable, when it has no ``bin/python``); beside
  **authsvc** it shows what the interpreter's build is worth;
* **perdition**: Debian's Perdition 2.2 on the seed deployment's files
  (``tests/services/perdition.py``), ``perdition.imap4`` and ``perdition.imaps``;
* **floor** (only when named): ``bench/floor_proxy.py``, the least a Python
  login proxy on stdlib asyncio does (callbacks only: no route, limits,
  timeouts, logs or metrics), against the same store; plain logins only
  (the logins and paced tests), a yardstick for the proxy's own work.

The authsvc proxies run on the seed's files, written by the rig; only
``timeout`` is raised from the rig's 60 s to an hour, so idle sessions stay
for the memory figure.

Measured, each ``--runs`` times, front ends interleaved (the order reversed
every other run):

* ``logins``: logins/s with ``--concurrency`` clients (connect, greeting,
  [STARTTLS], LOGIN, SELECT INBOX, LOGOUT), ``--modes`` plain and STARTTLS;
  front-end CPU seconds per 1,000 logins (nginx-serve: nginx's and serve's
  together);
* ``paced``: the same logins, one started every 1/``--paced-rate`` s (40) by
  the clock, as a site's logins arrive, not back to back; front-end CPU
  seconds per 1,000 logins (docs/capacity.md reads the authsvc and nginx rows);
* ``fetch``: MB/s of ``FETCH * BODY.PEEK[]`` of one 20 MB message over 4
  connections, plain (143) and implicit TLS (993); front-end CPU s per GB;
* ``memory``: PSS (``/proc/PID/smaps_rollup``, summed over the front end's
  process and all its descendants) per idle logged-in session, at each
  ``--sessions`` count, in the ``--memory-modes``:

  - ``plain``, ``tls`` (implicit TLS from the client), every front end,
    against the PSS before the front end's first fill; with ``--fresh`` the
    authsvc proxies are restarted before each fill and the base is the new
    process's (the row's ``warm_base_kib`` is the PSS of the process it
    replaced, with no session, after the logins and fetches before);
  - ``tls_fresh``, ``tls_both``: the authsvc proxies only, each point in a
    fresh ``authsvc proxy`` process with one IMAPS listener whose base is
    its own PSS after a 32-session warm-up; ``tls_both`` talks implicit TLS
    to the store too (``ssl_mode ssl_listen,ssl_outgoing``, i.e.
    ``backend_tls = implicit``, the store's certificate checked against the
    bench CA; nginx mail cannot talk TLS to a store), ``tls_fresh`` the same
    with a plaintext store, to compare it with.

  The sessions log in to a minimal scripted IMAP backend (``--backend`` mode
  of this file, its own process on 127.0.0.4, a plain port and an implicit
  TLS one), not Dovecot, so 10,000 sessions need no Dovecot process per
  login; the front ends cannot tell (the map sends ``idle*`` users there).
  RLIMIT_NOFILE is raised to 65,536 in this process, which the front ends
  and the backend inherit; where the hard limit cannot be raised (a
  container without CAP_SYS_RESOURCE, hard limit 20,000) one proxy process
  holds at most ~9,990 sessions (two descriptors each, the client's and the
  store's): use ``--sessions 9900``.
  A fill that fails is a row with ``error``, and the run goes on.  With
  ``--tracemalloc DIR`` the authsvc proxies trace Python's allocations
  (tracemalloc) and dump a snapshot on SIGUSR2; each of their rows also
  gets ``python_bytes_per_session`` (what Python allocated between the
  base and the held measurement, per session) and ``python_top`` (the lines
  that allocated most), and its PSS includes tracemalloc's own books;
* ``instructions`` (with ``--callgrind DIR``): user-space instructions per
  login of the authsvc proxies under callgrind, ``--logins`` logins per mode;
* ``opcodes`` (with ``--opcodes DIR``): Python bytecodes per login of the
  authsvc proxies (a ``sys.settrace`` opcode trace between two SIGUSR2),
  ``--logins`` logins per mode from ``--concurrency`` clients, and a table
  per front end and mode in DIR of where they go, by module and function.

Quiet machine: before each run of each test and mode the script waits until
the 1-minute load average is under ``--quiet-load`` (0.5), for at most
``--quiet-wait`` seconds (600); past that it warns and runs anyway.  Every row
records the load average at its start, and each table says the load at the
start of its first run and the range at the start of each measurement.  The
report gives the median and the range (min-max) of the runs.  ``--json``
writes ``{"run": ..., "fronts": ..., "baseline": ..., "rows": ...,
"summary": ...}``: ``run`` is the run's time, command, commit and load
averages (bench/record.py), ``rows`` one object per measurement (the fields
bench/capacity.py reads: ``test``, ``mode``, ``front``, ``cpu_s_per_1000``,
``cpu_s_per_gb``, ``kib_per_session``, ``first_base_kib``,
``warm_base_kib``, ``processes``, ``fresh``).

Run (as root, from the repository root)::

    .venv/bin/python -m bench.proxy_bench --baseline b3aa733 --json /tmp/proxy-bench.json
    # defaults: --runs 3 --seconds 10 --concurrency 32 --sessions 1000 10000
    #           --tests logins paced fetch memory --paced-rate 40
    #           --memory-modes plain tls tls_fresh tls_both
    # a quick check of one change (CPU per 1,000 logins):
    .venv/bin/python -m bench.proxy_bench --tests logins --fronts nginx authsvc \\
        --runs 1 --seconds 5 --quiet-wait 0
    # idle TLS sessions, TLS to the store too, each point a fresh process:
    .venv/bin/python -m bench.proxy_bench --tests memory --memory-modes tls_fresh tls_both \\
        --fronts authsvc --sessions 1000 3000 --runs 1
    # where an idle session's Python memory goes (rows' python_top):
    .venv/bin/python -m bench.proxy_bench --tests memory --memory-modes plain tls_both \\
        --fronts authsvc --sessions 1000 --fresh --runs 1 --tracemalloc /tmp/tm --json /tmp/tm.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.login_bench import group_cpu
from bench.record import finish, run_info
from tests.services.certs import ServerCert, make_test_pki
from tests.services.mariadb import TestDatabase
from tests.services.nginx import NginxProcess, start_nginx
from tests.services.perdition import (
    LISTENER_TLS,
    SEED_DOMAIN,
    PerditionDaemon,
    common_ports,
    seed_file_text,
    write_seed_files,
)
from tests.services.perdition import _greets as greets
from tests.services.ports import free_port

ADDRESSES = {
    "perdition": "127.0.0.30", "authsvc": "127.0.0.31", "nginx": "127.0.0.32",
    "nginx-serve": "127.0.0.33", "baseline": "127.0.0.34", "uvloop": "127.0.0.35",
    "floor": "127.0.0.36", "system": "127.0.0.37",
}
NGINX = ADDRESSES["nginx"]
STORE, BACKEND = "127.0.0.2", "127.0.0.4"
#: Every front end, in the order the tables show them.
FRONTS = ("nginx", "nginx-serve", "baseline", "authsvc", "system", "uvloop", "floor",
          "perdition")
#: The authsvc proxies, each started as ``python -m authsvc proxy`` on the seed's files.
PROXIES = ("baseline", "authsvc", "system", "uvloop")
#: The system's interpreter (front ``system``): Debian's, on Debian 12.
SYSTEM_PYTHON = "/usr/bin/python3"
#: Where front ``system``'s venv is kept between runs (``--system-venv``).
SYSTEM_VENV = Path("/var/tmp/authsvc-bench-system-venv")
#: The memory test's modes: every front end; the authsvc proxies in a fresh process each.
MEMORY_MODES = ("plain", "tls", "tls_fresh", "tls_both")
#: The order of the modes in the tables.
MODE_ORDER = ("plain", "starttls", "imaps", *MEMORY_MODES[1:])
#: ``authsvc proxy`` under cProfile with a CPU clock (the process's CPU time, not the
#: wall clock, which on a busy machine counts the time others ran); stats to argv[1].
PROFILE_MAIN = """import cProfile, sys, time
out = sys.argv.pop(1)
from authsvc.cli import main
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    code = main(sys.argv[1:])
finally:
    profile.disable()
    profile.dump_stats(out)
sys.exit(code)
"""
#: ``--tracemalloc``: the proxy traces Python's allocations and, on each
#: SIGUSR2 (which authsvc does not use), dumps a snapshot to ``OUT.PID.N``.
TRACEMALLOC_MAIN = """import os, signal, sys, tracemalloc
out = sys.argv.pop(1)
from authsvc.cli import main
marks = iter(range(1 << 30))
def dump(*_):
    path = f"{out}.{os.getpid()}.{next(marks)}"
    tracemalloc.take_snapshot().dump(path + ".part")
    os.rename(path + ".part", path)  # whole, or not there yet
tracemalloc.start()
signal.signal(signal.SIGUSR2, dump)
sys.exit(main(sys.argv[1:]))
"""
#: ``--opcodes``: the proxy counts the bytecodes it runs per function (a
#: ``sys.settrace`` opcode trace), from one SIGUSR2 to the next, then writes
#: ``{"file:line function": [opcodes, calls]}`` as JSON to ``OUT.PID``.
#: Deterministic and blind to the load, unlike CPU seconds; unlike callgrind,
#: it says which Python function does the work (C work inside a call, and the
#: kernel's, are not counted).
OPCODES_MAIN = """import collections, json, os, signal, sys
out = sys.argv.pop(1)
ops = collections.Counter()
calls = collections.Counter()
def local(frame, event, arg):
    if event == "opcode":
        ops[frame.f_code] += 1
    return local
def on_call(frame, event, arg):
    frame.f_trace_opcodes = True
    calls[frame.f_code] += 1
    return local
tracing = False
def toggle(*_):
    global tracing
    tracing = not tracing
    if tracing:
        ops.clear(); calls.clear(); sys.settrace(on_call)
        return
    sys.settrace(None)
    table = {}
    for code, n in ops.items():
        where = "/".join(code.co_filename.split("/")[-2:])
        key = f"{where}:{code.co_firstlineno} {code.co_qualname}"
        was = table.get(key, (0, 0))
        table[key] = (was[0] + n, was[1] + calls[code])
    path = f"{out}.{os.getpid()}"
    with open(path + ".part", "w") as f:
        json.dump(table, f)
    os.rename(path + ".part", path)
signal.signal(signal.SIGUSR2, toggle)
from authsvc.cli import main
sys.exit(main(sys.argv[1:]))
"""
ROOT = Path(__file__).resolve().parent.parent
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


async def _serve_backend(port: int, tls_port: int = 0, cert: str | None = None,
                         key: str | None = None) -> None:
    """The scripted backend on ``port``, and behind implicit TLS on ``tls_port``."""
    servers = [await asyncio.start_server(_backend_session, BACKEND, port, backlog=4096)]
    if tls_port and cert and key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        servers.append(await asyncio.start_server(
            _backend_session, BACKEND, tls_port, backlog=4096, ssl=context))
    await asyncio.gather(*(server.serve_forever() for server in servers))


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
    #: Further process trees whose CPU and memory belong to this front end (nginx-serve's serve).
    extra: tuple[int, ...] = ()
    #: Stops the front end and starts it again, returning the new pid (the authsvc
    #: proxies, for ``--fresh``).
    restart: Callable[[], int] | None = None


@dataclass
class ProxyProcess:
    """One authsvc proxy front end's process, started again by :meth:`restart`."""

    #: Starts the process; its argument counts the starts (0 for the first).
    launch: Callable[[int], subprocess.Popen[bytes]]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> int:
        self.process = self.launch(self.starts)
        self.starts += 1
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            _end(self.process)

    def restart(self) -> int:
        self.stop()
        return self.start()


def nginx_text(prefix: Path, pki: ServerCert, ports: dict[str, int], auth_port: int,
               store_port: int, *, address: str = NGINX, serve: bool = False) -> str:
    """nginx mail on ``address``: a fixed auth answer (``idle*`` users to the scripted
    backend), or with ``serve`` the auth_http of ``authsvc serve`` on ``auth_port``."""
    if serve:
        auth = f"""    auth_http {address}:{auth_port}/auth;
    auth_http_header X-Authsvc-Listener imap4;"""
        http = ""
    else:
        auth = f"    auth_http {address}:{auth_port}/auth;"
        http = f"""http {{
    access_log off;
    map $http_auth_user $bench_store {{ ~^idle {BACKEND}; default {STORE}; }}
    server {{
        listen {address}:{auth_port};
        location = /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server $bench_store;
            add_header Auth-Port {store_port};
            return 204;
        }}
    }}
}}
"""
    return f"""load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes auto;
worker_rlimit_nofile {NOFILE};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 30000; }}
mail {{
{auth}
    proxy on;
    imap_capabilities IMAP4rev1;
    ssl_certificate {pki.cert};
    ssl_certificate_key {pki.key};
    server {{ listen {address}:{ports['imap4']}; protocol imap; starttls on; }}
    server {{ listen {address}:{ports['imaps']} ssl; protocol imap; }}
}}
{http}"""


def serve_config(path: Path, db: TestDatabase, address: str, port: int, store_port: int) -> Path:
    """``authsvc serve``'s file for nginx-serve: the seed's login rules, the MySQL map
    behind the route cache, one decision line per request (as a site runs it)."""
    password = db.write_password_file(path.parent / "serve-db-password")
    path.write_text(f"""
[login]
lower_case = ["lookup", "backend_login"]
add_domain = ["lookup"]
explicit_domain = "{SEED_DOMAIN}"

[map]
type = "mysql"
hosts = ["{db.host}:{db.port}"]
database = "{db.name}"
table = "mailboxes"
user = "{db.reader_user}"
password_file = "{password}"
server_column = "storage_ip"
user_column = "address"
port_constant = {store_port}

[cache]
ttl = 3600

[log]
level = "info"

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["{address}"]
port = {port}
""")
    return path


@contextlib.contextmanager
def checkout(rev: str, tmp: Path) -> Iterator[Path]:
    """A git worktree of ``rev`` under ``tmp``, removed afterwards."""
    where = tmp / f"baseline-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), rev],
                   check=True)
    # Since proxy/ and templates/ install inside the package (pyproject.toml's
    # package-dir), a source tree on PYTHONPATH finds them only through a link.
    pyproject = (where / "pyproject.toml").read_text()
    for folder in ("proxy", "templates"):
        link = where / "authsvc" / folder
        if f'"authsvc.{folder}" = "{folder}"' in pyproject and not link.exists():
            link.symlink_to(where / folder, target_is_directory=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
                       check=False)


def start_proxy(name: str, files: dict[str, Path], address: str, ports: dict[str, int],
                pki: ServerCert, log: Path, root: Path | None,
                profile: Path | None = None,
                callgrind: Path | None = None,
                traced: Path | None = None,
                opcodes: Path | None = None,
                python: str = sys.executable) -> subprocess.Popen[bytes]:
    """``authsvc proxy`` on ``files``: this tree's, or (``root``) an earlier revision's,
    run by ``python``;
    under cProfile, its stats written to ``profile`` at exit, when given; under
    callgrind, its dumps in ``callgrind`` (``FRONT.PID.N``), when given; with
    tracemalloc, snapshots in ``traced`` (``FRONT.PID.N``) on SIGUSR2, when given."""
    grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={callgrind}/{name}.%p"] if callgrind else []
    main = (["-c", PROFILE_MAIN, str(profile)] if profile else
            ["-c", TRACEMALLOC_MAIN, str(traced / name)] if traced else
            ["-c", OPCODES_MAIN, str(opcodes / name)] if opcodes else ["-m", "authsvc"])
    argv = [*grind, python, *main, "proxy"]
    for path in files.values():
        argv += ["-c", str(path)]
    env = dict(os.environ)
    # The loop (authsvc/runtime/loop.py); a revision from before it ignores this.
    env["AUTHSVC_LOOP"] = "uvloop" if name == "uvloop" else "asyncio"
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=root or ROOT)
    deadline = time.monotonic() + (600 if callgrind else 30)
    for listener, port in ports.items():
        while not greets(address, port, LISTENER_TLS[listener][1], pki):
            if process.poll() is not None or time.monotonic() > deadline:
                _end(process)
                raise RuntimeError(f"authsvc proxy ({name}) did not start: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
    return process


def start_serve(config: Path, address: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "authsvc", "serve", "-c", str(config),
             "--listen", f"{address}:{port}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                _end(process)
                raise RuntimeError(f"authsvc serve did not start: {log.read_text()[-2000:]}"
                                   ) from None
            time.sleep(0.1)


@dataclass
class Rig:
    """The running front ends, and what a fresh ``authsvc proxy`` needs to start."""

    fronts: dict[str, Front]
    pki: ServerCert
    workdir: Path
    db: TestDatabase
    #: The scripted backend's plain and implicit TLS ports (on ``BACKEND``).
    backend_port: int
    backend_tls_port: int
    #: Per authsvc proxy front end, the source tree it runs from (None: this one).
    roots: dict[str, Path | None] = field(default_factory=dict)
    #: ``--tracemalloc``: where the proxies write their snapshots (None: not traced).
    traced: Path | None = None
    #: Per authsvc proxy front end, the interpreter it runs on (absent: this one).
    pythons: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def fresh_imaps(self, name: str, label: str, *, store_tls: bool) -> Iterator[Front]:
        """A new ``authsvc proxy`` process of front end ``name`` (``authsvc``,
        ``baseline``, ``uvloop``) with one IMAPS listener, the ``idle*`` users
        routed to the scripted backend's TLS port with implicit TLS
        (``backend_tls = implicit``) when ``store_tls``, to its plain port otherwise."""
        address = ADDRESSES[name]
        port = free_port(address)
        directory = self.workdir / label
        directory.mkdir()
        text = seed_file_text(
            "imaps", bind=address, port=port, pki=self.pki, timeout=3600,
            map_library_opt=self.db.map_library_opt(
                port=self.backend_tls_port if store_tls else self.backend_port))
        if store_tls:
            # ssl_outgoing is Perdition's implicit TLS to the store (perdition(8),
            # --ssl_mode), backend_tls = implicit in authsvc's own form; the
            # store's certificate is checked against the bench CA.
            text = text.replace("ssl_mode ssl_listen\n", "ssl_mode ssl_listen,ssl_outgoing\n")
            text += f"ssl_ca_file {self.pki.ca}\n"
        path = directory / "perdition.imaps.conf"
        path.write_text(text)
        path.chmod(0o600)
        process = start_proxy(name, {"imaps": path}, address, {"imaps": port}, self.pki,
                              self.workdir / f"{label}.log", self.roots.get(name),
                              traced=self.traced,
                              python=self.pythons.get(name, sys.executable))
        try:
            yield Front(name, address, {"imaps": port}, process.pid)
        finally:
            _end(process)


@contextlib.contextmanager
def running_fronts(users: int, idle_users: int, names: tuple[str, ...],
                   baseline: str | None, profile: Path | None = None,
                   callgrind: Path | None = None, traced: Path | None = None,
                   opcodes: Path | None = None,
                   system_venv: Path = SYSTEM_VENV) -> Iterator[Rig]:
    """MariaDB map, one Dovecot store, the scripted backend (plain and implicit
    TLS) and the front ends ``names``."""
    from tests.services.dovecot import dovecot_stores
    from tests.services.mariadb import create_test_database, running_private_mariadb

    workdir = Path(tempfile.mkdtemp(prefix="authsvc-proxy-bench-"))
    os.chmod(workdir, 0o755)  # noqa: S103 - dovecot and nobody traverse it
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        addresses = tuple(ADDRESSES[n] for n in names)
        # BACKEND too: tls_both's proxies check the scripted backend's certificate.
        pki = make_test_pki(workdir / "pki", names=("localhost", *addresses, BACKEND))
        server = stack.enter_context(running_private_mariadb())
        db = stack.enter_context(create_test_database(server.admin, port=server.port))
        accounts = [f"user{i:04d}" for i in range(users)] + [FETCH_USER]
        db.add_mailboxes([(f"{n}@{SEED_DOMAIN}", STORE) for n in accounts])
        db.add_mailboxes([(f"idle{i:05d}@{SEED_DOMAIN}", BACKEND) for i in range(idle_users)])
        stores = stack.enter_context(dovecot_stores(
            {"a": dict.fromkeys(accounts, PASSWORD)}, {"a": STORE}, pki=pki))
        store = stores["a"]
        body = b"x" * 76 + b"\r\n"
        store.deliver(FETCH_USER, b"Subject: big\r\n\r\n" + body * (FETCH_SIZE // len(body)))
        # The map answers one port for every user, the store's: the backend
        # listens on it on its own address; its TLS port is any free one.
        backend_tls_port = free_port(BACKEND)
        backend = subprocess.Popen(
            [sys.executable, "-m", "bench.proxy_bench", "--backend", str(store.ports.imap),
             "--backend-tls", str(backend_tls_port), str(pki.cert), str(pki.key)],
            stdin=subprocess.DEVNULL)
        stack.callback(_end, backend)
        ports = common_ports(addresses)
        ports = {k: v for k, v in ports.items() if k in ("imap4", "imaps")}
        fronts: dict[str, Front] = {}
        roots: dict[str, Path | None] = {}
        pythons = {"system": system_python(system_venv)} if "system" in names else {}
        for name in names:
            address = ADDRESSES[name]
            if name in ("perdition", *PROXIES):
                files = write_seed_files(workdir / name, bind=address, ports=ports | {
                    "pop3": 1, "pop3s": 2}, pki=pki, db=db, store_ports=store.ports)
                files = {k: v for k, v in files.items() if k in ports}
                for path in files.values():  # idle sessions must outlive the rig's 60 s
                    path.write_text(re.sub(r"(?m)^timeout 60$", "timeout 3600",
                                           path.read_text()))
            if name == "perdition":
                for listener, path in files.items():
                    daemon = PerditionDaemon(listener, path, address, ports[listener], pki,
                                             workdir / f"perdition.{listener}.log")
                    daemon.start()
                    stack.callback(daemon.stop)
                    assert daemon.pid is not None
                    fronts[f"perdition.{listener}"] = Front(name, address, ports, daemon.pid)
                fronts[name] = fronts["perdition.imap4"]
            elif name in PROXIES:
                roots[name] = root = (stack.enter_context(checkout(baseline, workdir))
                                      if name == "baseline" and baseline else None)

                def launch(n: int, name: str = name, files: dict[str, Path] = files,
                           address: str = address, root: Path | None = root
                           ) -> subprocess.Popen[bytes]:
                    # A restarted process (--fresh) writes its profile beside the first's.
                    stats = f"{name}.prof" if n == 0 else f"{name}.{n}.prof"
                    return start_proxy(name, files, address, ports, pki,
                                       workdir / f"{name}.log", root,
                                       profile / stats if profile else None, callgrind,
                                       traced, opcodes, pythons.get(name, sys.executable))

                proxy = ProxyProcess(launch)
                pid = proxy.start()
                stack.callback(proxy.stop)
                fronts[name] = Front(name, address, ports, pid, restart=proxy.restart)
            elif name == "floor":
                port = free_port(address)
                with (workdir / "floor.log").open("ab") as out:
                    floor = subprocess.Popen(
                        [sys.executable, "-m", "bench.floor_proxy", address, str(port), STORE,
                         str(store.ports.imap)],
                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
                stack.callback(_end, floor)
                deadline = time.monotonic() + 30
                while not greets(address, port, "none", pki):
                    if floor.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("bench/floor_proxy.py did not start")
                    time.sleep(0.2)
                fronts[name] = Front(name, address, {"imap4": port}, floor.pid)
            else:
                prefix = workdir / name
                prefix.mkdir()
                auth_port = free_port(address)
                extra: tuple[int, ...] = ()
                if name == "nginx-serve":
                    config = serve_config(prefix / "serve.toml", db, address, auth_port,
                                          store.ports.imap)
                    serve = start_serve(config, address, auth_port, prefix / "serve.log")
                    stack.callback(_end, serve)
                    extra = (serve.pid,)
                nginx: NginxProcess = start_nginx(
                    nginx_text(prefix, pki, ports, auth_port, store.ports.imap,
                               address=address, serve=name == "nginx-serve"),
                    prefix, [(address, ports["imap4"]), (address, ports["imaps"])])
                stack.callback(nginx.stop)
                fronts[name] = Front(name, address, ports, nginx.pid, extra)
        time.sleep(1.0)  # the scripted backend is listening by now
        yield Rig(fronts, pki, workdir, db, store.ports.imap, backend_tls_port, roots, traced,
                  pythons)


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(10)


def roots(fronts: dict[str, Front], front: str, listener: str) -> list[int]:
    """The process trees that make up ``front`` for ``listener`` (Perdition: one per port)."""
    if front == "perdition":
        return [fronts[f"perdition.{listener}"].pid]
    return [fronts[front].pid, *fronts[front].extra]


def cpu_of(fronts: dict[str, Front], front: str) -> float:
    pids = ([fronts["perdition.imap4"].pid, fronts["perdition.imaps"].pid]
            if front == "perdition" else [fronts[front].pid, *fronts[front].extra])
    return sum(group_cpu(pid) for pid in pids)


def wait_quiet(args: argparse.Namespace, what: str) -> float:
    """Wait until the 1-minute load average is under ``--quiet-load`` (at most
    ``--quiet-wait`` s); returns the load average at the start."""
    deadline = time.monotonic() + args.quiet_wait
    load = os.getloadavg()[0]
    while load >= args.quiet_load and time.monotonic() < deadline:
        time.sleep(5.0)
        load = os.getloadavg()[0]
    if load >= args.quiet_load:
        print(f"warning: {what} starts at load average {load:.2f} "
              f"(not under {args.quiet_load})", file=sys.stderr, flush=True)
    return load


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
                 seconds: float, concurrency: int,
                 limit: int | None = None) -> tuple[int, int, str]:
    """(logins done, errors, the first error) of ``concurrency`` clients looping
    for ``seconds``, or until ``limit`` logins have begun."""
    deadline = time.monotonic() + seconds
    done = errors = 0
    first = ""
    counter = iter(range(limit if limit is not None else 10**9))

    async def worker(index: int) -> None:
        nonlocal done, errors, first
        source = f"127.0.1.{1 + index % 250}"
        while time.monotonic() < deadline:
            n = next(counter, None)
            if n is None:
                return
            user = f"user{n % users:04d}"
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
    for mode in args.modes:
        load = wait_quiet(args, f"logins {mode} run {run + 1}")
        order = args.fronts if run % 2 == 0 else tuple(reversed(args.fronts))
        for name in order:
            if name == "floor" and mode != "plain":
                continue  # no TLS there
            front = fronts[name]
            context = pki.client_context() if mode == "starttls" else None
            before = cpu_of(fronts, name)
            started = time.monotonic()
            done, errors, first = asyncio.run(logins(
                front.address, front.ports["imap4"], args.users, context, args.seconds,
                args.concurrency))
            elapsed = time.monotonic() - started
            cpu = cpu_of(fronts, name) - before
            row: dict[str, object] = {
                "test": "logins", "mode": mode, "front": name, "run": run, "load": load,
                "logins_per_s": done / elapsed, "errors": errors, "first_error": first,
                "cpu_s_per_1000": 1000 * cpu / max(done, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            time.sleep(2.0)
            load = os.getloadavg()[0]


def measure_paced(fronts: dict[str, Front], pki: ServerCert, args: argparse.Namespace,
                  rows: list[dict[str, object]], run: int) -> None:
    """Front-end CPU per login at ``--paced-rate`` logins/s (docs/capacity.md reads
    the authsvc and nginx rows)."""
    for mode in args.modes:
        load = wait_quiet(args, f"paced {mode} run {run + 1}")
        order = args.fronts if run % 2 == 0 else tuple(reversed(args.fronts))
        for name in order:
            if name == "floor" and mode != "plain":
                continue  # no TLS there
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
                "test": "paced", "mode": mode, "front": name, "run": run, "load": load,
                "rate": args.paced_rate, "logins_per_s": done / elapsed, "errors": errors,
                "first_error": first, "cpu_s_per_1000": 1000 * cpu / max(done, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            time.sleep(1.0)
            load = os.getloadavg()[0]


def measure_fetch(fronts: dict[str, Front], pki: ServerCert, args: argparse.Namespace,
                  rows: list[dict[str, object]], run: int) -> None:
    for mode in ("plain", "imaps"):
        load = wait_quiet(args, f"fetch {mode} run {run + 1}")
        for name in (f for f in args.fronts if f != "floor"):
            front = fronts[name]
            context = pki.client_context() if mode == "imaps" else None
            port = front.ports["imaps" if mode == "imaps" else "imap4"]
            before = cpu_of(fronts, name)
            started = time.monotonic()
            total = asyncio.run(fetch(front.address, port, context, args.seconds, 4))
            elapsed = time.monotonic() - started
            cpu = cpu_of(fronts, name) - before
            row: dict[str, object] = {
                "test": "fetch", "mode": mode, "front": name, "run": run, "load": load,
                "mb_per_s": total / elapsed / 1e6, "cpu_s_per_gb": cpu / (total / 1e9)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            load = os.getloadavg()[0]


def callgrind_total(directory: Path, front: str, pid: int) -> int:
    """Instructions (Ir) in the newest callgrind dump of ``front``'s process ``pid``."""
    dumps = sorted(directory.glob(f"{front}.{pid}*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise BenchError(f"no totals in {dumps[-1]}")


def drive_logins(front: Front, context: ssl.SSLContext | None, args: argparse.Namespace,
                 count: int, clients: int) -> int:
    """``count`` logins through ``front`` from ``clients`` clients; a failed one is an error."""
    done, errors, first = asyncio.run(logins(
        front.address, front.ports["imap4"], args.users, context, 3600, clients, limit=count))
    if errors:
        raise BenchError(f"{front.name}: {errors} errors, first {first}")
    return done


def measure_instructions(fronts: dict[str, Front], pki: ServerCert, args: argparse.Namespace,
                         rows: list[dict[str, object]], run: int) -> None:
    """Instructions per login of each authsvc proxy (user space, callgrind): robust
    on a busy machine, where CPU seconds are not; the kernel's share is not counted."""
    for mode in args.modes:
        for name in (f for f in args.fronts if f in PROXIES):
            front = fronts[name]
            context = pki.client_context() if mode == "starttls" else None
            # warm: the route cache, the code paths, the allocator
            drive_logins(front, context, args, 20, 4)
            subprocess.run(["callgrind_control", "--instr=on", str(front.pid)], check=True,
                           capture_output=True)
            subprocess.run(["callgrind_control", "--zero", str(front.pid)], check=True,
                           capture_output=True)
            done = drive_logins(front, context, args, args.logins, 4)
            subprocess.run(["callgrind_control", "--dump", str(front.pid)], check=True,
                           capture_output=True)
            subprocess.run(["callgrind_control", "--instr=off", str(front.pid)], check=True,
                           capture_output=True)
            total = callgrind_total(args.callgrind, name, front.pid)
            row: dict[str, object] = {"test": "instructions", "mode": mode, "front": name,
                                      "run": run, "load": os.getloadavg()[0],
                                      "ir_per_login": total / done}
            print(json.dumps(row), flush=True)
            rows.append(row)


def measure_opcodes(fronts: dict[str, Front], pki: ServerCert, args: argparse.Namespace,
                    rows: list[dict[str, object]], run: int) -> None:
    """Python bytecodes per login of each authsvc proxy, and per function
    (``OPCODES_MAIN``): which function does the work, whatever the load.
    The table of each (front, mode, run) goes to ``DIR/FRONT.MODE.RUN.txt``, the
    counts themselves to ``DIR/FRONT.MODE.RUN.json``."""
    directory: Path = args.opcodes
    for mode in args.modes:
        for name in (f for f in args.fronts if f in PROXIES):
            front = fronts[name]
            context = pki.client_context() if mode == "starttls" else None
            drive_logins(front, context, args, 40, args.concurrency)  # warm
            dump = directory / f"{name}.{front.pid}"
            dump.unlink(missing_ok=True)
            os.kill(front.pid, signal.SIGUSR2)
            time.sleep(0.5)
            done = drive_logins(front, context, args, args.logins, args.concurrency)
            time.sleep(0.5)  # the last sessions' ends
            os.kill(front.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 60
            while not dump.exists():
                if time.monotonic() > deadline:
                    raise BenchError(f"{name}: no opcode table in {dump}")
                time.sleep(0.2)
            table = json.loads(dump.read_text())
            dump.rename(directory / f"{name}.{mode}.{run}.json")  # the next mode's goes to dump
            total = sum(ops for ops, _ in table.values())
            by_module: Counter[str] = Counter()
            for key, (ops, _) in table.items():
                by_module[key.split(":", 1)[0]] += ops
            lines = [f"{name} {mode}: {total / done:,.0f} opcodes per login, {done} logins",
                     "", "per module:"]
            lines += [f"{ops / done:8.0f} {100 * ops / total:5.1f}%  {module}"
                      for module, ops in by_module.most_common(30)]
            lines += ["", "per function (opcodes, calls per login):"]
            lines += [f"{ops / done:8.0f} {calls / done:6.1f}  {key}" for key, (ops, calls)
                      in sorted(table.items(), key=lambda item: -item[1][0])[:80]]
            (directory / f"{name}.{mode}.{run}.txt").write_text("\n".join(lines) + "\n")
            row: dict[str, object] = {"test": "opcodes", "mode": mode, "front": name,
                                      "run": run, "load": os.getloadavg()[0],
                                      "opcodes_per_login": total / done}
            print(json.dumps(row), flush=True)
            rows.append(row)


def snapshot(traced: Path, pid: int) -> Path:
    """A new tracemalloc snapshot of proxy ``pid`` (``--tracemalloc``), once written."""
    seen = set(traced.glob(f"*.{pid}.*"))
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = [p for p in traced.glob(f"*.{pid}.*") if p not in seen and p.suffix != ".part"]
        if new:
            return new[0]
        time.sleep(0.2)
    raise BenchError(f"no tracemalloc snapshot from {pid}")


def _where(filename: str) -> str:
    """A traced frame's file, short: from ``authsvc/`` on, or from the stdlib's folder."""
    for mark in ("/authsvc/", "/site-packages/", "/python3.11/"):
        if mark in filename:
            return ("authsvc/" if mark == "/authsvc/" else "") + filename.rsplit(mark, 1)[1]
    return Path(filename).name


def python_growth(before: Path, after: Path, sessions: int, top: int = 15) -> dict[str, object]:
    """What Python allocated per session between two snapshots, and where most of it was."""
    import tracemalloc

    stats = tracemalloc.Snapshot.load(str(after)).compare_to(
        tracemalloc.Snapshot.load(str(before)), "lineno")
    return {
        "python_bytes_per_session": round(sum(s.size_diff for s in stats) / sessions),
        "python_top": [{"where": f"{_where(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                        "bytes": round(s.size_diff / sessions),
                        "objects": round(s.count_diff / sessions, 2)} for s in stats[:top]],
    }


async def memory_scenario(host: str, port: int, context: ssl.SSLContext | None, count: int,
                          pids: list[int], traced: Path | None = None
                          ) -> tuple[int, int, int, dict[str, object]]:
    """(PSS before, PSS with ``count`` idle sessions, sessions opened), in KiB; and,
    with ``traced``, where the first process's Python memory went (:func:`python_growth`)."""
    await release(await hold_sessions(host, port, context, 32))  # warm-up
    base = sum(group_pss_kib(p) for p in pids)
    before = snapshot(traced, pids[0]) if traced else None
    writers = await hold_sessions(host, port, context, count)
    await asyncio.sleep(3.0)
    held = sum(group_pss_kib(p) for p in pids)
    growth: dict[str, object] = {}
    if traced and before:
        growth = python_growth(before, snapshot(traced, pids[0]), len(writers))
    await release(writers)
    return base, held, len(writers), growth


def measure_memory(fronts: dict[str, Front], pki: ServerCert, args: argparse.Namespace,
                   rows: list[dict[str, object]], run: int, count: int,
                   first_base: dict[tuple[str, str], int]) -> None:
    """PSS per idle session (modes ``plain`` and ``tls``), against the PSS before the
    front end's first fill.

    A long-running process keeps the memory freed by an earlier fill (CPython's
    arenas, glibc's heap) and reuses it for the next, so "before this run"
    would hide the sessions' cost; ``first_base`` keeps, per front end and
    mode, the PSS before its first fill.  Perdition's session processes exit,
    so its figure is the same either way.  With ``--fresh``, the authsvc
    proxies are restarted before each fill instead, so each figure is a fresh
    process's (the TLS fill then owes nothing to the plain one), and the row's
    ``warm_base_kib`` is the PSS of the process it replaced, with no session
    after all it did before (docs/capacity.md's baseline of a long-running node).
    """
    for mode in [m for m in args.memory_modes if m in ("plain", "tls")]:
        load = wait_quiet(args, f"memory {mode} {count} run {run + 1}")
        for name in (f for f in args.fronts if f != "floor"):
            listener = "imaps" if mode == "tls" else "imap4"
            front = fronts[f"perdition.{listener}" if name == "perdition" else name]
            fresh = bool(args.fresh and front.restart is not None)
            warm: int | None = None
            if fresh and front.restart is not None:
                warm = sum(group_pss_kib(p) for p in roots(fronts, name, listener))
                front.pid = front.restart()
                first_base.pop((name, mode), None)
            context = pki.client_context() if mode == "tls" else None
            port = front.ports[listener]

            row: dict[str, object] = {"test": "memory", "mode": mode, "front": name,
                                      "run": run, "load": load}
            try:
                traced = args.tracemalloc if name in PROXIES else None
                base, held, opened, growth = asyncio.run(memory_scenario(
                    front.address, port, context, count, roots(fronts, name, listener),
                    traced))
            except (OSError, BenchError, ssl.SSLError, TimeoutError) as exc:
                row |= {"sessions": count, "error": repr(exc)}
            else:
                row |= {"sessions": opened, "base_kib": base, "held_kib": held,
                        "processes": sum(len(descendants(p))
                                         for p in roots(fronts, name, listener)),
                        "fresh": fresh}
                if warm is not None:
                    row["warm_base_kib"] = warm
                first = first_base.setdefault((name, mode), base)
                row["first_base_kib"] = first
                row["kib_per_session"] = (held - first) / max(opened, 1)
                row |= growth
            print(json.dumps(row), flush=True)
            rows.append(row)
            time.sleep(3.0)
            load = os.getloadavg()[0]


def measure_memory_fresh(rig: Rig, args: argparse.Namespace, rows: list[dict[str, object]],
                         run: int, count: int, mode: str) -> None:
    """PSS per idle IMAPS session in a fresh process of each authsvc proxy front end:
    ``tls_both`` (TLS to the store too) and ``tls_fresh`` (a plaintext store).

    A fresh process per point, so no earlier fill's freed memory is reused;
    its base is its own PSS after the warm-up (:func:`memory_scenario`).
    """
    context = rig.pki.client_context()
    load = wait_quiet(args, f"memory {mode} {count} run {run + 1}")
    for name in (f for f in args.fronts if f in PROXIES):
        row: dict[str, object] = {"test": "memory", "mode": mode, "front": name, "run": run,
                                  "load": load}
        try:
            with rig.fresh_imaps(name, f"{name}.{mode}.{count}.{run}",
                                 store_tls=mode == "tls_both") as front:
                base, held, opened, growth = asyncio.run(memory_scenario(
                    front.address, front.ports["imaps"], context, count, [front.pid],
                    rig.traced))
                processes = len(descendants(front.pid))
        except (OSError, BenchError, ssl.SSLError, TimeoutError, RuntimeError) as exc:
            row |= {"sessions": count, "error": repr(exc)}
        else:
            row |= {"sessions": opened, "base_kib": base, "held_kib": held,
                    "processes": processes, "fresh": True, "first_base_kib": base,
                    "kib_per_session": (held - base) / max(opened, 1), **growth}
        print(json.dumps(row), flush=True)
        rows.append(row)
        time.sleep(3.0)
        load = os.getloadavg()[0]


METRICS = {
    "logins": (("logins_per_s", "logins/s", 0), ("cpu_s_per_1000", "CPU s per 1,000 logins", 2)),
    "paced": (("logins_per_s", "logins/s (paced)", 1),
              ("cpu_s_per_1000", "CPU s per 1,000 logins (paced)", 2)),
    "fetch": (("mb_per_s", "MB/s", 0), ("cpu_s_per_gb", "CPU s per GB", 2)),
    "memory": (("kib_per_session", "KiB PSS per idle session", 1),),
    "instructions": (("ir_per_login", "instructions per login (callgrind, user space)", 0),),
    "opcodes": (("opcodes_per_login", "Python opcodes per login (sys.settrace)", 0),),
}


def summary(rows: list[dict[str, object]], fronts: tuple[str, ...]) -> str:
    """One markdown table per test: median (min-max) per front end, and each to nginx."""
    out: list[str] = []
    for test, metrics in METRICS.items():
        mine = [r for r in rows if r["test"] == test]
        if not mine:
            continue
        loads = [float(str(r["load"])) for r in mine if "load" in r]
        shown = [f for f in fronts if any(r["front"] == f for r in mine)]
        ratios = [f for f in shown if f != "nginx"] if "nginx" in shown else []
        out += ["", f"{test}: 1-minute load average {loads[0]:.2f} at the start, "
                f"{min(loads):.2f}-{max(loads):.2f} at the start of each measurement; median "
                f"(min-max) of "
                f"{len({r['run'] for r in mine})} runs", "",
                "| " + " | ".join(["figure", *shown, *(f"{f} / nginx" for f in ratios)])
                + " |",
                "|---" * (1 + len(shown) + len(ratios)) + "|"]
        cases = sorted({(str(r["mode"]), int(str(r.get("sessions", 0)))) for r in mine},
                       key=lambda c: (c[1], MODE_ORDER.index(c[0])
                                      if c[0] in MODE_ORDER else len(MODE_ORDER), c[0]))
        for mode, sessions in cases:
            for metric, label, digits in metrics:
                cells, medians = [], {}
                for front in shown:
                    values = [float(str(r[metric])) for r in mine
                              if r["front"] == front and r["mode"] == mode and metric in r
                              and int(str(r.get("sessions", 0))) == sessions]
                    if not values:
                        cells.append("-")
                        continue
                    medians[front] = median = statistics.median(values)
                    cells.append(f"{median:,.{digits}f} ({min(values):,.{digits}f}-"
                                 f"{max(values):,.{digits}f})")
                cells += [f"{medians[f] / medians['nginx']:.2f}"
                          if f in medians and medians.get("nginx") else "-" for f in ratios]
                what = f"{label}, {mode}" + (f", {sessions:,}" if sessions else "")
                out.append(f"| {what} | " + " | ".join(cells) + " |")
        errors = sum(int(str(r.get("errors", 0))) for r in mine) + sum("error" in r for r in mine)
        out.append(f"\nerrors: {errors}")
    return "\n".join(out)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, NOFILE), max(hard, NOFILE)))


def system_python(venv: Path) -> str:
    """The interpreter of ``venv``, a venv of the system's python3 with this tree in it.

    Made once (``SYSTEM_PYTHON -m venv``, then this tree and its dependencies
    installed by pip, as ``deploy/run.sh`` does, but editable, so that it runs
    the tree as it is now), and kept for later runs: remove it when the
    dependencies change.
    """
    python = venv / "bin" / "python"
    if not python.exists():
        if not Path(SYSTEM_PYTHON).exists():
            raise RuntimeError(f"front 'system' needs {SYSTEM_PYTHON}")
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(ROOT)], check=True)
    return str(python)


def uvloop_importable() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend-tls", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--sessions", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--memory-runs", type=int, default=None,
                        help="runs of the memory test per session count (default --runs)")
    parser.add_argument("--tests", nargs="*",
                        choices=("logins", "paced", "fetch", "memory", "instructions",
                                 "opcodes"),
                        default=["logins", "paced", "fetch", "memory"])
    parser.add_argument("--modes", nargs="*", choices=("plain", "starttls"),
                        default=["plain", "starttls"],
                        help="login modes of logins, paced, instructions")
    parser.add_argument("--paced-rate", type=float, default=40.0,
                        help="logins/s of the paced test (one started every 1/rate s)")
    parser.add_argument("--memory-modes", nargs="*", choices=MEMORY_MODES,
                        default=list(MEMORY_MODES),
                        help="plain, tls: every front end; tls_fresh, tls_both: IMAPS clients "
                             "to a plaintext or TLS store, the authsvc proxies only, a fresh "
                             "process per point")
    parser.add_argument("--fresh", action="store_true",
                        help="memory plain, tls: restart the authsvc proxies before each fill")
    parser.add_argument("--fronts", nargs="*", choices=FRONTS, default=None,
                        help="front ends to run (default: all that can: baseline with "
                             "--baseline, uvloop when importable, perdition when installed)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run authsvc proxy from git revision REV (front 'baseline')")
    parser.add_argument("--quiet-load", type=float, default=0.5,
                        help="wait before each run until the 1-minute load average is under this")
    parser.add_argument("--quiet-wait", type=float, default=600.0,
                        help="seconds to wait for it at most, then warn and run")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run the authsvc proxies under cProfile (a CPU-time clock), stats "
                             "to DIR/FRONT.prof (their CPU figures are then cProfile's)")
    parser.add_argument("--callgrind", type=Path, metavar="DIR",
                        help="run the authsvc proxies under valgrind's callgrind, dumps in DIR; "
                             "for --tests instructions")
    parser.add_argument("--tracemalloc", type=Path, metavar="DIR",
                        help="memory test: the authsvc proxies trace Python's allocations "
                             "(snapshots in DIR); each row gets the Python bytes per session "
                             "and the lines that allocated most (PSS figures are then "
                             "tracemalloc's too)")
    parser.add_argument("--opcodes", type=Path, metavar="DIR",
                        help="run the authsvc proxies under an opcode-counting trace; for "
                             "--tests opcodes (per-function tables in DIR)")
    parser.add_argument("--logins", type=int, default=500,
                        help="logins measured per front and mode by --tests instructions "
                             "and opcodes")
    parser.add_argument("--system-venv", type=Path, default=SYSTEM_VENV,
                        help="front 'system': its venv, made when it has no bin/python")
    parser.add_argument("--json", type=Path,
                        help="also write the rows here, with the run's time, commit and load")
    args = parser.parse_args(argv)
    # SIGTERM (timeout(1), an operator) ends the run through the clean-up:
    # the daemons, the private MariaDB and a baseline worktree go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_nofile()
    if args.backend:
        tls_port, cert, key = args.backend_tls or ("0", None, None)
        asyncio.run(_serve_backend(args.backend, int(tls_port), cert, key))
        return 0
    info = run_info()
    if args.fronts is None:
        args.fronts = tuple(f for f in FRONTS if f not in ("floor", "system")
                            and (f != "baseline" or args.baseline)
                            and (f != "uvloop" or uvloop_importable())
                            and (f != "perdition" or shutil.which("perdition.imap4")
                                 or Path("/usr/sbin/perdition.imap4").exists()))
    else:
        args.fronts = tuple(f for f in FRONTS if f in args.fronts)  # the tables' order
    if "baseline" in args.fronts and not args.baseline:
        parser.error("front 'baseline' needs --baseline REV")
    rows: list[dict[str, object]] = []
    first_base: dict[tuple[str, str], int] = {}
    idle = max(args.sessions or [0]) + 100
    if "instructions" in args.tests and not args.callgrind:
        parser.error("--tests instructions needs --callgrind DIR")
    if "opcodes" in args.tests and not args.opcodes:
        parser.error("--tests opcodes needs --opcodes DIR")
    if sum(bool(d) for d in (args.profile, args.callgrind, args.tracemalloc, args.opcodes)) > 1:
        parser.error("--profile, --callgrind, --tracemalloc and --opcodes each need a run "
                     "of their own")
    for directory in (args.profile, args.callgrind, args.tracemalloc, args.opcodes):
        if directory:
            directory.mkdir(parents=True, exist_ok=True)
    with running_fronts(args.users, idle, args.fronts, args.baseline,
                        args.profile, args.callgrind, args.tracemalloc, args.opcodes,
                        args.system_venv) as rig:
        fronts, pki = rig.fronts, rig.pki
        for run in range(args.runs):
            if "instructions" in args.tests:
                measure_instructions(fronts, pki, args, rows, run)
            if "opcodes" in args.tests:
                measure_opcodes(fronts, pki, args, rows, run)
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
                    for mode in ("tls_fresh", "tls_both"):
                        if mode in args.memory_modes:
                            measure_memory_fresh(rig, args, rows, run, count, mode)
    text = summary(rows, args.fronts)
    print(text)
    if args.json:
        # bench/capacity.py reads "run" and "rows" (docs/capacity.md).
        args.json.write_text(json.dumps({
            "run": finish(info), "fronts": args.fronts, "baseline": args.baseline,
            "rows": rows, "summary": text}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
