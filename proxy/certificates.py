"""The proxy's TLS contexts: the certificate each listener presents, and how stores are checked.

Loaded when the proxy starts, before any socket is bound or worker forked
(:func:`check_tls`), and again on every reload, so that a bad certificate is
reported at once and changes nothing.  Reading the files is the only I/O here;
the TLS itself runs in ``transport.py``, towards clients and stores alike.
"""

from __future__ import annotations

import ssl

from authsvc.settings import BackendTls, ListenerSettings, ListenTls, ProxySettings, Settings


class ProxyConfigError(ValueError):
    """A listener cannot be served as configured (e.g. TLS without a certificate)."""


def server_tls_context(listener: ListenerSettings) -> ssl.SSLContext | None:
    """The certificate a listener presents, or None for a plaintext-only listener."""
    if listener.tls is ListenTls.NONE:
        if listener.tls_required:
            raise ProxyConfigError(f"listener {listener.name}: tls_required without TLS")
        return None
    files = listener.tls_files
    if not files.cert_file or not files.key_file:
        raise ProxyConfigError(f"listener {listener.name}: TLS needs a certificate and key")
    # No client certificates are requested, so Perdition's
    # ssl_no_client_cert_verify has nothing to turn off (docs/configuration.md).
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ProxyConfigError(f"listener {listener.name}: {exc}") from exc
    return context


def backend_tls_context(proxy: ProxySettings) -> ssl.SSLContext:
    """How stores' certificates are checked: chain and name by default (docs/proxy.md).

    ``backend_verify = false`` is Perdition's ``ssl_no_cert_verify``;
    ``backend_verify_name = false`` its ``ssl_no_cn_verify`` (chain still checked).
    Unlike Perdition, an IP address in the map is checked against the
    certificate's IP SANs rather than needing ``ssl_no_cn_verify``.
    """
    try:
        context = ssl.create_default_context(cafile=proxy.backend_ca_file,
                                             capath=proxy.backend_ca_path)
    except (OSError, ssl.SSLError) as exc:
        raise ProxyConfigError(f"backend CA: {exc}") from exc
    if not proxy.backend_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not proxy.backend_verify_name:
        context.check_hostname = False
    return context


def backend_tls_for(settings: Settings) -> ssl.SSLContext | None:
    """The stores' context when some listener talks TLS to its stores, else None."""
    if any(ls.backend_tls is not BackendTls.NONE for ls in settings.listeners):
        return backend_tls_context(settings.proxy)
    return None


def check_tls(settings: Settings) -> None:
    """Certificates and CAs load, before any socket is bound or worker forked."""
    for listener in settings.listeners:
        server_tls_context(listener)
    backend_tls_for(settings)
