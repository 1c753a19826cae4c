"""Configuration problems with positions: :class:`Issue`, :class:`ConfigError`, :class:`Report`.

Every reader and the validator append to one :class:`Report`, so an operator
sees every error of every file in one run instead of fixing them one at a time.
An issue names the file, the line and the key *as the operator wrote them*
(``map_library_opt`` for a Perdition file, ``listener.bind`` for TOML).
Line 0 means the file as a whole, e.g. a Perdition default that no line sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Issue:
    """One error or warning, at ``file:line`` and about ``key``."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; carries every error found, and the warnings."""

    def __init__(self, issues: list[Issue], warnings: list[Issue] | None = None) -> None:
        self.issues = list(issues)
        self.warnings = list(warnings or [])
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


@dataclass(slots=True)
class Report:
    """Errors and warnings collected across readers and the validator, in order, deduplicated.

    Deduplication matters because a top-level ``[login]`` table is checked once
    per listener that inherits it.
    """

    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    def error(self, file: str, line: int, key: str, message: str) -> None:
        issue = Issue(file, line, key, message)
        if issue not in self.errors:
            self.errors.append(issue)

    def warn(self, file: str, line: int, key: str, message: str) -> None:
        issue = Issue(file, line, key, message)
        if issue not in self.warnings:
            self.warnings.append(issue)

    def raise_if_errors(self) -> None:
        """Raise :class:`ConfigError` with everything found so far, if anything is wrong."""
        if self.errors:
            raise ConfigError(self.errors, self.warnings)
