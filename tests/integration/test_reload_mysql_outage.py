"""A reload while the database is down keeps the cached routes.

MySQL routes live in the map's cache; a reload that leaves the map's settings
alone keeps that map, cache and all (``maps/factory.py:MapShelf``), so
``systemctl reload`` during an outage does not turn every cached login into a
temporary failure.  Driven through ``authsvc reload --pid`` (the CLI).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from authsvc.http.auth_http import TEXT_TEMPORARY
from tests.integration.test_fault_mariadb import ask, write_config
from tests.services.mariadb import PrivateMariaDb, TestDatabase
from tests.services.serve import ServeProcess

pytestmark = pytest.mark.integration


def test_reload_during_outage_keeps_cached_routes(
    private_mariadb: PrivateMariaDb, private_mariadb_db: TestDatabase, tmp_path: Path
) -> None:
    db = private_mariadb_db
    db.add_mailboxes([("alice@riseup.net", "127.0.0.2"), ("carol@riseup.net", "127.0.0.4")])
    config = write_config(tmp_path, db)
    serve = ServeProcess([config], tmp_path)
    serve.start()
    try:
        assert ask(serve.port, "alice")["Auth-Server"] == "127.0.0.2"
        private_mariadb.stop(crash=True)
        # A change elsewhere in the config; the map's own settings stay as they were.
        config.write_text(config.read_text().replace('level = "info"', 'level = "debug"'))
        assert serve.pid is not None
        pid_file = tmp_path / "serve.pid"
        pid_file.write_text(f"{serve.pid}\n")
        done = subprocess.run([sys.executable, "-m", "authsvc", "reload", "--pid-file",
                               str(pid_file)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while "event=reloaded" not in serve.log_text():
            assert time.monotonic() < deadline, serve.log_tail()
            time.sleep(0.05)
        assert ask(serve.port, "alice")["Auth-Server"] == "127.0.0.2"
        assert ask(serve.port, "carol")["Auth-Status"] == TEXT_TEMPORARY
    finally:
        serve.stop()
        private_mariadb.ensure_running()


def test_reload_cli_reports_a_missing_process(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "authsvc", "reload", "--pid-file",
                           str(tmp_path / "absent.pid")], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1
    assert "absent.pid" in done.stderr
