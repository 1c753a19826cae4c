"""Test certificates: a throw-away CA and server certificates made with the ``openssl`` CLI.

The daemons under test (nginx, Dovecot, HAProxy) read PEM files, and the
clients verify against the CA, so a test that talks TLS checks a real chain
and a real name instead of turning verification off.  Keys are EC P-256:
quick to make and quick to handshake, which matters for the login benchmark.

Run by hand: ``python -m tests.services.certs DIR [NAME...]`` writes a CA and
one server certificate for the given names (default ``localhost`` and the
loopback addresses the stack uses) and prints the paths.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: Names every test certificate carries unless told otherwise: the stack's
#: loopback addresses (Dovecot stores, nginx nodes, HAProxy) and localhost.
DEFAULT_NAMES: tuple[str, ...] = (
    "localhost",
    "mail.test",
    "127.0.0.1",
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.10",
    "127.0.0.11",
    "127.0.0.12",
    "127.0.0.20",
    "::1",
)


@dataclass(frozen=True, slots=True)
class ServerCert:
    """One server certificate: PEM paths, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path
    #: Certificate then key in one file, the form HAProxy's ``crt`` wants.
    combined: Path

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts only this test CA (hostname checked)."""
        return ssl.create_default_context(cafile=str(self.ca))


def _openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {result.stderr.strip()}")


def _san(names: tuple[str, ...]) -> str:
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            entries.append(f"DNS:{name}")
        else:
            entries.append(f"IP:{name}")
    return ",".join(entries)


def make_ca(directory: Path, common_name: str = "authsvc test CA") -> tuple[Path, Path]:
    """Write ``ca.pem`` and ``ca.key`` into ``directory``; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.pem", directory / "ca.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", ca_key, "-out", ca_cert,
        cwd=directory,
    )
    return ca_cert, ca_key


def make_server_cert(
    directory: Path,
    ca_cert: Path,
    ca_key: Path,
    names: tuple[str, ...] = DEFAULT_NAMES,
    stem: str = "server",
    usage: str = "serverAuth",
) -> ServerCert:
    """Write ``<stem>.pem``/``<stem>.key`` signed by the CA, valid for ``names``.

    ``usage``: the extended key usage, ``clientAuth`` for a client certificate.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr = directory / f"{stem}.pem", directory / f"{stem}.key", directory / f"{stem}.csr"
    ext = directory / f"{stem}.ext"
    # Clients check the name against subjectAltName only (RFC 6125 §6.4.4), so
    # every name, IP literals included, goes there.
    ext.write_text(
        f"subjectAltName={_san(names)}\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-subj", f"/CN={names[0]}", "-keyout", key, "-out", csr,
        cwd=directory,
    )
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-extfile", ext, "-out", cert,
        cwd=directory,
    )
    combined = directory / f"{stem}.combined.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    # Dovecot reads keys as root but nginx/HAProxy workers may not; the files are
    # throw-away test keys, so readable is fine (the directory is ours alone).
    for path in (cert, key, combined, ca_cert):
        os.chmod(path, 0o644)
    return ServerCert(cert=cert, key=key, ca=ca_cert, combined=combined)


def make_test_pki(directory: Path, names: tuple[str, ...] = DEFAULT_NAMES) -> ServerCert:
    """A fresh CA plus one server certificate for ``names``, in ``directory``."""
    ca_cert, ca_key = make_ca(directory)
    return make_server_cert(directory, ca_cert, ca_key, names)


def main(argv: list[str]) -> int:
    """``python -m tests.services.certs DIR [NAME...]``."""
    if not argv:
        print(__doc__)
        return 2
    names = tuple(argv[1:]) or DEFAULT_NAMES
    pki = make_test_pki(Path(argv[0]), names)
    print(f"ca={pki.ca}\ncert={pki.cert}\nkey={pki.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
