"""Every option of Perdition 2.2 (perdition(8), OPTIONS): its names, its value, its fate.

Each option is either *mapped* (``config/perdition.py`` turns it into native
settings) or *ignored* with a warning that says why, which ``check-config``
lists and ``--strict`` turns into an error.  An option that is not in this
table is an error; Perdition would have stopped reading the file there without
a word (docs/configuration.md, "Syntax").  docs/configuration.md carries the same
table for operators,
and a unit test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Option:
    """One Perdition option."""

    name: str
    short: str | None
    takes_value: bool
    #: Why it is ignored (a warning), or None when it is mapped.
    ignored: str | None = None
    #: Several lines add up (states, ssl_mode) instead of the last one winning.
    repeatable: bool = False


_TLS_LISTEN = "listener TLS parameters come from nginx or the proxy defaults; ignored"
_TLS_BACKEND = ("backend certificate checks are not relaxed or tuned per Perdition option "
                "(ssl_ca_file, ssl_ca_path, ssl_no_cert_verify and ssl_no_cn_verify are read); "
                "ignored")
_NOT_IN_FILE = "ignored in a file, as Perdition does"

OPTIONS: tuple[Option, ...] = (
    Option("add_domain", "A", True, repeatable=True),
    Option("authenticate_in", "a", False,
           "authsvc does no local (PAM) authentication: the backend checks every "
           "password; ignored"),
    Option("authenticate_timeout", None, True),
    Option("no_bind_banner", "B", False,
           "the greeting comes from nginx or the authsvc proxy; ignored"),
    Option("bind_address", "b", True),
    Option("connection_logging", "C", False),
    Option("connect_relog", None, True,
           "POP-before-SMTP re-logging of the Auth line is not supported; ignored"),
    Option("client_server_specification", "c", False,
           "not supported: a login user@host is looked up in the map like any other "
           "name and never chooses the server; ignored"),
    Option("domain_delimiter", "D", True),
    Option("debug", "d", False),
    Option("explicit_domain", "e", True),
    Option("log_facility", "F", True),
    Option("config_file", "f", True, _NOT_IN_FILE),
    Option("group", "g", True,
           "authsvc does not change group itself (use systemd Group=); ignored"),
    Option("help", "h", False, _NOT_IN_FILE),
    Option("inetd_mode", "i", False, "authsvc always runs as a daemon; ignored"),
    Option("capability", "I", True),
    Option("imap_capability", None, True),
    Option("pop_capability", None, True),
    Option("managesieve_capability", None, True,
           "authsvc has no ManageSieve listener; ignored"),
    Option("connection_limit", "L", True),
    Option("listen_port", "l", True),
    Option("log_passwd", None, True, "authsvc never logs passwords; ignored"),
    Option("login_disabled", None, False,
           "not supported: logins are NOT disabled by authsvc; remove the listener "
           "instead; ignored"),
    Option("lower_case", None, True, repeatable=True),
    Option("map_library", "M", True),
    Option("map_library_opt", "m", True),
    Option("no_daemon", None, False, "authsvc stays in the foreground under systemd; ignored"),
    Option("no_lookup", "n", False),
    Option("ok_line", "O", True, "the success reply is the front end's own; ignored"),
    Option("server_resp_line", "o", False,
           "the backend's reply line is not relayed to the client; ignored"),
    Option("server_ok_line", None, False,
           "the backend's reply line is not relayed to the client; ignored"),
    Option("protocol", "P", True),
    Option("outgoing_port", "p", True),
    Option("outgoing_server", "s", True),
    Option("pid_file", None, True, "authsvc writes no pid file (systemd tracks it); ignored"),
    Option("quiet", "q", False),
    Option("query_key", None, True,
           "not supported: authsvc looks up exactly one key, the login after "
           "strip_domain/add_domain/lower_case for servername_lookup; these formats are "
           "never tried, so a login that only a later format found gets no route "
           "(or outgoing_server); ignored"),
    Option("strip_domain", "S", True, repeatable=True),
    Option("tcp_keepalive", None, False,
           "TCP keepalive is the front end's setting, not a Perdition option here; ignored"),
    Option("timeout", "t", True),
    Option("username", "u", True,
           "authsvc does not change user itself (use systemd User=); ignored"),
    Option("username_from_database", "U", False),
    Option("ssl_mode", None, True, repeatable=True),
    Option("ssl_cert_file", None, True),
    Option("ssl_key_file", None, True),
    Option("ssl_ca_file", None, True),
    Option("ssl_ca_path", None, True),
    Option("ssl_ca_chain_file", None, True, _TLS_LISTEN),
    Option("ssl_ca_accept_self_signed", None, False, _TLS_BACKEND),
    Option("ssl_cert_accept_self_signed", None, False, _TLS_BACKEND),
    Option("ssl_cert_accept_expired", None, False, _TLS_BACKEND),
    Option("ssl_cert_accept_not_yet_valid", None, False, _TLS_BACKEND),
    Option("ssl_cert_verify_depth", None, True, _TLS_BACKEND),
    Option("ssl_dh_params_file", None, True, _TLS_LISTEN),
    Option("ssl_listen_ciphers", None, True, _TLS_LISTEN),
    Option("ssl_outgoing_ciphers", None, True, _TLS_BACKEND),
    Option("ssl_no_cert_verify", None, False),
    Option("ssl_no_client_cert_verify", None, False,
           "authsvc never asks clients for a certificate; ignored"),
    Option("ssl_no_cn_verify", None, False),
    Option("ssl_passphrase_fd", None, True,
           "encrypted private keys are not supported; ignored"),
    Option("ssl_passphrase_file", None, True,
           "encrypted private keys are not supported; ignored"),
    Option("ssl_listen_min_proto_version", None, True,
           "use [nginx] ssl_protocols in native config; ignored"),
    Option("ssl_outgoing_min_proto_version", None, True, _TLS_BACKEND),
    Option("ssl_listen_max_proto_version", None, True,
           "use [nginx] ssl_protocols in native config; ignored"),
    Option("ssl_outgoing_max_proto_version", None, True, _TLS_BACKEND),
    Option("ssl_listen_compression", None, False, "TLS compression is never enabled; ignored"),
    Option("ssl_outgoing_compression", None, False, "TLS compression is never enabled; ignored"),
    Option("ssl_no_cipher_server_preference", None, False, _TLS_LISTEN),
)

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
BY_SHORT: dict[str, Option] = {option.short: option for option in OPTIONS if option.short}


def find(key: str) -> Option | None:
    """The option a file key names: one letter is a short option, more a long one.

    As perdition/config_file.c turns a key into ``-k`` or ``--key``.
    """
    if len(key) == 1:
        return BY_SHORT.get(key)
    return BY_NAME.get(key)
