"""Load settings from native TOML or Perdition files: the config package's API.

``load_settings(sources)`` reads every source, translates it into the raw tree
(``toml.py`` or ``perdition.py`` plus ``merge.py``), validates it
(``validate.py``) and returns the frozen :class:`~authsvc.settings.Settings`
with the warnings; on any error it raises :class:`ConfigError` carrying all of
them.  A source is ``FILE`` or ``PROTO=FILE``: a file ending in ``.toml`` is
native config (one file), anything else a Perdition file (one or more, one
listener each).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from authsvc.config.issues import ConfigError, Issue, Report
from authsvc.config.merge import merge_perdition
from authsvc.config.perdition import PROTO_WORDS, PerditionFile, read_perdition
from authsvc.config.toml import read_toml
from authsvc.config.validate import validate
from authsvc.settings import Settings

__all__ = ["ConfigError", "ConfigSource", "Issue", "Loaded", "load_settings", "parse_source"]

_WORD = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """One ``--config`` argument: a path, and the protocol ``PROTO=`` gave (lower case)."""

    path: str
    protocol: str | None = None

    @property
    def native(self) -> bool:
        """Whether this is native TOML (by its name) rather than a Perdition file."""
        return self.path.endswith(".toml")


@dataclass(frozen=True, slots=True)
class Loaded:
    """Validated settings and the warnings found on the way."""

    settings: Settings
    warnings: list[Issue]

    def warnings_for(self, command: str | None) -> list[Issue]:
        """The warnings about what ``command`` uses (None: every warning)."""
        return [issue for issue in self.warnings if issue.concerns(command)]


def parse_source(text: str) -> ConfigSource:
    """``FILE`` or ``PROTO=FILE``, PROTO one of imap4, imaps, imap4s, pop3, pop3s."""
    prefix, equals, rest = text.partition("=")
    if equals and prefix.lower() in PROTO_WORDS:
        if not rest:
            raise ConfigError([Issue(text, 0, "PROTO", "no file after '='")])
        return ConfigSource(rest, prefix.lower())
    if equals and _WORD.match(prefix):
        raise ConfigError([Issue(text, 0, "PROTO", f"unknown protocol {prefix!r}: use imap4, "
                                 "imaps, imap4s, pop3 or pop3s (write ./FILE for a file name "
                                 "with '=' in it)")])
    return ConfigSource(text)


def _read(path: str, report: Report) -> str | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        report.error(path, 0, "(file)", f"cannot read: {exc.strerror or exc}")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        report.error(path, line, "(file)", "not valid UTF-8")
        return None


def load_settings(sources: Sequence[ConfigSource | str]) -> Loaded:
    """Read, translate and validate ``sources``; raises ConfigError with every error."""
    report = Report()
    parsed: list[ConfigSource] = []
    for source in sources:
        if isinstance(source, ConfigSource):
            parsed.append(source)
            continue
        try:
            parsed.append(parse_source(source))
        except ConfigError as exc:
            report.errors.extend(exc.issues)
    report.raise_if_errors()
    if not parsed:
        raise ConfigError([Issue("(command line)", 0, "--config", "no configuration file")])
    native = [s for s in parsed if s.native]
    if native and len(parsed) > 1:
        raise ConfigError([Issue(native[0].path, 0, "(file)",
                                 "give one native TOML file on its own, or Perdition files "
                                 "(one per listener), not both or several TOML files")])
    settings: Settings | None = None
    if native:
        source = native[0]
        if source.protocol is not None:
            report.error(source.path, 0, "PROTO", "PROTO= applies to Perdition files only")
        text = _read(source.path, report)
        root = read_toml(source.path, text, report) if text is not None else None
        if root is not None:
            settings = validate(root, report)
    else:
        files: list[PerditionFile] = []
        for source in parsed:
            text = _read(source.path, report)
            if text is None:
                continue
            found = read_perdition(source.path, source.protocol, text, report)
            if found is not None:
                files.append(found)
        if files:
            settings = validate(merge_perdition(files, report), report)
    report.raise_if_errors()
    assert settings is not None
    return Loaded(settings, report.warnings)
