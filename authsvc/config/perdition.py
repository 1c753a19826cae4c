"""One Perdition config file to one native listener (docs/configuration.md).

A Perdition file configures one daemon, and one daemon is one listener here:
``perdition.imap4.conf`` becomes listener ``imap4``.  The protocol comes from
``PROTO=FILE``, else from the file name as Debian's binaries choose it
(``config_file_name`` in perdition/config_file.c),
and a ``protocol`` line in the file wins over both, as in Perdition.  Options
are translated into the native tree (docs/configuration.md has the table);
ignored options become warnings; unknown keys, missing or surplus values and
unknown words in Perdition's small value languages (states, ``ssl_mode``) are
errors here, where Perdition would silently stop reading the file (popt stops
at an unknown option; perdition/options.c).
Values are checked by validate.py, as for TOML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from authsvc.address import well_known_port
from authsvc.config.issues import Report
from authsvc.config.perdition_map import read_map
from authsvc.config.perdition_options import find
from authsvc.config.perdition_syntax import Directive, lex
from authsvc.config.raw import Pos, RawTable, values
from authsvc.settings import MailProtocol

#: Perdition protocol -> (listener name, native protocol); the ``S`` protocols listen on
#: the implicit-TLS port (perdition(8), --protocol and the default of --listen_port).
PROTOCOLS: dict[str, tuple[str, MailProtocol]] = {
    "IMAP4": ("imap4", MailProtocol.IMAP),
    "IMAP4S": ("imaps", MailProtocol.IMAP),
    "POP3": ("pop3", MailProtocol.POP3),
    "POP3S": ("pop3s", MailProtocol.POP3),
}
#: ``PROTO=`` words accepted on the command line.
PROTO_WORDS = {"imap4": "IMAP4", "imaps": "IMAP4S", "imap4s": "IMAP4S",
               "pop3": "POP3", "pop3s": "POP3S"}
_FILE_NAMES = {f"perdition.{word}.conf": proto for word, proto in PROTO_WORDS.items()}
#: Service names Perdition's defaults use (resolved through /etc/services there).
_SERVICES = {"imap": 143, "imap2": 143, "imaps": 993, "pop3": 110, "pop3s": 995}
_STATES = {"servername_lookup": "lookup", "server_lookup": "lookup",
           "remote_login": "backend_login", "local_authentication": None,
           "local_auth": None, "all": "all"}
_SSL_WORDS = {
    "none": set(),
    "ssl_listen": {"ssl_listen"}, "ssl_outgoing": {"ssl_outgoing"},
    "ssl_all": {"ssl_listen", "ssl_outgoing"},
    "tls_listen": {"tls_listen"}, "tls_outgoing": {"tls_outgoing"},
    "tls_all": {"tls_listen", "tls_outgoing"},
    "tls_listen_force": {"tls_listen", "listen_force"},
    "tls_outgoing_force": {"tls_outgoing", "outgoing_force"},
    "tls_all_force": {"tls_listen", "tls_outgoing", "listen_force", "outgoing_force"},
}
DEFAULT_CERT = "/etc/perdition/perdition.crt.pem"
DEFAULT_KEY = "/etc/perdition/perdition.key.pem"


@dataclass(slots=True)
class PerditionFile:
    """What one file gives: a listener, and the process-wide values merge.py compares."""

    file: str
    listener: RawTable
    #: Process-wide setting -> (effective value, where it was set or None for the default).
    process: dict[str, tuple[str | bool, Pos | None]] = field(default_factory=dict)


def protocol_for(file: str, proto: str | None, report: Report) -> str | None:
    """The Perdition protocol of a file, from ``PROTO=`` or its name (perdition/config_file.c)."""
    if proto is not None:
        return PROTO_WORDS[proto.lower()]
    name = os.path.basename(file)
    if name == "perdition.pops.conf":
        report.warn(file, 0, "protocol",
                    "read as POP3S because of its name, but Debian's perdition.pop3s reads "
                    "perdition.pop3s.conf (else perdition.conf) and never this name, so in the "
                    "seed deployment the POP3S daemon ran on its defaults; rename it to "
                    "perdition.pop3s.conf")
        return "POP3S"
    return _FILE_NAMES.get(name)


def _number(text: str) -> int | str:
    """Perdition's numeric values are plain digits; anything else goes on for validate.py."""
    return int(text) if text.isascii() and text.isdigit() else text


def _port(text: str) -> int | str:
    return _SERVICES.get(text, _number(text))


def _default_port(protocol: str) -> int:
    """The port a Perdition ``protocol`` listens on and connects to by default."""
    return well_known_port(PROTOCOLS[protocol][1], implicit_tls=protocol.endswith("S"))


