"""A real Prometheus scraping one serve and one proxy (both ``--workers 2``) after a scripted load.

The pool: a Dovecot store, ``authsvc serve --workers 2`` asked as nginx asks
(``GET /auth`` with the ``Auth-*`` headers), ``authsvc proxy --workers 2``
logged into with real IMAP and POP3 clients, and Debian's ``prometheus``
scraping both every second (``tests/services/prometheus.py``).  The load
makes logins of every kind on both faces: ones that succeed, fail (unknown
user, wrong password), are throttled, are held, and meet a map outage (a
MySQL map whose server does not answer), plus a store that refuses
connections, a kicked session and a replaced worker.  Then:

* ``promtool check metrics`` passes on both faces' ``/metrics``;
* every target is up, and the login counters Prometheus holds equal the
  logins made, summed over the workers (the load goes on until both workers
  of each face have answered some), per result;
* every PromQL expression of ``deploy/grafana/authsvc-dashboard.json`` parses
  and returns at least one series (``$node`` as ``.*``, ``$__rate_interval``
  as ``1m``);
* the metric lists of docs/serve.md and docs/proxy.md name the series that
  each face's ``/metrics`` shows (``tests/helpers/metric_docs.py``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.control import control_section
from tests.helpers.eventually import eventually
from tests.helpers.metric_docs import documented, exposed
from tests.helpers.prometheus import Scrape
from tests.services.dovecot import dovecot_stores
from tests.services.mailclient import RawLines
from tests.services.ports import free_port
from tests.services.prometheus import PrometheusServer, StartPrometheus, promtool
from tests.services.proxy import ProxyProcess
from tests.services.require import require_binary
from tests.services.serve import ServeProcess, parse_fields
from tests.services.stack import STORE_ADDRESSES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "authsvc-dashboard.json"
HOST = "127.0.0.1"
CONTROL_SECRET = "prometheus-test-control"
USERS = {"a": {"bob": "bob-secret", "carol": "carol-secret"}}
#: Where dave's store is: an address with nothing listening, a store refusing.
DEAD_STORE = "127.0.0.4"
#: [throttle] address_limit: the third counted failure of an address reaches the cap.
LIMIT = 3


@dataclass
class Pool:
    serve: ServeProcess
    proxy: ProxyProcess
    proxy_health: int
    prometheus: PrometheusServer
    serve_config: Path
    proxy_config: Path
    #: The logins made, by result, per face.
    serve_logins: Counter[str] = field(default_factory=Counter)
    proxy_logins: Counter[str] = field(default_factory=Counter)

    def proxy_metrics(self) -> str:
        url = f"http://{HOST}:{self.proxy_health}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    def serve_metrics(self) -> str:
        status, text = self.serve.get("/metrics")
        assert status == 200
        return text


def common(root: Path, name: str, control: int, dead_mysql: int, pop3: int) -> str:
    """The sections both faces share: control listener, holds, throttle, the outage map."""
    (root / "map-password").write_text("unused\n")
    return control_section(root, control, CONTROL_SECRET, HOST) + f"""
[holds]
state_file = "{root / f'{name}-holds.json'}"

[throttle]
enabled = true
key = "prometheus-test-key-0123456789ab"
free_failures = 1
delay = 0.1
max_delay = 0.2
address_limit = {LIMIT}
login_limit = 1000

