"""What every session of one listener shares: :class:`ListenerContext`.

The server builds one per listener when it starts and again on each reload
(``server.py``); a session keeps the one it started with.  It holds the
listener's settings, the routing core, the TLS contexts for clients and
stores, and the process's Auth: writer, metrics, throttle and record of the
store's refusal times, and the batched writer of the session lines.  Nothing here
does anything by itself.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from authsvc.proxy.metrics import ProxyMetrics
from authsvc.proxy.syslog import AuthLog

from authsvc.log import BatchedLog
from authsvc.routing import Router
from authsvc.settings import ListenerSettings, LogSettings, ProxySettings
from authsvc.throttle.refusals import RefusalRecord
from authsvc.throttle.service import Throttle


@dataclass(frozen=True, slots=True)
class ListenerContext:
    """Everything a session of one listener needs, built once by the server."""

    listener: ListenerSettings
    proxy: ProxySettings
    log: LogSettings
    router: Router
    #: The listener's certificate, for STARTTLS and implicit TLS; None = no TLS.
    server_tls: ssl.SSLContext | None
    #: How we check stores' certificates; None when no listener talks TLS to stores.
    backend_tls: ssl.SSLContext | None
    #: Perdition's Auth: line to syslog, when ``[proxy] auth_log`` is on.
    auth_log: AuthLog | None = None
    metrics: ProxyMetrics | None = None
    #: Brute-force throttling (docs/security.md); None = off.
    throttle: Throttle | None = None
    #: How long the store took to refuse each client address (docs/security.md,
    #: "User enumeration"); None = failures wait ``auth_failure_delay`` only.
    refusal_times: RefusalRecord | None = None
    #: Where the ``event=session`` lines go, written in batches (``authsvc/log.py``);
    #: None = one ``log.info`` per session.
    session_log: BatchedLog | None = None
    #: An IMAP listener's own capability words (``ImapFront.operator_words``),
    #: worked out once for all its sessions.
    imap_words: tuple[str, ...] | None = None
