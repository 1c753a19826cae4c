"""Several Perdition files (``--config`` repeated) to one native raw tree.

Perdition ran one daemon per file; authsvc runs one process for all of them,
so each file gives one listener and the process-wide options must agree
(docs/configuration.md, "Several Perdition files"):

* log level (``debug``, ``quiet``) and ``connection_logging``;
* ``username`` and ``group`` (ignored by authsvc, but two values mean the
  files were not written for one process);
* ``log_facility``, ``ssl_ca_file``, ``ssl_ca_path``, ``ssl_no_cert_verify``
  and ``ssl_no_cn_verify``: ``authsvc proxy``'s ``[proxy]`` settings.

An option left out of one file has its Perdition default there, so
``debug`` in one file and not in another is a disagreement too.  Listener
names and addresses are compared by validate.py, which does the same for TOML.
"""

from __future__ import annotations

from authsvc.config.issues import Report
from authsvc.config.perdition import PerditionFile
from authsvc.config.raw import Pos, RawTable, RawValue


def _shown(value: str | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value)


def merge_perdition(files: list[PerditionFile], report: Report) -> RawTable:
    """One raw tree: a ``[log]`` table both files agree on and one listener per file."""
    first = files[0]
    root = RawTable(Pos(first.file, 0, "(file)"))
    for other in files[1:]:
        for key, (value, pos) in other.process.items():
            base_value, base_pos = first.process[key]
            if value == base_value:
                continue
            here, there = (other, first) if pos is not None else (first, other)
            at = pos if pos is not None else base_pos
            assert at is not None  # two defaults never differ
            mine = value if here is other else base_value
            theirs = base_value if here is other else value
            their_pos = base_pos if here is other else pos
            source = f"line {their_pos.line}" if their_pos is not None else "the default"
            report.error(
                at.file, at.line, at.key,
                f"{key} is {_shown(mine)} here but {_shown(theirs)} in {there.file} "
                f"({source}); process-wide settings must agree across the files, as one "
                "authsvc process serves every listener",
            )
    level, level_pos = first.process["log level"]
    logging, logging_pos = first.process["connection_logging"]
    log = root.table("log", root.pos)
    log.set("level", level, level_pos or Pos(first.file, 0, "debug"))
    log.set("connection_logging", logging, logging_pos or Pos(first.file, 0, "connection_logging"))
    _proxy_table(root, first)
    listeners = [RawValue(f.listener, f.listener.pos) for f in files]
    root.set("listener", listeners, root.pos)
    return root


def _proxy_table(root: RawTable, first: PerditionFile) -> None:
    """``[proxy]`` from the options every file agrees on (backend TLS, syslog).

    Perdition always wrote its ``Auth:`` line to syslog (perdition(8), LOGGING), and
    fail2ban jails read it there, so Perdition files turn it on.
    """
    proxy = root.table("proxy", root.pos)
    facility, facility_pos = first.process["log_facility"]
    proxy.set("auth_log", True, facility_pos or Pos(first.file, 0, "log_facility"))
    if facility_pos is not None and isinstance(facility, str) and facility[:1] not in "/-+":
        proxy.set("auth_log_facility", facility.lower(), facility_pos)
    for option, key in (("ssl_ca_file", "backend_ca_file"), ("ssl_ca_path", "backend_ca_path")):
        value, pos = first.process[option]
        if pos is not None and value:
            proxy.set(key, value, pos)
    for option, key in (("ssl_no_cert_verify", "backend_verify"),
                        ("ssl_no_cn_verify", "backend_verify_name")):
        value, pos = first.process[option]
        if pos is not None and value is True:
            proxy.set(key, False, pos)