[[listener]]
name = "pop3"
protocol = "pop3"
tls = "none"
bind = ["{HOST}:{pop3}"]
[listener.map]
type = "mysql"
hosts = ["{HOST}:{dead_mysql}"]
database = "mail"
table = "mailboxes"
user = "reader"
password_file = "{root / 'map-password'}"
server_column = "storage_ip"
user_column = "address"
port_constant = 110
"""


def cli(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "authsvc", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


# --- the load ------------------------------------------------------------------------


def ask(pool: Pool, login: str, client: str, listener: str = "imap4") -> str:
    """One nginx auth request; the ``Auth-Status`` of the answer."""
    conn = http.client.HTTPConnection(HOST, pool.serve.port, timeout=10)
    try:
        conn.request("GET", "/auth", headers={
            "Auth-Method": "plain", "Auth-User": login, "Auth-Pass": "pw",
            "Auth-Protocol": "pop3" if listener == "pop3" else "imap",
            "Auth-Login-Attempt": "1", "Client-IP": client, "X-Authsvc-Listener": listener})
        reply = conn.getresponse()
        reply.read()
        return str(reply.getheader("Auth-Status"))
    finally:
        conn.close()


def imap_login(port: int, login: str, password: str, source: str) -> bytes:
    """LOGIN on a new connection; the tagged reply (the connection is closed)."""
    with RawLines(HOST, port, source=source) as lines:
        assert lines.line().startswith(b"* OK")
        return lines.command(f"a LOGIN {login} {password}".encode(), b"a")[-1]


def serve_load(pool: Pool) -> None:
    made = pool.serve_logins
    for _ in range(3):
        assert ask(pool, "bob", "192.0.2.1") == "OK"
        made["ok"] += 1
    assert ask(pool, "nobody", "192.0.2.2") == "Invalid login or password"
    made["no_route"] += 1
    # Unknown users from one address: the LIMIT-th reaches the cap, then throttled.
    for i in range(LIMIT):
        ask(pool, f"nobody{i}", "192.0.2.3")
        made["no_route"] += 1
    for _ in range(2):
        ask(pool, "bob", "192.0.2.3")
        made["throttled"] += 1
    assert ask(pool, "carol", "192.0.2.4") != "OK"
    made["held"] += 1
    assert ask(pool, "bob", "192.0.2.5", listener="pop3") != "OK"
    made["map_unavailable"] += 1

    # The kernel spreads connections over the workers; go on until both answered.
    def both_answered() -> bool:
        assert ask(pool, "bob", "192.0.2.1") == "OK"
        made["ok"] += 1
        return len({d.get("pid") for d in pool.serve.decisions()}) == 2

    eventually(both_answered, 20, interval=0)


def proxy_load(pool: Pool, imap: int, pop3: int, store_port: int) -> None:
    made = pool.proxy_logins
    for i in range(2):
        assert imap_login(imap, "bob", "bob-secret", f"127.0.0.4{i}").startswith(b"a OK")
        made["ok"] += 1
    assert imap_login(imap, "bob", "wrong", "127.0.0.42").startswith(b"a NO")
    made["backend_auth"] += 1
    # Wrong passwords from one address: the LIMIT-th reaches the cap, then throttled.
    for i in range(LIMIT):  # different passwords: a repeated one counts once
        imap_login(imap, "bob", f"wrong{i}", "127.0.0.43")
        made["backend_auth"] += 1
    for _ in range(2):
        imap_login(imap, "bob", "bob-secret", "127.0.0.43")
        made["throttled"] += 1
    assert imap_login(imap, "nobody", "x", "127.0.0.44").startswith(b"a NO")
    made["no_route"] += 1
    assert imap_login(imap, "carol", "carol-secret", "127.0.0.45").startswith(b"a NO")
    made["held"] += 1
    assert imap_login(imap, "dave", "x", "127.0.0.46").startswith(b"a NO")
    made["backend_connect"] += 1
    with RawLines(HOST, pop3, source="127.0.0.47") as lines:
        assert lines.line().startswith(b"+OK")
        assert lines.command(b"USER bob")[-1].startswith(b"+OK")
        assert lines.command(b"PASS bob-secret")[-1].startswith(b"-ERR")
    made["map_unavailable"] += 1
    def both_served() -> bool:
        assert imap_login(imap, "bob", "bob-secret", "127.0.0.40").startswith(b"a OK")
        made["ok"] += 1
        return len({line.get("pid") for line in pool.proxy.lines("session")}) == 2

    eventually(both_served, 20, interval=0)
    # A session that relays bytes, then is kicked by an operator.
    with RawLines(HOST, imap, source="127.0.0.48") as lines:
        assert lines.line().startswith(b"* OK")
        assert lines.command(b"a LOGIN bob bob-secret", b"a")[-1].startswith(b"a OK")
        made["ok"] += 1
        assert lines.command(b"b NOOP", b"b")[-1].startswith(b"b OK")
        # Open at the store, under the store's own label.
        eventually(lambda: [s.labels["store"] for s in
                            Scrape(pool.proxy_metrics()).find("authsvc_proxy_store_sessions")
                            if s.value == 1] == [f"{STORE_ADDRESSES['a']}:{store_port}"])
        kicked = cli(pool.proxy_config, "sessions", "kick", "--user", "bob")
        assert kicked.startswith("closed 1 session(s)"), kicked
        eventually(lambda: lines.line() == b"")


def replace_a_worker(serve: ServeProcess) -> None:
    """End one of serve's workers (started by this test's serve), and see it replaced."""
    started = [parse_fields(line) for line in serve.log_text().splitlines()
               if " event=worker_started " in line]
    os.kill(int(str(started[0]["worker"])), signal.SIGKILL)
    eventually(lambda: "authsvc_worker_restarts_total 1\n" in serve.get("/metrics")[1], 20)


# --- the pool ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory,
         prometheus: StartPrometheus) -> Iterator[Pool]:
    require_binary("dovecot")
    require_binary("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    dead_mysql = free_port(HOST)  # nothing listens: the map is down from the start
    with dovecot_stores(USERS, STORE_ADDRESSES) as stores:
        store = stores["a"]
        (root / "map").write_text(
            f"bob: {STORE_ADDRESSES['a']}:{store.ports.imap}\n"
            f"carol: {STORE_ADDRESSES['a']}:{store.ports.imap}\n"
            f"dave: {DEAD_STORE}:{free_port(DEAD_STORE)}\n")
        (root / "serve-map").write_text("bob: 127.0.0.2\ncarol: 127.0.0.3\n")

        serve_root, proxy_root = root / "serve", root / "proxy"
        serve_root.mkdir()
        proxy_root.mkdir()
        serve_config = serve_root / "authsvc.toml"
        serve_config.write_text(f"""
