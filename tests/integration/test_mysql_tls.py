"""TLS from the MySQL map to a MariaDB that requires it (``require_secure_transport``).

A private ``mariadbd`` started with ``ssl_cert``/``ssl_key``/``ssl_ca`` from a
throw-away PKI (tests/services/certs.py) and ``require_secure_transport=ON``:
a plain connection is refused, so an answer proves TLS.  The server's
certificate is verified (chain and name); a wrong CA is refused with an error
that names the host, in the map's message (its log line, ``/readyz``'s detail
and ``authsvc lookup``).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.mysql import MySqlMap
from authsvc.settings import MySqlMapSettings
from tests.services.certs import ServerCert, make_ca, make_server_cert, make_test_pki
from tests.services.mariadb import (
    PrivateMariaDb,
    TestDatabase,
    create_test_database,
    running_private_mariadb,
)
from tests.services.require import require_binary

pytestmark = pytest.mark.integration


@dataclass
class TlsWorld:
    server: PrivateMariaDb
    db: TestDatabase
    pki: ServerCert
    client: ServerCert
    wrong_ca: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsWorld]:
    require_binary("openssl")
    root = tmp_path_factory.mktemp("mysql-tls")
    pki = make_test_pki(root / "pki")
    client = make_server_cert(root / "pki", pki.ca, pki.ca.with_suffix(".key"),
                              names=("authsvc-map",), stem="client", usage="clientAuth")
    wrong_ca, _ = make_ca(root / "other", common_name="not the database's CA")
    extra = [f"--ssl-cert={pki.cert}", f"--ssl-key={pki.key}", f"--ssl-ca={pki.ca}",
             "--require-secure-transport=ON"]
    with running_private_mariadb(extra=extra) as server, \
            create_test_database(server.admin) as db:
        db.add_mailboxes([("bob@riseup.net", "10.0.0.2")])
        yield TlsWorld(server, db, pki, client, wrong_ca)


def tls_settings(world: TlsWorld, **overrides: object) -> MySqlMapSettings:
    return world.db.map_settings(**{"tls": True, "tls_ca_file": str(world.pki.ca),
                                    **overrides})


async def lookup(settings: MySqlMapSettings, key: str = "bob@riseup.net") -> MapEntry | None:
    m = MySqlMap(settings)
    try:
        return await m.lookup(key)
    finally:
        await m.close()


async def test_tls_with_the_right_ca(world: TlsWorld) -> None:
    assert await lookup(tls_settings(world)) == MapEntry("10.0.0.2", 143)
    assert MySqlMap(tls_settings(world)).describe().endswith(", port 143, TLS")


async def test_plain_text_is_refused_by_the_server(world: TlsWorld) -> None:
    # MariaDB 10.11 answers a plain login under require_secure_transport with 1045.
    with pytest.raises(MapUnavailable, match=r"insecure transport|\(1045\) Access denied"):
        await lookup(world.db.map_settings())


async def test_wrong_ca_is_refused_naming_the_host(
    world: TlsWorld, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tls_settings(world, tls_ca_file=str(world.wrong_ca))
    m = MySqlMap(settings)
    try:
        with caplog.at_level(logging.ERROR, logger="authsvc.maps.mysql"), \
                pytest.raises(MapUnavailable) as refused:
            await m.lookup("bob@riseup.net")
        with pytest.raises(MapUnavailable) as checked:  # what /readyz shows
            await m.check()
    finally:
        await m.close()
    expected = (f"mysql 127.0.0.1:{world.server.port}: TLS: the server's certificate was "
                # MariaDB sends its CA along: OpenSSL finds a root it does not trust.
                "refused: self-signed certificate in certificate chain "
                f"(tls_ca_file {world.wrong_ca}, tls_verify_name on)")
    assert str(refused.value) == expected
    assert str(checked.value) == expected
    assert [r.getMessage() for r in caplog.records] == [f"map unavailable: {expected}"]


def test_wrong_ca_in_authsvc_lookup(world: TlsWorld, tmp_path: Path) -> None:
    db = world.db
    config = tmp_path / "authsvc.toml"
    config.write_text(f"""
[map]
type = "mysql"
hosts = ["127.0.0.1:{world.server.port}"]
database = "{db.name}"
table = "mailboxes"
user = "{db.reader_user}"
password_file = "{db.write_password_file(tmp_path / 'pw')}"
server_column = "storage_ip"
user_column = "address"
port_constant = 143
tls = true
tls_ca_file = "{world.wrong_ca}"

[[listener]]
name = "imap4"
protocol = "imap"
port = 1143
""")
    result = subprocess.run(
        [sys.executable, "-m", "authsvc", "lookup", "bob@riseup.net", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result
    assert (f"mysql 127.0.0.1:{world.server.port}: TLS: the server's certificate was refused"
            in result.stdout + result.stderr), result


async def test_client_certificate(world: TlsWorld) -> None:
    db = world.db
    db.admin.execute(f"ALTER USER '{db.reader_user}'@'127.0.0.1' REQUIRE X509")
    try:
        with pytest.raises(MapUnavailable, match=r"\(1045\) Access denied"):
            await lookup(tls_settings(world))
        settings = tls_settings(world, tls_cert_file=str(world.client.cert),
                                tls_key_file=str(world.client.key))
        assert await lookup(settings) == MapEntry("10.0.0.2", 143)
    finally:
        db.admin.execute(f"ALTER USER '{db.reader_user}'@'127.0.0.1' REQUIRE NONE")


async def test_unreadable_ca_file(world: TlsWorld, tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(MapUnavailable, match=rf"cannot load TLS files \({missing}\)"):
        await lookup(tls_settings(world, tls_ca_file=str(missing)))


async def test_a_server_without_tls_is_refused_before_any_query(
    private_mariadb_db: TestDatabase, world: TlsWorld
) -> None:
    # The session's private server has no certificate: it offers no TLS, and
    # aiomysql would carry on in plain text.
    settings = private_mariadb_db.map_settings(tls=True, tls_ca_file=str(world.pki.ca))
    with pytest.raises(MapUnavailable) as refused:
        await lookup(settings)
    assert str(refused.value) == (
        f"mysql 127.0.0.1:{private_mariadb_db.port}: (2026) TLS: the server did not offer "
        "TLS (tls = true); refused before any query")
