"""The ceiling for ``bench/serve_bench.py``: a bare aiohttp handler returning fixed auth headers.

No routing, no logging, no metrics: what aiohttp alone costs per nginx-shaped
request.  Run: ``python bench/serve_bare.py PORT``; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

#: The headers authsvc sends for the benchmark's cached hit (user1 -> 10.0.0.1:143).
HEADERS = {"Auth-Status": "OK", "Auth-Server": "10.0.0.1", "Auth-Port": "143"}


async def auth(request: web.Request) -> web.Response:
    return web.Response(headers=HEADERS)


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/auth", auth)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
