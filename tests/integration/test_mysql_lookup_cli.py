"""Acceptance: ``authsvc lookup Bob`` with the seed's own perdition.imap4.conf and MariaDB.

The seed's file (deploy/perdition/perdition.imap4.conf) is used as it is,
except that ``map_library_opt`` points at the test database instead of
``dbhost-vpn``.  The command is the real CLI in a subprocess.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services.mariadb import TestDatabase

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED_IMAP4 = ROOT / "deploy" / "perdition" / "perdition.imap4.conf"
SEED_POP3 = ROOT / "deploy" / "perdition" / "perdition.pop3.conf"
STORAGE_IP = "10.20.30.40"


@pytest.fixture(scope="module")
def db(mariadb_db: TestDatabase) -> TestDatabase:
    mariadb_db.create_mailbox_table("nest_cli")
    mariadb_db.add_mailboxes([("bob@riseup.net", STORAGE_IP)], table="nest_cli")
    return mariadb_db


def pointed_at(seed: Path, db: TestDatabase, tmp_path: Path) -> Path:
    text = seed.read_text()
    assert "map_library_opt dbhost-vpn:3306:nest:mailboxes:nest_mail:" in text
    port = re.search(r"^map_library_opt .*:(\d+)$", text, flags=re.M)
    assert port is not None
    opt = db.map_library_opt(port=int(port.group(1)), table="nest_cli")
    conf = tmp_path / seed.name
    conf.write_text(re.sub(r"^map_library_opt .*$", f"map_library_opt {opt}", text, flags=re.M))
    return conf


def authsvc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authsvc", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )


def rows(stdout: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        name, _, value = line.partition("  ")
        if name.strip():
            found[name.strip()] = value.strip()
    return found


def test_lookup_bob_with_the_seed_config(db: TestDatabase, tmp_path: Path) -> None:
    conf = pointed_at(SEED_IMAP4, db, tmp_path)
    result = authsvc("lookup", "Bob", "--config", str(conf))
    assert result.returncode == 0, result.stderr
    shown = rows(result.stdout)
    assert shown["map key"] == "bob@riseup.net"
    assert shown["route"].startswith(f"{STORAGE_IP}:143 ")
    assert "WHERE `address` = %s" in shown["map"]
    assert db.reader_password not in result.stdout + result.stderr


def test_pop3_file_gives_port_110(db: TestDatabase, tmp_path: Path) -> None:
    conf = pointed_at(SEED_POP3, db, tmp_path)
    result = authsvc("lookup", "BOB", "--protocol", "pop3", "--config", str(conf))
    assert result.returncode == 0, result.stderr
    shown = rows(result.stdout)
    assert shown["map key"] == "bob@riseup.net"
    assert shown["route"].startswith(f"{STORAGE_IP}:110 ")


def test_unknown_login_is_refused(db: TestDatabase, tmp_path: Path) -> None:
    conf = pointed_at(SEED_IMAP4, db, tmp_path)
    result = authsvc("lookup", "nobody", "--config", str(conf))
    assert result.returncode == 1
    assert rows(result.stdout)["refused"].startswith("no_route")
