"""Settings the render tests and golden files share, built directly (no config files).

``nest()`` mirrors the seed deployment (deploy/perdition/):
four Perdition files, IMAP 143 STARTTLS, IMAPS 993, POP3 110 STARTTLS, POP3S 995,
one certificate, lower_case all, explicit_domain riseup.net + add_domain
servername_lookup, MySQL map, timeout 1800.  The golden tests render it, so a
template change shows up as a diff (``AUTHSVC_UPDATE_GOLDEN=1`` rewrites them).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from authsvc import __version__
from authsvc.redact import Secret
from authsvc.settings import (
    HaproxySettings,
    HostPort,
    HttpSettings,
    ListenerSettings,
    ListenTls,
    LoginPolicy,
    MailProtocol,
    MySqlMapSettings,
    NginxSettings,
    PoolNode,
    Settings,
    Stage,
    TlsSettings,
)
from tests.services.require import in_ci

GOLDEN = Path(__file__).parent
UPDATE_ENV = "AUTHSVC_UPDATE_GOLDEN"

NEST_CAPABILITY = (
    "IMAP4rev1", "UIDPLUS", "CHILDREN", "NAMESPACE", "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES", "SORT", "QUOTA", "IDLE", "STARTTLS",
)
NEST_TLS = TlsSettings(
    cert_file="/etc/certs/mail.riseup.net/cert.pem",
    key_file="/etc/certs/mail.riseup.net/key.pem",
)
NEST_LOGIN = LoginPolicy(
    add_domain=frozenset({Stage.LOOKUP}),
    lower_case=frozenset({Stage.LOOKUP, Stage.BACKEND_LOGIN}),
    explicit_domain="riseup.net",
)


def _nest_map(port: int) -> MySqlMapSettings:
    return MySqlMapSettings(
        hosts=(HostPort("dbhost-vpn", 3306),),
        database="nest",
        table="mailboxes",
        user="nest_mail",
        password=Secret("xxxxxxx"),
        server_column="storage_ip",
        user_column="address",
        port_column=None,
        port_constant=port,
    )


def nest_listener(name: str, protocol: MailProtocol, tls: ListenTls) -> ListenerSettings:
    """One of the seed's four listeners."""
    imap = protocol is MailProtocol.IMAP
    return ListenerSettings(
        name=name,
        protocol=protocol,
        tls=tls,
        capability=NEST_CAPABILITY if imap else ("UIDL", "USER"),
        login=NEST_LOGIN,
        map=_nest_map(143 if imap else 110),
        default_port=143 if imap else 110,
        tls_files=NEST_TLS,
        idle_timeout=1800.0,
        source=f"/etc/perdition/perdition.{name}.conf",
    )


def nest(**overrides: Any) -> Settings:
    """The seed deployment as Settings; keyword arguments replace Settings fields."""
    listeners = (
        nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS),
        nest_listener("imaps", MailProtocol.IMAP, ListenTls.IMPLICIT),
        nest_listener("pop3", MailProtocol.POP3, ListenTls.STARTTLS),
        nest_listener("pop3s", MailProtocol.POP3, ListenTls.IMPLICIT),
    )
    return replace(Settings(listeners=listeners), **overrides)


def nest_behind_haproxy() -> Settings:
    """The seed behind HAProxy: two nodes, a secret, PROXY headers from the balancers."""
    return nest(
        http=HttpSettings(secret=Secret("change-me-shared-secret")),
        nginx=NginxSettings(
            server_name="mail.riseup.net", proxy_protocol_from=("10.0.0.0/24",)
        ),
        haproxy=HaproxySettings(
            nodes=(
                PoolNode("front1", "10.0.0.11", 10000, HostPort("10.0.0.11", 9143)),
                PoolNode("front2", "10.0.0.12", 10000, HostPort("10.0.0.12", 9143)),
            ),
            admin_socket="/run/haproxy/authsvc.sock",
            stats=HostPort("127.0.0.1", 8404),
        ),
    )


def check_golden(name: str, text: str) -> None:
    """Assert ``text`` equals the golden file ``name``; rewrite it under AUTHSVC_UPDATE_GOLDEN=1."""
    path = GOLDEN / name
    # The version in the header would change every golden file on each release.
    text = text.replace(f"authsvc {__version__} (", "authsvc VERSION (")
    if os.environ.get(UPDATE_ENV) == "1":
        # Rewriting passes whatever was rendered: never the way CI runs the suite.
        assert not in_ci(), f"{UPDATE_ENV}=1 under CI=true would pass every golden test"
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path}; run with {UPDATE_ENV}=1 to create it"
    expected = path.read_text()
    assert text == expected, (
        f"render differs from {path}; if the change is intended, re-run with "
        f"{UPDATE_ENV}=1 and review the diff"
    )
