"""authsvc: a mail front-end router (nginx auth_http service and IMAP/POP3 proxy).

This module holds the version string only and has no side effects.
"""

__version__ = "0.1.0"
