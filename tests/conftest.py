"""Shared pytest configuration.

Integration tests carry ``@pytest.mark.integration``.  On a developer's
machine they skip with a reason when a daemon, binary or file is missing; in
CI (``CI=true``, which ``.ci/run`` sets) that fails the run instead
(``tests/services/require.py``).
"""

import os

# The proxies the integration tests start run on the default install's loop,
# stdlib asyncio, even where the authsvc[uvloop] extra is installed (tests/run.sh
# installs it): the uvloop run is tests/component's second pass, asked for with
# AUTHSVC_LOOP=uvloop (docs/testing-deps.md).
os.environ.setdefault("AUTHSVC_LOOP", "asyncio")

# Shared service fixtures (mariadb_db, private_mariadb, ..., prometheus).
pytest_plugins = ["tests.services.mariadb", "tests.services.prometheus"]