class _Options:
    """The directives of one file by option name, after checking names and values."""

    def __init__(self, file: str, directives: list[Directive], report: Report) -> None:
        self.file = file
        self.by_name: dict[str, list[Directive]] = {}
        for d in directives:
            option = find(d.key)
            if option is None:
                hint = ("; Perdition separates key and value with whitespace, not '='"
                        if "=" in d.key else "")
                report.error(file, d.line, d.key,
                             "unknown option (Perdition would silently ignore this line and "
                             f"the rest of the file){hint}")
                continue
            if option.takes_value and d.value is None:
                report.error(file, d.line, d.key, "needs a value")
                continue
            if not option.takes_value and d.value is not None:
                report.error(file, d.line, d.key,
                             f"takes no value: a bare '{d.key}' turns it on, and there is "
                             "no way to write off")
                continue
            if option.ignored is not None:
                report.warn(file, d.line, d.key, option.ignored)
            seen = self.by_name.setdefault(option.name, [])
            if seen and not option.repeatable:
                report.warn(file, d.line, d.key,
                            f"also set on line {seen[-1].line}; this later line wins, as in "
                            "Perdition")
            seen.append(d)

    def last(self, name: str) -> Directive | None:
        found = self.by_name.get(name)
        return found[-1] if found else None

    def all(self, name: str) -> list[Directive]:
        return self.by_name.get(name, [])

    def pos(self, d: Directive) -> Pos:
        return Pos(self.file, d.line, d.key)


