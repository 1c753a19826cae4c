"""Configuration problems with positions: :class:`Issue`, :class:`ConfigError`, :class:`Report`.

Every reader and the validator append to one :class:`Report`, so an operator
sees every error of every file in one run instead of fixing them one at a time.
An issue names the file, the line and the key *as the operator wrote them*
(``map_library_opt`` for a Perdition file, ``listener.bind`` for TOML).
Line 0 means the file as a whole, e.g. a Perdition default that no line sets.

A warning also says which commands use what it is about (:data:`COMMANDS`):
a listener's certificate matters to ``authsvc proxy`` and to the nginx that
``render-nginx`` writes, never to ``authsvc serve``.  Each command shows only
its own (``check-config --for``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: What ``check-config --for`` can name: the commands that read a configuration.
COMMANDS = ("serve", "proxy", "nginx", "haproxy")
EVERY = frozenset(COMMANDS)
#: A listener's certificate and key: the proxy serves TLS itself; nginx is given them.
TLS_TERMINATORS = frozenset({"proxy", "nginx"})
PROXY_ONLY = frozenset({"proxy"})
#: The commands that route logins: maps, login rules, throttle, holds, control.
ROUTERS = frozenset({"serve", "proxy"})


@dataclass(frozen=True, slots=True)
class Issue:
    """One error or warning, at ``file:line`` and about ``key``."""

    file: str
    line: int
    key: str
    message: str
    #: The commands that use what this is about (:data:`COMMANDS`).
    used_by: frozenset[str] = EVERY

    def concerns(self, command: str | None) -> bool:
        """Whether ``command`` (None: all of them) uses what this is about."""
        return command is None or command in self.used_by

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

    def warn(self, file: str, line: int, key: str, message: str,
             used_by: frozenset[str] = EVERY) -> None:
        issue = Issue(file, line, key, message, used_by)
        if issue not in self.warnings:
            self.warnings.append(issue)

    def raise_if_errors(self) -> None:
        """Raise :class:`ConfigError` with everything found so far, if anything is wrong."""
        if self.errors:
            raise ConfigError(self.errors, self.warnings)
