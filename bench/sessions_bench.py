"""``authsvc sessions list`` with 9,900 sessions in one proxy process, and a kick of 1,000.

One ``authsvc proxy`` process (no workers) relays ``--sessions`` idle
logged-in IMAP sessions to the scripted backend of ``bench/proxy_bench.py``
(its own process, listening on two addresses): ``--kick`` of them to
127.0.0.5, the rest to 127.0.0.4; a file map says which.  Then, each
``--runs`` times:

* ``list``: the wall time of ``authsvc sessions list`` (the table) and of
  ``authsvc sessions list --json``, the command as an operator runs it
  (Python's start included), and of the HTTP request alone;
* after the lists, ``kick``: the wall time of ``authsvc sessions kick --store
  127.0.0.5`` without ``--rate`` (once: the sessions are gone after it), and
  the time until the last of those clients read end of stream; the other
  sessions are counted again to show they stayed.

Each session holds two descriptors in the proxy; with the hard limit at
20,000 (a container without CAP_SYS_RESOURCE), 9,900 sessions is about the
most one process can hold.  The load average at start is printed with the
figures.  Not a test: it asserts nothing; docs/benchmarks.md has the figures.

Run (from the repository root)::

    .venv/bin/python -m bench.sessions_bench
    # defaults: --sessions 9900 --kick 1000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.proxy_bench import _backend_session
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess

STAY, KICKED = "127.0.0.4", "127.0.0.5"
SECRET = "bench-control-secret"  # noqa: S105 - a throwaway secret


async def _serve_backend(port: int) -> None:
    servers = [await asyncio.start_server(_backend_session, host, port, backlog=4096)
               for host in (STAY, KICKED)]
    await asyncio.gather(*(server.serve_forever() for server in servers))


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def expect(reader: asyncio.StreamReader, tag: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise RuntimeError("closed before the login answered")
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise RuntimeError(line.decode(errors="replace").strip())
            return


async def hold(port: int, count: int, parallel: int = 64,
               ) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` logged-in idle sessions, ``user00000`` ... in order."""
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = [None] * count
    numbers = iter(range(count))

    async def opener(index: int) -> None:
        source = f"127.0.3.{1 + index % 250}"
        for n in numbers:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(source, 0))
            await reader.readline()
            writer.write(f"l LOGIN user{n:05d} pw\r\n".encode())
            await expect(reader, b"l")
            held[n] = (reader, writer)

    await asyncio.gather(*(opener(i) for i in range(parallel)))
    return [h for h in held if h is not None]


def timed(config: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "authsvc", "sessions", *args, "-c",
                           str(config)], capture_output=True, text=True, timeout=120,
                          check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"authsvc sessions {' '.join(args)}: {done.stderr.strip()}")
    return took, done.stdout


async def http_list(control: int) -> tuple[float, int]:
    start = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{control}/sessions",
            headers={"X-Authsvc-Control": SECRET}) as reply:
        body = await reply.json()
    return time.perf_counter() - start, int(body["count"])


async def bench(args: argparse.Namespace, root: Path, backend_port: int) -> dict[str, object]:
    port, control = free_port(), free_port()
    (root / "secret").write_text(SECRET + "\n")
    (root / "map").write_text("".join(
        f"user{n:05d}: {KICKED if n < args.kick else STAY}:{backend_port}\n"
        for n in range(args.sessions)))
    config = root / "authsvc.toml"
    config.write_text(f"""

[proxy]
backend_timeout = 30

[control]
listen = "127.0.0.1:{control}"
secret_file = "{root / 'secret'}"

[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
bind = ["127.0.0.1:{port}"]
timeout = 3600
login_timeout = 600
[listener.map]
type = "file"
path = "{root / 'map'}"
""")
    result: dict[str, object] = {"sessions": args.sessions, "kick": args.kick,
                                 "loadavg_at_start": os.getloadavg()}
    with ProxyProcess(config, root / "proxy.log") as proxy:
        try:
            await asyncio.to_thread(proxy.start, 2)
            start = time.perf_counter()
            held = await hold(port, args.sessions)
            result["fill_seconds"] = round(time.perf_counter() - start, 1)
            lists, jsons, https = [], [], []
            for _ in range(args.runs):
                took, text = await asyncio.to_thread(timed, config, "list")
                assert len(text.splitlines()) == 1 + args.sessions, text[-500:]
                lists.append(took)
                took, text = await asyncio.to_thread(timed, config, "list", "--json")
                assert len(json.loads(text)["sessions"]) == args.sessions
                jsons.append(took)
                took, count = await http_list(control)
                assert count == args.sessions
                https.append(took)
            result["list_table_s"] = [round(t, 3) for t in lists]
            result["list_json_s"] = [round(t, 3) for t in jsons]
            result["list_http_s"] = [round(t, 3) for t in https]

            kicked = held[:args.kick]
            closed_at: list[float] = []

            async def watch(reader: asyncio.StreamReader) -> None:
                if await reader.read() == b"":
                    closed_at.append(time.perf_counter())

            watchers = [asyncio.ensure_future(watch(r)) for r, _ in kicked]
            start = time.perf_counter()
            took, text = await asyncio.to_thread(timed, config, "kick", "--store", KICKED)
            await asyncio.wait_for(asyncio.gather(*watchers), 30)
            result["kick_command_s"] = round(took, 3)
            result["kick_all_closed_s"] = round(max(closed_at) - start, 3)
            result["kick_output"] = text.strip()
            _, count = await http_list(control)
            result["left_after_kick"] = count
            for _, writer in held:
                writer.transport.abort()
        finally:
            await asyncio.to_thread(proxy.stop)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=9900)
    parser.add_argument("--kick", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    raise_nofile()
    if args.backend is not None:
        asyncio.run(_serve_backend(args.backend))
        return 0
    backend_port = free_port(STAY)
    backend = subprocess.Popen([sys.executable, "-m", "bench.sessions_bench",
                                "--backend", str(backend_port)])
    try:
        time.sleep(1.0)  # the backend's two listeners
        with tempfile.TemporaryDirectory(prefix="sessions-bench-") as root:
            result = asyncio.run(bench(args, Path(root), backend_port))
    finally:
        backend.terminate()
        backend.wait()
    for key in ("list_table_s", "list_json_s", "list_http_s"):
        values = result[key]
        assert isinstance(values, list)
        result[key.replace("_s", "_median_s")] = round(statistics.median(values), 3)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