class _Reader:
    def __init__(self, file: str, opts: _Options, protocol: str, report: Report) -> None:
        self.file = file
        self.opts = opts
        self.protocol = protocol
        self.report = report
        self.file_pos = Pos(file, 0, "(file)")

    def states(self, name: str, table: RawTable) -> None:
        """lower_case / strip_domain / add_domain: OR-ed states (perdition(8)), and a depth."""
        directives = self.opts.all(name)
        if not directives:
            return
        stages: list[str] = []
        for d in directives:
            assert d.value is not None
            for word in d.value.split(","):
                if name == "add_domain" and word.isascii() and word.isdigit():
                    table.set("add_domain_depth", int(word), self.opts.pos(d))
                    continue
                if word.lower() not in _STATES:
                    self.report.error(self.file, d.line, d.key,
                                      f"unknown state {word!r} (servername_lookup, "
                                      "server_lookup, remote_login, local_authentication, "
                                      "local_auth or all)")
                    continue
                stage = _STATES[word.lower()]
                if stage is None:
                    self.report.warn(self.file, d.line, d.key,
                                     f"state {word!r}: authsvc does no local authentication, "
                                     "so this state is ignored")
                    continue
                for one in ("lookup", "backend_login") if stage == "all" else (stage,):
                    if one not in stages:
                        stages.append(one)
        table.set(name, values(stages, self.opts.pos(directives[0])), self.opts.pos(directives[0]))

    def login(self, listener: RawTable) -> None:
        table = listener.table("login", self.file_pos)
        for name in ("lower_case", "strip_domain", "add_domain"):
            self.states(name, table)
        for name in ("explicit_domain", "domain_delimiter"):
            d = self.opts.last(name)
            if d is not None and d.value is not None:
                table.set(name, d.value, self.opts.pos(d))
        d = self.opts.last("username_from_database")
        if d is not None:
            table.set("username_from_database", True, self.opts.pos(d))

    def ssl_mode(self, listener: RawTable) -> None:
        """ssl_mode to tls, tls_required and backend_tls (perdition(8), --ssl_mode)."""
        bits: set[str] = set()
        directives = self.opts.all("ssl_mode")
        for d in directives:
            assert d.value is not None
            for word in d.value.split(","):
                found = _SSL_WORDS.get(word.lower())
                if found is None:
                    self.report.error(self.file, d.line, d.key,
                                      f"unknown ssl_mode {word!r} ({', '.join(_SSL_WORDS)})")
                    continue
                bits |= found
        for a, b in (("ssl_listen", "tls_listen"), ("ssl_outgoing", "tls_outgoing")):
            if a in bits and b in bits:
                self.report.error(self.file, directives[-1].line, directives[-1].key,
                                  f"{a} and {b} together: Perdition logs 'invalid ssl_mode "
                                  "combination' and uses both; choose one")
        pos = self.opts.pos(directives[0]) if directives else self.file_pos
        if not directives and self.protocol in ("IMAP4S", "POP3S"):
            # imap4s_encryption(): an empty ssl_mode means SSL_MODE_SSL_ALL.
            bits = {"ssl_listen", "ssl_outgoing"}
            pos = Pos(self.file, 0, "ssl_mode")
            self.report.warn(self.file, 0, "ssl_mode",
                             f"not set, so {self.protocol} means ssl_all, as in Perdition: "
                             "implicit TLS to clients AND to the backends (default port "
                             f"{_default_port(self.protocol)}); write 'ssl_mode ssl_listen' "
                             "for plaintext backends")
        tls = ("implicit" if "ssl_listen" in bits
               else "starttls" if "tls_listen" in bits else "none")
        listener.set("tls", tls, pos)
        if "listen_force" in bits:
            listener.set("tls_required", True, pos)
        backend = ("implicit" if "ssl_outgoing" in bits
                   else "starttls_required" if "outgoing_force" in bits
                   else "starttls" if "tls_outgoing" in bits else "none")
        listener.set("backend_tls", backend, pos)
        if tls == "starttls" and self.protocol in ("IMAP4S", "POP3S"):
            self.report.warn(self.file, pos.line, pos.key,
                             f"{self.protocol} with tls_listen is a plaintext port with "
                             "STARTTLS, as in Perdition; clients expecting TLS from the first "
                             "byte will fail")
        if tls != "none":
            for option, key, default in (("ssl_cert_file", "cert", DEFAULT_CERT),
                                         ("ssl_key_file", "key", DEFAULT_KEY)):
                if self.opts.last(option) is None:
                    listener.set(key, default, Pos(self.file, 0, option),
                                 hint="Perdition's default, as the file sets none")

    def capability(self, listener: RawTable, imap: bool) -> None:
        own, other = ("imap_capability", "pop_capability") if imap else (
            "pop_capability", "imap_capability")
        for d in self.opts.all(other):
            self.report.warn(self.file, d.line, d.key,
                             f"has no effect on a{'n IMAP' if imap else ' POP3'} listener; "
                             "ignored")
        candidates = [d for d in (self.opts.last(own), self.opts.last("capability")) if d]
        if not candidates:
            default = ["IMAP4", "IMAP4REV1"] if imap else ["UIDL", "USER"]
            listener.set("capability", values(default, self.file_pos), self.file_pos)
            return
        d = max(candidates, key=lambda c: c.line)
        assert d.value is not None
        pos = self.opts.pos(d)
        if d.key in ("capability", "I"):
            self.report.warn(self.file, d.line, d.key,
                             f"deprecated in Perdition; read as {own}")
        if imap:
            words = d.value.split(" ")
            if "" in words:
                self.report.warn(self.file, d.line, d.key,
                                 "runs of spaces: Perdition sent them to clients verbatim, "
                                 "authsvc sends the words with single spaces")
            items = [w for w in words if w]
        elif "." in d.value:
            items = d.value.split(".")
        else:
            items = d.value.split("  ")
            if len(items) > 1:
                self.report.warn(self.file, d.line, d.key,
                                 "two spaces as the separator are deprecated in Perdition; "
                                 "separate with '.'")
        # STARTTLS/LOGINDISABLED (IMAP) and STLS (POP3) are added and removed from
        # ssl_mode whatever the list says (imap4_capability in perdition/imap4.c, and
        # perdition/pop3_in.c); the front ends do the same from tls.
        managed = {"STARTTLS", "LOGINDISABLED"} if imap else {"STLS"}
        listener.set("capability", values([i for i in items if i not in managed], pos), pos)

    def network(self, listener: RawTable) -> None:
        default_port = _default_port(self.protocol)
        d = self.opts.last("listen_port")
        if d is not None and d.value is not None:
            listener.set("port", _port(d.value), self.opts.pos(d))
        else:
            listener.set("port", default_port, Pos(self.file, 0, "listen_port"))
        d = self.opts.last("bind_address")
        if d is not None and d.value is not None:
            listener.set("bind", values(d.value.split(","), self.opts.pos(d)), self.opts.pos(d))
        else:  # Perdition binds IPv4 0.0.0.0 only (perdition(8), --bind_address)
            pos = Pos(self.file, 0, "bind_address")
            listener.set("bind", values(["0.0.0.0"], pos), pos)
        d = self.opts.last("outgoing_server")
        if d is not None and d.value is not None:
            listener.set("outgoing_server", values(d.value.split(","), self.opts.pos(d)),
                         self.opts.pos(d))
        d = self.opts.last("outgoing_port")
        if d is not None and d.value is not None:
            listener.set("outgoing_port", _port(d.value), self.opts.pos(d))
        else:  # imap4s_port(): the protocol's port, whatever ssl_mode says
            listener.set("outgoing_port", default_port, Pos(self.file, 0, "outgoing_port"))
        for option, key in (("timeout", "timeout"), ("authenticate_timeout", "login_timeout"),
                            ("connection_limit", "connection_limit")):
            d = self.opts.last(option)
            if d is not None and d.value is not None:
                listener.set(key, _number(d.value), self.opts.pos(d))
        for option, key in (("ssl_cert_file", "cert"), ("ssl_key_file", "key")):
            d = self.opts.last(option)
            if d is not None and d.value is not None:
                listener.set(key, d.value, self.opts.pos(d))

    def warn_semantics(self, listener: RawTable, map_table: RawTable | None) -> None:
        """Differences an operator must know about, for this file's combination of options."""
        mysql = map_table is not None and _text(map_table, "type") == "mysql"
        server = self.opts.last("outgoing_server")
        if mysql and server is not None:
            self.report.warn(self.file, server.line, server.key,
                             "on a database error Perdition sent logins here; authsvc refuses "
                             "them with a temporary error instead (set default_server_on_error "
                             "in native config for Perdition's way)")
        constant = map_table is not None and "port_constant" in map_table.items
        if (self.protocol in ("IMAP4S", "POP3S") and _text(listener, "backend_tls") == "none"
                and self.opts.last("outgoing_port") is None and not constant):
            port = _default_port(self.protocol)
            self.report.warn(self.file, 0, "outgoing_port",
                             f"not set, so it is {port} for {self.protocol} as in Perdition, "
                             "although the backend connection is plaintext: map entries "
                             f"without a port go to port {port}")

    def process(self) -> dict[str, tuple[str | bool, Pos | None]]:
        """Process-wide values: one authsvc process serves every listener (merge.py)."""
        debug, quiet = self.opts.last("debug"), self.opts.last("quiet")
        found: dict[str, tuple[str | bool, Pos | None]] = {}
        if debug is not None:
            found["log level"] = ("debug", self.opts.pos(debug))
        elif quiet is not None:
            found["log level"] = ("error", self.opts.pos(quiet))
        else:
            found["log level"] = ("info", None)
        d = self.opts.last("connection_logging")
        found["connection_logging"] = (True, self.opts.pos(d)) if d else (False, None)
        for name in ("username", "group", "log_facility", "ssl_ca_file", "ssl_ca_path"):
            d = self.opts.last(name)
            found[name] = (d.value or "", self.opts.pos(d)) if d else ("", None)
        # Backend certificate checks: one process, one setting (authsvc proxy's [proxy]).
        for name in ("ssl_no_cert_verify", "ssl_no_cn_verify"):
            d = self.opts.last(name)
            found[name] = (True, self.opts.pos(d)) if d else (False, None)
        d = self.opts.last("log_facility")
        if d is not None and d.value and d.value[0] in "/-+":
            self.report.warn(self.file, d.line, d.key,
                             "a log file, stdout or stderr: authsvc logs to stderr (the "
                             "journal) and writes the Auth: lines to syslog; ignored")
        return found


