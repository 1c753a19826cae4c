"""authsvc: a mail front-end router (nginx auth_http service and IMAP/POP3 proxy).

This module holds the version string and has no side effects beyond the path
line below.
"""

import pkgutil

# The proxy's source lives in the top-level proxy/ folder and installs as
# authsvc.proxy (pyproject's package-dir). From a source checkout, where this
# folder shadows the installed package, an editable install (strict mode, a
# tree of links) supplies authsvc.proxy: extend_path adds every authsvc/
# folder on sys.path to this package's path. In a wheel install there is one.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