[http]
auth_wait = 1
max_attempts = 1000
{common(serve_root, 'serve', free_port(HOST), dead_mysql, free_port(HOST))}
[[listener]]
name = "imap4"
protocol = "imap"
bind = ["{HOST}"]
port = {free_port(HOST)}
[listener.map]
type = "file"
path = "{root / 'serve-map'}"
""")
        imap, pop3, health = free_port(HOST), free_port(HOST), free_port(HOST)
        proxy_config = proxy_root / "authsvc.toml"
        proxy_text = f"""
[proxy]
auth_failure_delay = 0.2
backend_timeout = 5
drain_timeout = 1
max_login_attempts = 100
health_listen = "{HOST}:{health}"
{common(proxy_root, 'proxy', free_port(HOST), dead_mysql, pop3)}
[[listener]]
name = "imap4"
protocol = "imap"
tls = "none"
bind = ["{HOST}:{imap}"]
login_timeout = 30
[listener.map]
type = "file"
path = "{root / 'map'}"
"""
        proxy_config.write_text(proxy_text)

        serve = ServeProcess([serve_config], serve_root, workers=2)
        proxy = ProxyProcess(proxy_config, proxy_root / "proxy.log", workers=2)
        with serve:
            proxy.start(listening=4)
            try:
                server = prometheus({"authsvc-serve": [f"{HOST}:{serve.port}"],
                                     "authsvc-proxy": [f"{HOST}:{health}"]})
                pool = Pool(serve, proxy, health, server, serve_config, proxy_config)
                # Holds go through the control listener to every worker.
                eventually(lambda: serve.log_text().count("what=control") == 2, 20)
                cli(serve_config, "hold", "user", "carol", "--for", "2h")
                cli(proxy_config, "hold", "user", "carol", "--for", "2h")
                replace_a_worker(serve)
                serve_load(pool)
                proxy_load(pool, imap, pop3, store.ports.imap)
                yield pool
            finally:
                proxy.stop()


# --- the checks ----------------------------------------------------------------------


def test_promtool_check_metrics_passes_on_both_faces(pool: Pool) -> None:
    for face, text in (("serve", pool.serve_metrics()), ("proxy", pool.proxy_metrics())):
        done = promtool("check", "metrics", stdin=text)
        assert done.returncode == 0, f"{face}: {done.stdout}{done.stderr}\n{text}"
        assert done.stdout.strip() == "" and done.stderr.strip() == "", (face, done)


def sum_by_result(pool: Pool, metric: str, job: str) -> dict[str, float]:
    found = pool.prometheus.query(f'sum by (result) ({metric}{{job="{job}"}})')
    return {s["metric"]["result"]: float(s["value"][1]) for s in found
            if float(s["value"][1]) != 0}


def test_every_target_is_up_and_the_login_counters_are_the_logins_made(pool: Pool) -> None:
    targets = pool.prometheus.targets()
    assert {t["labels"]["job"] for t in targets} == {"authsvc-serve", "authsvc-proxy"}
    def all_up() -> bool:
        down = [(t["scrapeUrl"], t["health"], t["lastError"])
                for t in pool.prometheus.targets() if t["health"] != "up"]
        assert not down, down
        return True

    eventually(all_up, 20)
    assert [float(s["value"][1]) for s in pool.prometheus.query("up")] == [1.0, 1.0]

    def counted() -> bool:
        assert sum_by_result(pool, "authsvc_auth_decisions_total", "authsvc-serve") == dict(
            pool.serve_logins)
        assert sum_by_result(pool, "authsvc_proxy_logins_total", "authsvc-proxy") == dict(
            pool.proxy_logins)
        return True

    eventually(counted, 20)
    # Both workers of each face answered some of them: the totals are over the workers.
    workers = pool.prometheus.query("authsvc_workers")
    assert sorted(float(s["value"][1]) for s in workers) == [2.0, 2.0]
    restarts = pool.prometheus.query('authsvc_worker_restarts_total{job="authsvc-serve"}')
    assert [float(s["value"][1]) for s in restarts] == [1.0]
    fds = pool.prometheus.query('count by (job) (process_open_fds)')
    assert sorted(float(s["value"][1]) for s in fds) == [2.0, 2.0]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every PromQL target of the dashboard, variables replaced."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$node", ".*").replace("$__rate_interval", "1m")
            found.append((panel["title"], expr))
    return found


def test_every_dashboard_query_parses_and_has_data(pool: Pool) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 9
    # Every series the panels read has been scraped at least twice since the load.
    eventually(lambda: pool.prometheus.query(
        'count_over_time(authsvc_proxy_sessions_kicked_total[1m])'), 10)

    def all_have_data() -> bool:
        empty = [(title, expr) for title, expr in queries if not pool.prometheus.query(expr)]
        assert not empty, empty
        return True

    eventually(all_have_data, 20, interval=1)


@pytest.mark.parametrize("face", ["serve", "proxy"])
def test_the_documented_metrics_are_the_exposed_ones(pool: Pool, face: str) -> None:
    """serve's list is docs/serve.md's; the proxy shows serve's families and its own."""
    text = pool.serve_metrics() if face == "serve" else pool.proxy_metrics()
    listed = documented(ROOT / "docs" / "serve.md")
    if face == "proxy":
        listed |= documented(ROOT / "docs" / "proxy.md")
    shown = exposed(text)
    assert listed == shown, (
        f"listed, not shown: {sorted(set(listed.items()) - set(shown.items()))}; "
        f"shown, not listed: {sorted(set(shown.items()) - set(listed.items()))}")