def _text(table: RawTable, key: str) -> str | None:
    found = table.items.get(key)
    return found.value if found is not None and isinstance(found.value, str) else None


def read_perdition(file: str, proto: str | None, text: str, report: Report) -> PerditionFile | None:
    """The listener a Perdition file describes; None when its protocol is unknown.

    A file with other errors still gives its listener, so that validate.py can
    report the value errors too and the operator sees them all in one run.
    """
    opts = _Options(file, lex(file, text, report), report)
    protocol = protocol_for(file, proto, report)
    d = opts.last("protocol")
    if d is not None and d.value is not None:
        named = d.value.upper()
        if named == "MANAGESIEVE":
            report.error(file, d.line, d.key, "ManageSieve is not supported by authsvc")
        elif named not in PROTOCOLS:
            report.error(file, d.line, d.key,
                         f"unknown protocol {d.value!r} (POP3, POP3S, IMAP4 or IMAP4S)")
        else:
            if protocol is not None and protocol != named:
                report.warn(file, d.line, d.key,
                            f"the file name or PROTO= says {protocol}; this line wins, as in "
                            "Perdition")
            protocol = named
    if protocol is None:
        report.error(file, 0, "protocol",
                     "cannot tell the protocol from the file name; write PROTO=FILE with "
                     "PROTO one of imap4, imaps, pop3, pop3s")
        return None
    reader = _Reader(file, opts, protocol, report)
    name, mail = PROTOCOLS[protocol]
    native = mail.value
    listener = RawTable(Pos(file, 0, "(file)"))
    listener.set("name", name, Pos(file, 0, "protocol"))
    listener.set("protocol", native, Pos(file, 0, "protocol"))
    reader.ssl_mode(listener)
    reader.network(listener)
    reader.capability(listener, native == "imap")
    reader.login(listener)
    map_table = read_map(opts.last("map_library"), opts.last("map_library_opt"), file, report)
    if map_table is not None:
        listener.set("map", map_table, map_table.pos)
    reader.warn_semantics(listener, map_table)
    return PerditionFile(file, listener, reader.process())
